"""The stage loop on the in-memory bus: transient failures, poison isolation, crash windows."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from frontdesk.bus.base import Outgoing, Record
from frontdesk.bus.memory import MemoryBus
from frontdesk.errors import BusUnavailable, StoreUnavailable
from frontdesk.stage import Backoff, Outcome, StageRunner


class Echo:
    """Copies each record to 'out'; raises for values starting with b'poison'; can fail transiently."""

    def __init__(self) -> None:
        self.transient_failures_left = 0
        self.calls: list[int] = []

    def process(self, records: Sequence[Record]) -> list[Outcome]:
        self.calls.append(len(records))
        if self.transient_failures_left:
            self.transient_failures_left -= 1
            raise StoreUnavailable("database down")
        if any(r.value.startswith(b"poison") for r in records):
            raise ValueError("cannot handle poison")
        return [Outcome(r, (Outgoing("out", r.value, r.key),)) for r in records]


def runner_for(bus: MemoryBus, proc: Echo) -> tuple[StageRunner, list[float]]:
    sleeps: list[float] = []
    runner = StageRunner("echo", bus, bus.consumer("g", ["in"]), proc, max_records=10, poll_timeout=0.01,
                         backoff=Backoff(initial=0.1, maximum=1.0), sleep=sleeps.append)
    return runner, sleeps


def publish(bus: MemoryBus, values: list[bytes]) -> None:
    bus.publish([Outgoing("in", v, b"k") for v in values])


def run_until_idle(runner: StageRunner, cycles: int = 20) -> None:
    for _ in range(cycles):
        runner.run_once()


def test_transient_failure_retries_same_records_without_dead_letter() -> None:
    bus, proc = MemoryBus(), Echo()
    publish(bus, [b"a", b"b", b"c"])
    proc.transient_failures_left = 3
    runner, sleeps = runner_for(bus, proc)
    run_until_idle(runner)
    assert [r.value for r in bus.records("out")] == [b"a", b"b", b"c"]
    assert bus.records(bus.topics.deadletter) == []
    assert sleeps == [0.1, 0.2, 0.4] and runner.stats.transient_failures == 3


def test_poison_is_isolated_from_its_batch() -> None:
    bus, proc = MemoryBus(), Echo()
    publish(bus, [b"a", b"poison-1", b"b"])
    runner, _ = runner_for(bus, proc)
    run_until_idle(runner)
    assert [r.value for r in bus.records("out")] == [b"a", b"b"]
    [letter] = bus.records(bus.topics.deadletter)
    assert letter.header("frontdesk-stage") == b"echo" and b"cannot handle poison" in letter.value
    assert proc.calls[:4] == [3, 1, 1, 1]


def test_publish_failure_does_not_commit_and_nothing_is_lost() -> None:
    bus, proc = MemoryBus(), Echo()
    publish(bus, [b"a", b"b"])
    bus.fail_next_publish = BusUnavailable("broker gone")
    runner, _ = runner_for(bus, proc)
    run_until_idle(runner)
    assert [r.value for r in bus.records("out")] == [b"a", b"b"]


def test_crash_between_publish_and_commit_redelivers_with_same_outputs() -> None:
    bus, proc = MemoryBus(), Echo()
    publish(bus, [b"a", b"b"])
    crashing = bus.consumer("g", ["in"])
    crashing.commit = lambda records: (_ for _ in ()).throw(SystemExit("killed"))  # type: ignore[method-assign]
    runner = StageRunner("echo", bus, crashing, proc, poll_timeout=0.01)
    try:
        runner.run_once()
    except SystemExit:
        crashing.close()
    restarted, _ = runner_for(bus, proc)
    run_until_idle(restarted)
    assert [r.value for r in bus.records("out")] == [b"a", b"b", b"a", b"b"]
    assert sum(bus.end_offsets("in").values()) == 2 and restarted.consumer.lag()[0].lag == 0


def test_a_stop_during_a_backoff_ends_the_run_at_once() -> None:
    import threading
    import time

    bus, proc = MemoryBus(), Echo()
    publish(bus, [b"a"])
    proc.transient_failures_left = 100
    runner = StageRunner("echo", bus, bus.consumer("g", ["in"]), proc, poll_timeout=0.01,
                         backoff=Backoff(initial=30.0, maximum=30.0))
    stop = threading.Event()
    worker = threading.Thread(target=runner.run, args=(stop,))
    worker.start()
    deadline = time.monotonic() + 5
    while runner.stats.transient_failures == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    stopped = time.monotonic()
    stop.set()
    worker.join(5)
    assert not worker.is_alive() and time.monotonic() - stopped < 2  # not the 30 s backoff
    assert runner.stats.transient_failures == 1 and bus.records("out") == []


class Forgetful(Echo):
    """Answers nothing for values starting with b'forget' (a processor bug)."""

    def process(self, records: Sequence[Record]) -> list[Outcome]:
        return [oc for oc in super().process(records) if not oc.record.value.startswith(b"forget")]


def test_a_record_the_processor_does_not_answer_is_dead_lettered_not_committed_silently() -> None:
    bus, proc = MemoryBus(), Forgetful()
    publish(bus, [b"a", b"forget-me", b"b"])
    runner, _ = runner_for(bus, proc)
    run_until_idle(runner)
    assert [r.value for r in bus.records("out")] == [b"a", b"b"]
    [letter] = bus.records(bus.topics.deadletter)
    assert b"1 outcome(s) for 1 record(s)" not in letter.value and b"0 outcome(s) for 1 record(s)" in letter.value


class Streaming(Echo):
    """Echo that hands over its outcomes two records at a time; can fail or misbehave mid-batch."""

    def __init__(self, bus: MemoryBus) -> None:
        super().__init__()
        self.bus, self.seen_before_chunk = bus, []
        self.crash_after: int | None = None  # chunks, then a crash (BaseException: nothing catches it)
        self.fail_after: int | None = None  # chunks, then an ordinary exception for the batch
        self.repeat_first = False  # answer the first record again in the second chunk (a bug)

    def process_stream(self, records: Sequence[Record]) -> Iterator[list[Outcome]]:
        for n, start in enumerate(range(0, len(records), 2)):
            self.seen_before_chunk.append(len(self.bus.records("out")))
            if n == self.crash_after:
                raise SystemExit("killed mid-batch")
            if n == self.fail_after:
                raise RuntimeError("the model fell over")
            part = list(records[start:start + 2]) + ([records[0]] if self.repeat_first and n == 1 else [])
            yield [Outcome(r, (Outgoing("out", r.value, r.key),)) for r in part]


def test_a_streaming_processor_s_chunks_are_published_while_it_works_on_the_rest() -> None:
    bus = MemoryBus()
    proc = Streaming(bus)
    publish(bus, [b"a", b"b", b"c", b"d", b"e"])
    runner, _ = runner_for(bus, proc)
    assert runner.run_once() == 5
    assert proc.seen_before_chunk == [0, 2, 4]  # each chunk was on the bus before the next was asked for
    assert [r.value for r in bus.records("out")] == [b"a", b"b", b"c", b"d", b"e"] and proc.calls == []
    assert runner.stats.consumed == 5 and runner.stats.published == 5


def test_a_crash_mid_batch_redelivers_it_and_only_its_chunks_sent_are_published_twice() -> None:
    bus = MemoryBus()
    proc = Streaming(bus)
    publish(bus, [b"a", b"b", b"c", b"d", b"e"])
    proc.crash_after = 2
    crashing = bus.consumer("g", ["in"])
    runner = StageRunner("echo", bus, crashing, proc, max_records=10, poll_timeout=0.01)
    try:
        runner.run_once()
    except SystemExit:
        crashing.close()
    assert [r.value for r in bus.records("out")] == [b"a", b"b", b"c", b"d"]  # sent, not committed
    proc.crash_after = None
    restarted, _ = runner_for(bus, proc)
    run_until_idle(restarted)
    values = [r.value for r in bus.records("out")]
    assert sorted(set(values)) == [b"a", b"b", b"c", b"d", b"e"]  # nothing lost
    assert values[4:] == [b"a", b"b", b"c", b"d", b"e"]  # the batch again, same records (same ids downstream)
    assert restarted.consumer.lag()[0].lag == 0


def test_a_stream_failing_mid_batch_leaves_the_rest_to_process_and_publishes_each_record_once() -> None:
    bus = MemoryBus()
    proc = Streaming(bus)
    publish(bus, [b"a", b"b", b"c", b"poison", b"e"])
    proc.fail_after = 1
    runner, _ = runner_for(bus, proc)
    run_until_idle(runner)
    assert [r.value for r in bus.records("out")] == [b"a", b"b", b"c", b"e"]
    assert proc.calls[:4] == [3, 1, 1, 1]  # the unanswered three as a batch, then one at a time
    [letter] = bus.records(bus.topics.deadletter)
    assert b"cannot handle poison" in letter.value


def test_a_stream_answering_a_record_twice_is_not_published_from_that_chunk_on() -> None:
    bus = MemoryBus()
    proc = Streaming(bus)
    publish(bus, [b"a", b"b", b"c", b"d"])
    proc.repeat_first = True
    runner, _ = runner_for(bus, proc)
    assert runner.run_once() == 4
    assert [r.value for r in bus.records("out")] == [b"a", b"b", b"c", b"d"]  # c, d from process(), once
    assert proc.calls == [2] and bus.records(bus.topics.deadletter) == []
