"""The IMAP connector: every mail in the watched folders becomes exactly one message on the bus.

Per folder, one pass:

1. connect (implicit TLS, STARTTLS or plain; certificates always verified, against ``ca_file``
   if given) and log in (password or XOAUTH2), select the folder;
2. choose the UIDs to import: after the checkpoint's highest handled UID; on first start (or a
   UIDVALIDITY change) the folder is *scanned*: of the mail already there (up to the UIDNEXT that
   SELECT reported) what is unseen, plus seen mail since ``backfill_since`` if configured, and all
   mail that arrives after it (the scan's end is in the checkpoint, so a crash mid-scan resumes it
   and the mail that was already read is never imported, not even by a later pass);
   FETCH their sizes and INTERNALDATEs (the oldest one not yet handled is in ``Health``) — the
   first batch's alone, so that it is parsing while the rest are described;
3. fetch in batches (``BODY.PEEK[]``: fetching never sets \\Seen; at most ``batch`` mails and
   ``ingest.imap_batch.BATCH_BYTES``); worker processes (``ingest.imap_parse``) parse the mails and stage their blobs
   (raw mail, attachments: unsynced temporary files) while the next batches are fetched (at most
   ``PREFETCH + 1`` batches in memory); then, on a publisher thread while the next batch is
   fetched, the batch's blobs are committed (one sync, one index transaction) and the batch is
   published — messages to the inbound topic, unparseable or oversized mail as dead-letter records;
   mail the server refuses to hand over (a FETCH answered NO, a response that cannot be read or
   lacks the mail, a connection dropped on it) is isolated from the rest (:mod:`ingest.imap_isolate`;
   a mail suspected of dropping the connection is fetched alone, once the mail before it is
   flagged): its batch fails the pass (the batches before it are flagged and checkpointed first)
   until the mail has been refused in ``GiveUp.attempts`` passes over ``GiveUp.after_s`` in which
   the server handed over other mail; then it is a dead-letter record too (flagged Seen with
   ``after_import: seen``, never moved or deleted: it stays where it is);
4. only once the bus has acknowledged it, mark the batch Seen / move it / delete it, and then
   advance the checkpoint (saved on a thread of its own: its fsync does not hold up the next
   fetch; a pass returns once its last checkpoint is durable). A pass that fails waits for the
   publisher thread before it returns.

Crash between 3 and 4 (or 4 and the checkpoint): the batch is fetched and published again with the
same ids (derived from the Message-ID and the sha256 of the mail, which the server stores
unchanged): no-ops downstream. A UIDVALIDITY change re-scans the folder the same way. Rejected mail
is still flagged, so it cannot loop. How often a mail was refused is saved as it is counted, so a
crash or a restart (``--once``) keeps the count; a connection that drops counts against a mail only
when that mail alone was asked for while other mail of the pass was handed over (a server down or a
network that drops every FETCH counts nothing and dead-letters nothing). Then IDLE
(re-issued before the 29-minute limit) or polling waits for new mail — unless the server announced
new mail during the pass, which IDLE would not report again: then the next pass starts at once; any connection error
(refused, dropped, certificate not trusted, login rejected) shows in ``Health`` and is retried
with exponential backoff.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError

from frontdesk.bus.base import Bus, Outgoing
from frontdesk.errors import SourceAuthError, SourceError
from frontdesk.faults import crashpoint
from ingest.blobs import BlobStore, Staged
from ingest.imap_batch import Delivery, Fetched, Where, batch_records, batches
from ingest.imap_isolate import GiveUp, Refusals, describe
from ingest.imap_state import Checkpoint, CheckpointSaver, CheckpointStore, Health, PendingMail, oldest_from
from ingest.imap_connect import after_import, connect, logout, serve, take_announced_mail, watch
from ingest.imap_parse import ParseJob, ParsePool, Pending, shared_pool
from ingest.imap_settings import MailboxSettings
from ingest.imap_worker import DEFAULT_CPU_LIMIT_S
from ingest.mail.parse import MailLimits

__all__ = ["Checkpoint", "CheckpointStore", "Health", "MailboxConnector"]

log = logging.getLogger(__name__)

PREFETCH = 2  # batches fetched and parsing while one is stored, published and flagged


def _utc_now() -> datetime:
    return datetime.now(UTC)


class MailboxConnector:
    """Imports one mailbox (all its folders). ``run_once`` is one pass; ``run`` loops with IDLE.

    Mail is parsed on ``pool`` (default: the process-wide :func:`shared_pool`), each mail within
    ``parse_cpu_limit_s`` of CPU (:mod:`ingest.imap_parse`). ``give_up``: when a mail the server
    refuses to hand over is dead-lettered (:mod:`ingest.imap_isolate`), by ``clock``.
    """

    def __init__(self, box: MailboxSettings, bus: Bus, checkpoints: CheckpointStore, blobs: BlobStore | None,
                 limits: MailLimits, *, reconnect: tuple[float, float] = (1.0, 300.0),
                 pool: ParsePool | None = None, parse_cpu_limit_s: float = DEFAULT_CPU_LIMIT_S,
                 give_up: GiveUp = GiveUp(), clock: Callable[[], datetime] = _utc_now) -> None:
        self.box, self.bus, self.checkpoints, self.blobs, self.limits = box, bus, checkpoints, blobs, limits
        self.give_up, self.clock = give_up, clock
        self.connector = f"imap:{box.name}"
        self.health = Health()
        self.reconnect = reconnect
        self.pool = pool or shared_pool()
        self.job = ParseJob(self.connector, box.channel, limits, str(blobs.root) if blobs is not None else None,
                            parse_cpu_limit_s)
        self._backlog: dict[str, datetime | None] = {}

    def connect(self) -> IMAPClient:
        """A logged-in client (blocking; see :func:`ingest.imap_connect.connect`); rejected logins are
        counted in ``health.auth_failures``."""
        try:
            return connect(self.box, self.connector)
        except SourceAuthError:
            self.health.auth_failures += 1
            raise

    def run_once(self) -> int:
        """One pass over every folder; returns how many records were published."""
        client = self.connect()
        try:
            return sum(self.import_folder(client, folder) for folder in self.box.folders)
        finally:
            logout(client)

    def import_folder(self, client: IMAPClient, folder: str) -> int:
        """Import what is pending in ``folder`` (contract: module docstring); records published."""
        try:
            selected = client.select_folder(folder)
            take_announced_mail(client)  # SELECT's own count: what is there is searched for next
            uids, start = self._pending(client, folder, selected)
            published = self._import(client, folder, start, uids)
        except (IMAPClientError, OSError, socket.timeout) as exc:
            raise SourceError(f"{self.connector}/{folder}: {exc}") from exc
        self.health.last_success = datetime.now(UTC)
        self.health.consecutive_failures = 0
        return published

    def _pending(self, client: IMAPClient, folder: str, selected: dict[bytes, Any]) -> tuple[list[int], Checkpoint]:
        """The UIDs to import, ascending, and the checkpoint they start from (contract: module
        docstring, step 2; a new scan's checkpoint is saved before anything is imported)."""
        try:
            uidvalidity = int(selected[b"UIDVALIDITY"])
        except (KeyError, TypeError, ValueError) as exc:
            raise SourceError(f"{self.connector}/{folder}: SELECT reported no UIDVALIDITY") from exc
        cp = self.checkpoints.load(self.box.name, folder)
        if cp.uidvalidity != uidvalidity:
            if cp.uidvalidity is not None:
                log.warning("%s/%s: UIDVALIDITY changed (%s -> %s): re-scanning", self.connector, folder,
                            cp.uidvalidity, uidvalidity)
            cp = Checkpoint(uidvalidity, 0, self._scan_end(client, selected))
            self.checkpoints.save(self.box.name, folder, cp)
        uids = {u for u in client.search(["UID", f"{cp.newer_than + 1}:*"]) if u > cp.newer_than}
        if cp.scan_until is not None and cp.last_uid < cp.scan_until:
            criteria: list[Any] = ["UNSEEN"]
            if self.box.backfill_since:
                criteria = ["OR", "UNSEEN", "SINCE", self.box.backfill_since]
            found = client.search(["UID", f"{cp.last_uid + 1}:{cp.scan_until}", *criteria])
            uids.update(u for u in found if cp.last_uid < u <= cp.scan_until)
        return sorted(uids), cp

    @staticmethod
    def _scan_end(client: IMAPClient, selected: dict[bytes, Any]) -> int:
        """The highest UID in the folder now: UIDNEXT - 1, or (a server that omits UIDNEXT) searched."""
        uidnext = selected.get(b"UIDNEXT")
        if isinstance(uidnext, int) and uidnext > 0:
            return uidnext - 1
        return max(client.search(["ALL"]), default=0)

    def _import(self, client: IMAPClient, folder: str, start_cp: Checkpoint, uids: list[int]) -> int:
        """Describe, fetch, parse (in the pool), store, publish, flag and checkpoint ``uids`` batch by
        batch. The first batch is described and fetched alone, so that it is parsing while the rest of
        the folder is described; a batch is stored and published on a thread while the next one is
        fetched, and flagged once the bus has acknowledged it. A UID in ``Refusals.alone`` is
        fetched only once every batch before it is flagged: it may drop the connection."""
        published = 0
        window: deque[Fetched] = deque()
        publisher = ThreadPoolExecutor(1, thread_name_prefix=f"{self.connector}-publish")
        saver = CheckpointSaver(self.checkpoints, self.box.name, folder)
        where = Where(folder, start_cp, saver, Refusals.load(self.checkpoints, self.box.name, folder, start_cp))
        inflight: Delivery | None = None
        alone = where.refusals.alone
        try:
            head = describe(client, uids[: self.box.batch], where.refusals)
            first = next(batches(head, self.box.batch, self.limits, alone), None)
            if first is not None:
                window.append(self._fetch(client, *first, where.refusals))
            mails = head + describe(client, uids[self.box.batch :], where.refusals)
            oldest = oldest_from(mails)
            self._note_backlog(folder, oldest[0])
            start = first[0] if first is not None else 0
            for end, batch in batches(mails[start:], self.box.batch, self.limits, alone):
                if batch[0].uid in alone:
                    published += self._drain(client, where, window, inflight, publisher, oldest)[1]
                    inflight = None
                window.append(self._fetch(client, start + end, batch, where.refusals))
                while len(window) > PREFETCH:
                    inflight, settled = self._advance(client, where, window.popleft(), inflight, publisher, oldest)
                    published += settled
            inflight, settled = self._drain(client, where, window, inflight, publisher, oldest)
            published += settled
            if start_cp.scan_until is not None:
                last = inflight.batch[-1].uid if inflight is not None else start_cp.last_uid
                saver.save(start_cp.handled(last).scanned())  # everything the scan selected is handled
            saver.close()
        finally:
            publisher.shutdown(wait=True)  # a failed pass leaves no write behind; unflagged batches come again
            saver.close(check=False)
            for entry in window:
                self._abandon(entry.pending)
        return published

    def _drain(self, client: IMAPClient, where: Where, window: deque[Fetched], inflight: Delivery | None,
               publisher: ThreadPoolExecutor, oldest: list[datetime | None]) -> tuple[Delivery | None, int]:
        """Send every batch in ``window`` on its way and settle them all: the last one (None if
        none) and the records published."""
        published = 0
        while window:
            inflight, settled = self._advance(client, where, window.popleft(), inflight, publisher, oldest)
            published += settled
        if inflight is not None:
            published += self._settle(client, where, inflight, oldest)
        return inflight, published

    def _abandon(self, pending: Pending) -> None:
        if self.blobs is not None:
            self.blobs.discard(s for p in self.pool.abandon(pending) for s in p.staged)

    def _advance(self, client: IMAPClient, where: Where, entry: Fetched, inflight: Delivery | None,
                 publisher: ThreadPoolExecutor, oldest: list[datetime | None]) -> tuple[Delivery, int]:
        """Send the parsed batch ``entry`` on its way to the bus, then settle the one before it. A batch
        with mail the server refused, not yet given up, fails the pass once the one before it is settled."""
        unfetchable, wait = where.refusals.verdict(entry.refused, self.connector, self.give_up, self.clock())
        if wait is not None:
            self._abandon(entry.pending)
            if inflight is not None:
                self._settle(client, where, inflight, oldest)
            raise SourceError(wait)
        parsed = self.pool.finish(entry.pending)
        records, staged = batch_records(self.job, self.bus.topics, entry.batch, entry.raws, parsed, self.blobs,
                                         self.bus.max_record_bytes, unfetchable)
        after = inflight.future if inflight is not None else None
        delivery = Delivery(entry.done, entry.batch, records, publisher.submit(self._deliver, staged, records, after),
                            frozenset(unfetchable))
        settled = self._settle(client, where, inflight, oldest) if inflight is not None else 0
        return delivery, settled

    def _fetch(self, client: IMAPClient, done: int, batch: list[PendingMail], refusals: Refusals) -> Fetched:
        """Fetch the bodies of ``batch`` (but oversized mail) and queue them for parsing; count the
        mail the server refuses to hand over (:meth:`ingest.imap_isolate.Refusals.fetch`)."""
        wanted = [m.uid for m in batch if m.size <= self.limits.max_message_bytes]
        bodies = refusals.fetch(client, wanted, self.connector, self.give_up, self.clock())
        raws = {uid: item[b"BODY[]"] for uid, item in bodies.items.items()}
        return Fetched(done, batch, raws, bodies.refused, self.pool.start(self.job, list(raws.items())))

    def _deliver(self, staged: list[Staged], records: list[Outgoing], after: Future[None] | None) -> None:
        """On the publisher thread: commit the blobs, then publish (returns once the bus acknowledged);
        nothing if the delivery before it (``after``, done by now) failed — that failure is raised."""
        if after is not None and after.exception() is not None:
            if self.blobs is not None:
                self.blobs.discard(staged)
            after.result()
        if self.blobs is not None:
            self.blobs.commit(staged)  # durable before any record that names them is
        self.bus.publish(records)

    @staticmethod
    def _delivered(future: Future[None]) -> None:
        future.result()  # blocks; raises what the publisher thread raised

    def _settle(self, client: IMAPClient, where: Where, delivery: Delivery, oldest: list[datetime | None]) -> int:
        """Once ``delivery`` is on the bus: flag its mail, queue the checkpoint; records published."""
        folder, start_cp, saver, _ = where
        self._delivered(delivery.future)
        crashpoint("imap.after_publish")
        # A mail the server cannot read is not moved (that copies it) nor deleted (it has no other copy).
        kept = delivery.unfetchable if self.box.after_import != "seen" else frozenset()
        self._after_import(client, [m.uid for m in delivery.batch if m.uid not in kept])
        saver.save(start_cp.handled(delivery.batch[-1].uid))
        dead = sum(1 for r in delivery.records if r.topic == self.bus.topics.deadletter)
        self.health.published += len(delivery.records) - dead
        self.health.dead_lettered += dead
        self._note_backlog(folder, oldest[delivery.done])
        return len(delivery.records)

    def _note_backlog(self, folder: str, oldest: datetime | None) -> None:
        self._backlog[folder] = oldest
        self.health.oldest_unprocessed_at = min((d for d in self._backlog.values() if d is not None), default=None)

    def _after_import(self, client: IMAPClient, uids: list[int]) -> None:
        after_import(client, self.box, uids)

    def run(self, stop: threading.Event) -> None:
        """Blocking until ``stop``: import, then wait (IDLE or poll); reconnect with backoff."""
        self.pool.warm()  # so that the first new mail does not wait for the parser processes to start
        serve(self._session, stop, self.health, self.reconnect, self.connector)

    def _session(self, stop: threading.Event) -> None:
        watch(self.connect(), self.box, self._pass, stop, self.connector)

    def _pass(self, client: IMAPClient) -> None:
        for folder in self.box.folders:
            self.import_folder(client, folder)
