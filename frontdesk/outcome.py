"""What a stage's processor answers for a batch of records, and the contract the runner checks.

:class:`Outcome` is one record's result (outputs, or the error that makes it poison);
:class:`Processor` / :class:`StreamingProcessor` are the two ways a stage hands them over to
:class:`frontdesk.stage.StageRunner`; :func:`dead_letter` is the record a poison one becomes.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from frontdesk.bus.base import DEFAULT_MAX_RECORD_BYTES, Outgoing, Record, record_size
from frontdesk.deadletter import build_dead_letter
from frontdesk.errors import DecodeError, RecordTooLarge


@dataclass(frozen=True, slots=True)
class Outcome:
    """What processing one input record produced: outputs, or the error that makes it poison."""

    record: Record
    outputs: tuple[Outgoing, ...] = ()
    error: BaseException | None = None


class Processor(Protocol):
    """A stage's logic. Must be safe to call again on the same records (redelivery)."""

    def process(self, records: Sequence[Record]) -> Sequence[Outcome]: ...


class StreamingProcessor(Processor, Protocol):
    """A processor that can hand over its outcomes in chunks while it works on the rest of the batch.

    ``process_stream`` yields every record's outcome exactly once, in any order and chunking; if it
    raises, or ends with records unanswered, the runner processes those with ``process`` (and one
    at a time if that fails), as for a batch that failed as a whole.
    """

    def process_stream(self, records: Sequence[Record]) -> Iterator[Sequence[Outcome]]: ...


def where(record: Record) -> tuple[str, int, int]:
    return record.topic, record.partition, record.offset


def dead_letter(record: Record, stage: str, error: BaseException, topic: str,
                max_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> Outgoing:
    """The dead-letter record for ``record``: stage, reason, error type and the exact bytes (cut to
    fit ``max_bytes``: :mod:`frontdesk.deadletter`)."""
    raw = error.raw if isinstance(error, DecodeError) else record.value
    return build_dead_letter(
        topic, record.key, raw, stage=stage, reason=str(error) or type(error).__name__,
        error_type=type(error).__name__, max_bytes=max_bytes,
        headers=(("frontdesk-stage", stage.encode()), ("frontdesk-error", type(error).__name__.encode())),
        source_topic=record.topic, partition=record.partition, offset=record.offset,
        key_b64=base64.b64encode(record.key).decode() if record.key is not None else None,
        message_id=record.key.decode("utf-8", "replace") if record.key else None,
    )


def too_large(outcome: Outcome, limit: int) -> Outcome:
    """``outcome``, or (an output over the bus's record limit) its record as poison: RecordTooLarge."""
    for out in outcome.outputs:
        if (size := record_size(out)) > limit:
            return Outcome(outcome.record, error=RecordTooLarge(
                f"its output for {out.topic} is {size:,} bytes, over the bus's {limit:,}-byte record limit"))
    return outcome


def check_one_each(records: Sequence[Record], outcomes: Sequence[Outcome]) -> None:
    """A processor must answer every record exactly once; a record without an outcome would be
    committed unprocessed (lost). Raises ValueError (a processor bug: the records are isolated)."""
    wanted = [where(r) for r in records]
    answered = [where(oc.record) for oc in outcomes]
    if sorted(answered) != sorted(wanted):
        raise ValueError(f"the processor answered {len(answered)} outcome(s) for {len(wanted)} record(s)")
