"""The dispatch stage: triaged topic → cases (one transaction per chunk of messages) → outbox.

Nothing is published from here directly: case events and acknowledgements are outbox rows
written in the same transaction as the case, delivered by :mod:`dispatch.relay`. A redelivered
record finds its message id stored and is a no-op, so a crash between the database commit and
the bus commit loses nothing and doubles nothing.

Counted here, from what ``CaseStore.apply`` returns: messages by result (created / follow_up /
duplicate), acknowledgements queued, and acknowledgements suppressed by reason. A duplicate is
counted only as a duplicate, so redelivery never counts an acknowledgement twice. Sent and failed
acknowledgements are the relay's (``OutboxRelay.stats``, exported at scrape time).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from dispatch.base import ApplyResult, CaseStore
from frontdesk.bus.base import Record
from frontdesk.codec import decode
from frontdesk.faults import crashpoint
from frontdesk.messages import TriagedMessage
from frontdesk.metrics import Metrics, default_metrics
from frontdesk.outcome import Outcome

# ApplyResult.ack values that are not a suppression reason: queued, or not considered (follow-up).
_NOT_SUPPRESSED = frozenset({"ok", "none"})


CHUNK = 16  # messages per transaction: fewer round trips; small, so the relay sees them soon


class DispatchProcessor:
    """Applies a batch in transactions of up to ``CHUNK`` messages; ``on_applied`` is called
    after each commit (the relay's ``wake``). A chunk that fails (but transiently) raises, and the
    stage runner retries its records one at a time: messages of earlier chunks are then already
    stored and count as duplicates, as after a redelivery."""

    def __init__(self, store: CaseStore, metrics: Metrics | None = None,
                 on_applied: Callable[[], None] = lambda: None) -> None:
        self.store = store
        self.metrics = metrics or default_metrics()
        self.on_applied = on_applied

    def process(self, records: Sequence[Record]) -> list[Outcome]:
        outcomes = []
        for start in range(0, len(records), CHUNK):
            chunk = records[start : start + CHUNK]
            results = self.store.apply_many([decode(r.value, TriagedMessage) for r in chunk])
            self.on_applied()
            for record, result in zip(chunk, results, strict=True):
                crashpoint("dispatch.after_db_commit")
                self._count(result)
                outcomes.append(Outcome(record))
        return outcomes

    def _count(self, result: ApplyResult) -> None:
        m = self.metrics
        if result.duplicate:
            m.dispatched.labels("duplicate").inc()
            return
        m.dispatched.labels("created" if result.created else "follow_up").inc()
        if result.ack == "ok":
            m.acks_queued.inc()
        elif result.ack not in _NOT_SUPPRESSED:
            m.acks_suppressed.labels(result.ack).inc()
