"""The content-addressed blob store: layout, idempotence, atomicity, integrity."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

import ingest.blobs as blobs_module
from frontdesk.errors import TransientError
from ingest.blobs import BlobError, BlobNotFound, BlobStore, BlobWriteFailed, blob_ref

DATA = b"%PDF-1.4 statement \x00\xff"
HEX = hashlib.sha256(DATA).hexdigest()


def test_put_returns_sha256_reference_and_lays_out_by_prefix(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    ref = store.put(DATA)
    assert ref == f"sha256:{HEX}" == blob_ref(DATA)
    assert store.path(ref) == tmp_path / "blobs" / HEX[:2] / HEX
    assert store.path(ref).read_bytes() == DATA
    assert store.get(ref) == DATA
    assert store.exists(ref)


def test_blobs_of_the_two_level_layout_are_still_found_and_not_written_again(tmp_path: Path) -> None:
    legacy = tmp_path / HEX[:2] / HEX[2:4] / HEX
    legacy.parent.mkdir(parents=True)
    legacy.write_bytes(DATA)
    store = BlobStore(tmp_path)
    assert store.exists(blob_ref(DATA)) and store.get(blob_ref(DATA)) == DATA
    assert store.put_many([DATA]) == [blob_ref(DATA)]
    assert not store.path(blob_ref(DATA)).exists(), "the legacy copy is used, not duplicated"
    legacy.write_bytes(b"tampered")
    with pytest.raises(BlobError, match="corrupt"):
        store.get(blob_ref(DATA))


def test_put_is_idempotent_and_does_not_rewrite(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    ref = store.put(DATA)
    before = store.path(ref).stat()
    assert store.put(DATA) == ref
    after = store.path(ref).stat()
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)
    assert [p.name for p in store.path(ref).parent.iterdir()] == [HEX]


def test_empty_blob_is_a_blob(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    assert store.get(store.put(b"")) == b""


def test_crash_before_rename_leaves_nothing_visible(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = BlobStore(tmp_path)

    def killed(src: str, dst: str) -> None:
        raise OSError("killed before rename")

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(BlobWriteFailed) as caught:
        store.put(DATA)
    assert isinstance(caught.value, TransientError)
    assert not store.exists(blob_ref(DATA))
    assert list(store.path(blob_ref(DATA)).parent.iterdir()) == []  # the temp file is gone too


@pytest.fixture(params=["syncfs", "fsync"])
def sync_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with one ``syncfs`` per step (Linux) and with the portable fsync-per-path fallback."""
    if request.param == "syncfs" and blobs_module._syncfs is None:
        pytest.skip("no syncfs(2) in this C library")
    if request.param == "fsync":
        monkeypatch.setattr(blobs_module, "_syncfs", None)
    return str(request.param)


def test_failed_sync_leaves_no_temp_file_and_no_blob(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     sync_mode: str) -> None:
    store = BlobStore(tmp_path)

    def no_space(*args: object) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    if sync_mode == "syncfs":
        monkeypatch.setattr(blobs_module, "_syncfs", no_space)
    with pytest.raises(BlobWriteFailed, match="No space left"):
        store.put_many([DATA, b"second"])
    assert list(store.path(blob_ref(DATA)).parent.iterdir()) == []
    assert not store.exists(blob_ref(b"second"))


def test_put_many_syncs_files_before_renaming_then_every_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  sync_mode: str) -> None:
    """The durability contract: content is durable before a blob gets its name, and the names
    (also of blobs that were already there) are durable before put_many returns."""
    store = BlobStore(tmp_path / "blobs")
    old = store.put(b"stored before")
    payloads = [DATA, b"x" * 100_000, DATA, b"stored before"]
    events: list[tuple[str, list[Path]]] = []
    real = blobs_module._sync_files

    def watched(root: str, paths: list[str], *, directories: bool = False) -> None:
        visible = [p for p in (store.path(blob_ref(d)) for d in payloads) if p.exists()]
        events.append(("dirs" if directories else "files", [Path(p) for p in paths]))
        events.append(("visible", visible))
        real(root, paths, directories=directories)

    monkeypatch.setattr(blobs_module, "_sync_files", watched)
    refs = store.put_many(payloads)
    assert refs == [blob_ref(d) for d in payloads]
    assert [store.get(ref) for ref in refs] == payloads
    (kind1, files), (_, visible1), (kind2, dirs), (_, visible2) = events
    assert kind1 == "files" and len(files) == 2 and all(p.name.startswith(".tmp-") for p in files)
    assert visible1 == [store.path(old)], "no new blob has its name before its content is synced"
    assert kind2 == "dirs" and len(visible2) == 4
    for ref in refs:
        assert {store.path(ref).parent, store.path(ref).parent.parent} <= set(dirs), ref
    assert not list((tmp_path / "blobs").rglob(".tmp-*"))


def test_put_many_fsyncs_each_file_and_directory_without_syncfs(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blobs_module, "_syncfs", None)
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd") else str(fd))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    store = BlobStore(tmp_path)
    refs = store.put_many([DATA, b"other"])
    if not os.path.exists("/proc/self/fd"):
        assert len(synced) >= 2 + 3
        return
    files = [s for s in synced if ".tmp-" in s]
    assert len(files) == 2, synced
    for ref in refs:
        assert str(store.path(ref).parent) in synced and str(store.path(ref).parent.parent) in synced


def test_put_many_of_nothing_writes_nothing(tmp_path: Path) -> None:
    assert BlobStore(tmp_path / "never").put_many([]) == []
    assert not (tmp_path / "never").exists()


def test_unwritable_root_is_a_transient_failure(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"not a directory")
    with pytest.raises(BlobWriteFailed):
        BlobStore(blocker).put(DATA)


def test_concurrent_writers_of_the_same_bytes_agree(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    payload = os.urandom(256 * 1024)
    refs: list[str] = []
    threads = [threading.Thread(target=lambda: refs.append(store.put(payload))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(refs)) == 1
    assert store.get(refs[0]) == payload
    assert [p.name for p in store.path(refs[0]).parent.iterdir()] == [refs[0].removeprefix("sha256:")]


def test_get_missing_blob(tmp_path: Path) -> None:
    with pytest.raises(BlobNotFound):
        BlobStore(tmp_path).get(blob_ref(b"never stored"))


def test_get_detects_corruption(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    ref = store.put(DATA)
    store.path(ref).write_bytes(b"tampered")
    with pytest.raises(BlobError, match="corrupt"):
        store.get(ref)


@pytest.mark.parametrize("ref", ["", "sha256:", "md5:" + "0" * 32, "sha256:" + "A" * 64, "sha256:../../etc/passwd"])
def test_malformed_references_are_refused(tmp_path: Path, ref: str) -> None:
    with pytest.raises(BlobError, match="not a blob reference"):
        BlobStore(tmp_path).path(ref)


def test_staged_blobs_are_invisible_until_committed_and_discard_leaves_nothing(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    kept, dropped = store.stage(DATA), store.stage(b"dropped")
    assert kept.temp is not None and Path(kept.temp).read_bytes() == DATA
    assert not store.exists(kept.ref) and not store.exists(dropped.ref)
    store.commit([kept])
    store.discard([dropped])
    assert store.get(kept.ref) == DATA and not store.exists(dropped.ref)
    assert not list(tmp_path.rglob(".tmp-*"))
    again = store.stage(DATA)
    assert again.temp is None and again.ref == kept.ref, "a stored blob is not written again"
    store.commit([again])


def test_a_failed_commit_removes_its_temporary_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = BlobStore(tmp_path)
    staged = [store.stage(DATA), store.stage(b"other")]

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(blobs_module, "_sync_files", broken)
    with pytest.raises(BlobWriteFailed, match="Input/output error"):
        store.commit(staged)
    assert not list(tmp_path.rglob(".tmp-*")) and not store.exists(staged[0].ref)
