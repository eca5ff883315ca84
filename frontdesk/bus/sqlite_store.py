"""The embedded bus's SQLite file: schema, per-thread connections, write transactions, the
partitioner (Kafka's murmur2 formula, shared with the in-memory bus) and the header encoding.

Tables: ``log`` the records; ``offsets`` each group's committed positions; ``members`` each group's
members and their heartbeats; ``owners`` which member owns which partition (:mod:`frontdesk.bus.sqlite_group`);
``housekeeping`` when the last retention pass started (:mod:`frontdesk.bus.sqlite_retention`)."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

from kafka.partitioner.default import murmur2

from frontdesk.errors import BusError, BusUnavailable

SCHEMA = """
CREATE TABLE IF NOT EXISTS topics (name TEXT PRIMARY KEY, partitions INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS log (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, offset INTEGER NOT NULL,
    key BLOB, value BLOB NOT NULL, headers BLOB, ts INTEGER NOT NULL,
    PRIMARY KEY (topic, partition, offset)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS offsets (
    grp TEXT NOT NULL, topic TEXT NOT NULL, partition INTEGER NOT NULL, next_offset INTEGER NOT NULL,
    PRIMARY KEY (grp, topic, partition)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS members (
    grp TEXT NOT NULL, member TEXT NOT NULL, pid INTEGER NOT NULL, heartbeat REAL NOT NULL,
    PRIMARY KEY (grp, member)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS owners (
    grp TEXT NOT NULL, topic TEXT NOT NULL, partition INTEGER NOT NULL, member TEXT NOT NULL,
    PRIMARY KEY (grp, topic, partition)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS housekeeping (name TEXT PRIMARY KEY, at REAL NOT NULL);
"""


def partition_for(key: bytes | None, partitions: int, fallback: int) -> int:
    """Kafka's default partitioner for keyed records; ``fallback`` spreads keyless ones."""
    if key is None:
        return fallback % partitions
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def encode_headers(headers: Sequence[tuple[str, bytes]]) -> bytes | None:
    if not headers:
        return None
    return b"\n".join(k.encode().hex().encode() + b":" + v.hex().encode() for k, v in headers)


def decode_headers(blob: bytes | None) -> tuple[tuple[str, bytes], ...]:
    if not blob:
        return ()
    pairs = (line.split(b":", 1) for line in blob.split(b"\n"))
    return tuple((bytes.fromhex(k.decode()).decode(), bytes.fromhex(v.decode())) for k, v in pairs)


class Db:
    """One SQLite connection per thread on a shared file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()

    def conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


class Tx:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` with SQLite errors translated at the boundary."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise BusUnavailable(f"embedded bus busy or unavailable: {exc}") from exc
        return self.conn

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc_type is not None:
            self.conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.OperationalError):
                raise BusUnavailable(f"embedded bus write failed: {exc}") from exc
            if isinstance(exc, sqlite3.Error):
                raise BusError(f"embedded bus write failed: {exc}") from exc
            return
        try:
            self.conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise BusUnavailable(f"embedded bus commit failed: {exc}") from exc
