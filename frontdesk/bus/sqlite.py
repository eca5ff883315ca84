"""The embedded bus: a durable, partitioned log in one SQLite file, for one-machine mode.

Same semantics as Kafka for what the pipeline relies on (see :mod:`frontdesk.bus.base`):

* ``publish`` commits one transaction in WAL mode with ``synchronous=FULL``: once it returns,
  the records survive a process kill (and a power cut).
* Keys are partitioned with Kafka's murmur2 formula, so a key lands on the same partition number
  in both implementations.
* Consumer groups: members register in a table and heartbeat on every ``poll``; partitions are
  split round-robin over the live members sorted by id. A member is dead when its process is gone
  (same machine: checked by pid) or it has not polled for ``session_timeout`` seconds.
* Commits are per (group, topic, partition) and only move forward; ``rewind`` re-reads from them.
* Retention: ``prune`` deletes old records every group consuming their topic has committed (the
  ``frontdesk run`` pipeline calls it periodically, :mod:`frontdesk.pipeline`); offsets are never
  reused, since a partition's newest record is always kept.

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

from frontdesk.bus.base import Bus, Consumer, Lag, Outgoing, Record, Topics, check_sizes
from frontdesk.bus.sqlite_store import SCHEMA, Db, Tx, decode_headers, encode_headers, partition_for, pid_alive
from frontdesk.errors import BusUnavailable


class SqliteBus(Bus):
    """Embedded bus on one SQLite file. ``publish`` is thread-safe; create consumers per thread."""

    def __init__(
        self, path: Path, topics: Topics | None = None, *, partitions: int = 4, session_timeout: float = 30.0
    ) -> None:
        self.topics = topics or Topics()
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.default_partitions = partitions
        self.session_timeout = session_timeout
        self._db = Db(self.path)
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
        """Delete old records every group that consumes their topic is done with; returns how many.

        Each partition is trimmed from its start (as Kafka deletes segments) up to, not including,
        the first record that is not older than ``older_than_s`` seconds, or that some group which
        has committed on the topic has not committed past (a group with no commit on one of the
        topic's partitions holds that partition back entirely), or the partition's newest record.
        A topic no group has committed on is trimmed by age alone and, as on Kafka, a group that
        starts later cannot read what was deleted. The newest record is kept because ``publish``
        and ``end_offsets`` derive the next offset from it: offsets are never reused (also by older
        versions sharing the file). A transaction deletes at most ``chunk`` records, so a
        publisher waits for one chunk at most."""
        cutoff = int((time.time() - older_than_s) * 1000)
        return sum(self._trim(topic, partition, bound, cutoff, chunk) for topic, partition, bound in self._bounds())

    def _bounds(self) -> list[tuple[str, int, int]]:
        """(topic, partition, first offset to keep whatever its age) per partition holding records.

        Read outside the deletes: a bound only grows afterwards (commits only move forward and the
        newest record stays), so a stale one deletes less, never too much."""
        conn = self._db.conn()
        bounds = []
        for topic, count in conn.execute("SELECT name, partitions FROM topics").fetchall():
            groups = [g for (g,) in conn.execute("SELECT DISTINCT grp FROM offsets WHERE topic=?", (topic,))]
            for partition in range(int(count)):
                newest = conn.execute(
                    "SELECT MAX(offset) FROM log WHERE topic=? AND partition=?", (topic, partition)
                ).fetchone()[0]
                if newest is None:
                    continue
                committed = dict(
                    conn.execute(
                        "SELECT grp, next_offset FROM offsets WHERE topic=? AND partition=?", (topic, partition)
                    )
                )
                bounds.append((topic, partition, min([int(newest)] + [int(committed.get(g, 0)) for g in groups])))
        return bounds

    def _trim(self, topic: str, partition: int, bound: int, cutoff_ms: int, chunk: int) -> int:
        """Delete the partition's leading records below ``bound`` stamped before ``cutoff_ms``."""
        deleted = 0
        while True:
            with self._write() as conn:
                rows = conn.execute(
                    "SELECT offset, ts FROM log WHERE topic=? AND partition=? AND offset<? ORDER BY offset LIMIT ?",
                    (topic, partition, bound, chunk),
                ).fetchall()
                old = list(itertools.takewhile(lambda row: row[1] < cutoff_ms, rows))
                if old:
                    conn.execute(
                        "DELETE FROM log WHERE topic=? AND partition=? AND offset<=?", (topic, partition, old[-1][0])
                    )
            deleted += len(old)
            if len(old) < chunk:
                return deleted

    def close(self) -> None:
        self._db.close()


class SqliteConsumer(Consumer):
    """A group member on the embedded bus (see the module docstring for the assignment rules)."""

    HEARTBEAT_INTERVAL = 0.5

    def __init__(self, bus: SqliteBus, group: str, topics: list[str]) -> None:
        self.bus, self.group, self.topics = bus, group, topics
        self.member = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._db = Db(bus.path)
        self._positions: dict[tuple[str, int], int] = {}
        self._closed = False
        self._rr = 0
        self._last_beat = 0.0

    def _heartbeat_and_assign(self, force: bool = False) -> None:
        now = time.time()
        if not force and now - self._last_beat < self.HEARTBEAT_INTERVAL:
            return
        self._last_beat = now
        with Tx(self._db.conn()) as conn:
            conn.execute(
                "INSERT OR REPLACE INTO members(grp, member, pid, heartbeat) VALUES (?, ?, ?, ?)",
                (self.group, self.member, os.getpid(), now),
            )
            rows = conn.execute("SELECT member, pid, heartbeat FROM members WHERE grp=?", (self.group,)).fetchall()
            dead = [m for m, pid, hb in rows if now - hb > self.bus.session_timeout or not pid_alive(pid)]
            conn.executemany("DELETE FROM members WHERE grp=? AND member=?", [(self.group, m) for m in dead])
            live = sorted(m for m, _, _ in rows if m not in dead)
            everything = [(t, p) for t in sorted(self.topics) for p in range(self.bus.partitions(t))]
            mine = {tp for i, tp in enumerate(everything) if live[i % len(live)] == self.member}
            committed = self._committed(conn, mine - self._positions.keys())
        self._positions = {tp: self._positions.get(tp, committed.get(tp, 0)) for tp in mine}

    def _committed(self, conn: sqlite3.Connection, tps: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int]:
        out = {}
        for t, p in tps:
            row = conn.execute(
                "SELECT next_offset FROM offsets WHERE grp=? AND topic=? AND partition=?", (self.group, t, p)
            ).fetchone()
            out[(t, p)] = int(row[0]) if row else 0
        return out

    def poll(self, max_records: int = 500, timeout: float = 1.0) -> list[Record]:
        deadline = time.monotonic() + timeout
        while True:
            self._heartbeat_and_assign()
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
        return out

    def commit(self, records: Iterable[Record]) -> None:
        highest: dict[tuple[str, int], int] = {}
        for r in records:
            tp = (r.topic, r.partition)
            highest[tp] = max(highest.get(tp, -1), r.offset + 1)
        if not highest:
            return
        with Tx(self._db.conn()) as conn:
            conn.executemany(
                "INSERT INTO offsets(grp, topic, partition, next_offset) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(grp, topic, partition) DO UPDATE SET next_offset = MAX(next_offset, excluded.next_offset)",
                [(self.group, t, p, o) for (t, p), o in highest.items()],
            )

    def rewind(self) -> None:
        with Tx(self._db.conn()) as conn:
            self._positions = self._committed(conn, self._positions)

    def assignment(self) -> set[tuple[str, int]]:
        self._heartbeat_and_assign(force=True)
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
                conn.execute("DELETE FROM members WHERE grp=? AND member=?", (self.group, self.member))
        finally:
            self._db.close()
