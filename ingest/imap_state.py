"""Where each IMAP folder's import stands: the checkpoint (UIDVALIDITY, the highest UID handled and,
during a first-start scan, where that scan ends), the mail still pending, and each mailbox's health.

A checkpoint only ever advances after the mail up to it is on the bus and flagged (a mail the server
would not hand over is dead-lettered, and at most flagged Seen: :mod:`ingest.imap_isolate`), so losing the
latest save (a crash right after it) only re-imports a batch, with the same ids. An unreadable
checkpoint file is set aside (``*.corrupt``) and the folder scanned as on first start: unseen mail
only (plus ``backfill_since``), each with its stable id.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Checkpoint:
    """``last_uid``: every UID up to it is handled, under ``uidvalidity`` (None: never imported).

    ``scan_until``: set while the scan of a first start (or of a UIDVALIDITY change) is under way:
    the folder's highest UID when it began. Of the UIDs up to it only those the scan selects (unseen;
    seen since ``backfill_since``) are imported; any UID above it is new mail. The scan ends, and
    ``last_uid`` jumps to ``scan_until``, when a pass has handled everything it selected: the mail
    that was already read is never imported later.
    """

    uidvalidity: int | None = None
    last_uid: int = 0
    scan_until: int | None = None

    @property
    def newer_than(self) -> int:
        """Every UID above this one is imported whatever its flags."""
        return self.last_uid if self.scan_until is None else max(self.last_uid, self.scan_until)

    def handled(self, uid: int) -> Checkpoint:
        """After the mail up to ``uid`` (ascending) was handled; the scan ends once ``uid`` reaches its end."""
        scan = self.scan_until if self.scan_until is not None and uid < self.scan_until else None
        return Checkpoint(self.uidvalidity, max(uid, self.last_uid), scan)

    def scanned(self) -> Checkpoint:
        """After a pass that handled everything it selected: no scan under way any more."""
        return Checkpoint(self.uidvalidity, self.newer_than)


class CheckpointStore:
    """One small JSON file per (mailbox, folder), replaced atomically and fsynced (blocking)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, mailbox: str, folder: str, kind: str = "") -> Path:
        safe = base64.urlsafe_b64encode(folder.encode()).decode().rstrip("=")
        return self.directory / f"{mailbox}.{safe}{kind}.json"

    def state_path(self, mailbox: str, folder: str, kind: str) -> Path:
        """Where more state of the folder's import is kept, beside its checkpoint (``kind``: ``.refused``)."""
        return self._path(mailbox, folder, kind)

    def load(self, mailbox: str, folder: str) -> Checkpoint:
        """The saved checkpoint, or an empty one if there is none or it cannot be read (then the file
        is renamed to ``*.corrupt`` and an error logged: the folder is scanned as on first start)."""
        path = self._path(mailbox, folder)
        try:
            data = json.loads(path.read_text())
            scan = data.get("scan_until")
            return Checkpoint(_uid_or_none(data["uidvalidity"]), int(data.get("last_uid", 0)),
                              None if scan is None else int(scan))
        except FileNotFoundError:
            return Checkpoint()
        except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError) as exc:
            log.error("IMAP checkpoint %s is unreadable (%s): set aside, the folder is scanned as on first start",
                      path, exc)
            os.replace(path, path.with_suffix(".corrupt"))
            return Checkpoint()

    def save(self, mailbox: str, folder: str, cp: Checkpoint) -> None:
        write_json(self._path(mailbox, folder),
                   {"uidvalidity": cp.uidvalidity, "last_uid": cp.last_uid, "scan_until": cp.scan_until})


def write_json(path: Path, data: object) -> None:
    """Replace ``path`` with ``data`` as JSON atomically, fsynced (blocking); creates its directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as fh:
        json.dump(data, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _uid_or_none(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"not a UIDVALIDITY: {value!r}")
    return int(value)


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
