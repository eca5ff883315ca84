"""Content-addressed blob store on the local filesystem.

A blob is stored once under its SHA-256: ``root/ab/cd/<hex>`` where ``ab`` and ``cd`` are the
first two byte pairs of the hex digest. Its reference is ``sha256:<hex>``, so the same bytes
always get the same reference and storing them again is a no-op.

Writes are atomic: the bytes go to a temporary file in the target directory, are flushed to
disk, and are renamed into place. A reader therefore sees either nothing or the complete blob,
even if the writer is killed half-way; a stray ``.tmp-*`` file is the worst a crash leaves.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
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


class BlobStore:
    """Immutable, content-addressed blobs below ``root`` (created on first write)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, ref: str) -> Path:
        """Where the blob ``ref`` lives (whether or not it exists). Raises BlobError if malformed."""
        match = _REF_RE.match(ref)
        if match is None:
            raise BlobError(f"not a blob reference: {ref[:80]!r}")
        digest = match.group(1)
        return self.root / digest[:2] / digest[2:4] / digest

    def put(self, data: bytes) -> str:
        """Store ``data`` and return its reference; idempotent, atomic and durable on return."""
        ref = blob_ref(data)
        target = self.path(ref)
        if target.exists():
            return ref
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            self._write_atomically(target, data)
        except OSError as exc:
            raise BlobWriteFailed(f"cannot store blob {ref}: {exc}") from exc
        return ref

    def get(self, ref: str) -> bytes:
        """The bytes of ``ref``; BlobNotFound if absent, BlobError if the content does not match."""
        target = self.path(ref)
        try:
            data = target.read_bytes()
        except FileNotFoundError as exc:
            raise BlobNotFound(ref) from exc
        except OSError as exc:
            raise BlobError(f"cannot read blob {ref}: {exc}") from exc
        if blob_ref(data) != ref:
            raise BlobError(f"blob {ref} is corrupt: its content has a different hash")
        return data

    def exists(self, ref: str) -> bool:
        """Whether a blob is stored under ``ref``."""
        return self.path(ref).exists()

    @staticmethod
    def _write_atomically(target: Path, data: bytes) -> None:
        fd, tmp_name = tempfile.mkstemp(prefix=".tmp-", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            # os.replace is atomic on POSIX; a concurrent writer of the same bytes is harmless.
            os.replace(tmp_name, target)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        _fsync_dir(target.parent)


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable: without this a power loss can forget the new directory entry."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
