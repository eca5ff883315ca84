"""The Bus interface: durable, partitioned, keyed topics with consumer groups.

Semantics every implementation keeps (and ``tests/contract/test_bus_contract.py`` checks):

* ``publish`` blocks until every record is durable (Kafka: ``acks=all``; embedded: fsynced
  SQLite commit). When it returns, a crash of this process cannot lose the records. When it
  raises, some records may have been written: callers publish idempotent messages (stable ids).
* Records with the same key go to the same partition and keep their order there.
* A consumer belongs to a group; the group's members split the partitions between them.
* Delivery is at-least-once: ``poll`` hands out records after the committed position, and
  ``commit`` moves it. A consumer that dies before committing causes redelivery, never loss.
* A record (value + key + headers) is at most ``max_record_bytes`` (Kafka's default limit is ~1 MB);
  ``publish`` refuses a call holding a bigger one with RecordTooLarge before sending anything, on
  every bus alike, so that the embedded bus fails where Kafka would.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from frontdesk.errors import RecordTooLarge

Headers = tuple[tuple[str, bytes], ...]
DEFAULT_MAX_RECORD_BYTES = 1_000_000  # under Kafka's default message.max.bytes (1,048,588) with room for framing


@dataclass(frozen=True, slots=True)
class Topics:
    """Physical topic names, derived from a configurable prefix."""

    prefix: str = "frontdesk."

    @property
    def inbound(self) -> str:
        return f"{self.prefix}inbound"

    @property
    def triaged(self) -> str:
        return f"{self.prefix}triaged"

    @property
    def cases(self) -> str:
        return f"{self.prefix}cases"

    @property
    def deadletter(self) -> str:
        return f"{self.prefix}deadletter"

    def all(self) -> tuple[str, ...]:
        return (self.inbound, self.triaged, self.cases, self.deadletter)

    def logical(self, physical: str) -> str:
        """'frontdesk.inbound' -> 'inbound' (unknown names are returned unchanged)."""
        return physical[len(self.prefix) :] if physical.startswith(self.prefix) else physical


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A record to publish."""

    topic: str
    value: bytes
    key: bytes | None = None
    headers: Headers = ()


@dataclass(frozen=True, slots=True)
class Record:
    """A record as consumed: where it lives (topic, partition, offset) and what it holds."""

    topic: str
    partition: int
    offset: int
    value: bytes
    key: bytes | None = None
    headers: Headers = ()
    timestamp_ms: int = 0

    def header(self, name: str) -> bytes | None:
        return next((v for k, v in self.headers if k == name), None)


@dataclass(slots=True)
class Lag:
    """Per-partition consumer lag: records published but not yet committed by the group."""

    topic: str
    partition: int
    committed: int
    end: int = field(default=0)

    @property
    def lag(self) -> int:
        return max(0, self.end - self.committed)


class Consumer(ABC):
    """One member of a consumer group. Not thread-safe: use it from one thread."""

    @abstractmethod
    def poll(self, max_records: int = 500, timeout: float = 1.0) -> list[Record]:
        """Return up to ``max_records`` records after this member's position (blocks ≤ timeout).

        Also keeps the membership alive and picks up partition reassignments.
        """

    @abstractmethod
    def commit(self, records: Iterable[Record]) -> None:
        """Mark ``records`` (and everything before them in their partitions) as processed.

        Blocks until the commit is durable. Raises CommitFailed if the group moved on
        (the records will then be redelivered to whoever owns the partition now).
        """

    @abstractmethod
    def rewind(self) -> None:
        """Move the position back to the committed offsets, to re-read uncommitted records.

        Used after a transient failure so nothing polled-but-not-processed is skipped.
        """

    @abstractmethod
    def assignment(self) -> set[tuple[str, int]]:
        """The (topic, partition) pairs this member currently owns."""

    @abstractmethod
    def lag(self) -> list[Lag]:
        """Lag of the group on the partitions this member owns."""

    @abstractmethod
    def close(self) -> None:
        """Leave the group (partitions are reassigned at once). Does not commit. Idempotent."""

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def record_size(record: Outgoing) -> int:
    """What a record weighs against ``max_record_bytes``: value, key and headers."""
    return len(record.value) + len(record.key or b"") + sum(len(k) + len(v) for k, v in record.headers)


def check_sizes(records: Sequence[Outgoing], limit: int) -> None:
    """Raise RecordTooLarge for the first record over ``limit`` bytes."""
    for r in records:
        if (size := record_size(r)) > limit:
            raise RecordTooLarge(f"a record for {r.topic} is {size:,} bytes, over the bus's {limit:,}-byte limit")


class Delivery:
    """Records handed to :meth:`Bus.send`; ``wait`` blocks until all are durable (idempotent)."""

    def wait(self) -> None:
        """Raises what :meth:`Bus.publish` would have raised. The records are durable only once it
        returned; before that, any of them may or may not be."""


DELIVERED = Delivery()  # for buses whose ``send`` is ``publish``


class Bus(ABC):
    """A durable log of topics. Thread-safe for ``publish``; consumers are per thread."""

    topics: Topics
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES

    @abstractmethod
    def publish(self, records: Sequence[Outgoing]) -> None:
        """Write ``records``, blocking until all are durable. Raises BusUnavailable/BusError, and
        RecordTooLarge (nothing written) if one is over ``max_record_bytes``."""

    @abstractmethod
    def consumer(self, group: str, topics: Sequence[str]) -> Consumer:
        """Join ``group`` reading ``topics`` from the group's committed position (earliest if none)."""

    @abstractmethod
    def ensure_topics(self, topics: Sequence[str] | None = None) -> None:
        """Create the pipeline topics if they do not exist. Idempotent; blocking.

        Returns once every topic can be joined and consumed: a consumer created afterwards is
        assigned its partitions on its first join (Kafka: every partition has a leader in the
        broker's metadata, not only in the controller's).
        """

    @abstractmethod
    def end_offsets(self, topic: str) -> dict[int, int]:
        """Next offset to be written, per partition (for lag and counting in tests/tools)."""

    @abstractmethod
    def close(self) -> None:
        """Release connections. Idempotent."""

    def connect(self) -> None:
        """Get ready to publish now (blocking; idempotent): the first ``publish`` of a process then
        costs no more than the next ones (Kafka: the producer's connection and the topics'
        partition metadata, ~0.2-0.5 s). Raises BusUnavailable. Nothing to do by default."""

    def send(self, records: Sequence[Outgoing]) -> Delivery:
        """Start publishing ``records`` and return without waiting for them where the bus can
        (Kafka: the producer sends them in the background), so a stage can go on working on its
        batch; ``publish`` = ``send(...).wait()``. Raises RecordTooLarge (nothing written) at once;
        other errors may come from either call. By default: ``publish`` at once."""
        self.publish(records)
        return DELIVERED

    def publish_one(self, topic: str, value: bytes, key: bytes | None = None, headers: Headers = ()) -> None:
        self.publish([Outgoing(topic, value, key, headers)])

    def __enter__(self) -> Bus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
