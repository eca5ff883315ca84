"""Where each IMAP folder's import stands: the checkpoint (UIDVALIDITY and the highest UID handled),
the mail still pending, and each mailbox's health.

A checkpoint only ever advances after the mail up to it is on the bus and flagged, so losing the
latest save (a crash right after it) only re-imports a batch, with the same ids.
"""

from __future__ import annotations

import base64
import json
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path


@dataclass(frozen=True)
class Checkpoint:
    """``last_uid``: every UID up to it is handled, under ``uidvalidity`` (None: never imported)."""

    uidvalidity: int | None = None
    last_uid: int = 0


class CheckpointStore:
    """One small JSON file per (mailbox, folder), replaced atomically and fsynced (blocking)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, mailbox: str, folder: str) -> Path:
        safe = base64.urlsafe_b64encode(folder.encode()).decode().rstrip("=")
        return self.directory / f"{mailbox}.{safe}.json"

    def load(self, mailbox: str, folder: str) -> Checkpoint:
        """The saved checkpoint, or an empty one if there is none."""
        try:
            data = json.loads(self._path(mailbox, folder).read_text())
            return Checkpoint(data.get("uidvalidity"), int(data.get("last_uid", 0)))
        except FileNotFoundError:
            return Checkpoint()

    def save(self, mailbox: str, folder: str, cp: Checkpoint) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self._path(mailbox, folder)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w") as fh:
            json.dump({"uidvalidity": cp.uidvalidity, "last_uid": cp.last_uid}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)


class CheckpointSaver:
    """Saves one folder's checkpoints in order on a thread of its own, so that the connector
    thread does not wait for each fsync. A crash can lose the saves still queued: the mail after
    the last durable checkpoint is imported again, with the same ids (module docstring)."""

    def __init__(self, store: CheckpointStore, mailbox: str, folder: str) -> None:
        self._store, self._mailbox, self._folder = store, mailbox, folder
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"checkpoint-{mailbox}")
        self._last: Future[None] | None = None

    def save(self, cp: Checkpoint) -> None:
        """Queue ``cp`` (non-blocking); raises the OSError of the save before it, if that failed."""
        if self._last is not None and self._last.done():
            self._last.result()
        self._last = self._executor.submit(self._store.save, self._mailbox, self._folder, cp)

    def close(self, *, check: bool = True) -> None:
        """Wait until the queued saves are done (blocking); ``check``: raise the last one's OSError."""
        self._executor.shutdown(wait=True)
        if check and self._last is not None:
            self._last.result()


@dataclass(frozen=True, slots=True)
class PendingMail:
    """A mail to import, as FETCH (RFC822.SIZE INTERNALDATE) describes it."""

    uid: int
    size: int
    date: datetime | None


def aware(value: object) -> datetime | None:
    """An INTERNALDATE as an aware UTC datetime (None if the server gave none)."""
    if not isinstance(value, datetime):
        return None
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


def oldest_from(mails: list[PendingMail]) -> list[datetime | None]:
    """``result[i]``: the oldest INTERNALDATE among ``mails[i:]`` (None if none has one)."""
    oldest: list[datetime | None] = [None] * (len(mails) + 1)
    for index in range(len(mails) - 1, -1, -1):
        date, after = mails[index].date, oldest[index + 1]
        oldest[index] = date if after is None or (date is not None and date < after) else after
    return oldest


@dataclass
class Health:
    """Per-mailbox state for metrics and the status line."""

    last_success: datetime | None = None
    consecutive_failures: int = 0
    auth_failures: int = 0
    published: int = 0
    dead_lettered: int = 0
    last_error: str | None = None
    # INTERNALDATE of the oldest mail found on the server and not yet handled (None: caught up)
    oldest_unprocessed_at: datetime | None = None
