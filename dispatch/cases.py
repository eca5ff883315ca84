"""Turning one triaged message into case changes, inside the caller's transaction.

:func:`apply_message` does everything for one message — customer, threading, routing, history,
outbox rows for the case event and the acknowledgement — on one SQLAlchemy session. The caller
commits once, so either all of it happened or none of it did. The message id is the key: a
message already stored makes the call a no-op.

Threading: an email follow-up joins a case through In-Reply-To / References (our own
acknowledgement's Message-ID included) or a case reference in the subject; a chat or social
follow-up through its conversation id. Only a participant joins: a stranger who replies into
someone else's thread opens a new case flagged with the case it seemed to belong to.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dispatch.ack import ack_message_id, build_ack_email, render_ack, render_public_ack
from dispatch.base import ApplyResult
from dispatch.reply_target import ack_mode, replier_key, reply_target
from dispatch.routing import Route, RoutingTable
from dispatch.settings import DispatchSettings
from dispatch.snapshot import aware, case_event
from dispatch.store.models import Case, Customer, HistoryEntry, Identity, Message, OutboxRow, ThreadKey
from dispatch.suppress import ack_decision, reply_address
from frontdesk.codec import encode
from frontdesk.messages import URGENCY_ORDER, InboundMessage, Triage, TriagedMessage

_REFERENCE = re.compile(r"\b([A-Z]{1,8}-\d{4}-\d{6})\b")


@dataclass(frozen=True)
class Context:
    settings: DispatchSettings
    routing: RoutingTable


def identity_of(msg: InboundMessage) -> tuple[str, str] | None:
    """The identity a message proves: email address, platform user id, phone, or handle."""
    if msg.channel == "email" and msg.sender.address:
        return ("email", msg.sender.address.lower())
    platform = msg.platform or msg.connector
    if msg.sender.platform_id:
        return (platform, msg.sender.platform_id)
    if msg.sender.phone:
        return ("phone", msg.sender.phone)
    if msg.sender.handle:
        return (f"{platform}-handle", msg.sender.handle.lower())
    return None


def apply_message(session: Session, tm: TriagedMessage, ctx: Context, now: datetime | None = None) -> ApplyResult:
    """Apply one triaged message; idempotent per message id. Does not commit."""
    now = now or datetime.now(UTC)
    msg = tm.message
    existing = session.get(Message, msg.id)
    if existing is not None:
        case = session.get(Case, existing.case_id)
        return ApplyResult(case.reference if case else "", created=False, duplicate=True)
    customer = _customer(session, msg, now)
    candidate = _thread_candidate(session, msg)
    if candidate is not None and candidate.customer_id == customer.id:
        return _follow_up(session, candidate, tm, ctx, now)
    return _new_case(session, customer, tm, ctx, now, possible_match=candidate)


def _customer(session: Session, msg: InboundMessage, now: datetime) -> Customer:
    ident = identity_of(msg)
    if ident is not None:
        row = session.scalar(select(Identity).where(Identity.kind == ident[0], Identity.value == ident[1]))
        if row is not None:
            return row.customer
    customer = Customer(display_name=(msg.sender.name or None)[:200] if msg.sender.name else None, created_at=now)
    if ident is not None:
        customer.identities.append(Identity(kind=ident[0], value=ident[1][:320]))
    session.add(customer)
    session.flush()
    return customer


def _thread_candidate(session: Session, msg: InboundMessage) -> Case | None:
    keys = []
    if msg.thread.conversation_id:
        keys.append(f"conv:{msg.connector}:{msg.thread.conversation_id}")
    keys += [f"mid:{m}" for m in (msg.thread.in_reply_to, *reversed(msg.thread.references)) if m]
    for key in keys:
        row = session.get(ThreadKey, key[:600])
        if row is not None:
            return session.get(Case, row.case_id)
    match = _REFERENCE.search(msg.subject or "")
    if msg.channel == "email" and match:
        return session.scalar(select(Case).where(Case.reference == match.group(1)))
    return None


def _new_case(session: Session, customer: Customer, tm: TriagedMessage, ctx: Context, now: datetime,
              possible_match: Case | None) -> ApplyResult:
    msg, tri = tm.message, tm.triage
    route = ctx.routing.route(tm)
    case = Case(status="open", queue=route.queue, priority=route.priority, routing_rule=route.rule,
                category=tri.category, urgency=tri.urgency, language=tri.language, channel=msg.channel,
                connector=msg.connector, subject=(msg.subject or "")[:500], customer_id=customer.id,
                first_response_due=msg.received_at + route.sla, created_at=now, updated_at=now,
                message_count=0, needs_review=tri.needs_review,
                possible_thread_match=possible_match.reference if possible_match else None)
    session.add(case)
    session.flush()
    case.reference = f"{ctx.settings.reference_prefix}-{now:%Y}-{case.id:06d}"
    _history(session, case, now, "created", msg.id, {"rule": route.rule, "queue": route.queue})
    if possible_match is not None:
        _history(session, case, now, "possible_thread_match", msg.id, {"reference": possible_match.reference})
    _add_message(session, case, tm, now)
    ack = _acknowledge(session, case, tm, route, ctx, now, follow_up=False)
    _event(session, case, msg.id, "created", ("message_added",), now)
    return ApplyResult(case.reference, created=True, ack=ack, possible_thread_match=case.possible_thread_match)


def _follow_up(session: Session, case: Case, tm: TriagedMessage, ctx: Context, now: datetime) -> ApplyResult:
    # Follow-ups of one conversation can reach several dispatch replicas (messages are keyed by
    # their own id): lock the case row so their updates are serialised (no-op on SQLite). Only the
    # cases row: PostgreSQL refuses FOR UPDATE on the outer-joined customer of the eager load.
    session.refresh(case, with_for_update={"of": Case})
    changes = ["message_added"]
    if case.status in ("resolved", "closed"):
        case.status = "open"
        changes.append("reopened")
    _add_message(session, case, tm, now)
    rerouted = URGENCY_ORDER[tm.triage.urgency] > URGENCY_ORDER[case.urgency]
    route = None
    if rerouted:
        route = ctx.routing.route(_as_case(tm, case.category))
        before = (case.queue, case.priority, case.urgency)
        case.urgency, case.queue, case.priority, case.routing_rule = (tm.triage.urgency, route.queue,
                                                                       route.priority, route.rule)
        due = tm.message.received_at + route.sla
        current = aware(case.first_response_due)
        case.first_response_due = min(current, due) if current else due
        _history(session, case, now, "rerouted", tm.id, {"from": list(before), "to": [route.queue, route.priority,
                                                                                         case.urgency]})
        changes.append("rerouted")
    case.updated_at = now
    ack = "none"
    if ctx.settings.ack_follow_ups:
        ack = _acknowledge(session, case, tm, route or ctx.routing.route(_as_case(tm, case.category)), ctx, now,
                           follow_up=True)
    _event(session, case, tm.id, "updated", tuple(changes), now)
    return ApplyResult(case.reference or "", created=False, rerouted=rerouted, ack=ack)


def _as_case(tm: TriagedMessage, category: str) -> TriagedMessage:
    """The message as the case sees it: the case keeps its category, the message brings urgency."""
    return tm.model_copy(update={"triage": Triage(**{**tm.triage.model_dump(), "category": category})})


def _add_message(session: Session, case: Case, tm: TriagedMessage, now: datetime) -> None:
    msg = tm.message
    session.add(Message(id=msg.id, case_id=case.id, external_id=msg.external_id[:500], connector=msg.connector,
                        sender=(msg.sender.address or msg.sender.handle or msg.sender.platform_id
                                or msg.sender.phone or "")[:320],
                        subject=(msg.subject or "")[:500], text=msg.text or msg.full_text,
                        received_at=msg.received_at, triage=tm.triage.model_dump(mode="json")))
    case.message_count += 1
    keys = {f"mid:{msg.external_id}"} if msg.channel == "email" else set()
    if msg.thread.conversation_id:
        keys.add(f"conv:{msg.connector}:{msg.thread.conversation_id}")
    with session.no_autoflush:  # what is pending cannot hold these keys; flushing here costs a round trip
        for key in keys:
            if session.get(ThreadKey, key[:600]) is None:
                session.add(ThreadKey(key=key[:600], case_id=case.id))
    _history(session, case, now, "message_added", msg.id, {"category": tm.triage.category,
                                                          "urgency": tm.triage.urgency})


def _acknowledge(session: Session, case: Case, tm: TriagedMessage, route: Route, ctx: Context, now: datetime,
                 follow_up: bool) -> str:
    """Queue the acknowledgement in the outbox, or record why none is sent. Returns the reason."""
    msg, s = tm.message, ctx.settings
    if msg.channel not in s.ack_channels:
        _history(session, case, now, "ack_suppressed", msg.id, {"reason": "channel_not_acknowledged"})
        return "channel_not_acknowledged"
    if msg.channel != "email":
        return _chat_ack(session, case, tm, route, ctx, now, follow_up)
    address = reply_address(msg)
    with session.no_autoflush:  # this message's own acknowledgement is not queued yet
        recent = session.scalar(select(func.count()).select_from(OutboxRow).where(
            OutboxRow.kind == "ack", OutboxRow.recipient == address,
            OutboxRow.created_at > now - timedelta(seconds=s.ack_rate_window_s))) if address else 0
    send, reason = ack_decision(msg, tm.triage.category, our_addresses=set(s.our_addresses), is_follow_up=follow_up,
                                ack_follow_ups=s.ack_follow_ups, recent_acks_to_sender=recent or 0,
                                max_per_window=s.ack_rate_max)
    if not send or address is None:
        _history(session, case, now, "ack_suppressed", msg.id, {"reason": reason})
        return reason
    due = aware(case.first_response_due) or now + route.sla
    body = render_ack(case.reference or "", case.language, route.sla, due, msg.sender.name, s.templates_dir,
                      s.fallback_language)
    email = build_ack_email(inbound=msg, case_reference=case.reference or "", body=body, from_address=s.from_address,
                            from_name=s.from_name, message_id_domain=s.message_id_domain)
    mid = ack_message_id(case.reference or "", msg.id, s.message_id_domain)
    payload = {"channel": "email", "connector": msg.connector, "recipient": address, "body": body,
               "message_id": mid, "raw": email.as_bytes().decode("utf-8", "surrogateescape")}
    key = f"ack:{case.id}:{msg.id}" if follow_up else f"ack:{case.id}"
    _outbox(session, case, "ack", key, json.dumps(payload, ensure_ascii=False), now, recipient=address)
    session.add(ThreadKey(key=f"mid:{mid}"[:600], case_id=case.id))
    _history(session, case, now, "ack_queued", msg.id, {"message_id": mid})
    return "ok"


def _chat_ack(session: Session, case: Case, tm: TriagedMessage, route: Route, ctx: Context, now: datetime,
              follow_up: bool) -> str:
    """Queue a chat/social acknowledgement for the platform's Replier, or record why not.

    Chat messages are answered in their conversation; public mentions as ``dispatch.public_mentions``
    says (:mod:`dispatch.reply_target`). A public reply carries the public template only: no reference."""
    msg, s = tm.message, ctx.settings
    mode = ack_mode(msg.channel, s.public_mentions)
    recipient, target = reply_target(msg, mode) if mode else (None, {})
    rate_key = f"{msg.platform}:{recipient if mode == 'chat' else msg.sender.platform_id or recipient}"
    with session.no_autoflush:  # this message's own acknowledgement is not queued yet
        recent = session.scalar(select(func.count()).select_from(OutboxRow).where(
            OutboxRow.kind == "ack", OutboxRow.recipient == rate_key,
            OutboxRow.created_at > now - timedelta(seconds=s.ack_rate_window_s))) or 0
    flags = msg.flags
    reason = ("auto_submitted" if flags.auto_submitted or flags.auto_reply or flags.bulk or flags.suppress_autoreply
              else "public_mention_policy" if mode is None
              else "spam" if tm.triage.category == "spam"
              else "follow_up" if follow_up and not s.ack_follow_ups
              else "rate_limited" if recent >= s.ack_rate_max
              else "no_address" if not recipient else "ok")
    if reason != "ok":
        _history(session, case, now, "ack_suppressed", msg.id, {"reason": reason})
        return reason
    if mode == "public_reply":
        body = render_public_ack(case.language, route.sla, s.templates_dir, s.fallback_language)
    else:
        body = render_ack(case.reference or "", case.language, route.sla, aware(case.first_response_due) or now + route.sla,
                          msg.sender.name, s.templates_dir, s.fallback_language)
    mid = ack_message_id(case.reference or "", msg.id, s.message_id_domain)
    payload = {"channel": msg.channel, "platform": msg.platform, "connector": msg.connector,
               "replier": replier_key(msg), "mode": mode, "recipient": recipient, "target": target,
               "thread_id": msg.external_id if mode == "chat" else None, "body": body, "message_id": mid}
    key = f"ack:{case.id}:{msg.id}" if follow_up else f"ack:{case.id}"
    _outbox(session, case, "ack", key, json.dumps(payload, ensure_ascii=False), now, recipient=rate_key)
    _history(session, case, now, "ack_queued", msg.id, {"message_id": mid, "platform": msg.platform, "mode": mode})
    return "ok"


def _event(session: Session, case: Case, message_id: str, kind: str, changes: tuple[str, ...], now: datetime) -> None:
    session.flush()
    event = case_event(case, message_id, kind, changes, now)
    _outbox(session, case, "event", f"event:{event.event_id}", encode(event).decode(), now)


def _outbox(session: Session, case: Case, kind: str, key: str, payload: str, now: datetime,
            recipient: str | None = None) -> None:
    """Queue one effect. Every key names the message being applied, and a message is applied once
    (``apply_message`` returns early for a known id), so the key is new; were it not, its unique
    constraint fails the transaction, which is then re-run and finds the message."""
    session.add(OutboxRow(kind=kind, dedupe_key=key, case_id=case.id, recipient=recipient, payload=payload,
                          status="pending", attempts=0, created_at=now, next_attempt_at=now))


def _history(session: Session, case: Case, now: datetime, event: str, message_id: str | None, detail: dict) -> None:  # type: ignore[type-arg]
    session.add(HistoryEntry(case_id=case.id, at=now, event=event, message_id=message_id, detail=detail))
