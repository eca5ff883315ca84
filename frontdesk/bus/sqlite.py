"""The embedded bus: a durable, partitioned log in one SQLite file, for one-machine mode.

Same semantics as Kafka for what the pipeline relies on (see :mod:`frontdesk.bus.base`):

* ``publish`` commits one transaction in WAL mode with ``synchronous=FULL``: once it returns,
  the records survive a process kill (and a power cut).
* Keys are partitioned with Kafka's murmur2 formula, so a key lands on the same partition number
  in both implementations.
* Consumer groups, between threads and processes sharing the file alike
  (:mod:`frontdesk.bus.sqlite_group`): members register in a table and heartbeat on ``poll`` (every
  ``HEARTBEAT_INTERVAL`` s at most). A member's share is its round-robin slice of the partitions
  over the live members sorted by id; which member owns a partition is stored in the file and
  changed in the heartbeat's transaction. A partition moves only once its owner has released it or
  is dead. An owner releases what is no longer its share at its next ``poll`` (what it polled
  before is committed or abandoned by then; ``assignment`` releases only partitions with nothing
  polled in flight); until then the joining member waits. A member is dead when its process is
  gone (same machine: checked by pid, so a killed and reaped process's partitions move at once) or
  it has not polled for ``session_timeout`` seconds (``bus.embedded_session_timeout_s``, 30 s; also
  a process not yet reaped, or stuck): the first member to notice takes its partitions over from
  the committed offsets. ``close`` releases everything at once.
* Commits are per (group, topic, partition) and only move forward; ``rewind`` re-reads from them.
  A commit of records from a partition the member no longer owns (it was declared dead, or polled
  again after its share moved) raises CommitFailed and moves no offset, as Kafka's after a
  rebalance; the partition's owner processes the records from the committed offset.
* Retention (:mod:`frontdesk.bus.sqlite_retention`): with ``retention_s`` (every command opens the
  bus with ``bus.embedded_retention_h``) records older than that go once every group consuming
  their topic has committed them, in a pass on a thread of its own that ``publish`` and ``poll``
  start when due: at most every ``prune_every_s`` seconds (10 minutes), one pass per interval over
  all processes sharing the file. ``close`` lets a running pass finish for 5 s, then stops it
  between two chunks. Offsets are never reused: a partition's newest record is kept.

Several processes may share the file (one-machine multi-process runs); SQLite serialises writers.
The file itself (schema, connections, transactions): :mod:`frontdesk.bus.sqlite_store`.
"""

from __future__ import annotations

import itertools
import os
import sqlite3
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

from frontdesk.bus import sqlite_group as membership
from frontdesk.bus import sqlite_retention as retention
from frontdesk.bus.base import Bus, Consumer, Lag, Outgoing, Record, Topics, check_sizes
from frontdesk.bus.sqlite_store import SCHEMA, Db, Tx, decode_headers, encode_headers, partition_for
from frontdesk.errors import BusUnavailable, CommitFailed


class SqliteBus(Bus):
    """Embedded bus on one SQLite file. ``publish`` is thread-safe; create consumers per thread."""

    def __init__(
        self, path: Path, topics: Topics | None = None, *, partitions: int = 4, session_timeout: float = 30.0,
        retention_s: float = 0.0, prune_every_s: float = retention.PRUNE_EVERY_S,
    ) -> None:
        """``retention_s``: delete records older than that (see the module docstring); 0 keeps everything."""
        self.topics = topics or Topics()
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.default_partitions = partitions
        self.session_timeout = session_timeout
        self._db = Db(self.path)
        self._pruner = retention.Pruner(self._db, retention_s, prune_every_s)
        self._spread = itertools.count()
        self._partition_cache: dict[str, int] = {}
        try:
            self._db.conn().executescript(SCHEMA)
        except sqlite3.Error as exc:
            raise BusUnavailable(f"cannot open embedded bus {self.path}: {exc}") from exc

    def ensure_topics(self, topics: Sequence[str] | None = None) -> None:
        names = topics or self.topics.all()
        with self._write() as conn:
            conn.executemany(
                "INSERT OR IGNORE INTO topics(name, partitions) VALUES (?, ?)",
                [(n, self.default_partitions) for n in names],
            )

    def partitions(self, topic: str) -> int:
        """Partition count of ``topic``; creates it with the default count on first use."""
        if topic not in self._partition_cache:
            self.ensure_topics([topic])
            row = self._db.conn().execute("SELECT partitions FROM topics WHERE name=?", (topic,)).fetchone()
            self._partition_cache[topic] = int(row[0])
        return self._partition_cache[topic]

    def publish(self, records: Sequence[Outgoing]) -> None:
        if not records:
            return
        check_sizes(records, self.max_record_bytes)
        placed = [(r, self._place(r)) for r in records]
        with self._write() as conn:
            next_offsets: dict[tuple[str, int], int] = {}
            now = int(time.time() * 1000)
            for rec, part in placed:
                tp = (rec.topic, part)
                if tp not in next_offsets:
                    row = conn.execute(
                        "SELECT COALESCE(MAX(offset), -1) + 1 FROM log WHERE topic=? AND partition=?", tp
                    ).fetchone()
                    next_offsets[tp] = int(row[0])
                conn.execute(
                    "INSERT INTO log VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (rec.topic, part, next_offsets[tp], rec.key, rec.value, encode_headers(rec.headers), now),
                )
                next_offsets[tp] += 1
        self.maybe_prune()

    def _place(self, rec: Outgoing) -> int:
        return partition_for(rec.key, self.partitions(rec.topic), next(self._spread))

    def _write(self) -> Tx:
        return Tx(self._db.conn())

    def end_offsets(self, topic: str) -> dict[int, int]:
        conn = self._db.conn()
        ends = {p: 0 for p in range(self.partitions(topic))}
        rows = conn.execute("SELECT partition, MAX(offset) + 1 FROM log WHERE topic=? GROUP BY partition", (topic,))
        ends.update({int(p): int(e) for p, e in rows})
        return ends

    def consumer(self, group: str, topics: Sequence[str]) -> SqliteConsumer:
        for t in topics:
            self.partitions(t)
        return SqliteConsumer(self, group, list(topics))

    def prune(self, older_than_s: float, *, chunk: int = 5000) -> int:
        """Delete records older than ``older_than_s`` seconds that every group consuming their topic
        has committed (the rules: :mod:`frontdesk.bus.sqlite_retention`); returns how many. Blocking;
        safe while other processes use or prune the file."""
        return retention.prune(self._db, older_than_s, chunk=chunk)

    def maybe_prune(self) -> None:
        """Start a retention pass in the background if one is due (cheap otherwise; never raises)."""
        self._pruner.poke()

    def close(self) -> None:
        """End this process's retention pass (see the module docstring) and close the connection."""
        self._pruner.close()
        self._db.close()


class SqliteConsumer(Consumer):
    """A group member on the embedded bus (see the module docstring for the ownership rules)."""

    HEARTBEAT_INTERVAL = 0.5

    def __init__(self, bus: SqliteBus, group: str, topics: list[str]) -> None:
        self.bus, self.group, self.topics = bus, group, topics
        self.member = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._db = Db(bus.path)
        self._partitions = [(t, p) for t in sorted(topics) for p in range(bus.partitions(t))]
        self._positions: dict[tuple[str, int], int] = {}
        self._in_flight: set[tuple[str, int]] = set()  # polled from, not yet all committed or rewound
        self._closed = False
        self._rr = 0
        self._last_beat = 0.0

    def _heartbeat(self, *, keep: Iterable[tuple[str, int]] = (), force: bool = False) -> None:
        """Heartbeat and take up the group's assignment, releasing no partition of ``keep``."""
        now = time.time()
        if not force and now - self._last_beat < self.HEARTBEAT_INTERVAL:
            return
        self._last_beat = now
        with Tx(self._db.conn()) as conn:
            got = membership.heartbeat(conn, self.group, self.member, self._partitions,
                                       session_timeout=self.bus.session_timeout, now=now, keep=set(keep))
            fresh = got.claimed | (got.owned - self._positions.keys())
            committed = self._committed(conn, fresh)
        self._positions = {tp: committed[tp] if tp in fresh else self._positions[tp] for tp in got.owned}
        self._in_flight &= got.owned

    def _committed(self, conn: sqlite3.Connection, tps: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int]:
        out = {}
        for t, p in tps:
            row = conn.execute(
                "SELECT next_offset FROM offsets WHERE grp=? AND topic=? AND partition=?", (self.group, t, p)
            ).fetchone()
            out[(t, p)] = int(row[0]) if row else 0
        return out

    def poll(self, max_records: int = 500, timeout: float = 1.0) -> list[Record]:
        """Also where this member releases partitions that moved to another one: what it polled
        before is committed or abandoned by now."""
        deadline = time.monotonic() + timeout
        self.bus.maybe_prune()
        while True:
            self._heartbeat()
            records = self._fetch(max_records)
            if records or time.monotonic() >= deadline:
                return records
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    def _fetch(self, max_records: int) -> list[Record]:
        tps = sorted(self._positions)
        if not tps:
            return []
        self._rr = (self._rr + 1) % len(tps)
        out: list[Record] = []
        conn = self._db.conn()
        for t, p in tps[self._rr :] + tps[: self._rr]:
            if len(out) >= max_records:
                break
            rows = conn.execute(
                "SELECT offset, key, value, headers, ts FROM log WHERE topic=? AND partition=? AND offset>=?"
                " ORDER BY offset LIMIT ?",
                (t, p, self._positions[(t, p)], max_records - len(out)),
            ).fetchall()
            out.extend(Record(t, p, o, v, k, decode_headers(h), ts) for o, k, v, h, ts in rows)
            if rows:
                self._positions[(t, p)] = rows[-1][0] + 1
                self._in_flight.add((t, p))
        return out

    def commit(self, records: Iterable[Record]) -> None:
        """Raises CommitFailed, committing nothing, if a record's partition is no longer this member's."""
        highest: dict[tuple[str, int], int] = {}
        for r in records:
            tp = (r.topic, r.partition)
            highest[tp] = max(highest.get(tp, -1), r.offset + 1)
        if not highest:
            return
        with Tx(self._db.conn()) as conn:
            if lost := membership.commit(conn, self.group, self.member, highest):
                raise self._moved(lost)  # rolls the transaction back: nothing moves
        self._in_flight -= {tp for tp, end in highest.items() if end >= self._positions.get(tp, 0)}

    def _moved(self, lost: set[tuple[str, int]]) -> CommitFailed:
        """Forget partitions that moved to another member; the error a commit of their records raises."""
        for tp in lost:
            self._positions.pop(tp, None)
        self._last_beat = 0.0  # take up the new assignment at the next poll
        return CommitFailed(f"embedded bus: partitions {sorted(lost)} of group {self.group} moved to another "
                            "member; nothing committed, their owner gets the records from the committed offset")

    def rewind(self) -> None:
        with Tx(self._db.conn()) as conn:
            self._positions = self._committed(conn, self._positions)
        self._in_flight.clear()

    def assignment(self) -> set[tuple[str, int]]:
        """Heartbeats and takes up the assignment, keeping partitions with polled records in flight."""
        self._heartbeat(keep=self._in_flight, force=True)
        return set(self._positions)

    def lag(self) -> list[Lag]:
        with Tx(self._db.conn()) as conn:
            committed = self._committed(conn, self._positions)
        ends = {t: self.bus.end_offsets(t) for t in {t for t, _ in committed}}
        return [Lag(t, p, c, ends[t].get(p, 0)) for (t, p), c in sorted(committed.items())]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            with Tx(self._db.conn()) as conn:
                membership.leave(conn, self.group, self.member)
        finally:
            self._db.close()
