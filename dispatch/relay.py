"""The outbox relay: delivers what committed transactions left in the outbox.

Case events are published to the cases topic (key = case id) and then marked sent; an
acknowledgement is handed to the channel's Replier and marked sent right after the far side
accepted it. Transient failures are retried with exponential backoff (capped at 5 minutes), and not
before the far side's ``Retry-After`` (``ReplyUnavailable.retry_after``, up to a day) when it asks for longer.
A case event is never given up on a transient failure, however long the broker is away; an event
the bus refuses for good (or whose payload is unreadable) is published to the dead-letter topic
(stage ``relay``, source topic the cases topic, so ``frontdesk replay`` re-publishes it) and then
marked failed. An acknowledgement is marked failed after a permanent error, without a Replier, or
after ``max_attempts`` attempts; the reason goes to the case history.

Crash windows: after publishing an event and before marking it, the event is published again
(same ``event_id``; consumers deduplicate). After the SMTP server accepted an acknowledgement and
before it is marked — the one window that can duplicate a customer-visible effect — the
acknowledgement is sent again with the same Message-ID. The window is one local database commit
long: nothing else happens between ``send`` returning and ``mark_sent``.

A database outage in that window does not widen it: the relay keeps the ids of what was
delivered but not yet marked and marks them before it claims anything else, so only a crash of the
relay (or an outage longer than the lease, if another replica claims the row meanwhile) repeats a
delivery.

Several relays: a send starts only if it will end within the relay's lease on the row (a Replier
with a bound, ``Replier.max_send_s``: the SMTP one ends each send within ``smtp.timeout_s``), or,
for a Replier without one, in the first half of the lease, counted from the start of the claim (the
database leases the row then, however long the claim waits for a lock); so another relay cannot
claim a row while it is being sent. A send cut off by its deadline is retried; if the far side had
accepted it just before, that retry repeats it (same Message-ID), as after a timeout.

The loop never dies: an unexpected exception is logged with the row and case, counted
(``stats.errors``, ``frontdesk_stage_errors{stage="relay",kind="unexpected"}``), its row retried
with backoff, and the loop backs off and goes on.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from dispatch.base import OutboundReply, OutboxItem, Replier
from dispatch.store.sql import SqlCaseStore
from frontdesk.bus.base import Bus, Outgoing
from frontdesk.deadletter import build_dead_letter
from frontdesk.errors import ConfigError, ReplyError, TransientError
from frontdesk.faults import crashpoint
from frontdesk.metrics import Metrics, default_metrics
from frontdesk.stage import Backoff

log = logging.getLogger(__name__)

STAGE = "relay"  # the stage its dead letters and error metrics name
MAX_RETRY_DELAY_S = 300.0
MAX_RETRY_AFTER_S = 86400.0  # the longest wait a far side's Retry-After can put on a row
MARK_MARGIN = 0.1  # share of the lease a bounded send leaves for marking the row sent


@dataclass
class RelayStats:
    events_published: int = 0
    acks_sent: int = 0
    acks_failed: int = 0
    retries: int = 0
    events_dead_lettered: int = 0
    errors: int = 0  # unexpected exceptions (bugs, unreadable rows), each logged with its row


class OutboxRelay:
    """Delivers leased outbox rows. Several relays (dispatch replicas) may run against one database:
    a row is leased for ``lease_seconds`` when claimed, and a relay starts a send only if it ends
    before the lease does (module docstring), so another relay cannot claim a row being sent. Rows
    not started in time are left to expire and are claimed again. ``max_attempts`` ends
    acknowledgements only; case events are retried until published or dead-lettered.

    Raises ConfigError if a Replier's ``max_send_s`` leaves no time in a lease to start a send."""

    def __init__(self, store: SqlCaseStore, bus: Bus, repliers: dict[str, Replier], *, batch: int = 100,
                 lease_seconds: float = 60.0, max_attempts: int = 50,
                 clock: Callable[[], float] = time.monotonic, metrics: Metrics | None = None) -> None:
        self.store, self.bus, self.repliers = store, bus, repliers
        self.batch, self.lease_seconds, self.max_attempts = batch, lease_seconds, max_attempts
        self.stats = RelayStats()
        self.metrics = metrics or default_metrics()
        self._clock = clock
        self._delivered: list[int] = []  # accepted by the far side, not yet marked sent
        self._wake = threading.Event()
        for name, replier in repliers.items():
            if self._start_window(replier) < 0:
                raise ConfigError(f"the {name} replier may take {replier.max_send_s:g}s per send (smtp.timeout_s), "
                                  f"more than {1 - MARK_MARGIN:.0%} of dispatch.relay_lease_s ({lease_seconds:g}s): "
                                  "raise the lease or lower the timeout")

    def wake(self) -> None:
        """New rows were committed to the outbox (or the relay should stop): look now, not at the
        next poll. Thread-safe, cheap, never blocks."""
        self._wake.set()

    def run(self, stop: threading.Event, interval: float = 0.5) -> None:
        """Blocking loop until ``stop`` (call :meth:`wake` after setting it to stop without waiting
        out the interval); polls every ``interval`` s while idle; a database outage is waited out.
        Never raises: an unexpected exception is logged and counted, and the loop backs off
        (exponentially, up to 30 s) and goes on."""
        backoff = Backoff(initial=interval, maximum=30.0)
        while not stop.is_set():
            self._wake.clear()  # before looking: a wake during run_once means look again
            try:
                busy = self.run_once()
                backoff.reset()
            except TransientError as exc:
                log.warning("relay: %s; retrying", exc)
                busy = 0
            except Exception as exc:
                self._unexpected(exc, None)
                self._pause(stop, backoff.next())
                continue
            if not busy:
                self._wake.wait(interval)
        self._mark_before_stop()

    def _mark_before_stop(self) -> None:
        """A last try to mark what was delivered; if the database is still away, those replies are
        sent again after the restart (same Message-IDs), as after a crash: say so."""
        try:
            self._mark_delivered()
        except Exception as exc:  # noqa: BLE001 - stopping: report, never raise
            log.warning("relay stopped with %d delivered acknowledgement(s)/event(s) not marked sent (%s): they "
                        "will be delivered again after the restart: outbox rows %s", len(self._delivered), exc,
                        self._delivered[:50])

    def _pause(self, stop: threading.Event, seconds: float) -> None:
        """Wait ``seconds`` or until stopped; wakes (new rows) do not cut a backoff short."""
        until = time.monotonic() + seconds
        while not stop.is_set() and (left := until - time.monotonic()) > 0:
            self._wake.wait(left)
            self._wake.clear()

    def run_once(self) -> int:
        """Mark what was delivered but not marked, then claim, publish and deliver one batch.
        Raises TransientError while the database is unavailable (nothing delivered is forgotten)."""
        self._mark_delivered()
        claimed = self._clock()  # the lease runs from the claim's start: a claim that waited leaves less of it
        items = self.store.claim_outbox(self.batch, self.lease_seconds)
        events = [i for i in items if i.kind == "event"]
        if events:
            self._publish(events)
        for item in items:
            if item.kind == "event":
                continue
            try:
                if not self._deliver(item, claimed):
                    break
            except TransientError:
                raise
            except Exception as exc:
                self._unexpected(exc, item)
                if item.id not in self._delivered:
                    self._retry(item, f"{type(exc).__name__}: {exc}")
        return len(items)

    def _start_window(self, replier: Replier) -> float:
        """Seconds after a claim in which a send through ``replier`` may start."""
        if replier.max_send_s is None:
            return self.lease_seconds / 2
        return self.lease_seconds * (1 - MARK_MARGIN) - replier.max_send_s

    def _publish(self, events: list[OutboxItem]) -> None:
        ready: list[tuple[OutboxItem, Outgoing]] = []
        for e in events:
            try:
                ready.append((e, Outgoing(self.bus.topics.cases, e.payload.encode(), _case_key(e.payload))))
            except _UNREADABLE as exc:
                self._dead_letter_event(e, exc)
        if ready:
            self._publish_records(ready)

    def _publish_records(self, ready: list[tuple[OutboxItem, Outgoing]]) -> None:
        """Publish, mark; a transient failure retries them all, a permanent one dead-letters the one
        event at fault (found by publishing them one by one)."""
        try:
            self.bus.publish([record for _, record in ready])
        except TransientError as exc:
            for e, _ in ready:
                self._retry(e, str(exc))
            return
        except Exception as exc:
            if len(ready) == 1:
                self._dead_letter_event(ready[0][0], exc)
                return
            log.warning("relay: %d case events refused (%s); publishing them one by one", len(ready), exc)
            for one in ready:
                self._publish_records([one])
            return
        crashpoint("relay.after_publish")
        self.stats.events_published += len(ready)
        self._delivered.extend(e.id for e, _ in ready)
        self._mark_delivered()

    def _dead_letter_event(self, item: OutboxItem, error: BaseException) -> None:
        """Publish the event's dead letter, then mark it failed. Without a durable dead letter the
        event is kept and retried: an event is never dropped silently."""
        try:
            self.bus.publish([self._event_letter(item, error)])
        except Exception as exc:
            if not isinstance(exc, TransientError):
                self._unexpected(exc, item)
            self._retry(item, f"{error}; its dead letter was not published: {exc}")
            return
        log.error("relay: case event %d (case %s) dead-lettered: %s", item.id, item.case_reference or "?", error)
        self.store.mark_retry(item.id, f"dead-lettered: {error}", 0, permanent=True)
        # Counted once marked: if marking fails, the row comes back and is dead-lettered (and counted) then.
        self.stats.events_dead_lettered += 1
        self.metrics.errors.labels(STAGE, "poison", type(error).__name__).inc()
        self.metrics.dead_lettered.labels(STAGE).inc()

    def _event_letter(self, item: OutboxItem, error: BaseException) -> Outgoing:
        """The dead letter of a case event: its bytes and key, the cases topic as its source."""
        value = item.payload.encode("utf-8", "surrogateescape")
        try:
            key: bytes | None = _case_key(item.payload)
        except _UNREADABLE:
            key = None
        return build_dead_letter(
            self.bus.topics.deadletter, key, value, stage=STAGE, reason=str(error) or type(error).__name__,
            error_type=type(error).__name__, max_bytes=self.bus.max_record_bytes,
            headers=(("frontdesk-stage", STAGE.encode()), ("frontdesk-error", type(error).__name__.encode())),
            source_topic=self.bus.topics.cases, key_b64=base64.b64encode(key).decode() if key else None,
            message_id=_event_id(item.payload))

    def _deliver(self, item: OutboxItem, claimed: float) -> bool:
        """Send one acknowledgement and mark it; False (nothing done) if the send could not end
        within the lease any more: the rest of the batch is left to a later claim."""
        data = json.loads(item.payload)
        # Chat: the payload names its Replier (dispatch.reply_target); the signed webhook covers the rest.
        target = "email" if data["channel"] == "email" else data.get("replier") or data.get("platform") or "webhook"
        replier = self.repliers.get(target) or (self.repliers.get("webhook") if target != "email" else None)
        if replier is None:
            self._give_up(item, f"no replier for {target}")
            return True
        if self._clock() - claimed > self._start_window(replier):
            log.warning("relay: a send could outlast the lease; leaving the rest of the batch to a later claim")
            return False
        extra = {"mode": data.get("mode") or "chat", "platform": data.get("platform") or "", **data.get("target", {})}
        reply = OutboundReply(channel=data["channel"], connector=data["connector"], recipient=data["recipient"],
                              body=data["body"], message_id=data["message_id"], case_reference=item.case_reference,
                              raw=data["raw"].encode("utf-8", "surrogateescape") if data.get("raw") else None,
                              thread_id=data.get("thread_id"), extra=extra if data["channel"] != "email" else {})
        try:
            replier.send(reply)
        except TransientError as exc:
            self._retry(item, str(exc), _asked_wait(exc))
            return True
        except ReplyError as exc:
            self._give_up(item, str(exc))
            return True
        crashpoint("relay.after_send")
        self.stats.acks_sent += 1
        self._delivered.append(item.id)
        self._mark_delivered()
        return True

    def _mark_delivered(self) -> None:
        if self._delivered:
            self.store.mark_sent_many(self._delivered)
            self._delivered.clear()

    def _retry(self, item: OutboxItem, error: str, asked_wait: float | None = None) -> None:
        """Count a failed attempt, retry after a capped exponential delay, or after ``asked_wait``
        (the far side's Retry-After) if that is longer. Case events are never given up here; an
        acknowledgement is after ``max_attempts``."""
        if item.kind != "event" and item.attempts + 1 >= self.max_attempts:
            self._give_up(item, f"{error} (after {item.attempts + 1} attempts)")
            return
        self.stats.retries += 1
        delay = max(min(MAX_RETRY_DELAY_S, 0.5 * 2 ** min(item.attempts, 16)), asked_wait or 0.0)
        log.warning("relay: %s %d (case %s) failed, attempt %d, retrying in %.0fs: %s", item.kind, item.id,
                    item.case_reference or "?", item.attempts + 1, delay, error)
        self.store.mark_retry(item.id, error, delay)

    def _give_up(self, item: OutboxItem, error: str) -> None:
        log.error("relay: %s %d (case %s) failed for good: %s", item.kind, item.id, item.case_reference or "?", error)
        self.store.mark_retry(item.id, error, 0, permanent=True)
        self.stats.acks_failed += 1  # once marked: a row whose marking failed comes back and is given up again

    def _unexpected(self, exc: BaseException, item: OutboxItem | None) -> None:
        """Log (with the row and case, if any) and count an exception the relay did not expect."""
        self.stats.errors += 1
        self.metrics.errors.labels(STAGE, "unexpected", type(exc).__name__).inc()
        where = f"{item.kind} {item.id} (case {item.case_reference or '?'})" if item else "the relay loop"
        log.error("relay: unexpected error in %s: %r", where, exc, exc_info=exc)


_UNREADABLE = (ValueError, KeyError, TypeError, AttributeError)  # what reading a malformed payload raises


def _asked_wait(exc: BaseException) -> float | None:
    """The wait a Replier was asked for (``retry_after``), at most ``MAX_RETRY_AFTER_S``; None if none."""
    wait = getattr(exc, "retry_after", None)
    if not isinstance(wait, (int, float)) or not math.isfinite(wait):
        return None
    return min(max(0.0, float(wait)), MAX_RETRY_AFTER_S)


def _case_key(payload: str) -> bytes:
    """The bus key of a case event: its case id. Raises one of ``_UNREADABLE`` if it has none."""
    return str(json.loads(payload)["case"]["id"]).encode()


def _event_id(payload: str) -> str | None:
    try:
        event_id = json.loads(payload).get("event_id")
    except _UNREADABLE:
        return None
    return event_id if isinstance(event_id, str) else None
