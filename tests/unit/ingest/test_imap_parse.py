"""The parser process pool: same results as parse_mail, total, survives dying workers, leaves none behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from frontdesk.codec import decode
from frontdesk.messages import InboundMessage
from ingest.blobs import PACKS, SWEEP_AFTER_S, BlobStore, PackWriter, blob_ref
from ingest.imap_parse import ParseJob, Parsed, ParsePool, parse_chunk
from ingest.mail.parse import MailLimits, normalise_mail
from tests.fixtures.mail.corpus import build_corpus

KILLER = b"kill the parser"


@pytest.fixture()
def job(tmp_path: Path) -> ParseJob:
    return ParseJob("imap:unit", "email", MailLimits(), str(tmp_path / "blobs"))


def parse_or_die(job: ParseJob, mails: list[tuple[int, bytes]]) -> tuple[list[Parsed], int, float]:
    """A worker that dies (like a segfault or an OOM kill) on the KILLER mail."""
    if any(raw == KILLER for _, raw in mails):
        os._exit(70)
    return parse_chunk(job, mails)


@pytest.fixture(scope="module")
def mails() -> list[tuple[int, bytes]]:
    corpus = [m for m in build_corpus() if not m.limits and m.raw.strip()]
    sample = [m for m in corpus if not m.rejected][:30] + [m for m in corpus if m.rejected][:5]
    sample[3::7] = [m for m in corpus if m.attachments and not m.rejected][: len(sample[3::7])]
    return [(uid, m.raw) for uid, m in enumerate(sample, 1)]


@pytest.mark.parametrize("workers", [0, 2])
def test_the_pool_parses_like_parse_mail_in_order_and_stages_the_blobs(mails: list[tuple[int, bytes]], workers: int,
                                                                      job: ParseJob) -> None:
    pool = ParsePool(workers)
    try:
        pending = pool.start(job, mails)
        parsed = pool.finish(pending)
    finally:
        pool.close()
    store = BlobStore(Path(job.blob_root or ""))
    assert [p.uid for p in parsed] == [uid for uid, _ in mails]
    for (uid, raw), item in zip(mails, parsed, strict=True):
        if item.rejected is not None:
            assert not item.value and not item.staged, uid
            continue
        message = decode(item.value, InboundMessage)
        expected, blobs = normalise_mail(raw, connector=job.connector, channel="email", store=True,
                                         limits=job.limits, received_at=message.received_at)
        assert message == expected and item.key == expected.id.encode()
        assert [s.ref for s in item.staged] == [blob_ref(b) for b in blobs] and message.raw_ref == blob_ref(raw)
        assert not any(store.exists(s.ref) for s in item.staged if s.pack), "staged is not stored"
    assert any(p.rejected for p in parsed) and any(len(p.staged) > 1 for p in parsed), "the sample has both kinds"
    store.commit([s for p in parsed for s in p.staged])
    for (_, raw), item in zip(mails, parsed, strict=True):
        assert item.rejected is not None or store.get(blob_ref(raw)) == raw
    written = {s.pack for p in parsed for s in p.staged if s.pack}
    assert {p.name for p in (Path(job.blob_root or "") / PACKS).iterdir()} == written
    assert (len(written) == 1) if not workers else (1 <= len(written) <= workers < len(pending.chunks)), \
        "one pack per parsing process, however many chunks it parsed"
    assert (pool.cpu_seconds() > 0) == bool(workers)


def test_an_unwritable_blob_store_is_a_store_error_not_a_rejection(mails: list[tuple[int, bytes]],
                                                                   tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"not a directory")
    pool = ParsePool(0)
    parsed = pool.finish(pool.start(ParseJob("imap:unit", "email", MailLimits(), str(tmp_path / "file")), mails[:3]))
    assert all(p.store_error and "cannot store blob" in p.store_error and p.rejected is None for p in parsed)


def test_a_mail_that_kills_its_worker_is_rejected_and_the_others_are_parsed(mails: list[tuple[int, bytes]],
                                                                            job: ParseJob) -> None:
    pool = ParsePool(1, parse=parse_or_die)
    batch = [mails[0], (99, KILLER), *mails[1:6]]
    try:
        parsed = pool.finish(pool.start(job, batch))
        again = pool.finish(pool.start(job, mails[6:9]))
    finally:
        pool.close()
    assert [p.uid for p in parsed] == [uid for uid, _ in batch]
    dead = [p for p in parsed if p.uid == 99]
    assert dead[0].rejected is not None and "parser process died" in dead[0].rejected
    assert all(p.value for p in parsed if p.uid != 99 and p.rejected is None)
    assert len([p for p in parsed if p.value]) == len([p for p in parse_chunk(job, batch[:1] + batch[2:])[0] if p.value])
    assert [p.uid for p in again] == [uid for uid, _ in mails[6:9]], "a fresh pool took over"


def test_abandoned_mails_are_not_all_parsed_and_what_was_is_returned(mails: list[tuple[int, bytes]],
                                                                     job: ParseJob) -> None:
    pool = ParsePool(1)
    try:
        pool.warm()
        pending = pool.start(job, mails * 5)
        parsed = pool.abandon(pending)
        assert any(future.cancelled() for _, future in pending.tasks)
        assert len(parsed) < len(mails) * 5 and all(p.staged or p.rejected for p in parsed)
        store = BlobStore(Path(job.blob_root or ""))
        store.discard(s for p in parsed for s in p.staged)
        assert not any(store.exists(s.ref) for p in parsed for s in p.staged), "the caller can discard what was staged"
    finally:
        pool.close()
    folder = Path(job.blob_root or "") / PACKS
    packs = list(folder.iterdir()) if folder.exists() else []  # none if no chunk had started
    old = time.time() - 2 * SWEEP_AFTER_S
    for pack in packs:
        os.utime(pack, (old, old))
    assert store.sweep() == len(packs) and not (folder.exists() and list(folder.iterdir())), \
        "the discarded bytes go with the next sweep"


def test_a_chunk_whose_pack_cannot_be_written_out_is_a_store_error(mails: list[tuple[int, bytes]], job: ParseJob,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def full(self: PackWriter) -> None:
        raise OSError(28, "No space left on device")

    first, _, _ = parse_chunk(job, mails[:4])
    monkeypatch.setattr(PackWriter, "_flush", full)
    failed, _, _ = parse_chunk(job, mails[4:8])
    monkeypatch.undo()
    after, _, _ = parse_chunk(job, mails[8:12])
    assert not any(p.store_error for p in first + after)
    assert all(p.store_error and "No space" in p.store_error for p in failed if p.rejected is None)
    assert {s.pack for p in after for s in p.staged if s.pack}.isdisjoint(
        {s.pack for p in failed for s in p.staged if s.pack}), "after a failed write, a new pack"
    store = BlobStore(Path(job.blob_root or ""))
    store.commit([s for p in first + after for s in p.staged])
    assert all(store.get(s.ref) for p in first + after for s in p.staged)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process tree from /proc")
def test_workers_exit_when_their_owner_is_killed(tmp_path: Path) -> None:
    script = tmp_path / "owner.py"
    script.write_text(textwrap.dedent("""
        import sys, time
        from ingest.imap_parse import ParsePool
        if __name__ == "__main__":
            pool = ParsePool(2)
            pool.warm()
            print("ready", flush=True)
            time.sleep(60)
    """))
    owner = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                             cwd=Path(__file__).resolve().parents[3])
    try:
        assert owner.stdout is not None and owner.stdout.readline().strip() == "ready"
        family = _descendants(owner.pid)
        assert len(family) >= 3, "forkserver and two workers"
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and [pid for pid in family if _alive(pid)]:
            time.sleep(0.1)
        assert [pid for pid in family if _alive(pid)] == []
    finally:
        if owner.poll() is None:
            owner.kill()


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
