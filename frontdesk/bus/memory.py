"""An in-memory bus for fast unit tests: same partitioning and group semantics, no durability.

Partitions are split round-robin over the group's open consumers (sorted by join order), exactly
like the embedded bus; a closed consumer's partitions move at once. Thread-safe.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence

from frontdesk.bus.base import Bus, Consumer, Lag, Outgoing, Record, Topics, check_sizes
from frontdesk.bus.sqlite_store import partition_for


class MemoryBus(Bus):
    def __init__(self, topics: Topics | None = None, *, partitions: int = 4) -> None:
        self.topics = topics or Topics()
        self.default_partitions = partitions
        self._logs: dict[str, list[list[Record]]] = {}
        self._committed: dict[tuple[str, str, int], int] = {}
        self._members: dict[str, list[MemoryConsumer]] = defaultdict(list)
        self._lock = threading.RLock()
        self._spread = itertools.count()
        self.fail_next_publish: Exception | None = None

    def ensure_topics(self, topics: Sequence[str] | None = None) -> None:
        with self._lock:
            for t in topics or self.topics.all():
                self._logs.setdefault(t, [[] for _ in range(self.default_partitions)])

    def publish(self, records: Sequence[Outgoing]) -> None:
        check_sizes(records, self.max_record_bytes)
        with self._lock:
            if self.fail_next_publish is not None:
                exc, self.fail_next_publish = self.fail_next_publish, None
                raise exc
            now = int(time.time() * 1000)
            for rec in records:
                self.ensure_topics([rec.topic])
                parts = self._logs[rec.topic]
                p = partition_for(rec.key, len(parts), next(self._spread))
                parts[p].append(Record(rec.topic, p, len(parts[p]), rec.value, rec.key, rec.headers, now))

    def end_offsets(self, topic: str) -> dict[int, int]:
        with self._lock:
            self.ensure_topics([topic])
            return {p: len(log) for p, log in enumerate(self._logs[topic])}

    def records(self, topic: str) -> list[Record]:
        """Every record of a topic, partition by partition (a test helper)."""
        with self._lock:
            self.ensure_topics([topic])
            return [r for log in self._logs[topic] for r in log]

    def consumer(self, group: str, topics: Sequence[str]) -> MemoryConsumer:
        with self._lock:
            self.ensure_topics(topics)
            member = MemoryConsumer(self, group, list(topics))
            self._members[group].append(member)
            return member

    def close(self) -> None:
        pass


class MemoryConsumer(Consumer):
    def __init__(self, bus: MemoryBus, group: str, topics: list[str]) -> None:
        self.bus, self.group, self.topics = bus, group, topics
        self._positions: dict[tuple[str, int], int] = {}

    def _assign(self) -> None:
        members = self.bus._members[self.group]
        everything = [(t, p) for t in sorted(self.topics) for p in range(len(self.bus._logs[t]))]
        mine = {tp for i, tp in enumerate(everything) if members[i % len(members)] is self}
        self._positions = {
            tp: self._positions.get(tp, self.bus._committed.get((self.group, *tp), 0)) for tp in mine
        }

    def poll(self, max_records: int = 500, timeout: float = 1.0) -> list[Record]:
        deadline = time.monotonic() + timeout
        while True:
            with self.bus._lock:
                self._assign()
                out: list[Record] = []
                for (t, p), pos in sorted(self._positions.items()):
                    batch = self.bus._logs[t][p][pos : pos + max_records - len(out)]
                    out.extend(batch)
                    self._positions[(t, p)] = pos + len(batch)
            if out or time.monotonic() >= deadline:
                return out
            time.sleep(0.01)

    def commit(self, records: Iterable[Record]) -> None:
        with self.bus._lock:
            for r in records:
                key = (self.group, r.topic, r.partition)
                self.bus._committed[key] = max(self.bus._committed.get(key, 0), r.offset + 1)

    def rewind(self) -> None:
        with self.bus._lock:
            self._positions = {tp: self.bus._committed.get((self.group, *tp), 0) for tp in self._positions}

    def assignment(self) -> set[tuple[str, int]]:
        with self.bus._lock:
            self._assign()
            return set(self._positions)

    def lag(self) -> list[Lag]:
        with self.bus._lock:
            return [
                Lag(t, p, self.bus._committed.get((self.group, t, p), 0), len(self.bus._logs[t][p]))
                for t, p in sorted(self._positions)
            ]

    def close(self) -> None:
        with self.bus._lock:
            members = self.bus._members[self.group]
            if self in members:
                members.remove(self)
