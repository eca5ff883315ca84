"""The parse pool's time guard, on real worker processes: a mail over its CPU budget is stopped by
its worker; a parser stuck where no signal reaches it is killed by the pool's wall-clock bound;
either way only that mail is rejected, with its own reason, and the pool goes on."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from frontdesk.messages import InboundMessage
from ingest.imap_parse import ParseJob, Parsed, ParsePool, parse_chunk, wall_bound, wall_reason
from ingest.imap_worker import cpu_reason
from ingest.mail.parse import MailLimits, normalise_mail
from tests.fixtures.mail.corpus import build_corpus

BUDGET_S = 0.2
SPINNER = b"spin in python"  # burns CPU in the interpreter: the CPU budget stops it
SLEEPER = b"sleep"  # blocked, using no CPU: the budget never fires
C_LOOP = b"loop in C"  # burns CPU in C, where the signal handler cannot run
SLOW = b"slow:"  # prefix: sleeps a while, then the rest is parsed as usual
MISBEHAVE_S = 8.0  # each misbehaviour ends by itself after about this long: without the guard a test fails, never hangs
SLOW_S = 2.5  # longer than the stuck mail's wall bound: its kills catch the slow mail twice


def _misbehaving(raw: bytes, **kw: Any) -> tuple[InboundMessage, list[bytes]]:
    if raw == SPINNER:
        end = time.process_time() + MISBEHAVE_S
        while time.process_time() < end:
            pass
    elif raw == SLEEPER:
        time.sleep(MISBEHAVE_S)
    elif raw == C_LOOP:
        sum(range(640_000_000))  # ~8 s here; builtins.sum over a range checks no signals
    elif raw.startswith(SLOW):
        time.sleep(SLOW_S)
        raw = raw[len(SLOW):]
    return normalise_mail(raw, **kw)


def parse_misbehaving(job: ParseJob, mails: list[tuple[int, bytes]]) -> tuple[list[Parsed], int, float]:
    """A worker whose parser misbehaves on the marked mails (importable: it runs in the workers)."""
    return parse_chunk(job, mails, normalise=_misbehaving)


@pytest.fixture(scope="module")
def mails() -> list[tuple[int, bytes]]:
    corpus = [m.raw for m in build_corpus() if not m.limits and not m.rejected and m.raw.strip()]
    return list(enumerate(corpus[:8], 1))


def _job(tmp_path: Path, name: str = "imap:unit", budget_s: float = BUDGET_S) -> ParseJob:
    return ParseJob(name, "email", MailLimits(), str(tmp_path / "blobs"), budget_s)


def _outcome(parsed: list[Parsed]) -> list[tuple[int, bytes, str | None]]:
    return [(p.uid, p.key, p.rejected) for p in parsed]


def test_a_mail_over_its_cpu_budget_is_rejected_and_the_rest_of_its_chunk_parsed(
        mails: list[tuple[int, bytes]], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    job = _job(tmp_path)
    batch = [*mails[:2], (99, SPINNER), *mails[2:4]]
    pool = ParsePool(1, parse=parse_misbehaving)
    try:
        began = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="ingest.imap_parse"):
            parsed = pool.finish(pool.start(job, batch))
        took = time.monotonic() - began
    finally:
        pool.close()
    assert [p.rejected for p in parsed if p.uid == 99] == ["parsing took more than 0.2 s of CPU"]
    assert cpu_reason(BUDGET_S) == "parsing took more than 0.2 s of CPU"
    others = [p for p in parsed if p.uid != 99]
    assert _outcome(others) == _outcome(parse_chunk(job, [m for m in batch if m[0] != 99])[0])
    assert all(p.value and p.rejected is None for p in others), "the rest of the chunk is parsed"
    assert not [r for r in caplog.records if "one at a time" in r.getMessage()], "the worker stopped it: no pool broke"
    assert took < MISBEHAVE_S


@pytest.mark.parametrize("stuck", [SLEEPER, C_LOOP], ids=["sleeping", "looping-in-C"])
def test_a_parser_stuck_beyond_the_signal_is_killed_and_only_its_mail_rejected(
        stuck: bytes, mails: list[tuple[int, bytes]], tmp_path: Path) -> None:
    job = _job(tmp_path)
    batch = [*mails[:3], (99, stuck), *mails[3:6]]
    pool = ParsePool(1, parse=parse_misbehaving)
    try:
        began = time.monotonic()
        parsed = pool.finish(pool.start(job, batch))
        took = time.monotonic() - began
        again = pool.finish(pool.start(job, mails[6:8]))
    finally:
        pool.close()
    assert [p.uid for p in parsed] == [uid for uid, _ in batch]
    assert [p.rejected for p in parsed if p.uid == 99] == [wall_reason(job, wall_bound(job, 1))]
    assert "did not finish within 1.62 s" in wall_reason(job, wall_bound(job, 1))
    others = [p for p in parsed if p.uid != 99]
    assert _outcome(others) == _outcome(parse_chunk(job, [m for m in batch if m[0] != 99])[0])
    assert all(p.value for p in others)
    assert took < MISBEHAVE_S, "killed at the wall bound, not waited for"
    assert _outcome(again) == _outcome(parse_chunk(job, mails[6:8])[0]) and all(p.value for p in again), \
        "the pool recovered"


def test_a_lone_mail_in_a_pool_that_another_caller_kills_is_parsed_again(mails: list[tuple[int, bytes]],
                                                                        tmp_path: Path) -> None:
    stuck_job, slow_job = _job(tmp_path, "imap:stuck"), _job(tmp_path, "imap:slow", budget_s=5.0)
    pool = ParsePool(2, parse=parse_misbehaving)
    results: dict[str, list[Parsed]] = {}

    def run(name: str, job: ParseJob, batch: list[tuple[int, bytes]]) -> None:
        results[name] = pool.finish(pool.start(job, batch))

    try:
        pool.warm()
        threads = [threading.Thread(target=run, args=("stuck", stuck_job, [(1, SLEEPER)])),
                   threading.Thread(target=run, args=("slow", slow_job, [(2, SLOW + mails[0][1])]))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        pool.close()
    assert [p.rejected for p in results["stuck"]] == [wall_reason(stuck_job, wall_bound(stuck_job, 1))]
    slow = results["slow"]
    assert slow[0].rejected is None and slow[0].key == parse_chunk(slow_job, mails[:1])[0][0].key, \
        "killed twice under the stuck mail's kills, and still parsed: not this mail's doing"
