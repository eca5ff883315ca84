"""Content-addressed blob store on the local filesystem: pack files plus an SQLite index.

A blob's reference is ``sha256:<hex>`` of its bytes, so the same bytes always get the same
reference and storing them again is a no-op. Layout below ``root``::

    packs/<name>.pack   blobs written back to back; immutable once written
    index.sqlite        digest -> (pack, offset, length), and the committed packs (WAL mode)
    ab/<hex>, ab/cd/<hex>   the earlier one-file-per-blob layouts: still read, never written

Why packs: creating a file cost 0.03-1 ms of kernel CPU on the 2-core VM (ext4, and it varies by
the minute), and a mail has 1.15 blobs on average, so one file per blob cost as much CPU as
parsing the mail (``bench.intake``). A parser process appends the blobs of all its chunks of mail
to one pack of its own (a *shared* writer, :meth:`BlobStore.writer`), flushed once per chunk and
replaced by a new one every ``ROTATE_AFTER_S`` or ``PACK_MAX_BYTES``.

Visibility and durability: a blob exists once its index row is committed, never before. Writing
is :meth:`BlobStore.writer` / :meth:`BlobStore.stage` (any process: bytes appended to a pack,
neither synced nor indexed; a byte once written is never changed) followed by
:meth:`BlobStore.commit` (in the process that then publishes): one filesystem sync makes the
packs' bytes and directory entries durable, then one SQLite transaction (``synchronous=FULL``: durable when it returns) indexes them. So when
``commit``, :meth:`BlobStore.put` or :meth:`BlobStore.put_many` returns, every blob given survives
a crash or power loss — also those that were stored already (the sync covers them too) — and a
record published after the call never references a blob that a crash could take away.

Retention (:meth:`BlobStore.expire`, ``frontdesk blobs expire``): a blob last stored longer ago
than the retention is erased, its bytes too (:mod:`ingest.blob_expire`). Storing bytes that are
stored already writes nothing but makes the blob young again (table ``seen``).

"Synced" is one ``syncfs(2)`` where available, else an ``fsync`` per pack and directory
(:mod:`ingest.blob_files`, which also creates the index).

A crash before ``commit`` returns leaves at most unindexed bytes: invisible and harmless (the
next write of the same bytes writes them again); :meth:`BlobStore.sweep` deletes packs with no
committed blob once they are old enough that no writer can still be committing them (a shared
writer stops appending to a pack ``ROTATE_AFTER_S`` after creating it, long before). Discarded
blobs of a shared pack stay in it as unindexed bytes; duplicate bytes in two packs (two writers
racing) likewise: they cost space, never correctness: the first indexed copy is the blob.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from ingest import blob_expire, blob_files
from ingest.blob_expire import SEEN_SCHEMA, ExpireReport
from ingest.blob_files import create_index
from ingest.blob_packs import (PACK_MAX_BYTES, PACKS, REF_PREFIX, ROTATE_AFTER_S, BlobError, BlobNotFound,
                               BlobWriteFailed, PackWriter, Staged, blob_ref)

__all__ = ["INDEX", "PACKS", "PACK_MAX_BYTES", "REF_PREFIX", "ROTATE_AFTER_S", "SWEEP_AFTER_S", "BlobError",
           "BlobNotFound", "BlobStore", "BlobWriteFailed", "ExpireReport", "PackWriter", "Staged", "blob_ref"]

log = logging.getLogger(__name__)

INDEX = "index.sqlite"
SWEEP_AFTER_S = 3600.0  # an unindexed pack this old is no writer's: staging to commit takes seconds
_REF_RE = re.compile(r"^sha256:([0-9a-f]{64})$")


class BlobStore:
    """Immutable, content-addressed blobs below ``root`` (created on first write).

    Safe to share between threads (one SQLite connection per thread); several processes may
    write the same root.
    """

    def __init__(self, root: Path) -> None:
        self.root = str(root)
        self._local = threading.local()
        self._legacy: bool | None = None

    def put(self, data: bytes) -> str:
        """Store ``data`` and return its reference; idempotent, atomic and durable on return."""
        return self.put_many([data])[0]

    def put_many(self, items: Iterable[bytes]) -> list[str]:
        """Store every blob of ``items`` (one pack); their references, in order. Idempotent, all
        durable on return (module docstring); blocks for a filesystem sync and an SQLite commit.
        Raises BlobWriteFailed (transient), having removed what it wrote."""
        writer = self.writer()
        try:
            staged = [writer.add(data) for data in items]
        except BaseException:
            writer.close()
            self.discard([Staged("", writer.name)])
            raise
        writer.close()
        self.commit(staged)
        return [s.ref for s in staged]

    def writer(self, *, shared: bool = False) -> PackWriter:
        """A writer that stages blobs into one new pack (``shared``: a long-lived one, see
        :class:`PackWriter`); :meth:`commit` or :meth:`discard` what it staged."""
        return PackWriter(self, shared=shared)

    def stage(self, data: bytes) -> Staged:
        """Stage one blob in a pack of its own (see :meth:`writer` for many). Raises BlobWriteFailed."""
        writer = self.writer()
        try:
            return writer.add(data)
        finally:
            writer.close()

    def commit(self, staged: Sequence[Staged]) -> None:
        """Make staged blobs durable and visible: sync the filesystem (their packs, and the blobs
        that were stored already), then index the packs' blobs in one transaction. On return the
        contract of :meth:`put_many` holds. Raises BlobWriteFailed, having removed the packs."""
        if not staged:
            return
        packs = sorted({s.pack for s in staged if s.pack is not None})
        again = sorted({s.ref[len(REF_PREFIX):] for s in staged if s.pack is None})
        try:
            blob_files.sync(self.root, [os.path.join(self.root, PACKS, p) for p in packs])
            now = time.time()
            with self._connection(create=True) as conn:
                if packs:
                    rows = {s.ref[len(REF_PREFIX):]: (s.pack, s.offset, s.length) for s in staged if s.pack}
                    conn.executemany("INSERT OR IGNORE INTO blobs VALUES (?, ?, ?, ?)",
                                     [(d, *row) for d, row in rows.items()])
                    conn.executemany("INSERT INTO packs VALUES (?, ?) ON CONFLICT(name) DO UPDATE "
                                     "SET committed_at = MAX(committed_at, excluded.committed_at)",
                                     [(p, now) for p in packs])
                if again:
                    self._stored_again(conn, again, now)
        except (OSError, sqlite3.Error, BlobWriteFailed) as exc:
            self.discard(staged)
            if isinstance(exc, BlobWriteFailed):
                raise
            raise BlobWriteFailed(f"cannot store {len(staged)} blob(s) ({staged[0].ref} ...): {exc}") from exc

    def _stored_again(self, conn: sqlite3.Connection, digests: Sequence[str], now: float) -> None:
        """Blobs stored again (deduplicated) are as young as this commit (:mod:`ingest.blob_expire`).
        One that expired since the writer found it is refused, the transaction rolled back: the
        retry stores its bytes anew, so no record names an erased blob."""
        conn.execute(SEEN_SCHEMA)  # indexes made before retention lack it
        marks = ",".join("?" * len(digests))
        conn.execute(f"INSERT INTO seen SELECT digest, ? FROM blobs WHERE digest IN ({marks}) "
                     "ON CONFLICT(digest) DO UPDATE SET at = MAX(at, excluded.at)", (now, *digests))
        found = {row[0] for row in conn.execute(f"SELECT digest FROM blobs WHERE digest IN ({marks})", digests)}
        for digest in (d for d in digests if d not in found):
            legacy = [p for p in self._legacy_paths(digest) if os.path.exists(p)] if self._has_legacy() else []
            if not legacy:
                raise BlobWriteFailed(f"blob sha256:{digest} expired while it was being stored again: retry")
            os.utime(legacy[0], (now, now))

    def expire(self, older_than_s: float, *, now: float | None = None, dry_run: bool = False) -> ExpireReport:
        """Erase blobs last stored more than ``older_than_s`` ago: :func:`ingest.blob_expire.expire`."""
        return blob_expire.expire(self, older_than_s, now=now, dry_run=dry_run)

    def discard(self, staged: Iterable[Staged]) -> None:
        """Remove the packs of staged blobs that were not committed (best effort, never raises);
        a shared writer's pack stays (other chunks' blobs are in it): its bytes are just not indexed."""
        for pack in {s.pack for s in staged if s.pack is not None and not s.shared}:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.root, PACKS, pack))

    def get(self, ref: str) -> bytes:
        """The bytes of ``ref``; BlobNotFound if absent, BlobError if the content does not match."""
        digest = _digest(ref)
        try:
            try:
                data = self._read(digest)
            except FileNotFoundError:  # its pack was compacted since the lookup: look again
                data = self._read(digest)
        except FileNotFoundError as exc:
            raise BlobNotFound(ref) from exc
        except (OSError, sqlite3.Error) as exc:
            raise BlobError(f"cannot read blob {ref}: {exc}") from exc
        if blob_ref(data) != ref:
            raise BlobError(f"blob {ref} is corrupt: its content has a different hash")
        return data

    def _read(self, digest: str) -> bytes:
        row = self._lookup(digest)
        if row is None:
            return self._read_legacy(digest)
        with open(os.path.join(self.root, PACKS, row[0]), "rb") as handle:
            handle.seek(row[1])
            return handle.read(row[2])

    def exists(self, ref: str) -> bool:
        """Whether a blob is stored (committed) under ``ref``."""
        try:
            return self._stored(_digest(ref))
        except sqlite3.Error as exc:
            raise BlobError(f"cannot read the blob index: {exc}") from exc

    def sweep(self, older_than_s: float = SWEEP_AFTER_S) -> int:
        """Delete packs that were never committed (a writer crashed or discarded them) and are
        older than ``older_than_s``; returns how many. Safe while others write (module docstring)."""
        folder = os.path.join(self.root, PACKS)
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            return 0
        with self._connection(create=True) as conn:
            committed = {row[0] for row in conn.execute("SELECT name FROM packs")}
        cutoff, removed = time.time() - older_than_s, 0
        for name in set(names) - committed:
            path = os.path.join(folder, name)
            with contextlib.suppress(OSError):
                if os.stat(path).st_mtime < cutoff:
                    os.unlink(path)
                    removed += 1
        return removed

    def _stored(self, digest: str) -> bool:
        if self._lookup(digest) is not None:
            return True
        return self._has_legacy() and any(os.path.exists(p) for p in self._legacy_paths(digest))

    def _lookup(self, digest: str) -> tuple[str, int, int] | None:
        conn = self._connection(create=False)
        if conn is None:
            return None
        return conn.execute("SELECT pack, offset, length FROM blobs WHERE digest = ?", (digest,)).fetchone()

    def _has_legacy(self) -> bool:
        if self._legacy is None:  # the old layouts are only ever read, so one look suffices
            with contextlib.suppress(OSError):
                self._legacy = any(len(n) == 2 for n in os.listdir(self.root))
        return bool(self._legacy)

    def _legacy_paths(self, digest: str) -> list[str]:
        return [os.path.join(self.root, digest[:2], digest), os.path.join(self.root, digest[:2], digest[2:4], digest)]

    def _read_legacy(self, digest: str) -> bytes:
        for path in self._legacy_paths(digest):
            with contextlib.suppress(FileNotFoundError):
                with open(path, "rb") as handle:
                    return handle.read()
        raise FileNotFoundError(digest)

    def _connection(self, *, create: bool) -> sqlite3.Connection:
        """This thread's connection to the index (None if there is none yet and not ``create``).
        Nobody sets a pragma that needs a lock: the index is born in WAL mode with its tables."""
        local = self._local
        conn = getattr(local, "conn", None)
        if conn is not None and local.pid == os.getpid():
            return conn
        path = os.path.join(self.root, INDEX)
        try:
            if not os.path.exists(path):
                if not create:
                    return None  # type: ignore[return-value]
                create_index(path)
            conn = sqlite3.connect(path, timeout=30.0)
            conn.execute("PRAGMA synchronous=FULL")  # a commit is durable when it returns
        except (OSError, sqlite3.Error) as exc:
            raise BlobWriteFailed(f"cannot open the blob index {path}: {exc}") from exc
        local.conn, local.pid = conn, os.getpid()
        return conn


def _digest(ref: str) -> str:
    match = _REF_RE.match(ref)
    if match is None:
        raise BlobError(f"not a blob reference: {ref[:80]!r}")
    return match.group(1)
