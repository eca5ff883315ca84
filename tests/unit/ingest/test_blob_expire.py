"""Blob retention: old blobs erased (bytes too), blobs stored again kept, crashes at every step safe."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest

import ingest.blob_expire as blob_expire
import ingest.blobs as blobs_module
from frontdesk.errors import ConfigError
from ingest.blobs import INDEX, PACKS, BlobError, BlobNotFound, BlobStore, BlobWriteFailed, blob_ref

DAY = 86_400.0
PASSPORT, STATEMENT, LOGO = b"%PDF passport scan " * 50, b"%PDF bank statement " * 40, b"\x89PNG logo" * 30


class Clock:
    """``time.time`` of the blob store, moved by hand (retention is measured in days)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = 1_700_000_000.0
        monkeypatch.setattr(blobs_module.time, "time", lambda: self.now)


def on_disk(root: Path) -> bytes:
    """Every byte of every pack: what an erasure must have removed."""
    return b"".join(p.read_bytes() for p in sorted((root / PACKS).glob("*"))) if (root / PACKS).exists() else b""


def rows(root: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(root / INDEX) as conn:
        return conn.execute(sql).fetchall()


def test_blobs_older_than_the_retention_are_erased_and_younger_ones_kept(tmp_path: Path, monkeypatch) -> None:
    clock, store = Clock(monkeypatch), BlobStore(tmp_path)
    old = store.put_many([PASSPORT, STATEMENT])
    clock.now += 20 * DAY
    young = store.put(LOGO)
    report = store.expire(30 * DAY, now=clock.now + 15 * DAY)
    assert (report.blobs, report.bytes, report.packs_deleted, report.packs_compacted) == (
        2, len(PASSPORT) + len(STATEMENT), 1, 0)
    for ref in old:
        with pytest.raises(BlobNotFound):
            store.get(ref)
        assert not store.exists(ref)
    assert store.get(young) == LOGO
    assert PASSPORT not in on_disk(tmp_path) and STATEMENT not in on_disk(tmp_path), "the bytes are gone too"
    assert rows(tmp_path, "SELECT COUNT(*) FROM packs") == [(1,)]
    assert store.expire(30 * DAY, now=clock.now + 15 * DAY) == blob_expire.ExpireReport(), "idempotent"


def test_a_blob_stored_again_is_young_again_and_its_old_pack_is_compacted(tmp_path: Path, monkeypatch) -> None:
    """The logo came with the passport, then again in a later mail (deduplicated: nothing written)."""
    clock, store = Clock(monkeypatch), BlobStore(tmp_path)
    store.put_many([PASSPORT, LOGO])
    clock.now += 25 * DAY
    assert store.put(LOGO) == blob_ref(LOGO)
    assert len(list((tmp_path / PACKS).glob("*"))) == 1, "stored again: nothing written"
    report = store.expire(30 * DAY, now=clock.now + 10 * DAY)
    assert (report.blobs, report.packs_compacted, report.bytes_copied) == (1, 1, len(LOGO))
    assert store.get(blob_ref(LOGO)) == LOGO
    assert PASSPORT not in on_disk(tmp_path), "the passport is not kept alive by the logo beside it"
    with pytest.raises(BlobNotFound):
        store.get(blob_ref(PASSPORT))
    later = store.expire(30 * DAY, now=clock.now + 31 * DAY)
    assert (later.blobs, later.packs_deleted) == (1, 1) and on_disk(tmp_path) == b"", "then the logo expires too"


def test_a_dry_run_changes_nothing(tmp_path: Path, monkeypatch) -> None:
    clock, store = Clock(monkeypatch), BlobStore(tmp_path)
    ref = store.put(PASSPORT)
    report = store.expire(DAY, now=clock.now + 2 * DAY, dry_run=True)
    assert (report.blobs, report.bytes) == (1, len(PASSPORT)) and store.get(ref) == PASSPORT


def test_a_retention_under_a_day_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least 1 day"):
        BlobStore(tmp_path).expire(3600)


def test_a_blob_that_expires_between_the_dedup_check_and_the_commit_is_refused_then_stored_anew(
        tmp_path: Path, monkeypatch) -> None:
    clock, store = Clock(monkeypatch), BlobStore(tmp_path)
    store.put(PASSPORT)
    clock.now += 40 * DAY
    writer = store.writer()
    staged = writer.add(PASSPORT)
    writer.close()
    assert staged.pack is None, "found stored: nothing written"
    store.expire(30 * DAY)
    with pytest.raises(BlobWriteFailed, match="expired while it was being stored again"):
        store.commit([staged])
    assert store.put(PASSPORT) == blob_ref(PASSPORT) and store.get(blob_ref(PASSPORT)) == PASSPORT, "the retry"


def test_a_failed_commit_with_an_expired_duplicate_indexes_none_of_its_blobs(tmp_path: Path, monkeypatch) -> None:
    clock, store = Clock(monkeypatch), BlobStore(tmp_path)
    store.put(PASSPORT)
    clock.now += 40 * DAY
    writer = store.writer()
    staged = [writer.add(PASSPORT), writer.add(STATEMENT)]
    writer.close()
    store.expire(30 * DAY)
    with pytest.raises(BlobWriteFailed):
        store.commit(staged)
    assert not store.exists(blob_ref(STATEMENT)) and on_disk(tmp_path) == b"", "all or nothing, its pack removed"


def test_a_crash_before_compaction_is_indexed_leaves_the_old_pack_whole_and_the_copy_to_sweep(
        tmp_path: Path, monkeypatch) -> None:
    clock, store = Clock(monkeypatch), BlobStore(tmp_path)
    store.put_many([PASSPORT, LOGO])
    clock.now += 25 * DAY
    store.put(LOGO)

    def crash(root: str, files: list[str]) -> None:
        raise OSError("power cut")

    monkeypatch.setattr(blob_expire.blob_files, "sync", crash)
    with pytest.raises(BlobError, match="power cut"):
        store.expire(30 * DAY, now=clock.now + 10 * DAY)
    monkeypatch.undo()
    assert store.get(blob_ref(LOGO)) == LOGO, "still read from the old pack"
    committed = {r[0] for r in rows(tmp_path, "SELECT name FROM packs")}
    assert len({p.name for p in (tmp_path / PACKS).glob("*")} - committed) == 1, "the copy: unindexed"
    assert store.sweep(older_than_s=0) == 1
    report = store.expire(30 * DAY, now=clock.now + 10 * DAY)
    assert report.packs_compacted == 1 and store.get(blob_ref(LOGO)) == LOGO and PASSPORT not in on_disk(tmp_path)


def test_a_crash_after_compaction_is_indexed_leaves_an_old_pack_the_next_run_deletes(
        tmp_path: Path, monkeypatch) -> None:
    clock, store = Clock(monkeypatch), BlobStore(tmp_path)
    store.put_many([PASSPORT, LOGO])
    clock.now += 25 * DAY
    store.put(LOGO)
    real_delete = blob_expire._delete_pack
    monkeypatch.setattr(blob_expire, "_delete_pack", lambda *a: (_ for _ in ()).throw(OSError("killed")))
    with pytest.raises(BlobError):
        store.expire(30 * DAY, now=clock.now + 10 * DAY)
    monkeypatch.setattr(blob_expire, "_delete_pack", real_delete)
    assert store.get(blob_ref(LOGO)) == LOGO, "read from the copy"
    report = store.expire(30 * DAY, now=clock.now + 10 * DAY)
    assert report.packs_deleted == 1 and PASSPORT not in on_disk(tmp_path) and store.get(blob_ref(LOGO)) == LOGO


def test_a_reader_that_looked_up_a_pack_compacted_since_looks_again(tmp_path: Path, monkeypatch) -> None:
    clock, store = Clock(monkeypatch), BlobStore(tmp_path)
    store.put_many([PASSPORT, LOGO])
    clock.now += 25 * DAY
    store.put(LOGO)
    stale = store._lookup(hashlib.sha256(LOGO).hexdigest())
    store.expire(30 * DAY, now=clock.now + 10 * DAY)
    real, calls = store._lookup, []

    def lookup(digest: str):
        calls.append(digest)
        return stale if len(calls) == 1 else real(digest)

    monkeypatch.setattr(store, "_lookup", lookup)
    assert store.get(blob_ref(LOGO)) == LOGO and len(calls) == 2


def test_a_corrupt_or_missing_pack_is_dropped_not_fatal(tmp_path: Path, monkeypatch) -> None:
    clock, store = Clock(monkeypatch), BlobStore(tmp_path)
    store.put_many([PASSPORT, LOGO])
    store.put(STATEMENT)
    clock.now += 25 * DAY
    store.put_many([LOGO, STATEMENT])
    first, second = sorted((tmp_path / PACKS).glob("*"))
    data = bytearray(first.read_bytes())
    data[-1] ^= 0xFF  # the logo, last in the first pack
    first.write_bytes(bytes(data))
    second.unlink()
    report = store.expire(30 * DAY, now=clock.now + 10 * DAY)
    assert report.packs_compacted == 2 and report.bytes_copied == 0
    assert not store.exists(blob_ref(LOGO)) and not store.exists(blob_ref(STATEMENT))
    assert rows(tmp_path, "SELECT COUNT(*) FROM blobs") == [(0,)] and on_disk(tmp_path) == b""


def test_blobs_of_the_earlier_file_layout_expire_by_their_last_store(tmp_path: Path, monkeypatch) -> None:
    clock, store = Clock(monkeypatch), BlobStore(tmp_path)
    store.put(LOGO)  # an index exists
    paths = {}
    for data in (PASSPORT, STATEMENT):
        digest = hashlib.sha256(data).hexdigest()
        paths[data] = tmp_path / digest[:2] / digest
        paths[data].parent.mkdir(exist_ok=True)
        paths[data].write_bytes(data)
        os.utime(paths[data], (clock.now - 40 * DAY, clock.now - 40 * DAY))
    store._legacy = None
    store.put(STATEMENT)  # stored again: touched, not copied
    report = store.expire(30 * DAY, now=clock.now)
    assert report.legacy_files == 1 and not paths[PASSPORT].exists() and store.get(blob_ref(STATEMENT)) == STATEMENT


def test_an_index_made_before_retention_gets_its_table_when_a_blob_is_stored_again(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    store.put(PASSPORT)
    with sqlite3.connect(tmp_path / INDEX) as conn:
        conn.execute("DROP TABLE seen")
    store2 = BlobStore(tmp_path)
    assert store2.put(PASSPORT) == blob_ref(PASSPORT)
    assert rows(tmp_path, "SELECT COUNT(*) FROM seen") == [(1,)]


def test_one_expiry_at_a_time(tmp_path: Path, monkeypatch) -> None:
    clock, store = Clock(monkeypatch), BlobStore(tmp_path)
    store.put(PASSPORT)
    entered, release = threading.Event(), threading.Event()
    real = blob_expire._delete_rows

    def slow(*args):
        entered.set()
        release.wait(10)
        return real(*args)

    monkeypatch.setattr(blob_expire, "_delete_rows", slow)
    first = threading.Thread(target=store.expire, args=(30 * DAY,), kwargs={"now": clock.now})
    first.start()
    assert entered.wait(10)
    with pytest.raises(BlobError, match="another blob expiry is running"):
        BlobStore(tmp_path).expire(30 * DAY, now=clock.now)
    release.set()
    first.join(10)


def test_expiry_while_writers_store_never_loses_a_blob_just_stored(tmp_path: Path) -> None:
    """Two writers store a unique blob (which then ages) and re-store eight shared ones, reading each
    back at once, while expiries with a 2-second retention (``now`` shifted) erase and compact:
    a blob read back right after its put returned is always there."""
    store, stop, failures, done = BlobStore(tmp_path), threading.Event(), [], []
    shared = [b"shared %d " % i * 100 for i in range(8)]

    def writer(n: int) -> None:
        local, i = BlobStore(tmp_path), 0
        while not stop.is_set():
            i += 1
            for data in (b"unique %d %d " % (n, i) * 50, *shared):
                try:
                    ref = local.put(data)
                except BlobWriteFailed:
                    continue  # expired between the dedup check and the commit: the caller retries
                try:
                    assert local.get(ref) == data
                    done.append(ref)
                except (BlobError, AssertionError) as exc:
                    failures.append(repr(exc))

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    totals = [0, 0]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        report = store.expire(DAY, now=time.time() + DAY - 2.0)
        totals[0] += report.blobs
        totals[1] += report.packs_compacted + report.packs_deleted
        time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join(10)
    assert done and not failures, failures[:3]
    assert totals[0] > 0 and totals[1] > 0, "blobs were erased and packs removed while writers wrote"
    for data in shared:
        assert store.get(blob_ref(data)) == data


def test_the_blobs_commands_read_and_expire_the_configured_store(tmp_path: Path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from frontdesk.cli import app

    clock, root = Clock(monkeypatch), tmp_path / "var" / "blobs"
    ref = BlobStore(root).put(PASSPORT)
    env = {"FRONTDESK_STORAGE_DATA_DIR": str(tmp_path / "var")}
    runner = CliRunner()
    got = runner.invoke(app, ["blobs", "get", ref, "--out", str(tmp_path / "scan.pdf")], env=env)
    assert got.exit_code == 0 and (tmp_path / "scan.pdf").read_bytes() == PASSPORT
    assert runner.invoke(app, ["blobs", "get", ref], env=env).stdout_bytes == PASSPORT
    missing = runner.invoke(app, ["blobs", "get", blob_ref(b"never")], env=env)
    assert missing.exit_code == 1 and "never stored, or expired" in missing.output
    assert runner.invoke(app, ["blobs", "get", "../../etc/passwd"], env=env).exit_code == 1
    unset = runner.invoke(app, ["blobs", "expire"], env=env)
    assert unset.exit_code == 2 and "no retention" in unset.output
    assert runner.invoke(app, ["blobs", "expire", "--older-than-days", "0.5"], env=env).exit_code == 2
    kept = runner.invoke(app, ["blobs", "expire"], env={**env, "FRONTDESK_STORAGE_BLOB_RETENTION_DAYS": "30"})
    assert kept.exit_code == 0 and "erased 0 blob(s)" in kept.output and BlobStore(root).get(ref) == PASSPORT
    clock.now += 31 * DAY
    dry = runner.invoke(app, ["blobs", "expire", "--older-than-days", "30", "--dry-run"], env=env)
    assert "would erase 1 blob(s)" in dry.output and BlobStore(root).exists(ref)
    done = runner.invoke(app, ["blobs", "expire", "--older-than-days", "30"], env=env)
    assert done.exit_code == 0 and "erased 1 blob(s)" in done.output and not BlobStore(root).exists(ref)


def test_the_retention_stage_of_frontdesk_run_expires_at_start_and_survives_failures(tmp_path: Path,
                                                                                     monkeypatch) -> None:
    from ingest.commands import retention_stage

    clock, store = Clock(monkeypatch), BlobStore(tmp_path)
    ref = store.put(PASSPORT)
    clock.now += 40 * DAY
    calls: list[float] = []
    real = blob_expire.expire

    def flaky(store_: BlobStore, older_than_s: float, **kw):
        calls.append(older_than_s)
        if len(calls) == 1:
            raise BlobError("another blob expiry is running")
        return real(store_, older_than_s, **kw)

    monkeypatch.setattr(blob_expire, "expire", flaky)
    monkeypatch.setattr("ingest.commands.RETENTION_RETRY_S", 0.05)
    stop = threading.Event()
    thread = threading.Thread(target=retention_stage(tmp_path, 30), args=(stop,))
    thread.start()
    deadline = time.monotonic() + 10
    while store.exists(ref) and time.monotonic() < deadline:
        time.sleep(0.02)
    stop.set()
    thread.join(5)
    assert not store.exists(ref) and calls[:2] == [30 * DAY, 30 * DAY], "failed once, retried, erased"
    assert not thread.is_alive(), "stops when told, not a day later"
