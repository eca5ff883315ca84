"""Retention on the embedded bus: ``SqliteBus.prune`` deletes only old records every consuming group
has committed, and never lets an offset be handed out twice; every process that opens the bus the
way the commands do trims it, one pass per interval over all of them."""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from frontdesk.bus import open_bus
from frontdesk.bus.base import Consumer, Outgoing, Record
from frontdesk.bus.sqlite import SqliteBus
from frontdesk.errors import BusUnavailable
from frontdesk.settings import BusSettings, StorageSettings

HOUR_MS = 3_600_000
CHILD = Path(__file__).parents[1] / "contract" / "bus_child.py"


def make_bus(tmp_path: Path, partitions: int = 1) -> SqliteBus:
    bus = SqliteBus(tmp_path / "bus.sqlite3", partitions=partitions)
    bus.ensure_topics(["t"])
    return bus


def publish(bus: SqliteBus, prefix: str, n: int, topic: str = "t") -> None:
    bus.publish([Outgoing(topic, f"{prefix}{i}".encode(), f"k{i}".encode()) for i in range(n)])


def age(bus: SqliteBus, hours: float, below_offset: int | None = None) -> None:
    """Back-date records of every topic, as if they had been published ``hours`` earlier."""
    with sqlite3.connect(bus.path) as conn:
        conn.execute("UPDATE log SET ts = ts - ? WHERE offset < COALESCE(?, offset + 1)",
                     (int(hours * HOUR_MS), below_offset))


def offsets(bus: SqliteBus, partition: int = 0) -> list[int]:
    with sqlite3.connect(bus.path) as conn:
        return [o for (o,) in conn.execute("SELECT offset FROM log WHERE topic='t' AND partition=? ORDER BY offset",
                                           (partition,))]


def drain(consumer: Consumer) -> list[Record]:
    out: list[Record] = []
    while batch := consumer.poll(1000, 0.3):
        out.extend(batch)
    return out


def values(records: list[Record]) -> list[bytes]:
    return [r.value for r in records]


def test_after_pruning_new_records_reach_old_groups_and_fresh_members_and_lag_counts_them(tmp_path: Path) -> None:
    bus = make_bus(tmp_path)
    publish(bus, "old", 5)
    g, h = bus.consumer("g", ["t"]), bus.consumer("h", ["t"])
    g.commit(drain(g))
    h.commit(drain(h))
    age(bus, 2)

    assert bus.prune(3600) == 4 and offsets(bus) == [4], "the newest record stays: it numbers the next ones"
    publish(bus, "new", 3)

    assert bus.end_offsets("t") == {0: 8}
    assert [(lag.committed, lag.end, lag.lag) for lag in h.lag()] == [(5, 8, 3)]
    got = drain(h)
    assert [r.offset for r in got] == [5, 6, 7] and values(got) == [b"new0", b"new1", b"new2"]
    h.commit(got)
    assert [lag.lag for lag in h.lag()] == [0]
    g.close()
    fresh = bus.consumer("g", ["t"])
    assert values(drain(fresh)) == [b"new0", b"new1", b"new2"]
    late = bus.consumer("late", ["t"])
    assert [r.offset for r in drain(late)] == [4, 5, 6, 7], "a group starting later cannot read what was pruned"
    for c in (h, fresh, late):
        c.close()


def test_a_group_without_a_commit_on_a_partition_holds_that_partition_back(tmp_path: Path) -> None:
    bus = make_bus(tmp_path, partitions=2)
    publish(bus, "v", 20)
    assert offsets(bus, 0) and offsets(bus, 1)
    every, half = bus.consumer("every", ["t"]), bus.consumer("half", ["t"])
    every.commit(drain(every))
    half_seen = drain(half)
    half.commit([r for r in half_seen if r.partition == 0])
    half.close()
    age(bus, 2)
    committed_by_both, kept = offsets(bus, 0), offsets(bus, 1)

    assert bus.prune(3600) == len(committed_by_both) - 1
    assert offsets(bus, 0) == committed_by_both[-1:] and offsets(bus, 1) == kept
    fresh = bus.consumer("half", ["t"])
    assert sorted(r.offset for r in drain(fresh) if r.partition == 1) == kept
    fresh.close()
    every.close()


def test_only_records_older_than_the_retention_and_committed_by_every_group_go(tmp_path: Path) -> None:
    bus = make_bus(tmp_path)
    publish(bus, "v", 10)
    age(bus, 2, below_offset=6)
    c = bus.consumer("g", ["t"])
    seen = drain(c)
    c.commit(seen[:8])

    assert bus.prune(3600, chunk=4) == 6 and offsets(bus) == [6, 7, 8, 9], "young records stay though committed"
    age(bus, 2)
    assert bus.prune(3600) == 2 and offsets(bus) == [8, 9], "uncommitted records stay though old"
    c.commit(seen)
    assert bus.prune(3600) == 1 and offsets(bus) == [9]
    assert bus.prune(3600) == 0 and bus.end_offsets("t") == {0: 10}
    c.close()


def test_a_topic_no_group_has_committed_on_goes_by_age_alone(tmp_path: Path) -> None:
    bus = make_bus(tmp_path)
    bus.ensure_topics(["other"])
    publish(bus, "v", 4)
    other = bus.consumer("g", ["other"])
    publish(bus, "o", 2, topic="other")
    other.commit(drain(other))
    age(bus, 2, below_offset=3)

    assert bus.prune(3600) == 3 + 1 and offsets(bus) == [3], "a group on another topic does not hold this one"
    other.close()


def consumed_and_aged(tmp_path: Path, n: int) -> SqliteBus:
    """A bus whose topic ``t`` holds ``n`` records published two hours ago, all committed by group ``g``."""
    bus = make_bus(tmp_path)
    publish(bus, "old", n)
    g = bus.consumer("g", ["t"])
    g.commit(drain(g))
    g.close()
    age(bus, 2)
    return bus


def wait_for(condition: Callable[[], object], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_stage_process_started_on_its_own_trims_the_file(tmp_path: Path) -> None:
    bus = consumed_and_aged(tmp_path, 10)
    subprocess.run([sys.executable, str(CHILD), f"sqlite:{bus.path}", "stage", "t", "g", "1", "1.0"],
                   check=True, timeout=120)
    assert offsets(bus) == [9], "a consumer's polls trim the bus as `frontdesk run` does"


def test_a_producer_process_started_on_its_own_trims_the_file(tmp_path: Path) -> None:
    bus = consumed_and_aged(tmp_path, 10)
    subprocess.run([sys.executable, str(CHILD), f"sqlite:{bus.path}", "produce", "t", "1", "3"],
                   check=True, timeout=120)
    assert offsets(bus) == [10, 11, 12]


def test_a_bus_opened_with_retention_0_keeps_everything(tmp_path: Path) -> None:
    bus = consumed_and_aged(tmp_path, 10)
    with open_bus(BusSettings(embedded_path=bus.path, embedded_retention_h=0), StorageSettings(data_dir=tmp_path)) as b:
        b.publish([Outgoing("t", b"new", b"k")])
        c = b.consumer("g", ["t"])
        c.commit(c.poll(10, 0.2))
        c.close()
    assert offsets(bus) == list(range(11))


def test_one_pass_per_interval_over_all_processes_sharing_the_file(tmp_path: Path) -> None:
    bus = consumed_and_aged(tmp_path, 10)
    first = SqliteBus(bus.path, retention_s=3600, prune_every_s=60)
    first.maybe_prune()
    first.close()  # waits for its pass
    assert offsets(bus) == [9]
    publish(bus, "more", 5)
    late = bus.consumer("g", ["t"])
    late.commit(drain(late))
    late.close()
    age(bus, 2)

    other = SqliteBus(bus.path, retention_s=3600, prune_every_s=60)  # as another process would
    other.maybe_prune()
    other.close()
    assert offsets(bus) == [9, 10, 11, 12, 13, 14], "the interval was claimed by the first pass"
    time.sleep(0.3)
    shorter = SqliteBus(bus.path, retention_s=3600, prune_every_s=0.2)
    shorter.maybe_prune()
    shorter.close()
    assert offsets(bus) == [14]


def test_two_passes_at_once_delete_each_record_once_and_never_fail(tmp_path: Path) -> None:
    bus = consumed_and_aged(tmp_path, 2000)
    buses = [SqliteBus(bus.path) for _ in range(2)]
    counts: list[int] = []
    threads = [threading.Thread(target=lambda b=b: counts.append(b.prune(3600, chunk=7))) for b in buses]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(counts) == 2 and sum(counts) == 1999 and offsets(bus) == [1999]


def test_a_failed_pass_is_logged_and_retried_at_the_next_interval_without_the_caller_noticing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from frontdesk.bus import sqlite_retention

    bus = consumed_and_aged(tmp_path, 10)
    calls: list[int] = []
    real = sqlite_retention.prune

    def flaky(*args: object, **kwargs: object) -> int:
        calls.append(1)
        if len(calls) == 1:
            raise BusUnavailable("embedded bus busy or unavailable: database is locked")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(sqlite_retention, "prune", flaky)
    trimming = SqliteBus(bus.path, retention_s=3600, prune_every_s=0.2)
    with caplog.at_level(logging.WARNING, logger="frontdesk.bus.sqlite_retention"):
        consumer = trimming.consumer("g", ["t"])
        assert consumer.poll(10, 0.1) == []
        wait_for(lambda: "database is locked" in caplog.text)
        assert offsets(bus) == list(range(10))
        wait_for(lambda: (consumer.poll(10, 0.05), offsets(bus) == [9])[1])
    consumer.close()
    trimming.close()
    assert len(calls) == 2
