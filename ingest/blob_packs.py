"""Writing blobs into pack files: :class:`PackWriter` (one-shot or shared), what it stages
(:class:`Staged`) and the blob errors. The store's contract (visibility, durability, sweeping) is
in :mod:`ingest.blobs`, which is the module to import."""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from frontdesk.errors import FrontdeskError, TransientError

if TYPE_CHECKING:
    from ingest.blobs import BlobStore

REF_PREFIX = "sha256:"
PACKS = "packs"
ROTATE_AFTER_S = 600.0  # a shared writer's pack takes no blob after this: well before a sweep may see it
PACK_MAX_BYTES = 64 * 1024 * 1024


class BlobError(FrontdeskError):
    """A blob reference is malformed, or a stored blob is missing or corrupt."""


class BlobNotFound(BlobError, KeyError):
    """No blob is stored under this reference."""


class BlobWriteFailed(BlobError, TransientError):
    """The blob could not be written (disk full, permissions); retrying later may succeed."""


def blob_ref(data: bytes) -> str:
    """The reference ``sha256:<hex>`` that ``data`` has (or would have) in any blob store."""
    return REF_PREFIX + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, slots=True)
class Staged:
    """A blob written but not yet committed; ``pack`` is None when the blob was stored already;
    ``shared``: the pack holds other chunks' blobs too (discarding leaves it). Plain values, so it
    crosses process boundaries cheaply."""

    ref: str
    pack: str | None = None
    offset: int = 0
    length: int = 0
    shared: bool = False


class PackWriter:
    """Appends staged blobs to a pack file (created on the first new blob). Not thread-safe.

    One-shot (default): one new pack, each blob written through at once; all its blobs are
    committed or discarded together. ``shared``: long-lived, for one process's many chunks of
    work: blobs are buffered until :meth:`flush`, which the owner calls at the end of each chunk,
    before handing its staged blobs on; a chunk that starts after ``ROTATE_AFTER_S`` or
    ``PACK_MAX_BYTES``, or after a failed write, goes to a new pack."""

    def __init__(self, store: BlobStore, *, shared: bool = False) -> None:
        self.store = store
        self.shared = shared
        self._file: object | None = None
        self._pending = False  # bytes added since the last flush
        self._start()

    def _start(self) -> None:
        self.name = f"{time.time_ns():x}-{os.getpid()}-{uuid.uuid4().hex[:12]}.pack"
        self._opened_at = time.monotonic()
        self._size = 0
        self._written: dict[str, Staged] = {}
        self._failed: str | None = None

    @property
    def size(self) -> int:
        """Bytes staged in the current pack."""
        return self._size

    def add(self, data: bytes, *, again: bool = False) -> Staged:
        """Stage ``data`` (nothing written if it is stored already, unless ``again``: compaction
        copies stored blobs). Raises BlobWriteFailed."""
        digest = hashlib.sha256(data).hexdigest()
        if self.shared and not self._pending and self._due():
            self._rotate()
        if digest in self._written:
            return self._written[digest]
        try:
            if not again and self.store._stored(digest):
                return Staged(REF_PREFIX + digest)
        except sqlite3.Error as exc:
            raise BlobWriteFailed(f"cannot read the blob index: {exc}") from exc
        if self._failed is not None:  # the pack's tail is unknown after a failed write: no more appends
            raise BlobWriteFailed(f"cannot store blob sha256:{digest}: {self._failed}")
        try:
            if self._file is None:
                os.makedirs(os.path.join(self.store.root, PACKS), exist_ok=True)
                self._file = open(os.path.join(self.store.root, PACKS, self.name), "xb",  # noqa: SIM115
                                  buffering=256 * 1024)
            self._pending = True
            self._file.write(data)  # type: ignore[attr-defined]
            if not self.shared:
                self._flush()
        except OSError as exc:
            self._failed = str(exc)
            raise BlobWriteFailed(f"cannot store blob sha256:{digest}: {exc}") from exc
        staged = Staged(REF_PREFIX + digest, self.name, self._size, len(data), self.shared)
        self._size += len(data)
        self._written[digest] = staged
        return staged

    def flush(self) -> None:
        """Write out the blobs added since the last flush (not synced: ``BlobStore.commit`` does
        that). Raises BlobWriteFailed: then none of them may be committed."""
        try:
            if self._failed is not None and self._pending:
                raise OSError(self._failed)
            self._flush()
        except OSError as exc:
            name = self.name
            self._rotate()  # the pack's tail is unknown: the next blobs go to a new one
            raise BlobWriteFailed(f"cannot store blobs in pack {name}: {exc}") from exc

    def _flush(self) -> None:
        if self._file is not None and self._pending:
            self._file.flush()  # type: ignore[attr-defined]
        self._pending = False

    def _due(self) -> bool:
        """Time for a new pack: after any failure (also one to create the file: without this the
        writer would refuse every blob until its process ends), or when this one is full or old."""
        return self._failed is not None or (self._file is not None and (
            self._size >= PACK_MAX_BYTES or time.monotonic() - self._opened_at >= ROTATE_AFTER_S))

    def _rotate(self) -> None:
        self.close()
        self._start()

    def close(self) -> None:
        """Close the pack file (flushed blobs stay valid; unflushed ones of a shared writer do not:
        call :meth:`flush` first); a pack with nothing in it is removed."""
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()  # type: ignore[attr-defined]
            if not self._written:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self.store.root, PACKS, self.name))
            self._file = None
        self._pending = False
