"""Content-addressed blob store on the local filesystem.

A blob is stored once under its SHA-256: ``root/ab/<hex>`` where ``ab`` is the first byte of the
hex digest (256 directories, like git's objects). Its reference is ``sha256:<hex>``, so the same
bytes always get the same reference and storing them again is a no-op. Blobs stored under the
earlier two-level layout (``root/ab/cd/<hex>``) are still found; new ones never go there, because
65,536 leaf directories meant a new directory for almost every blob of a young store, and
creating it cost more CPU (0.5-0.7 ms on the 2-core VM) than parsing the mail.

Writes are atomic: the bytes go to a temporary file in the target directory, are made durable,
and only then renamed into place. A reader therefore sees either nothing or the complete blob,
even if the writer is killed half-way.

Durability contract (what the IMAP connector relies on): when :meth:`BlobStore.put` or
:meth:`BlobStore.put_many` returns, every blob it was given survives a crash or power loss —
its content and every directory entry on its path — including blobs that were already there
(their directory entries are synced too, because another writer may have renamed them into
place without having synced its directory yet). So a record published *after* the call never
references a blob that a crash could take away. ``put_many`` gets there with two syncs per call
instead of two per blob: all temporary files are written, synced, renamed, then the directories
are synced. It is :meth:`BlobStore.stage` (write a temporary file; any process, e.g. the IMAP
parser processes) followed by :meth:`BlobStore.commit` (the syncs and renames, in the process that
then publishes): the same contract holds when ``commit`` returns.

"Synced" is one ``syncfs(2)`` of the blob filesystem where the C library has it (Linux). It
flushes that whole filesystem, other writers' data included, yet on the 2-core VM it beat a
``fsync`` per file and directory both on a quiet disk and, by 3x, under other processes' writes
(``bench.intake --blob-sync fsync``). Elsewhere: an ``fsync`` per file and per directory.

A crash before the call returns leaves at most orphan blobs and stray ``.tmp-*`` files, which
are harmless: the next write of the same bytes finds the blob complete or writes it again.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from frontdesk.errors import FrontdeskError, TransientError

REF_PREFIX = "sha256:"
_REF_RE = re.compile(r"^sha256:([0-9a-f]{64})$")


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
    """A blob written but not yet committed (:meth:`BlobStore.stage`); ``temp`` is None when the blob
    was stored already. Plain strings, so it crosses process boundaries cheaply."""

    ref: str
    target: str
    temp: str | None


class BlobStore:
    """Immutable, content-addressed blobs below ``root`` (created on first write).

    Safe to share between threads; several processes may write the same root.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, ref: str) -> Path:
        """Where the blob ``ref`` is written (whether or not it exists). Raises BlobError if malformed."""
        digest = _digest(ref)
        return self.root / digest[:2] / digest

    def _legacy_path(self, ref: str) -> Path:
        digest = _digest(ref)
        return self.root / digest[:2] / digest[2:4] / digest

    def put(self, data: bytes) -> str:
        """Store ``data`` and return its reference; idempotent, atomic and durable on return."""
        return self.put_many([data])[0]

    def put_many(self, items: Iterable[bytes]) -> list[str]:
        """Store every blob of ``items``; their references, in order. Idempotent, each blob atomic,
        all durable on return (module docstring). Blocks for two filesystem syncs.
        Raises BlobWriteFailed (transient); blobs stored before the failure stay (harmless)."""
        staged: list[Staged] = []
        seen: set[str] = set()
        try:
            for data in items:
                digest = hashlib.sha256(data).hexdigest()
                once = Staged(REF_PREFIX + digest, os.path.join(str(self.root), digest[:2], digest), None)
                staged.append(once if digest in seen else self._stage(digest, data))
                seen.add(digest)
        except BaseException:
            self.discard(staged)
            raise
        self.commit(staged)
        return [s.ref for s in staged]

    def stage(self, data: bytes) -> Staged:
        """The first half of a put, for any process: ``data`` in a temporary file beside its place,
        neither synced nor visible (nothing if the blob is stored already). The caller must
        :meth:`commit` or :meth:`discard` it. Raises BlobWriteFailed."""
        return self._stage(hashlib.sha256(data).hexdigest(), data)

    def _stage(self, digest: str, data: bytes) -> Staged:
        directory = os.path.join(str(self.root), digest[:2])  # strings, not Paths: this runs per mail
        target = os.path.join(directory, digest)
        if os.path.exists(target) or os.path.exists(os.path.join(directory, digest[2:4], digest)):
            return Staged(REF_PREFIX + digest, target, None)
        try:
            os.makedirs(directory, exist_ok=True)
            fd, temp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
            except BaseException:
                os.unlink(temp)
                raise
        except OSError as exc:
            raise BlobWriteFailed(f"cannot store blob sha256:{digest}: {exc}") from exc
        return Staged(REF_PREFIX + digest, target, temp)

    def commit(self, staged: Sequence[Staged]) -> None:
        """Make staged blobs durable and visible: sync their files, rename them into place, sync
        the directories (of those already stored too). Blocks for two filesystem syncs; on return
        the contract of :meth:`put_many` holds. Raises BlobWriteFailed, having removed the temporary
        files that were not renamed yet."""
        if not staged:
            return
        root = str(self.root)
        temps = [(s.temp, s.target) for s in staged if s.temp is not None]
        try:
            try:
                _sync_files(root, [temp for temp, _ in temps])
                for temp, target in temps:
                    os.replace(temp, target)  # atomic on POSIX; a concurrent writer of the same bytes is harmless
            except BaseException:
                self.discard(staged)
                raise
            dirs = sorted({os.path.dirname(s.target) for s in staged})
            _sync_files(root, [root, *dirs], directories=True)
        except OSError as exc:
            raise BlobWriteFailed(f"cannot store {len(temps)} blob(s) ({staged[0].ref} ...): {exc}") from exc

    def discard(self, staged: Iterable[Staged]) -> None:
        """Remove the temporary files of staged blobs that were not committed (best effort)."""
        for s in staged:
            if s.temp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(s.temp)

    def get(self, ref: str) -> bytes:
        """The bytes of ``ref``; BlobNotFound if absent, BlobError if the content does not match."""
        try:
            try:
                data = self.path(ref).read_bytes()
            except FileNotFoundError:
                data = self._legacy_path(ref).read_bytes()
        except FileNotFoundError as exc:
            raise BlobNotFound(ref) from exc
        except OSError as exc:
            raise BlobError(f"cannot read blob {ref}: {exc}") from exc
        if blob_ref(data) != ref:
            raise BlobError(f"blob {ref} is corrupt: its content has a different hash")
        return data

    def exists(self, ref: str) -> bool:
        """Whether a blob is stored under ``ref``."""
        return self.path(ref).exists() or self._legacy_path(ref).exists()


def _digest(ref: str) -> str:
    match = _REF_RE.match(ref)
    if match is None:
        raise BlobError(f"not a blob reference: {ref[:80]!r}")
    return match.group(1)


def _load_syncfs() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None, use_errno=True).syncfs  # type: ignore[no-any-return]
    except (OSError, AttributeError):  # not Linux/glibc: fsync file by file
        return None


_syncfs = _load_syncfs()


def _sync_files(root: str, paths: list[str], *, directories: bool = False) -> None:
    """Make ``paths`` (files, or directories below ``root``) durable: one ``syncfs`` of the
    filesystem holding ``root`` if available, else an ``fsync`` of each. Raises OSError."""
    if not paths:
        return
    if _syncfs is not None:
        fd = os.open(root, os.O_RDONLY)
        try:
            if _syncfs(fd) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"syncfs: {os.strerror(err)}")
        finally:
            os.close(fd)
        return
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        except OSError:
            if not directories:  # some filesystems cannot fsync a directory; its files are synced
                raise
        finally:
            os.close(fd)
