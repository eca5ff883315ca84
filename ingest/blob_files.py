"""Filesystem side of the blob store (:mod:`ingest.blobs`): making files durable, creating the index.

"Synced" is one ``syncfs(2)`` of the blob filesystem where the C library has it (Linux); it beat
an ``fsync`` per file on the 2-core VM, by 3x under other processes' writes
(``bench.intake --blob-sync fsync``). Elsewhere: an ``fsync`` per pack and of the directories.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sqlite3
import uuid
from collections.abc import Callable

SCHEMA = """
CREATE TABLE IF NOT EXISTS blobs (digest TEXT PRIMARY KEY, pack TEXT NOT NULL, offset INTEGER NOT NULL,
                                  length INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS packs (name TEXT PRIMARY KEY, committed_at REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS seen (digest TEXT PRIMARY KEY, at REAL NOT NULL) WITHOUT ROWID;
"""


def create_index(path: str) -> None:
    """Create the index whole — WAL mode (persistent) and tables — under a temporary name, then
    link it into place: concurrent openers never see a half-made index, and of two racing
    creators one wins (``link`` fails if the name exists) and the other's empty copy is dropped."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temp = f"{path}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    try:
        conn = sqlite3.connect(temp)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(SCHEMA)
        finally:
            conn.close()  # checkpoints and removes its -wal/-shm files; the header keeps WAL mode
        with contextlib.suppress(FileExistsError):
            os.link(temp, path)
    finally:
        for leftover in (temp, temp + "-wal", temp + "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)


def _load_syncfs() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None, use_errno=True).syncfs  # type: ignore[no-any-return]
    except (OSError, AttributeError):  # not Linux/glibc: fsync file by file
        return None


_syncfs = _load_syncfs()


def sync(root: str, files: list[str]) -> None:
    """Make ``files`` and their directory entries durable: one ``syncfs`` of the filesystem
    holding ``root`` if available, else an ``fsync`` of each file, its directory and ``root``.
    Raises OSError."""
    if _syncfs is not None:
        fd = os.open(root, os.O_RDONLY)
        try:
            if _syncfs(fd) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"syncfs: {os.strerror(err)}")
        finally:
            os.close(fd)
        return
    directories = list(dict.fromkeys([*(os.path.dirname(f) for f in files), root]))
    for path in [*files, *directories]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        except OSError:
            if path in files:  # some filesystems cannot fsync a directory; the files are synced
                raise
        finally:
            os.close(fd)
