"""``frontdesk run``'s loop: the status line's lag, the exit code when a stage dies, the embedded bus's trimming."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path

from prometheus_client import CollectorRegistry

from frontdesk.bus.base import Outgoing, Record
from frontdesk.bus.memory import MemoryBus
from frontdesk.bus.sqlite import SqliteBus
from frontdesk.errors import BusUnavailable, ConfigError, StoreUnavailable
from frontdesk.metrics import Metrics
from frontdesk.pipeline import consumer_lag, run_pipeline, status_line
from frontdesk.stage import Outcome, StageRunner


class ToTriaged:
    def __init__(self, topic: str) -> None:
        self.topic = topic

    def process(self, records: Sequence[Record]) -> list[Outcome]:
        return [Outcome(r, (Outgoing(self.topic, r.value, r.key),)) for r in records]


def test_lag_is_the_classify_groups_and_not_hidden_by_redelivered_records() -> None:
    bus = MemoryBus(partitions=1)
    t = bus.topics
    bus.publish([Outgoing(t.inbound, b"{}", f"m{i}".encode()) for i in range(20)])
    # A classifier killed between publish and commit republished its first 10 outputs once more.
    bus.publish([Outgoing(t.triaged, b"{}", f"m{i}".encode()) for i in range(10)])
    metrics = Metrics(CollectorRegistry())
    runner = StageRunner("classify", bus, bus.consumer("frontdesk-classify", [t.inbound]), ToTriaged(t.triaged),
                         max_records=10, poll_timeout=0.01, metrics=metrics, lag_interval=0.0)
    lag = lambda: consumer_lag(metrics.registry, "classify", "inbound")  # noqa: E731
    assert lag() is None and status_line(bus, lambda: (0, 0), lag).endswith("| lag ?")
    assert runner.run_once() == 10
    # inbound 20 - triaged 20 - dead 0 would say 0: 10 records are still waiting for the classifier
    assert status_line(bus, lambda: (10, 10), lag) == \
        "in 20 | triaged 20 | cases 10 | acknowledged 10 | dead-letter 0 | lag ~10"
    assert runner.run_once() == 10 and status_line(bus, lambda: (20, 20), lag).endswith("| lag ~0")


def test_the_last_line_keeps_the_last_lag_and_a_config_error_exits_2() -> None:
    bus = MemoryBus(partitions=1)
    lags = iter([7, None, None, None])
    lines: list[str] = []

    def broken(stop: threading.Event) -> None:
        raise ConfigError("dispatch.routing_file: cannot read routing rules")

    code = run_pipeline({"dispatch": broken}, threading.Event(), bus, lambda: (0, 0), lines.append, every=0.01,
                        lag=lambda: next(lags, None))
    assert code == 2
    assert lines[-2] == "stage dispatch failed: dispatch.routing_file: cannot read routing rules"
    assert lines[-1].endswith("| lag ~7"), "the stopped stage dropped its snapshot: the last one is shown"


class FlakyBus(MemoryBus):
    """A bus whose end offsets fail while ``down`` is set (a broker or the embedded file unavailable)."""

    down = True

    def end_offsets(self, topic: str) -> dict[int, int]:
        if self.down:
            raise BusUnavailable("Kafka unavailable while reading end offsets")
        return super().end_offsets(topic)


def test_a_bus_or_database_outage_shows_question_marks_and_never_ends_the_run() -> None:
    bus, stop, lines = FlakyBus(partitions=1), threading.Event(), []
    bus.publish([Outgoing(bus.topics.inbound, b"{}", b"m1")])
    database_down = threading.Event()
    database_down.set()

    def counts() -> tuple[int, int]:
        if database_down.is_set():
            raise StoreUnavailable("database unavailable: connection refused")
        return 1, 1

    def printed(text: str) -> bool:
        deadline = time.monotonic() + 10
        while not any(line.endswith(text) for line in lines) and time.monotonic() < deadline:
            time.sleep(0.01)
        return any(line.endswith(text) for line in lines)

    def stage(ev: threading.Event) -> None:  # the outage ends while the stage runs; then the run is stopped
        try:
            assert printed("in ? | triaged ? | cases ? | acknowledged ? | dead-letter ? | lag ~3")
            bus.down = False
            database_down.clear()
            assert printed("in 1 | triaged 0 | cases 1 | acknowledged 1 | dead-letter 0 | lag ~3")
        finally:
            stop.set()

    code = run_pipeline({"classify": stage}, stop, bus, counts, lines.append, every=0.01, lag=lambda: 3)
    assert code == 0, lines[-3:]
    assert lines[-1] == "in 1 | triaged 0 | cases 1 | acknowledged 1 | dead-letter 0 | lag ~3"


def test_any_other_stage_death_exits_1() -> None:
    def broken(stop: threading.Event) -> None:
        raise RuntimeError("boom")

    assert run_pipeline({"classify": broken}, threading.Event(), MemoryBus(), lambda: (0, 0), lambda line: None,
                        every=0.01, lag=lambda: 0) == 1


def test_the_embedded_bus_trims_itself_while_the_stages_run(tmp_path: Path) -> None:
    bus = SqliteBus(tmp_path / "bus.sqlite3", partitions=1, retention_s=3600, prune_every_s=0.05)
    bus.ensure_topics()
    inbound = bus.topics.inbound
    bus.publish([Outgoing(inbound, b"{}", f"m{i}".encode()) for i in range(10)])
    with sqlite3.connect(bus.path) as conn:
        conn.execute("UPDATE log SET ts = ts - 7200000")  # published two hours ago
    runner = StageRunner("classify", bus, bus.consumer("frontdesk-classify", [inbound]), ToTriaged(bus.topics.triaged),
                         max_records=100, poll_timeout=0.05)

    def rows() -> int:
        with closing(sqlite3.connect(bus.path)) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM log WHERE topic=?", (inbound,)).fetchone()[0])

    def classify(stop: threading.Event) -> None:
        while not stop.is_set():
            runner.run_once()
            if rows() == 1:  # all but the newest record: a pass after the commit trimmed them
                stop.set()

    stop = threading.Event()
    give_up = threading.Timer(20, stop.set)
    give_up.start()
    try:
        assert run_pipeline({"classify": classify}, stop, bus, lambda: (0, 0), lambda line: None, every=0.01,
                            lag=lambda: 0) == 0
    finally:
        give_up.cancel()
    assert rows() == 1 and sum(bus.end_offsets(inbound).values()) == 10
    runner.consumer.close()
