"""The classify stage: inbound topic → triaged topic, in batches, as one consumer group.

Batches come from the bus (``poll_records``); the encoder buckets them by length and pads per
batch. Output is published before the input is committed (see :mod:`frontdesk.stage`): after a
crash a message may be triaged twice, both times under its stable id, and the dispatcher treats
the second as a no-op. Several replicas share the inbound partitions through the consumer group.
Triaged records are published as each of the encoder's batches finishes (``process_stream``), not
only at the end of the poll batch, so the dispatcher works alongside. Classifier time is measured
per poll batch (the time until its last triage; publishing it overlaps) and, divided by the batch
size, per message (``frontdesk_classify_batch_seconds``, ``frontdesk_classify_message_seconds``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime

from classify.base import Classifier, TextItem
from frontdesk.bus.base import Outgoing, Record, Topics
from frontdesk.codec import decode, encode
from frontdesk.errors import DecodeError
from frontdesk.messages import InboundMessage, Triage, TriagedMessage
from frontdesk.metrics import Metrics, default_metrics
from frontdesk.outcome import Outcome


# Outcomes handed over together at least: each hand-over is a produce request, and a poll, a
# transaction and an offset commit for the dispatcher; chunks of one encoder batch (~25 messages)
# cost the pipeline ~1.4 ms of CPU a message more than whole poll batches did (bench.pipeline).
MIN_CHUNK = 64


def text_item(message: InboundMessage) -> TextItem:
    """What the classifier reads: clean text, or the full text when cleaning left nothing."""
    return TextItem(message.text or message.full_text, message.subject, message.channel)


class ClassifyProcessor:
    """Stage logic; idempotent for redelivered records (same input → same ids, same labels)."""

    def __init__(self, classifier: Classifier, topics: Topics,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC), metrics: Metrics | None = None,
                 min_chunk: int = MIN_CHUNK) -> None:
        self.classifier, self.topics, self.clock = classifier, topics, clock
        self.metrics = metrics or default_metrics()
        self.min_chunk = min_chunk

    def process(self, records: Sequence[Record]) -> list[Outcome]:
        return [oc for chunk in self.process_stream(records) for oc in chunk]

    def process_stream(self, records: Sequence[Record]) -> Iterator[list[Outcome]]:
        """Outcomes in chunks: the records that do not decode first, then the triages of the
        encoder's batches as they finish, at least ``min_chunk`` together (the last chunk may have
        fewer); the runner publishes each at once, so the dispatcher starts on it while the rest
        is encoded."""
        failed: list[Outcome] = []
        messages: list[tuple[int, InboundMessage]] = []
        for i, record in enumerate(records):
            try:
                messages.append((i, decode(record.value, InboundMessage)))
            except DecodeError as exc:
                failed.append(Outcome(record, error=exc))
        if failed:
            yield failed
        if not messages:
            return
        started, ready = time.perf_counter(), list[Outcome]()
        for chunk, triages in self.classifier.classify_stream([text_item(m) for _, m in messages]):
            now = self.clock()
            ready += [self._outcome(records, messages[n], triage, now) for n, triage in zip(chunk, triages, strict=True)]
            if len(ready) >= self.min_chunk:
                yield ready
                ready = []
        if ready:
            yield ready
        seconds = time.perf_counter() - started
        self.metrics.classify_batch.observe(seconds)
        for _ in messages:
            self.metrics.classify_message.observe(seconds / len(messages))

    def _outcome(self, records: Sequence[Record], item: tuple[int, InboundMessage], triage: Triage,
                 now: datetime) -> Outcome:
        i, message = item
        out = TriagedMessage(message=message, triage=triage, triaged_at=now)
        return Outcome(records[i], (Outgoing(self.topics.triaged, encode(out), message.id.encode()),))
