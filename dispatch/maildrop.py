"""A Replier for one-machine trials without an SMTP server or chat platform: acknowledgements
become files — ``.eml`` for email, ``.txt`` (recipient line + text) for chat.

Files are written atomically (temp file + rename) and named after the deterministic Message-ID,
so a repeated send overwrites the same file instead of creating a second one. ``send`` returns
once the file and its directory entry are on disk (fsync): the relay then marks the row sent, and
a power cut must not lose a reply recorded as sent.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from dispatch.base import OutboundReply, Replier
from frontdesk.errors import ReplyError, ReplyUnavailable


class MaildropReplier(Replier):
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def send(self, reply: OutboundReply) -> None:
        name = hashlib.sha256(reply.message_id.encode()).hexdigest()[:24]
        if reply.raw is not None:
            target, data = self.directory / f"{reply.case_reference}-{name}.eml", reply.raw
        elif reply.channel != "email":
            target = self.directory / f"{reply.case_reference}-{name}.txt"
            data = f"To: {reply.connector} {reply.recipient}\n\n{reply.body}\n".encode()
        else:
            raise ReplyError(f"email reply for {reply.case_reference} has no MIME body")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, target)
            except OSError:
                Path(tmp).unlink(missing_ok=True)
                raise
            _sync_directory(self.directory)
        except OSError as exc:
            raise ReplyUnavailable(f"cannot write {target}: {exc}") from exc


def _sync_directory(directory: Path) -> None:
    """fsync a directory, so that a rename into it survives a power cut (a no-op where directories
    cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
