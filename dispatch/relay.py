"""The outbox relay: delivers what committed transactions left in the outbox.

Case events are published to the cases topic (key = case id) and then marked sent; an
acknowledgement is handed to the channel's Replier and marked sent right after the far side
accepted it. Transient failures are retried with exponential backoff (capped at 5 minutes);
permanent ones mark the item failed with the reason in the case history.

Crash windows: after publishing an event and before marking it, the event is published again
(same ``event_id``; consumers deduplicate). After the SMTP server accepted an acknowledgement and
before it is marked — the one window that can duplicate a customer-visible effect — the
acknowledgement is sent again with the same Message-ID. The window is one local database commit
long: nothing else happens between ``send`` returning and ``mark_sent``.

A database outage in that window does not widen it: the relay keeps the ids of what was
delivered but not yet marked and marks them before it claims anything else, so only a crash of the
relay (or an outage longer than the lease, if another replica claims the row meanwhile) repeats a
delivery.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from dispatch.base import OutboundReply, OutboxItem, Replier
from dispatch.store.sql import SqlCaseStore
from frontdesk.bus.base import Bus, Outgoing
from frontdesk.errors import ReplyError, TransientError
from frontdesk.faults import crashpoint

log = logging.getLogger(__name__)


@dataclass
class RelayStats:
    events_published: int = 0
    acks_sent: int = 0
    acks_failed: int = 0
    retries: int = 0


class OutboxRelay:
    """Delivers leased outbox rows. Several relays (dispatch replicas) may run against one database:
    a row is leased for ``lease_seconds`` when claimed, and a relay starts delivering a row only in
    the first half of its lease, so a send (bounded by the repliers' timeouts, well under half a
    lease) always ends before another relay can claim the row. Rows not started in time are left
    to expire and are claimed again."""

    def __init__(self, store: SqlCaseStore, bus: Bus, repliers: dict[str, Replier], *, batch: int = 100,
                 lease_seconds: float = 60.0, max_attempts: int = 50,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store, self.bus, self.repliers = store, bus, repliers
        self.batch, self.lease_seconds, self.max_attempts = batch, lease_seconds, max_attempts
        self.stats = RelayStats()
        self._clock = clock
        self._delivered: list[int] = []  # accepted by the far side, not yet marked sent
        self._wake = threading.Event()

    def wake(self) -> None:
        """New rows were committed to the outbox (or the relay should stop): look now, not at the
        next poll. Thread-safe, cheap, never blocks."""
        self._wake.set()

    def run(self, stop: threading.Event, interval: float = 0.5) -> None:
        """Blocking loop until ``stop`` (call :meth:`wake` after setting it to stop without waiting
        out the interval); polls every ``interval`` s while idle; a database outage is waited out."""
        while not stop.is_set():
            self._wake.clear()  # before looking: a wake during run_once means look again
            try:
                busy = self.run_once()
            except TransientError as exc:
                log.warning("relay: %s; retrying", exc)
                busy = 0
            if not busy:
                self._wake.wait(interval)

    def run_once(self) -> int:
        """Mark what was delivered but not marked, then claim, publish and deliver one batch.
        Raises TransientError while the database is unavailable (nothing delivered is forgotten)."""
        self._mark_delivered()
        items = self.store.claim_outbox(self.batch, self.lease_seconds)
        claimed = self._clock()
        events = [i for i in items if i.kind == "event"]
        if events:
            self._publish(events)
        for item in items:
            if item.kind != "ack":
                continue
            if self._clock() - claimed > self.lease_seconds / 2:
                log.warning("relay: half the lease used up; leaving the rest of the batch to a later claim")
                break
            self._deliver(item)
        return len(items)

    def _publish(self, events: list[OutboxItem]) -> None:
        records = [Outgoing(self.bus.topics.cases, e.payload.encode(), json.loads(e.payload)["case"]["id"].encode())
                   for e in events]
        try:
            self.bus.publish(records)
        except TransientError as exc:
            for e in events:
                self._retry(e, str(exc))
            return
        crashpoint("relay.after_publish")
        self.stats.events_published += len(events)
        self._delivered.extend(e.id for e in events)
        self._mark_delivered()

    def _deliver(self, item: OutboxItem) -> None:
        data = json.loads(item.payload)
        # Chat: the payload names its Replier (dispatch.reply_target); the signed webhook covers the rest.
        target = "email" if data["channel"] == "email" else data.get("replier") or data.get("platform") or "webhook"
        replier = self.repliers.get(target) or (self.repliers.get("webhook") if target != "email" else None)
        if replier is None:
            self.store.mark_retry(item.id, f"no replier for {target}", 0, permanent=True)
            self.stats.acks_failed += 1
            return
        extra = {"mode": data.get("mode") or "chat", "platform": data.get("platform") or "", **data.get("target", {})}
        reply = OutboundReply(channel=data["channel"], connector=data["connector"], recipient=data["recipient"],
                              body=data["body"], message_id=data["message_id"], case_reference=item.case_reference,
                              raw=data["raw"].encode("utf-8", "surrogateescape") if data.get("raw") else None,
                              thread_id=data.get("thread_id"), extra=extra if data["channel"] != "email" else {})
        try:
            replier.send(reply)
        except TransientError as exc:
            self._retry(item, str(exc))
            return
        except ReplyError as exc:
            self.store.mark_retry(item.id, str(exc), 0, permanent=True)
            self.stats.acks_failed += 1
            return
        crashpoint("relay.after_send")
        self.stats.acks_sent += 1
        self._delivered.append(item.id)
        self._mark_delivered()

    def _mark_delivered(self) -> None:
        if self._delivered:
            self.store.mark_sent_many(self._delivered)
            self._delivered.clear()

    def _retry(self, item: OutboxItem, error: str) -> None:
        self.stats.retries += 1
        permanent = item.attempts + 1 >= self.max_attempts
        self.store.mark_retry(item.id, error, min(300.0, 0.5 * 2 ** item.attempts), permanent=permanent)
