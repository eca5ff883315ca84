"""Retention for the blob store: blobs not stored for ``older_than_s`` are erased, bytes included.

Raw mail and attachments (passports sent for verification among them) must not be kept forever.
A blob's age is the last time it was stored: its pack's last commit, or, when the same bytes were
stored again later (deduplicated: nothing written), the time of that commit (table ``seen``,
:meth:`ingest.blobs.BlobStore.commit`). :func:`expire`, one run at a time per store (a lock file):

1. one index transaction deletes the rows of every blob older than the cutoff (from then on
   ``get`` raises BlobNotFound);
2. each pack last committed before the cutoff is removed: a pack no row names any more is
   deleted (file, then its row); one that still holds live blobs (stored again since) is
   *compacted*: they are copied into a new pack, synced, the rows moved to it in one
   transaction, then the old pack is deleted; so expired bytes do not stay on disk in a pack
   kept alive by its neighbours;
3. files of the earlier one-file-per-blob layouts older than the cutoff are deleted.

Crash at any point: rows deleted stay deleted; a compacted pack not yet indexed is an uncommitted
pack that ``sweep`` removes; an old pack whose rows were moved is deleted by the next run. A reader
that looked a blob up in a pack just compacted looks it up again (``BlobStore.get``). A writer whose
deduplicated blob expired between its check and its commit gets BlobWriteFailed (transient) and
stores the bytes again on retry, so a record never names an erased blob.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from frontdesk.errors import ConfigError
from ingest import blob_files
from ingest.blob_packs import PACKS, ROTATE_AFTER_S, BlobError

if TYPE_CHECKING:
    from ingest.blobs import BlobStore

log = logging.getLogger(__name__)

MIN_RETENTION_S = 86_400.0  # far beyond ROTATE_AFTER_S: no writer still appends to a pack this old
SEEN_SCHEMA = "CREATE TABLE IF NOT EXISTS seen (digest TEXT PRIMARY KEY, at REAL NOT NULL) WITHOUT ROWID"
_EXPIRED = """SELECT b.digest, b.length FROM blobs b JOIN packs p ON p.name = b.pack
              LEFT JOIN seen s ON s.digest = b.digest WHERE COALESCE(s.at, p.committed_at) < ?"""
assert MIN_RETENTION_S > 10 * ROTATE_AFTER_S


@dataclass(frozen=True, slots=True)
class ExpireReport:
    """What :func:`expire` removed (or, with ``dry_run``, would remove: packs are then not counted)."""

    blobs: int = 0
    bytes: int = 0
    packs_deleted: int = 0
    packs_compacted: int = 0
    bytes_copied: int = 0
    legacy_files: int = 0


def expire(store: BlobStore, older_than_s: float, *, now: float | None = None, dry_run: bool = False) -> ExpireReport:
    """Erase blobs last stored more than ``older_than_s`` seconds before ``now`` (module doc).
    Blocking; idempotent; safe while others read and write the store. Raises ConfigError for a
    retention under a day, BlobError if another expiry runs or the store cannot be changed."""
    if older_than_s < MIN_RETENTION_S:
        raise ConfigError(f"blob retention must be at least {MIN_RETENTION_S / 86_400:.0f} day, "
                          f"not {older_than_s / 86_400:.3g}")
    cutoff = (time.time() if now is None else now) - older_than_s
    conn = store._connection(create=False)
    if conn is None:
        return ExpireReport(legacy_files=_expire_legacy(store.root, cutoff, dry_run))
    try:
        with _exclusive(store.root):
            conn.execute(SEEN_SCHEMA)
            blobs, size = _delete_rows(conn, cutoff, dry_run)
            deleted = compacted = copied = 0
            if not dry_run:
                for pack, live in _old_packs(conn, cutoff):
                    if live:
                        copied, compacted = copied + _compact(store, conn, pack), compacted + 1
                    else:
                        _delete_pack(store.root, conn, pack)
                        deleted += 1
            legacy = _expire_legacy(store.root, cutoff, dry_run)
    except (OSError, sqlite3.Error) as exc:
        raise BlobError(f"cannot expire blobs in {store.root}: {exc}") from exc
    return ExpireReport(blobs, size, deleted, compacted, copied, legacy)


@contextlib.contextmanager
def _exclusive(root: str) -> Iterator[None]:
    """One expiry at a time per store (two compacting the same pack would race)."""
    with open(os.path.join(root, "expire.lock"), "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise BlobError(f"another blob expiry is running on {root}") from exc
        yield


def _delete_rows(conn: sqlite3.Connection, cutoff: float, dry_run: bool) -> tuple[int, int]:
    """Step 1, in one write transaction (so no commit can refresh a blob between choosing and deleting)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        rows = conn.execute(_EXPIRED, (cutoff,)).fetchall()
        if not dry_run and rows:
            conn.execute(f"DELETE FROM blobs WHERE digest IN (SELECT digest FROM ({_EXPIRED}))", (cutoff,))
            conn.execute("DELETE FROM seen WHERE digest NOT IN (SELECT digest FROM blobs)")
        conn.execute("ROLLBACK" if dry_run else "COMMIT")
    except BaseException:
        conn.rollback()
        raise
    return len(rows), sum(r[1] for r in rows)


def _old_packs(conn: sqlite3.Connection, cutoff: float) -> list[tuple[str, int]]:
    """Packs last committed before the cutoff, with how many blobs they still hold."""
    return conn.execute("""SELECT p.name, (SELECT COUNT(*) FROM blobs b WHERE b.pack = p.name)
                           FROM packs p WHERE p.committed_at < ? ORDER BY p.name""", (cutoff,)).fetchall()


def _compact(store: BlobStore, conn: sqlite3.Connection, pack: str) -> int:
    """Move ``pack``'s live blobs into a new pack (synced, then indexed), then delete it; the bytes copied."""
    rows = conn.execute("""SELECT b.digest, b.offset, b.length, s.at FROM blobs b LEFT JOIN seen s
                           ON s.digest = b.digest WHERE b.pack = ? ORDER BY b.offset""", (pack,)).fetchall()
    writer = store.writer()
    moved: list[tuple[str, int, float]] = []
    try:
        with open(os.path.join(store.root, PACKS, pack), "rb") as old:
            for digest, offset, length, seen_at in rows:
                old.seek(offset)
                data = old.read(length)
                if hashlib.sha256(data).hexdigest() != digest:
                    log.warning("blob sha256:%s in pack %s is corrupt: not copied, its row is dropped", digest, pack)
                    continue
                staged = writer.add(data, again=True)
                moved.append((digest, staged.offset, seen_at if seen_at is not None else time.time()))
    except FileNotFoundError:
        log.warning("pack %s is missing: its %d blob(s) are lost, their rows are dropped", pack, len(rows))
    finally:
        writer.close()
    if moved:
        blob_files.sync(store.root, [os.path.join(store.root, PACKS, writer.name)])
    with conn:
        conn.executemany("UPDATE blobs SET pack = ?, offset = ? WHERE digest = ? AND pack = ?",
                         [(writer.name, offset, digest, pack) for digest, offset, _ in moved])
        if moved:  # its age: its oldest blob's, so it is compacted again once that one expires
            conn.execute("INSERT INTO packs VALUES (?, ?)", (writer.name, min(at for _, _, at in moved)))
        conn.execute("DELETE FROM blobs WHERE pack = ?", (pack,))  # corrupt or lost: unreadable anyway
    _delete_pack(store.root, conn, pack)
    return writer.size


def _delete_pack(root: str, conn: sqlite3.Connection, pack: str) -> None:
    """The file first: a crash in between leaves a row the next run deletes, never an unindexed old file."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(root, PACKS, pack))
    with conn:
        conn.execute("DELETE FROM packs WHERE name = ? AND NOT EXISTS (SELECT 1 FROM blobs WHERE pack = ?)",
                     (pack, pack))


def _expire_legacy(root: str, cutoff: float, dry_run: bool) -> int:
    """Step 3: ``ab/<hex>`` and ``ab/cd/<hex>`` files last stored (mtime) before the cutoff."""
    removed = 0
    for folder, _, files in os.walk(root):
        rel = os.path.relpath(folder, root)
        if rel == "." or rel.split(os.sep)[0] == PACKS:
            continue
        for name in files:
            path = os.path.join(folder, name)
            if len(name) == 64 and os.stat(path).st_mtime < cutoff:
                if not dry_run:
                    os.unlink(path)
                removed += 1
    return removed
