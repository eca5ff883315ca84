"""Retention of the embedded bus: which records go, and the passes that delete them.

A pass trims each partition from its start (as Kafka deletes segments) up to, not including, the
first record that is not older than the retention, or that some group which has committed on the
topic has not committed past (a group with no commit on one of the topic's partitions holds that
partition back entirely), or the partition's newest record. A topic no group has committed on is
trimmed by age alone and, as on Kafka, a group that starts later cannot read what was deleted. The
newest record stays because ``publish`` and ``end_offsets`` derive the next offset from it: offsets
are never reused (also by older versions sharing the file).

Who runs passes: every process whose bus has a retention (:class:`Pruner`, started from its own
publishes and polls), at most one pass per ``every`` seconds over all processes sharing the file:
a pass first claims the interval in the ``housekeeping`` table, and a process that finds it claimed
skips it. Two passes at once (a manual ``prune``, a process whose clock is off) are harmless:
deletes are idempotent and a stale bound deletes less, never more.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time

from frontdesk.bus.sqlite_store import Db, Tx

log = logging.getLogger(__name__)

PRUNE_EVERY_S = 600.0


def prune(db: Db, older_than_s: float, *, chunk: int = 5000, stop: threading.Event | None = None) -> int:
    """Delete what the rules above allow; returns how many records. A transaction deletes at most
    ``chunk`` records, so a publisher waits for one chunk at most; ``stop`` ends the pass between two."""
    cutoff = int((time.time() - older_than_s) * 1000)
    deleted = 0
    for topic, partition, bound in _bounds(db):
        if stop is not None and stop.is_set():
            break
        deleted += _trim(db, topic, partition, bound, cutoff, chunk, stop)
    return deleted


def _bounds(db: Db) -> list[tuple[str, int, int]]:
    """(topic, partition, first offset to keep whatever its age) per partition holding records.

    Read outside the deletes: a bound only grows afterwards (commits only move forward and the
    newest record stays), so a stale one deletes less, never too much."""
    conn = db.conn()
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
                conn.execute("SELECT grp, next_offset FROM offsets WHERE topic=? AND partition=?", (topic, partition))
            )
            bounds.append((topic, partition, min([int(newest)] + [int(committed.get(g, 0)) for g in groups])))
    return bounds


def _trim(db: Db, topic: str, partition: int, bound: int, cutoff_ms: int, chunk: int,
          stop: threading.Event | None) -> int:
    """Delete the partition's leading records below ``bound`` stamped before ``cutoff_ms``."""
    deleted = 0
    while True:
        with Tx(db.conn()) as conn:
            rows = conn.execute(
                "SELECT offset, ts FROM log WHERE topic=? AND partition=? AND offset<? ORDER BY offset LIMIT ?",
                (topic, partition, bound, chunk),
            ).fetchall()
            old = list(itertools.takewhile(lambda row: row[1] < cutoff_ms, rows))
            if old:
                conn.execute("DELETE FROM log WHERE topic=? AND partition=? AND offset<=?",
                             (topic, partition, old[-1][0]))
        deleted += len(old)
        if len(old) < chunk or (stop is not None and stop.is_set()):
            return deleted


def claim_pass(db: Db, every_s: float, now: float) -> bool:
    """True if no pass started in the last ``every_s`` seconds (by any process): this one is then
    recorded as started now. A start in the future (a clock set back) does not hold passes up."""
    with Tx(db.conn()) as conn:
        row = conn.execute("SELECT at FROM housekeeping WHERE name='retention'").fetchone()
        if row is not None and 0 <= now - float(row[0]) < every_s:
            return False
        conn.execute("INSERT OR REPLACE INTO housekeeping(name, at) VALUES ('retention', ?)", (now,))
        return True


class Pruner:
    """Runs a retention pass of one bus in the background when one is due. Thread-safe.

    ``poke`` costs a clock read until a pass is due here (``every_s`` after the last one this process
    tried); it then starts the pass on a thread of its own and returns at once. A failed pass is
    logged and retried at the next interval; nothing else notices it."""

    def __init__(self, db: Db, retention_s: float, every_s: float = PRUNE_EVERY_S) -> None:
        self.db, self.retention_s, self.every_s = db, retention_s, every_s
        self._due = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poke(self) -> None:
        if self.retention_s <= 0 or time.monotonic() < self._due:
            return
        with self._lock:
            if time.monotonic() < self._due or (self._thread and self._thread.is_alive()):
                return
            self._due = time.monotonic() + self.every_s
            self._thread = threading.Thread(target=self._pass, name="bus-retention", daemon=True)
            self._thread.start()

    def _pass(self) -> None:
        try:
            if claim_pass(self.db, self.every_s, time.time()):
                deleted = prune(self.db, self.retention_s, stop=self._stop)
                if deleted:
                    log.info("embedded bus retention: deleted %d records", deleted)
        except Exception as exc:  # noqa: BLE001 - housekeeping: the next pass retries, the stages go on
            log.warning("embedded bus retention pass failed (retried in %.0f s): %s", self.every_s, exc)
        finally:
            self.db.close()  # this thread's connection

    def close(self, patience: float = 5.0) -> None:
        """Start no more passes; let a running one finish for ``patience`` seconds, then stop it after
        its current chunk and wait for that. Idempotent."""
        with self._lock:
            self._due = float("inf")
            thread = self._thread
        if thread is not None:
            thread.join(patience)
            self._stop.set()
            thread.join()
