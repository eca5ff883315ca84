"""The IMAP connector: every mail in the watched folders becomes exactly one message on the bus.

Per folder, one pass:

1. connect and log in (password or XOAUTH2), select the folder;
2. choose the UIDs to import: after the checkpoint's highest handled UID; on first start (or a
   UIDVALIDITY change) what is unseen, plus seen mail since ``backfill_since`` if configured;
3. fetch in batches (``BODY.PEEK[]``: fetching never sets \\Seen), parse, publish the batch —
   messages to the inbound topic, unparseable or oversized mail as dead-letter records — and
   wait until the bus has it (mails are parsed on a few threads, and the next batch is fetched
   while this one is parsed: at most two batches are in memory);
4. only then mark the batch Seen / move it / delete it, and then advance the checkpoint.

Crash between 3 and 4 (or 4 and the checkpoint): the batch is fetched and published again with the
same ids (the Message-ID, or a hash of the bytes), which downstream stages treat as no-ops. A
UIDVALIDITY change re-scans the folder the same way. Rejected mail is still flagged, so it
cannot loop. Then IDLE (re-issued before the 29-minute limit) or polling waits for new mail; any
connection error reconnects with exponential backoff.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import ssl
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError, LoginError

from frontdesk.bus.base import Bus, Outgoing
from frontdesk.codec import encode
from frontdesk.errors import SourceAuthError, SourceError, TransientError
from frontdesk.faults import crashpoint
from frontdesk.messages import DeadLetter
from ingest.blobs import BlobStore
from ingest.imap_settings import MailboxSettings
from ingest.mail.parse import MailLimits, MailRejected, parse_mail

log = logging.getLogger(__name__)

# Mails are parsed on this many threads: parsing is CPU (one core under the GIL), but storing the
# blobs of one mail (fsync) overlaps with parsing the next, and the IMAP round trips and the
# publish of one batch overlap with parsing the next batch.
PARSE_THREADS = 4


@dataclass
class Health:
    """Per-mailbox state for metrics and the status line."""

    last_success: datetime | None = None
    consecutive_failures: int = 0
    auth_failures: int = 0
    published: int = 0
    dead_lettered: int = 0
    last_error: str | None = None


@dataclass
class Checkpoint:
    uidvalidity: int | None = None
    last_uid: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class CheckpointStore:
    """One small JSON file per (mailbox, folder), replaced atomically and fsynced."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, mailbox: str, folder: str) -> Path:
        safe = base64.urlsafe_b64encode(folder.encode()).decode().rstrip("=")
        return self.directory / f"{mailbox}.{safe}.json"

    def load(self, mailbox: str, folder: str) -> Checkpoint:
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


class MailboxConnector:
    """Imports one mailbox (all its folders). ``run_once`` is one pass; ``run`` loops with IDLE."""

    def __init__(self, box: MailboxSettings, bus: Bus, checkpoints: CheckpointStore, blobs: BlobStore | None,
                 limits: MailLimits, *, reconnect: tuple[float, float] = (1.0, 300.0)) -> None:
        self.box, self.bus, self.checkpoints, self.blobs, self.limits = box, bus, checkpoints, blobs, limits
        self.connector = f"imap:{box.name}"
        self.health = Health()
        self.reconnect = reconnect

    def connect(self) -> IMAPClient:
        box = self.box
        try:
            client = IMAPClient(box.host, box.port, ssl=box.security == "ssl", timeout=box.timeout_s)
            if box.security == "starttls":
                client.starttls(ssl.create_default_context())
            token = box.oauth2_token()
            if token:
                client.oauth2_login(box.username, token)
            else:
                client.login(box.username, box.password.get_secret_value() if box.password else "")
            return client
        except LoginError as exc:
            self.health.auth_failures += 1
            raise SourceAuthError(f"{self.connector}: login rejected: {exc}") from exc
        except (IMAPClientError, OSError, socket.timeout, ssl.SSLError) as exc:
            raise SourceError(f"{self.connector}: cannot connect to {box.host}:{box.port}: {exc}") from exc

    def run_once(self) -> int:
        """One pass over every folder; returns how many records were published."""
        client = self.connect()
        try:
            return sum(self.import_folder(client, folder) for folder in self.box.folders)
        finally:
            _logout(client)

    def import_folder(self, client: IMAPClient, folder: str) -> int:
        try:
            uidvalidity = int(client.select_folder(folder)[b"UIDVALIDITY"])
            uids = self._pending(client, folder, uidvalidity)
            batches = [uids[start : start + self.box.batch] for start in range(0, len(uids), self.box.batch)]
            published = 0
            if batches:
                pool = ThreadPoolExecutor(min(PARSE_THREADS, len(uids)), f"{self.connector}-parse")
                try:
                    # While batch k is parsed, batch k+1 is fetched; while k+1 is parsed, k is published,
                    # flagged and checkpointed. Fetching is BODY.PEEK: it changes nothing on the server.
                    parsing = self._fetch_and_parse(client, batches[0], pool)
                    for index, batch in enumerate(batches):
                        following = (self._fetch_and_parse(client, batches[index + 1], pool)
                                     if index + 1 < len(batches) else [])
                        published += self._import_batch(client, folder, uidvalidity, batch,
                                                        [future.result() for future in parsing])
                        parsing = following
                finally:
                    pool.shutdown(wait=True, cancel_futures=True)
        except (IMAPClientError, OSError, socket.timeout) as exc:
            raise SourceError(f"{self.connector}/{folder}: {exc}") from exc
        self.health.last_success = datetime.now(UTC)
        self.health.consecutive_failures = 0
        return published

    def _pending(self, client: IMAPClient, folder: str, uidvalidity: int) -> list[int]:
        cp = self.checkpoints.load(self.box.name, folder)
        if cp.uidvalidity != uidvalidity:
            if cp.uidvalidity is not None:
                log.warning("%s/%s: UIDVALIDITY changed (%s -> %s): re-scanning", self.connector, folder,
                            cp.uidvalidity, uidvalidity)
            criteria: list[Any] = ["UNSEEN"]
            if self.box.backfill_since:
                criteria = ["OR", "UNSEEN", "SINCE", self.box.backfill_since]
            self.checkpoints.save(self.box.name, folder, Checkpoint(uidvalidity, 0))
            return sorted(client.search(criteria))
        return sorted(u for u in client.search(["UID", f"{cp.last_uid + 1}:*"]) if u > cp.last_uid)

    def _fetch_and_parse(self, client: IMAPClient, uids: list[int],
                         pool: ThreadPoolExecutor) -> list[Future[Outgoing]]:
        """Fetch a batch and start parsing it on ``pool``: one future record per UID, in UID order."""
        sizes = client.fetch(uids, ["RFC822.SIZE"])
        small = [u for u in uids if sizes.get(u, {}).get(b"RFC822.SIZE", 0) <= self.limits.max_message_bytes]
        bodies = client.fetch(small, ["BODY.PEEK[]"]) if small else {}
        return [pool.submit(self._record, uid, bodies.get(uid, {}).get(b"BODY[]"),
                            sizes.get(uid, {}).get(b"RFC822.SIZE", 0)) for uid in uids]

    def _import_batch(self, client: IMAPClient, folder: str, uidvalidity: int, uids: list[int],
                      records: list[Outgoing]) -> int:
        dead = sum(1 for r in records if r.topic == self.bus.topics.deadletter)
        self.health.published += len(records) - dead
        self.health.dead_lettered += dead
        self.bus.publish(records)
        crashpoint("imap.after_publish")
        self._after_import(client, uids)
        self.checkpoints.save(self.box.name, folder, Checkpoint(uidvalidity, max(uids)))
        return len(records)

    def _record(self, uid: int, raw: bytes | None, size: int) -> Outgoing:
        try:
            if raw is None:
                raise MailRejected(f"message is {size / 2**20:.1f} MiB, over the "
                                   f"{self.limits.max_message_bytes / 2**20:.0f} MiB limit")
            msg = parse_mail(raw, connector=self.connector, channel=self.box.channel, blobs=self.blobs,
                             limits=self.limits)
        except MailRejected as exc:
            return self._dead_letter(uid, raw or b"", exc.reason)
        return Outgoing(self.bus.topics.inbound, encode(msg), msg.id.encode(),
                        (("frontdesk-connector", self.connector.encode()), ("frontdesk-imap-uid", str(uid).encode())))

    def _dead_letter(self, uid: int, raw: bytes, reason: str) -> Outgoing:
        kept = raw[: self.limits.max_message_bytes]
        letter = DeadLetter(stage="ingest", reason=reason, error_type="MailRejected",
                            source_topic=f"{self.connector}/uid:{uid}", value_b64=base64.b64encode(kept).decode(),
                            message_id=None, failed_at=datetime.now(UTC))
        return Outgoing(self.bus.topics.deadletter, encode(letter), f"{self.connector}:{uid}".encode(),
                        (("frontdesk-stage", b"ingest"), ("frontdesk-error", b"MailRejected"),
                         ("frontdesk-imap-uid", str(uid).encode())))

    def _after_import(self, client: IMAPClient, uids: list[int]) -> None:
        if self.box.after_import == "seen":
            client.add_flags(uids, [b"\\Seen"], silent=True)
        elif self.box.after_import == "move":
            client.move(uids, self.box.move_to)
        else:
            client.delete_messages(uids, silent=True)
            client.uid_expunge(uids) if client.has_capability("UIDPLUS") else client.expunge()

    def run(self, stop: threading.Event) -> None:
        """Blocking until ``stop``: import, then wait (IDLE or poll); reconnect with backoff."""
        delay = self.reconnect[0]
        while not stop.is_set():
            try:
                self._session(stop)
                delay = self.reconnect[0]
            except (SourceError, TransientError) as exc:
                self.health.consecutive_failures += 1
                self.health.last_error = str(exc)
                log.warning("%s: %s; reconnecting in %.1fs", self.connector, exc, delay)
                stop.wait(delay)
                delay = min(self.reconnect[1], delay * 2)

    def _session(self, stop: threading.Event) -> None:
        client = self.connect()
        try:
            # IDLE watches the selected folder only; several folders are polled.
            idle = self.box.idle and client.has_capability("IDLE") and len(self.box.folders) == 1
            while not stop.is_set():
                for folder in self.box.folders:
                    self.import_folder(client, folder)
                if idle:
                    self._idle(client, stop)
                else:
                    stop.wait(self.box.poll_interval_s)
                    client.noop()
        finally:
            _logout(client)

    def _idle(self, client: IMAPClient, stop: threading.Event) -> None:
        """Wait for new mail with IDLE; returns on news, on stop, or before the renewal deadline."""
        renew_at = time.monotonic() + self.box.idle_renew_s
        try:
            client.idle()
            while not stop.is_set() and time.monotonic() < renew_at:
                if any(r[1] in (b"EXISTS", b"RECENT") for r in client.idle_check(timeout=1.0) if len(r) > 1):
                    break
        except (IMAPClientError, OSError, socket.timeout) as exc:
            raise SourceError(f"{self.connector}: IDLE failed: {exc}") from exc
        finally:
            try:
                client.idle_done()
            except (IMAPClientError, OSError):
                pass


def _logout(client: IMAPClient) -> None:
    try:
        client.logout()
    except (IMAPClientError, OSError, socket.timeout):
        pass
