"""Consumer groups of the embedded bus across processes sharing one file.

A partition changes hands only once its owner released it (at its next poll, when what that member
polled before was committed or abandoned) or is dead (its process gone, or no heartbeat for the
session timeout); a commit on a partition the member no longer owns raises CommitFailed and moves
nothing. Kafka's group protocol gives these guarantees on the broker; here the members are real
processes (``bus_child.py member`` / ``consume``) and the test process.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest

from frontdesk.bus.base import Outgoing
from frontdesk.bus.sqlite import SqliteBus
from frontdesk.errors import CommitFailed

CHILD = Path(__file__).with_name("bus_child.py")
TOPIC = "t"
Position = tuple[int, int]


class Member:
    """A member of ``group`` in a child process: the batches it got, each with when its poll returned."""

    def __init__(self, path: Path, group: str, *, seconds: float, batch: int, pause: float,
                 session_timeout: float = 30.0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(CHILD), f"sqlite:{path}", "member", TOPIC, group,
             str(seconds), str(batch), str(pause)],
            stdout=subprocess.PIPE, text=True, env={**os.environ, "BUS_SESSION_TIMEOUT_S": str(session_timeout)})
        self.batches: list[tuple[float, list[Position]]] = []
        self.done = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("got "):
                _, when, rest = line.split(" ", 2)
                self.batches.append((float(when), [(p, o) for p, o in json.loads(rest)]))
        self.done.set()

    def got(self) -> list[Position]:
        return [pos for _, batch in list(self.batches) for pos in batch]

    def finish(self) -> None:
        assert self.proc.wait(timeout=60) == 0
        self._reader.join(timeout=10)


def sql(path: Path, query: str, *args: object) -> list[tuple]:  # type: ignore[type-arg]
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute(query, args).fetchall()


def committed(path: Path, group: str) -> dict[int, int]:
    return dict(sql(path, "SELECT partition, next_offset FROM offsets WHERE grp=?", group))  # type: ignore[arg-type]


def wait_for(condition: Callable[[], object], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def make_bus(path: Path, records: int, session_timeout: float = 30.0) -> SqliteBus:
    bus = SqliteBus(path, partitions=4, session_timeout=session_timeout)
    bus.ensure_topics([TOPIC])
    publish(bus, 0, records)
    return bus


def publish(bus: SqliteBus, start: int, n: int) -> None:
    bus.publish([Outgoing(TOPIC, f"v{i}".encode(), f"k{i}".encode()) for i in range(start, start + n)])


def everything(bus: SqliteBus) -> set[Position]:
    return {(p, o) for p, end in bus.end_offsets(TOPIC).items() for o in range(end)}


def test_a_member_joining_while_another_holds_a_batch_gets_partitions_only_after_that_batch(tmp_path: Path) -> None:
    path = tmp_path / "bus.sqlite3"
    bus = make_bus(path, 400)
    a = bus.consumer("g", [TOPIC])
    held = a.poll(max_records=400, timeout=5)
    assert {r.partition for r in held} == {0, 1, 2, 3}
    b = Member(path, "g", seconds=8, batch=20, pause=0.05)
    wait_for(lambda: sql(path, "SELECT COUNT(*) FROM members WHERE grp='g'") == [(2,)])
    publish(bus, 400, 400)
    time.sleep(2.0)  # B polls and heartbeats meanwhile
    assert b.got() == [], "a partition changed hands while its owner was processing a batch from it"

    a.commit(held)  # still the owner: accepted
    committed_at = time.time()
    a_got = [(r.partition, r.offset) for r in held]
    stale_refused = False
    deadline = time.monotonic() + 60
    while not (b.done.is_set() and set(a_got) | set(b.got()) == everything(bus)):
        assert time.monotonic() < deadline, "records missing"
        batch = a.poll(max_records=20, timeout=0.2)  # releases B's share: everything A polled is committed
        a.commit(batch)
        a_got += [(r.partition, r.offset) for r in batch]
        if b.got() and not stale_refused:
            taken = {p for p, _ in b.got()}
            with pytest.raises(CommitFailed):
                a.commit([r for r in held if r.partition in taken])
            stale_refused = True
    b.finish()
    a.close()

    assert stale_refused and b.got(), "B never got its share"
    assert min(when for when, _ in b.batches) > committed_at
    assert not set(a_got) & set(b.got()), "records processed by both members"
    assert len(a_got) + len(b.got()) == len(everything(bus)) == 800


def test_a_member_silent_for_the_session_timeout_loses_its_partitions_and_its_late_commit_moves_nothing(
        tmp_path: Path) -> None:
    path, timeout = tmp_path / "bus.sqlite3", 2.0
    bus = make_bus(path, 400, session_timeout=timeout)
    a = bus.consumer("g", [TOPIC])
    held = a.poll(max_records=400, timeout=5)  # then A hangs: no poll, no heartbeat
    [(last_beat,)] = sql(path, "SELECT heartbeat FROM members WHERE grp='g'")
    b = Member(path, "g", seconds=6, batch=10, pause=0.3, session_timeout=timeout)
    wait_for(lambda: b.got())
    assert last_beat + timeout < b.batches[0][0] < last_beat + timeout + 5.0, "taken over before A was dead"

    with pytest.raises(CommitFailed):
        a.commit(held)
    ends = bus.end_offsets(TOPIC)
    assert all(offset < ends[p] for p, offset in committed(path, "g").items()), "the late commit moved offsets"

    a_after: list[Position] = []
    deadline = time.monotonic() + 60
    while not (b.done.is_set() and set(a_after) | set(b.got()) == everything(bus)):
        assert time.monotonic() < deadline, "records missing"
        batch = a.poll(max_records=20, timeout=0.2)  # A rejoins; B hands over a share at its next poll
        a.commit(batch)
        a_after += [(r.partition, r.offset) for r in batch]
    b.finish()
    a.close()
    assert a_after, "A never rejoined"
    assert not set(a_after) & set(b.got()), "records processed by both members after A rejoined"


@pytest.mark.parametrize("reaped", [False, True], ids=["zombie", "reaped"])
def test_a_member_killed_mid_batch_has_its_partitions_taken_over_once_it_is_dead(tmp_path: Path, reaped: bool) -> None:
    path, timeout = tmp_path / "bus.sqlite3", 10.0 if reaped else 3.0
    bus = make_bus(path, 400, session_timeout=timeout)
    proc = subprocess.Popen([sys.executable, str(CHILD), f"sqlite:{path}", "consume", TOPIC, "g", "150"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        done = {(p, o) for p, o in json.loads(proc.stdout.readline().split("committed ", 1)[1])}
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # SIGKILLed; unreaped its pid still answers
        if reaped:
            proc.wait()
        [(last_beat,)] = sql(path, "SELECT heartbeat FROM members WHERE grp='g'")
        got: list[Position] = []
        first = None
        with bus.consumer("g", [TOPIC]) as c:
            deadline = time.monotonic() + 60
            while len(got) < 250 and time.monotonic() < deadline:
                batch = c.poll(max_records=100, timeout=0.2)
                first = first or (time.time() if batch else None)
                c.commit(batch)
                got += [(r.partition, r.offset) for r in batch]
    finally:
        proc.wait()
    assert first is not None
    if reaped:
        assert first < last_beat + timeout, "its process is gone: its partitions move at once"
    else:
        assert last_beat + timeout < first < last_beat + timeout + 5.0, "taken over before the session timeout"
    assert not done & set(got) and len(got) == 250 and done | set(got) == everything(bus)
