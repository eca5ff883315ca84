"""Turning one triaged message into case changes, inside the caller's transaction.

:func:`apply_message` does everything for one message — customer, threading, routing, history,
outbox rows for the case event and the acknowledgement — on one connection (SQLAlchemy Core:
:mod:`dispatch.store.rows`). The caller commits once, so either all of it happened or none of
it did. The message id is the key: a message already stored makes the call a no-op.

Threading: an email follow-up joins a case through In-Reply-To / References (our own
acknowledgement's Message-ID included) or a case reference in the subject; a chat or social
follow-up through its conversation id. Only a participant joins: a stranger who replies into
someone else's thread opens a new case flagged with the case it seemed to belong to. In a shared
conversation (a group chat, a post several people mention us under) each participant's messages
are keyed to their own case too, so a second participant's follow-ups join the case their first
message opened. A copy of a mail already stored (the same Message-ID, subject and text, delivered
to a second watched mailbox) joins the case of the first copy as one more message of it: no new
case, no new acknowledgement, no case event. The keys: :mod:`dispatch.thread_keys`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection

from dispatch.ack import ack_message_id, render_ack, render_public_ack
from dispatch.ack_bytes import ack_email_bytes
from dispatch.base import ApplyResult
from dispatch.reply_target import ack_mode, replier_key, reply_target, reply_thread
from dispatch.routing import Route, RoutingTable
from dispatch.settings import DispatchSettings
from dispatch.snapshot import aware, case_event
from dispatch.store import rows
from dispatch.store.rows import CustomerInfo, Writes
from dispatch.suppress import ack_decision, reply_address
from dispatch.thread_keys import (case_of_same_mail, follow_up_keys, participant_key, rate_key, same_mail_keys,
                                  stored_identity, thread_candidate)
from frontdesk.codec import encode
from frontdesk.messages import URGENCY_ORDER, InboundMessage, Triage, TriagedMessage


@dataclass(frozen=True)
class Context:
    settings: DispatchSettings
    routing: RoutingTable


def apply_message(conn: Connection, tm: TriagedMessage, ctx: Context, now: datetime | None = None,
                  writes: Writes | None = None) -> ApplyResult:
    """Apply one triaged message; idempotent per message id. Does not commit. Its messages,
    thread keys, history and outbox rows are written before it returns, or, if ``writes`` is
    given, collected there for the caller to flush (several messages, fewer round trips)."""
    now = now or datetime.now(UTC)
    msg, pending = tm.message, writes if writes is not None else Writes()
    stored = rows.stored_case_of(conn, msg.id, pending)
    if stored is not None:
        return ApplyResult(stored, created=False, duplicate=True)
    customer = _customer(conn, msg, now, pending)
    applying = _Apply(conn, tm, ctx, now, customer, pending)
    same_mail = case_of_same_mail(conn, msg, pending)
    candidate = same_mail or thread_candidate(conn, msg, ctx.settings.reference_prefix, pending)
    if same_mail is not None and same_mail["customer_id"] == customer.id:
        result = applying.copy(same_mail["id"])
    elif candidate is not None and candidate["customer_id"] == customer.id:
        result = applying.follow_up(candidate["id"])
    else:
        result = applying.new_case(candidate["reference"] if candidate else None)
    if writes is None:
        pending.flush(conn)
    return result


def _customer(conn: Connection, msg: InboundMessage, now: datetime, writes: Writes) -> CustomerInfo:
    ident = stored_identity(msg)
    if ident is not None:
        found = rows.find_customer(conn, *ident, writes)
        if found is not None:
            return found
    return rows.add_customer(conn, msg.sender.name[:200] if msg.sender.name else None, ident, now, writes)


def prefetch(conn: Connection, batch: Sequence[TriagedMessage], ctx: Context, writes: Writes,
             now: datetime) -> None:
    """Read for a batch at once what applying its messages would look up one by one (stored
    message ids, customers, recent acknowledgements per recipient): fewer round trips, same results."""
    msgs = [tm.message for tm in batch]
    identities = list(dict.fromkeys(i for i in map(stored_identity, msgs) if i is not None))
    recipients = list(dict.fromkeys(r for m in msgs if (r := rate_key(m, ctx.settings)) is not None))
    since = now - timedelta(seconds=ctx.settings.ack_rate_window_s)
    keys = [k for m in msgs for k in (*same_mail_keys(m), *follow_up_keys(m))]
    rows.prefetch(conn, writes, [m.id for m in msgs], identities, recipients, since, keys)


def _as_case(tm: TriagedMessage, category: str) -> TriagedMessage:
    """The message as the case sees it: the case keeps its category, the message brings urgency."""
    return tm.model_copy(update={"triage": Triage(**{**tm.triage.model_dump(), "category": category})})


class _Apply:
    """One message being applied: the case as it will be stored (``case``) and the rows to add."""

    def __init__(self, conn: Connection, tm: TriagedMessage, ctx: Context, now: datetime,
                 customer: CustomerInfo, writes: Writes) -> None:
        self.conn, self.tm, self.ctx, self.now, self.customer = conn, tm, ctx, now, customer
        self.writes = writes
        self.case: dict[str, Any] = {}

    def new_case(self, possible_match: str | None) -> ApplyResult:
        msg, tri, now = self.tm.message, self.tm.triage, self.now
        route = self.ctx.routing.route(self.tm)
        case = dict(status="open", queue=route.queue, priority=route.priority, routing_rule=route.rule,
                    category=tri.category, urgency=tri.urgency, language=tri.language, channel=msg.channel,
                    connector=msg.connector, subject=(msg.subject or "")[:500], customer_id=self.customer.id,
                    first_response_due=msg.received_at.astimezone(UTC) + route.sla, created_at=now, updated_at=now,
                    message_count=0, acknowledged=False, needs_review=tri.needs_review,
                    possible_thread_match=possible_match)
        case_id = rows.add_case(self.conn, case)
        self.case = {**case, "id": case_id, "reference": f"{self.ctx.settings.reference_prefix}-{now:%Y}-{case_id:06d}"}
        self._history("created", {"rule": route.rule, "queue": route.queue})
        if possible_match is not None:
            self._history("possible_thread_match", {"reference": possible_match})
        self._add_message()
        ack = self._acknowledge(route, follow_up=False)
        rows.update_case(case_id, {"reference": self.case["reference"], "message_count": self.case["message_count"]},
                         self.writes)
        self._event("created", ("message_added",))
        return ApplyResult(self.case["reference"], created=True, ack=ack, possible_thread_match=possible_match)

    def follow_up(self, case_id: int) -> ApplyResult:
        # Follow-ups of one conversation can reach several dispatch replicas (messages are keyed by
        # their own id): lock the case row so their updates are serialised (no-op on SQLite).
        case = self.case = rows.load_case(self.conn, case_id, self.writes, lock=True) or {}
        tm, now = self.tm, self.now
        changes = ["message_added"]
        if case["status"] in ("resolved", "closed"):
            case["status"] = "open"
            changes.append("reopened")
        self._add_message()
        rerouted = URGENCY_ORDER[tm.triage.urgency] > URGENCY_ORDER[case["urgency"]]
        route = None
        if rerouted:
            route = self.ctx.routing.route(_as_case(tm, case["category"]))
            before = [case["queue"], case["priority"], case["urgency"]]
            case.update(urgency=tm.triage.urgency, queue=route.queue, priority=route.priority, routing_rule=route.rule)
            due = tm.message.received_at.astimezone(UTC) + route.sla
            current = aware(case["first_response_due"])
            case["first_response_due"] = min(current, due) if current else due
            self._history("rerouted", {"from": before, "to": [route.queue, route.priority, case["urgency"]]})
            changes.append("rerouted")
        case["updated_at"] = now
        ack = "none"
        if self.ctx.settings.ack_follow_ups:
            ack = self._acknowledge(route or self.ctx.routing.route(_as_case(tm, case["category"])), follow_up=True)
        rows.update_case(case_id, {k: case[k] for k in (
            "status", "urgency", "queue", "priority", "routing_rule", "first_response_due", "updated_at",
            "message_count")}, self.writes)
        self._event("updated", tuple(changes))
        return ApplyResult(case["reference"] or "", created=False, rerouted=rerouted, ack=ack)

    def copy(self, case_id: int) -> ApplyResult:
        """Another copy of a mail the case holds (another mailbox): stored as a message of the case;
        no acknowledgement, no case event, no rerouting."""
        case = self.case = rows.load_case(self.conn, case_id, self.writes, lock=True) or {}
        self._add_message("copy_added", connector=self.tm.message.connector)
        rows.update_case(case_id, {"message_count": case["message_count"], "updated_at": self.now}, self.writes)
        return ApplyResult(case["reference"] or "", created=False)

    def _add_message(self, event: str = "message_added", **detail: str) -> None:
        msg, case_id = self.tm.message, self.case["id"]
        self.writes.messages.append(dict(
            id=msg.id, case_id=case_id, direction="in", external_id=msg.external_id[:500], connector=msg.connector,
            sender=(msg.sender.address or msg.sender.handle or msg.sender.platform_id or msg.sender.phone or "")[:320],
            subject=(msg.subject or "")[:500], text=msg.text or msg.full_text,
            received_at=msg.received_at.astimezone(UTC),  # SQLite keeps no offset: store UTC
            triage=self.tm.triage.model_dump(mode="json")))
        self.case["message_count"] += 1
        self.writes.references[msg.id] = self.case["reference"] or ""
        if msg.channel == "email":
            self.writes.thread_keys.setdefault(f"mid:{msg.external_id}"[: rows.KEY_MAX], case_id)
            for key in same_mail_keys(msg):
                self.writes.thread_keys.setdefault(key, case_id)
        if msg.thread.conversation_id:
            self.writes.thread_keys.setdefault(f"conv:{msg.connector}:{msg.thread.conversation_id}"[: rows.KEY_MAX],
                                               case_id)
        if (participant := participant_key(msg)) is not None:
            self.writes.thread_keys.setdefault(participant[: rows.KEY_MAX], case_id)
        self._history(event, {"category": self.tm.triage.category, "urgency": self.tm.triage.urgency, **detail})

    def _acknowledge(self, route: Route, follow_up: bool) -> str:
        """Queue the acknowledgement in the outbox, or record why none is sent. Returns the reason."""
        msg, s, case = self.tm.message, self.ctx.settings, self.case
        if msg.channel not in s.ack_channels:
            return self._suppressed("channel_not_acknowledged")
        if msg.channel != "email":
            return self._chat_ack(route, follow_up)
        address = reply_address(msg)
        recent = rows.recent_acks(self.conn, address, self._window_start(), self.writes) if address else 0
        send, reason = ack_decision(msg, self.tm.triage.category, our_addresses=s.own_addresses(),
                                    is_follow_up=follow_up, ack_follow_ups=s.ack_follow_ups,
                                    recent_acks_to_sender=recent, max_per_window=s.ack_rate_max)
        if not send or address is None:
            return self._suppressed(reason)
        reference = case["reference"] or ""
        due = aware(case["first_response_due"]) or self.now + route.sla
        body = render_ack(reference, case["language"], route.sla, due, msg.sender.name, s.templates_dir,
                          s.fallback_language, s.timezone)
        email = ack_email_bytes(inbound=msg, case_reference=reference, body=body, from_address=s.from_address,
                                from_name=s.from_name, message_id_domain=s.message_id_domain)
        mid = ack_message_id(reference, msg.id, s.message_id_domain)
        payload = {"channel": "email", "connector": msg.connector, "recipient": address, "body": body,
                   "message_id": mid, "raw": email.decode("utf-8", "surrogateescape")}
        self._outbox("ack", self._ack_key(follow_up), payload, recipient=address)
        self.writes.thread_keys.setdefault(f"mid:{mid}"[: rows.KEY_MAX], case["id"])
        self._history("ack_queued", {"message_id": mid})
        return "ok"

    def _chat_ack(self, route: Route, follow_up: bool) -> str:
        """Queue a chat/social acknowledgement for the platform's Replier, or record why not.

        Chat messages are answered in their conversation; public mentions, and chat messages in a Telegram
        group, as ``dispatch.public_mentions`` says (:mod:`dispatch.reply_target`). A public reply carries
        the public template only: no reference."""
        msg, s, case = self.tm.message, self.ctx.settings, self.case
        mode = ack_mode(msg, s.public_mentions)
        recipient, target = reply_target(msg, mode) if mode else (None, {})
        counted_as = rate_key(msg, s) or ""
        recent = rows.recent_acks(self.conn, counted_as, self._window_start(), self.writes)
        flags = msg.flags
        reason = ("auto_submitted" if flags.auto_submitted or flags.auto_reply or flags.bulk or flags.suppress_autoreply
                  else "public_mention_policy" if mode is None
                  else "spam" if self.tm.triage.category == "spam"
                  else "follow_up" if follow_up and not s.ack_follow_ups
                  else "rate_limited" if recent >= s.ack_rate_max
                  else "no_address" if not recipient else "ok")
        if reason != "ok":
            return self._suppressed(reason)
        if mode == "public_reply":
            body = render_public_ack(case["language"], route.sla, s.templates_dir, s.fallback_language)
        else:
            body = render_ack(case["reference"] or "", case["language"], route.sla,
                              aware(case["first_response_due"]) or self.now + route.sla,
                              msg.sender.name, s.templates_dir, s.fallback_language, s.timezone)
        mid = ack_message_id(case["reference"] or "", msg.id, s.message_id_domain)
        payload = {"channel": msg.channel, "platform": msg.platform, "connector": msg.connector,
                   "replier": replier_key(msg), "mode": mode, "recipient": recipient, "target": target,
                   "thread_id": reply_thread(msg, mode), "body": body, "message_id": mid}
        self._outbox("ack", self._ack_key(follow_up), payload, recipient=counted_as)
        self._history("ack_queued", {"message_id": mid, "platform": msg.platform, "mode": mode})
        return "ok"

    def _window_start(self) -> datetime:
        return self.now - timedelta(seconds=self.ctx.settings.ack_rate_window_s)

    def _ack_key(self, follow_up: bool) -> str:
        return f"ack:{self.case['id']}:{self.tm.id}" if follow_up else f"ack:{self.case['id']}"

    def _suppressed(self, reason: str) -> str:
        self._history("ack_suppressed", {"reason": reason})
        return reason

    def _event(self, kind: str, changes: tuple[str, ...]) -> None:
        event = case_event(self.case, self.customer, self.tm.id, kind, changes, self.now)
        self._outbox("event", f"event:{event.event_id}", encode(event).decode())

    def _outbox(self, kind: str, key: str, payload: dict[str, Any] | str, recipient: str | None = None) -> None:
        """Queue one effect. Every key names the message being applied, and a message is applied once
        (``apply_message`` returns early for a known id), so the key is new; were it not, its unique
        constraint fails the transaction, which is then re-run and finds the message."""
        text = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
        self.writes.outbox.append(dict(kind=kind, dedupe_key=key, case_id=self.case["id"], recipient=recipient,
                                       payload=text, status="pending", attempts=0, created_at=self.now,
                                       next_attempt_at=self.now))

    def _history(self, event: str, detail: dict[str, Any]) -> None:
        self.writes.history.append(dict(case_id=self.case["id"], at=self.now, event=event,
                                        message_id=self.tm.message.id, detail=detail))
