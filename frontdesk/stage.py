"""The consume → process → publish → commit loop every bus-to-bus stage runs.

One cycle:

1. ``poll`` a batch from the input topic(s);
2. ``processor.process(batch)`` returns one :class:`Outcome` per record: outputs, or an error; a
   processor that also has ``process_stream(batch)`` (:class:`StreamingProcessor`; the classifier)
   yields them in chunks instead, as they are ready;
3. send all outputs plus a dead-letter record for every failed record (``Bus.send``: each chunk as
   soon as it is yielded, so the next stage starts on it while this one works on the rest), then
   wait until all of them are durable;
4. ``commit`` the batch.

Crash behaviour, between any two steps: before 3 completes none or some of the batch's outputs were
published (``crashpoint("<stage>.mid_batch")`` after each chunk sent) and the batch is redelivered;
between 3 and 4 (``crashpoint("<stage>.after_publish")``) the batch is redelivered. Either way its
outputs are published again with the same message ids (consumers downstream treat a known id as a
no-op). Nothing is lost: a commit never precedes the durable publish of what the batch produced.

Failures: a :class:`~frontdesk.errors.TransientError` (bus, database, SMTP down) rewinds to the
committed offsets and backs off; the same records are retried, nothing is dead-lettered. Any other
exception from one record makes it poison: it goes to the dead-letter topic with the stage, the
reason and its original bytes, and the loop goes on; so does a record whose output would be over the
bus's ``max_record_bytes`` (RecordTooLarge: the bus would refuse the whole batch, again and again). If a batch processor raises for the batch,
records are retried one at a time to find the poison ones.

Metrics (:mod:`frontdesk.metrics`, label ``stage``): records consumed and published, errors by kind
(transient / poison) and type, dead letters, batch latency; the runner also publishes a snapshot of
its consumer lag (refreshed by its own thread every ``lag_interval`` seconds: consumers are not
thread-safe) and the timestamp of the oldest record in flight, both read at scrape time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from frontdesk.bus.base import Bus, Consumer, Delivery, Lag, Outgoing, Record
from frontdesk.errors import FrontdeskError, TransientError
from frontdesk.faults import crashpoint
from frontdesk.metrics import Metrics, default_metrics
from frontdesk.outcome import Outcome, Processor, StreamingProcessor, check_one_each, dead_letter, too_large, where

__all__ = ["Backoff", "Outcome", "Processor", "StageRunner", "StageStats", "StreamingProcessor", "dead_letter"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class StageStats:
    """Counters a status line or metrics exporter reads (monotonic, per process)."""

    consumed: int = 0
    published: int = 0
    dead_lettered: int = 0
    transient_failures: int = 0
    cycles: int = 0
    last_error: str | None = None


@dataclass
class Backoff:
    """Exponential backoff with a ceiling; ``reset`` after a success."""

    initial: float = 0.2
    maximum: float = 30.0
    _current: float = field(default=0.0, init=False)

    def next(self) -> float:
        self._current = self.initial if self._current == 0 else min(self.maximum, self._current * 2)
        return self._current

    def reset(self) -> None:
        self._current = 0.0


class StageRunner:
    """Runs one processor against one consumer until stopped. Blocking; one thread."""

    def __init__(
        self,
        name: str,
        bus: Bus,
        consumer: Consumer,
        processor: Processor,
        *,
        max_records: int = 64,
        poll_timeout: float = 0.5,
        backoff: Backoff | None = None,
        sleep: Callable[[float], None] | None = None,
        metrics: Metrics | None = None,
        lag_interval: float = 5.0,
    ) -> None:
        self.name, self.bus, self.consumer, self.processor = name, bus, consumer, processor
        self.max_records, self.poll_timeout = max_records, poll_timeout
        self.backoff = backoff or Backoff()
        self.stats = StageStats()
        self._sleep = sleep  # None: wait on the stop event of ``run`` (a backoff must not hold up a stop)
        self._stop = threading.Event()
        self._must_rewind = False
        self.metrics = metrics or default_metrics()
        self.lag_interval = lag_interval
        self.lag_snapshot: tuple[Lag, ...] = ()
        self.oldest_pending_ms: int | None = None
        self._lag_at = float("-inf")
        self.metrics.watch_stage(self)

    def run(self, stop: threading.Event) -> None:
        """Loop until ``stop`` is set; finishes the current cycle (a backoff wait ends at once), then
        closes the consumer."""
        self._stop = stop
        try:
            while not stop.is_set():
                self.run_once()
        finally:
            self.consumer.close()
            self.lag_snapshot = ()  # the partitions are no longer ours

    def run_once(self) -> int:
        """One poll-process-publish-commit cycle. Returns the number of records committed."""
        self.stats.cycles += 1
        try:
            committed = self._cycle()
        except TransientError as exc:
            self._refresh_lag()
            self._on_transient(exc)
            return 0
        self._refresh_lag()
        self.backoff.reset()
        return committed

    def _cycle(self) -> int:
        if self._must_rewind:
            # Never poll past records a failed cycle left uncommitted: committing later
            # offsets would skip them.
            self.consumer.rewind()
            self._must_rewind = False
        records = self.consumer.poll(self.max_records, self.poll_timeout)
        if not records:
            self.oldest_pending_ms = None
            return 0
        started = time.perf_counter()
        self.oldest_pending_ms = min((r.timestamp_ms for r in records if r.timestamp_ms > 0), default=None)
        outcomes, outgoing = self._process_and_send(records)
        crashpoint(f"{self.name}.after_publish")
        self.consumer.commit(records)
        self.oldest_pending_ms = None
        self._count(records, outcomes, outgoing, time.perf_counter() - started)
        return len(records)

    def _count(self, records: Sequence[Record], outcomes: Sequence[Outcome], outgoing: Sequence[Outgoing],
               seconds: float) -> None:
        """Counted once per committed batch, so a redelivered batch is counted again (it was processed again)."""
        self.stats.consumed += len(records)
        self.stats.published += len(outgoing)
        self.stats.dead_lettered += sum(1 for oc in outcomes if oc.error is not None)
        m = self.metrics
        m.consumed.labels(self.name).inc(len(records))
        for out in outgoing:
            m.published.labels(self.name, self.bus.topics.logical(out.topic)).inc()
        for oc in outcomes:
            if oc.error is not None:
                m.dead_lettered.labels(self.name).inc()
                m.errors.labels(self.name, "poison", type(oc.error).__name__).inc()
        m.processing.labels(self.name).observe(seconds)

    def _refresh_lag(self) -> None:
        """Every ``lag_interval`` s, in the stage's thread; a failure keeps the last snapshot."""
        if time.monotonic() - self._lag_at < self.lag_interval:
            return
        self._lag_at = time.monotonic()
        try:
            self.lag_snapshot = tuple(self.consumer.lag())
        except FrontdeskError as exc:
            log.debug("%s: lag not available (%s)", self.name, exc)

    def _process_and_send(self, records: Sequence[Record]) -> tuple[list[Outcome], list[Outgoing]]:
        """Steps 2 and 3: every chunk of outcomes is sent as soon as it is there; returns the
        outcomes and what was published once all of it is durable."""
        outcomes: list[Outcome] = []
        outgoing: list[Outgoing] = []
        sent: list[Delivery] = []

        def send(chunk: Sequence[Outcome]) -> None:
            checked = [too_large(oc, self.bus.max_record_bytes) for oc in chunk]
            out = self._outgoing(checked)
            sent.append(self.bus.send(out))
            crashpoint(f"{self.name}.mid_batch")
            outcomes.extend(checked)
            outgoing.extend(out)

        answered = self._stream(records, send)
        if rest := [r for r in records if where(r) not in answered]:
            send(self._process(rest))
        for delivery in sent:
            delivery.wait()
        return outcomes, outgoing

    def _stream(self, records: Sequence[Record], send: Callable[[Sequence[Outcome]], None]) -> set[tuple[str, int, int]]:
        """Hands the processor's chunks to ``send``; returns the records answered. A failure of the
        stream (not transient) leaves the rest to :meth:`_process`."""
        answered: set[tuple[str, int, int]] = set()
        stream = getattr(self.processor, "process_stream", None)
        if stream is None:
            return answered
        wanted, chunks = {where(r) for r in records}, iter(stream(records))
        while True:
            try:
                chunk = next(chunks, None)
                keys = [where(oc.record) for oc in chunk or ()]
                if len(set(keys)) != len(keys) or not wanted.issuperset(keys) or answered.intersection(keys):
                    raise ValueError("the processor answered a record twice, or one not in its batch")
            except TransientError:
                raise
            except Exception as exc:
                log.warning("%s: a batch of %d failed after %d answered (%s); processing the rest again",
                            self.name, len(records), len(answered), exc)
                return answered
            if chunk is None:
                if len(answered) < len(wanted):
                    log.warning("%s: the processor answered %d of %d records; processing the rest again",
                                self.name, len(answered), len(wanted))
                return answered
            send(chunk)
            answered.update(keys)

    def _process(self, records: Sequence[Record]) -> list[Outcome]:
        try:
            outcomes = list(self.processor.process(records))
            check_one_each(records, outcomes)
            return outcomes
        except TransientError:
            raise
        except Exception as exc:
            if len(records) == 1:
                return [Outcome(records[0], error=exc)]
            log.warning("%s: batch of %d failed (%s); isolating records", self.name, len(records), exc)
            return [oc for r in records for oc in self._process([r])]

    def _outgoing(self, outcomes: Sequence[Outcome]) -> list[Outgoing]:
        out: list[Outgoing] = []
        for oc in outcomes:
            if oc.error is None:
                out.extend(oc.outputs)
                continue
            log.warning("%s: dead-lettering %s/%d@%d: %s", self.name, oc.record.topic, oc.record.partition,
                        oc.record.offset, oc.error)
            out.append(dead_letter(oc.record, self.name, oc.error, self.bus.topics.deadletter, self.bus.max_record_bytes))
        return out

    def _on_transient(self, exc: TransientError) -> None:
        self.stats.transient_failures += 1
        self.stats.last_error = str(exc)
        self.metrics.errors.labels(self.name, "transient", type(exc).__name__).inc()
        self._must_rewind = True
        delay = self.backoff.next()
        log.warning("%s: transient failure (%s); retrying in %.1fs", self.name, exc, delay)
        (self._sleep or self._stop.wait)(delay)
