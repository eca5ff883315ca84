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
from ingest.blobs import blob_ref
from ingest.imap_parse import ParseJob, Parsed, ParsePool, parse_chunk
from ingest.mail.parse import MailLimits, normalise_mail
from tests.fixtures.mail.corpus import build_corpus

JOB = ParseJob("imap:unit", "email", MailLimits(), store=True)
KILLER = b"kill the parser"


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
def test_the_pool_parses_like_parse_mail_in_order(mails: list[tuple[int, bytes]], workers: int) -> None:
    pool = ParsePool(workers)
    try:
        parsed = pool.finish(pool.start(JOB, mails))
    finally:
        pool.close()
    assert [p.uid for p in parsed] == [uid for uid, _ in mails]
    for (uid, raw), item in zip(mails, parsed, strict=True):
        if item.rejected is not None:
            assert not item.value and not item.blobs, uid
            continue
        message = decode(item.value, InboundMessage)
        expected, blobs = normalise_mail(raw, connector=JOB.connector, channel="email", store=True,
                                         limits=JOB.limits, received_at=message.received_at)
        assert message == expected and item.key == expected.id.encode()
        assert message.raw_ref == blob_ref(raw) and list(item.blobs) == blobs[1:], "raw is not sent back"
        assert {a.stored_at for a in message.attachments if a.stored_at} == {blob_ref(b) for b in item.blobs}
    assert any(p.rejected for p in parsed) and any(p.blobs for p in parsed), "the sample has both kinds"
    assert (pool.cpu_seconds() > 0) == bool(workers)


def test_a_mail_that_kills_its_worker_is_rejected_and_the_others_are_parsed(mails: list[tuple[int, bytes]]) -> None:
    pool = ParsePool(1, parse=parse_or_die)
    batch = [mails[0], (99, KILLER), *mails[1:6]]
    try:
        parsed = pool.finish(pool.start(JOB, batch))
        again = pool.finish(pool.start(JOB, mails[6:9]))
    finally:
        pool.close()
    assert [p.uid for p in parsed] == [uid for uid, _ in batch]
    dead = [p for p in parsed if p.uid == 99]
    assert dead[0].rejected is not None and "parser process died" in dead[0].rejected
    assert all(p.value for p in parsed if p.uid != 99 and p.rejected is None)
    assert len([p for p in parsed if p.value]) == len([p for p in parse_chunk(JOB, batch[:1] + batch[2:])[0] if p.value])
    assert [p.uid for p in again] == [uid for uid, _ in mails[6:9]], "a fresh pool took over"


def test_cancelled_chunks_are_not_parsed(mails: list[tuple[int, bytes]]) -> None:
    pool = ParsePool(1)
    try:
        pool.warm()
        pending = pool.start(JOB, mails * 5)
        pool.cancel(pending)
        assert any(future.cancelled() for _, future in pending.tasks)
    finally:
        pool.close()


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
