"""The content-addressed blob store: packs and index, idempotence, atomicity, durability order, integrity."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest

import ingest.blob_files as blob_files
import ingest.blob_packs as blob_packs
import ingest.blobs as blobs_module
from frontdesk.errors import TransientError
from ingest.blobs import INDEX, PACKS, BlobError, BlobNotFound, BlobStore, BlobWriteFailed, Staged, blob_ref

DATA = b"%PDF-1.4 statement \x00\xff"
HEX = hashlib.sha256(DATA).hexdigest()


def packs(root: Path) -> list[Path]:
    return sorted((root / PACKS).glob("*")) if (root / PACKS).exists() else []


def test_put_returns_sha256_reference_and_writes_one_pack_per_call(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    ref = store.put(DATA)
    assert ref == f"sha256:{HEX}" == blob_ref(DATA)
    assert store.get(ref) == DATA and store.exists(ref)
    refs = store.put_many([b"one", b"two", b"one", b"x" * 100_000])
    assert [store.get(r) for r in refs] == [b"one", b"two", b"one", b"x" * 100_000]
    assert len(packs(tmp_path / "blobs")) == 2
    assert packs(tmp_path / "blobs")[1].stat().st_size == 3 + 3 + 100_000, "a duplicate within a call is written once"


def test_blobs_of_the_earlier_file_layouts_are_still_found_and_not_written_again(tmp_path: Path) -> None:
    old = hashlib.sha256(b"old").hexdigest()
    one_level, two_level = tmp_path / HEX[:2] / HEX, tmp_path / old[:2] / old[2:4] / old
    for path, data in ((one_level, DATA), (two_level, b"old")):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    store = BlobStore(tmp_path)
    assert store.exists(blob_ref(DATA)) and store.get(blob_ref(DATA)) == DATA and store.get(blob_ref(b"old")) == b"old"
    assert store.put_many([DATA, b"old"]) == [blob_ref(DATA), blob_ref(b"old")]
    assert packs(tmp_path) == [], "the earlier copies are used, not duplicated"
    one_level.write_bytes(b"tampered")
    with pytest.raises(BlobError, match="corrupt"):
        store.get(blob_ref(DATA))


def test_put_is_idempotent_and_does_not_rewrite(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    ref = store.put(DATA)
    [pack] = packs(tmp_path)
    before = pack.stat()
    assert store.put(DATA) == ref and BlobStore(tmp_path).put(DATA) == ref
    assert packs(tmp_path) == [pack] and pack.stat().st_mtime_ns == before.st_mtime_ns


def test_empty_blob_is_a_blob(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    assert store.get(store.put(b"")) == b""


def test_staged_blobs_are_invisible_until_committed_and_discard_leaves_nothing(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    kept_writer, dropped_writer = store.writer(), store.writer()
    kept = [kept_writer.add(DATA), kept_writer.add(b"second")]
    dropped = dropped_writer.add(b"dropped")
    kept_writer.close()
    dropped_writer.close()
    assert all(s.pack for s in kept) and kept[0].pack == kept[1].pack, "one writer, one pack"
    assert not store.exists(kept[0].ref) and not store.exists(dropped.ref)
    with pytest.raises(BlobNotFound):
        store.get(kept[0].ref)
    store.commit(kept)
    store.discard([dropped])
    assert store.get(kept[0].ref) == DATA and store.get(kept[1].ref) == b"second" and not store.exists(dropped.ref)
    assert len(packs(tmp_path)) == 1
    again = store.stage(DATA)
    assert again.pack is None and again.ref == kept[0].ref, "a stored blob is not written again"
    store.commit([again])
    assert len(packs(tmp_path)) == 1


def test_a_writer_that_stores_nothing_new_leaves_no_file(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    store.put(DATA)
    writer = store.writer()
    assert writer.add(DATA).pack is None
    writer.close()
    assert len(packs(tmp_path)) == 1


def test_crash_before_the_index_commit_leaves_nothing_visible_and_sweep_removes_the_pack(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = BlobStore(tmp_path)
    staged = store.stage(DATA)  # a writer that then "crashes": never committed, never discarded
    assert not store.exists(staged.ref) and len(packs(tmp_path)) == 1
    assert store.sweep() == 0, "too young: a writer may still be committing it"
    committed = store.put(b"committed long ago")
    old = time.time() - 2 * blobs_module.SWEEP_AFTER_S
    for pack in packs(tmp_path):
        os.utime(pack, (old, old))
    assert store.sweep() == 1
    assert store.get(committed) == b"committed long ago" and not store.exists(staged.ref)
    assert store.put(DATA) == staged.ref and store.get(staged.ref) == DATA, "the next write stores it again"


@pytest.fixture(params=["syncfs", "fsync"])
def sync_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with one ``syncfs`` per commit (Linux) and with the portable fsync-per-path fallback."""
    if request.param == "syncfs" and blob_files._syncfs is None:
        pytest.skip("no syncfs(2) in this C library")
    if request.param == "fsync":
        monkeypatch.setattr(blob_files, "_syncfs", None)
    return str(request.param)


def test_failed_sync_leaves_no_pack_and_no_blob(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                sync_mode: str) -> None:
    store = BlobStore(tmp_path)

    def no_space(*args: object) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    if sync_mode == "syncfs":
        monkeypatch.setattr(blob_files, "_syncfs", no_space)
    with pytest.raises(BlobWriteFailed, match="No space left") as caught:
        store.put_many([DATA, b"second"])
    assert isinstance(caught.value, TransientError)
    assert packs(tmp_path) == []
    assert not store.exists(blob_ref(DATA)) and not store.exists(blob_ref(b"second"))


def test_commit_syncs_the_packs_before_indexing_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     sync_mode: str) -> None:
    """The durability contract: a blob's bytes are synced before its index row exists, and the
    index row is committed (durable, synchronous=FULL) before commit returns."""
    store = BlobStore(tmp_path / "blobs")
    old = store.put(b"stored before")
    payloads = [DATA, b"x" * 100_000, DATA, b"stored before"]
    events: list[tuple[str, list[str], list[bool]]] = []
    real = blob_files.sync

    def watched(root: str, files: list[str]) -> None:
        events.append(("sync", files, [BlobStore(Path(root)).exists(blob_ref(d)) for d in payloads]))
        real(root, files)

    monkeypatch.setattr(blob_files, "sync", watched)
    refs = store.put_many(payloads)
    assert refs == [blob_ref(d) for d in payloads] and [store.get(r) for r in refs] == payloads
    [(_, files, visible)] = events
    assert len(files) == 1 and Path(files[0]).parent == tmp_path / "blobs" / PACKS
    assert visible == [False, False, False, True], "no new blob is indexed before its pack is synced"
    assert refs[3] == old
    with sqlite3.connect(tmp_path / "blobs" / INDEX) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert BlobStore(tmp_path / "blobs")._connection(create=False).execute("PRAGMA synchronous").fetchone() == (2,)


def test_commit_of_blobs_stored_already_still_syncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another writer may have indexed them and not be done syncing: the contract covers them too."""
    store = BlobStore(tmp_path)
    store.put(DATA)
    calls: list[list[str]] = []
    monkeypatch.setattr(blob_files, "sync", lambda root, files: calls.append(files))
    store.put_many([DATA])
    assert calls == [[]]


def test_fsync_fallback_syncs_each_pack_and_the_directories(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not os.path.exists("/proc/self/fd"):
        pytest.skip("names synced descriptors through /proc")
    monkeypatch.setattr(blob_files, "_syncfs", None)
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    store = BlobStore(tmp_path)
    store.put_many([DATA, b"other"])
    [pack] = packs(tmp_path)
    assert [str(pack), str(tmp_path / PACKS), str(tmp_path)] == [s for s in synced if not s.startswith(
        str(tmp_path / INDEX))]


def test_put_many_of_nothing_writes_nothing(tmp_path: Path) -> None:
    assert BlobStore(tmp_path / "never").put_many([]) == []
    assert not (tmp_path / "never").exists()
    assert not BlobStore(tmp_path / "never").exists(blob_ref(DATA)) and not (tmp_path / "never").exists()


def test_unwritable_root_is_a_transient_failure(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"not a directory")
    with pytest.raises(BlobWriteFailed):
        BlobStore(blocker).put(DATA)


def test_a_failed_write_ends_the_pack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = BlobStore(tmp_path)
    writer = store.writer()
    first = writer.add(b"first")

    class Full:
        def __init__(self, handle: object) -> None:
            self.handle = handle

        def write(self, data: bytes) -> int:
            raise OSError(28, "No space left on device")

    writer._file = Full(writer._file)  # type: ignore[assignment]
    with pytest.raises(BlobWriteFailed, match="No space"):
        writer.add(b"second")
    writer._file = writer._file.handle  # type: ignore[union-attr]
    with pytest.raises(BlobWriteFailed, match="No space"):
        writer.add(b"third")
    writer.close()
    store.discard([first])
    assert packs(tmp_path) == []


def test_concurrent_writers_of_the_same_bytes_agree(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    payload = os.urandom(256 * 1024)
    refs: list[str] = []
    threads = [threading.Thread(target=lambda: refs.append(store.put(payload))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(refs)) == 1 and len(refs) == 8
    assert store.get(refs[0]) == payload and BlobStore(tmp_path).get(refs[0]) == payload


def test_get_missing_blob(tmp_path: Path) -> None:
    with pytest.raises(BlobNotFound):
        BlobStore(tmp_path).get(blob_ref(b"never stored"))
    BlobStore(tmp_path).put(DATA)
    with pytest.raises(BlobNotFound):
        BlobStore(tmp_path).get(blob_ref(b"never stored"))


def test_get_detects_corruption(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    ref = store.put(DATA)
    [pack] = packs(tmp_path)
    pack.write_bytes(b"X" + pack.read_bytes()[1:])
    with pytest.raises(BlobError, match="corrupt"):
        store.get(ref)


def test_a_missing_pack_is_a_missing_blob(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    ref = store.put(DATA)
    packs(tmp_path)[0].unlink()
    with pytest.raises(BlobNotFound):
        store.get(ref)


@pytest.mark.parametrize("ref", ["", "sha256:", "md5:" + "0" * 32, "sha256:" + "A" * 64, "sha256:../../etc/passwd"])
def test_malformed_references_are_refused(tmp_path: Path, ref: str) -> None:
    with pytest.raises(BlobError, match="not a blob reference"):
        BlobStore(tmp_path).get(ref)
    with pytest.raises(BlobError, match="not a blob reference"):
        BlobStore(tmp_path).exists(ref)


def test_a_failed_commit_removes_its_packs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = BlobStore(tmp_path)
    writer = store.writer()
    staged = [writer.add(DATA), writer.add(b"other")]
    writer.close()

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(blob_files, "sync", broken)
    with pytest.raises(BlobWriteFailed, match="Input/output error"):
        store.commit(staged)
    assert packs(tmp_path) == [] and not store.exists(staged[0].ref)


def test_staged_crosses_process_boundaries_as_plain_values() -> None:
    import pickle

    staged = Staged("sha256:" + HEX, "p.pack", 10, 20)
    assert pickle.loads(pickle.dumps(staged)) == staged


def test_readers_neither_wait_for_nor_fail_on_a_committing_writer(tmp_path: Path) -> None:
    """Parser processes open the index while the connector commits: they only read (regression:
    a reader that set the journal mode on connect failed with 'database is locked')."""
    store = BlobStore(tmp_path)
    ref = store.put(DATA)
    writer = sqlite3.connect(tmp_path / INDEX, timeout=30.0)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("INSERT INTO packs VALUES ('held.pack', 0)")
    outcomes: list[object] = []

    def read() -> None:
        started = time.monotonic()
        try:
            fresh = BlobStore(tmp_path)
            outcomes.append((fresh.exists(ref), fresh.get(ref) == DATA, fresh.writer().add(DATA).pack,
                             time.monotonic() - started < 1.0))
        except Exception as exc:  # noqa: BLE001 - the assertion below shows what it was
            outcomes.append(exc)

    threads = [threading.Thread(target=read) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    writer.rollback()
    writer.close()
    assert outcomes == [(True, True, None, True)] * 4


def test_a_fresh_store_opened_by_many_writers_and_readers_at_once(tmp_path: Path) -> None:
    """The index is created whole (WAL mode, tables) before anyone can open it (regression: two
    connections switching a just-created index to WAL at once failed with 'database is locked')."""
    for attempt in range(15):
        root = tmp_path / str(attempt)
        barrier = threading.Barrier(8)
        failures: list[BaseException] = []
        refs: list[str] = []

        def write(i: int) -> None:
            try:
                store = BlobStore(root)
                barrier.wait()
                refs.extend(store.put_many([f"blob {i}".encode(), DATA]))
            except BaseException as exc:  # noqa: BLE001 - collected and shown by the assertion
                failures.append(exc)

        def read() -> None:
            try:
                store = BlobStore(root)
                barrier.wait()
                for _ in range(20):
                    store.exists(blob_ref(DATA))
                    store.writer().close()
            except BaseException as exc:  # noqa: BLE001
                failures.append(exc)

        threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
        threads += [threading.Thread(target=read) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert failures == []
        assert all(BlobStore(root).get(ref) for ref in refs) and len(refs) == 8
        with sqlite3.connect(root / INDEX) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_a_shared_writer_puts_many_chunks_in_one_pack_written_out_at_each_flush(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    writer = store.writer(shared=True)
    first = [writer.add(b"chunk 1 mail"), writer.add(b"chunk 1 attachment")]
    writer.flush()
    [pack] = packs(tmp_path)
    assert pack.stat().st_size == len(b"chunk 1 mail") + len(b"chunk 1 attachment"), "flushed, not synced"
    second = [writer.add(b"chunk 2 mail"), writer.add(b"chunk 1 mail")]
    assert second[1] == first[0], "the same bytes are staged once per pack"
    writer.flush()
    assert {s.pack for s in first + second} == {pack.name} and all(s.shared for s in first + second)
    store.commit(first)
    store.discard(second)
    assert packs(tmp_path) == [pack], "discarding a shared writer's blobs leaves its pack: other chunks are in it"
    assert store.get(first[0].ref) == b"chunk 1 mail" and not store.exists(second[0].ref)
    store.commit([writer.add(b"chunk 3")])
    writer.flush()
    assert store.get(blob_ref(b"chunk 3")) == b"chunk 3" and packs(tmp_path) == [pack]


def test_a_shared_writer_starts_a_new_pack_when_old_or_full_never_mid_chunk(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    assert blob_packs.ROTATE_AFTER_S * 4 <= blobs_module.SWEEP_AFTER_S, "a pack taking blobs is never sweepable"
    store = BlobStore(tmp_path)
    writer = store.writer(shared=True)
    now = [1000.0]
    monkeypatch.setattr(blob_packs.time, "monotonic", lambda: now[0])
    writer._opened_at = now[0]
    one = writer.add(b"one")
    now[0] += blob_packs.ROTATE_AFTER_S
    two = writer.add(b"two")
    assert two.pack == one.pack, "a chunk's blobs stay together"
    writer.flush()
    three = writer.add(b"three")
    writer.flush()
    assert three.pack != one.pack, "the next chunk after ROTATE_AFTER_S starts a new pack"
    monkeypatch.setattr(blob_packs, "PACK_MAX_BYTES", 10)
    four = [writer.add(b"four, over ten bytes"), writer.add(b"five")]
    writer.flush()
    six = writer.add(b"six")
    writer.flush()
    assert four[0].pack == four[1].pack == three.pack != six.pack
    store.commit([one, two, three, *four, six])
    assert [store.get(s.ref) for s in (one, two, three, *four, six)] == [
        b"one", b"two", b"three", b"four, over ten bytes", b"five", b"six"]
    assert len(packs(tmp_path)) == 3


def test_a_shared_writer_whose_flush_fails_goes_on_in_a_new_pack(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    store = BlobStore(tmp_path)
    writer = store.writer(shared=True)
    kept = writer.add(b"kept")
    writer.flush()
    lost = writer.add(b"lost")

    def full(self: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(blob_packs.PackWriter, "_flush", full)
    with pytest.raises(BlobWriteFailed, match="No space"):
        writer.flush()
    monkeypatch.undo()
    again = writer.add(b"lost")
    writer.flush()
    assert again.pack not in (None, lost.pack) and kept.pack == lost.pack
    store.commit([kept, again])
    assert store.get(kept.ref) == b"kept" and store.get(again.ref) == b"lost"


def test_a_shared_writer_that_could_not_create_its_pack_tries_a_new_one_next_time(tmp_path: Path,
                                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """EMFILE, EACCES, a full inode table: the failure must not outlive its cause (the writer lives
    as long as its parser process)."""
    store = BlobStore(tmp_path)
    writer = store.writer(shared=True)
    real_open = open

    def no_descriptors(path: object, mode: str = "r", *args: object, **kwargs: object) -> object:
        if str(path).endswith(".pack") and "x" in mode:
            raise OSError(24, "Too many open files")
        return real_open(path, mode, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr("builtins.open", no_descriptors)
    with pytest.raises(BlobWriteFailed, match="Too many open files"):
        writer.add(b"first chunk")
    writer.flush()  # nothing was written: nothing to fail
    monkeypatch.undo()
    staged = writer.add(b"second chunk")
    writer.flush()
    store.commit([staged])
    assert store.get(staged.ref) == b"second chunk"
