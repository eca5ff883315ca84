"""Bodies of ``frontdesk dispatch`` and ``frontdesk cases list|show``."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from dispatch.base import Replier
from dispatch.cases import Context
from dispatch.chat_repliers import ChatReplySettings, build_repliers
from dispatch.relay import OutboxRelay
from dispatch.routing import RoutingTable
from dispatch.settings import DispatchSettings, SmtpSettings
from dispatch.snapshot import aware
from dispatch.stage import DispatchProcessor
from dispatch.store.models import Case, HistoryEntry, Message
from dispatch.store.sql import SqlCaseStore
from frontdesk.bus.base import Bus
from frontdesk.health import Probes
from frontdesk.metrics import default_metrics
from frontdesk.stage import StageRunner


def database_url(settings: DispatchSettings, data_dir: Path) -> str:
    if settings.database_url:
        return settings.database_url
    data_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(data_dir / 'cases.sqlite3').resolve()}"


def open_store(settings: DispatchSettings, data_dir: Path) -> SqlCaseStore:
    """Load the routing rules (fails fast with the line at fault) and open/migrate the database."""
    routing = RoutingTable.load(settings.routing_file)
    return SqlCaseStore(database_url(settings, data_dir), Context(settings, routing))


def repliers(smtp: SmtpSettings, chat: ChatReplySettings, settings: DispatchSettings,
             data_dir: Path) -> dict[str, Replier]:
    """Email (SMTP or .eml files) plus every chat platform whose credentials are configured."""
    return {"email": email_replier(smtp, settings, data_dir), **build_repliers(chat)}


def email_replier(smtp: SmtpSettings, settings: DispatchSettings, data_dir: Path) -> Replier:
    """SMTP when a server is configured, else .eml files in ``<data_dir>/outgoing`` (trial mode)."""
    if smtp.host:
        from dispatch.smtp import SmtpReplier

        return SmtpReplier(smtp, settings.from_address)
    from dispatch.maildrop import MaildropReplier

    return MaildropReplier(data_dir / "outgoing")


def run_dispatch(bus: Bus, store: SqlCaseStore, settings: DispatchSettings, repliers: dict[str, Replier],
                 stop: threading.Event, probes: Probes | None = None) -> None:
    """Blocking: the stage in this thread, the outbox relay in a second one, until ``stop``.

    ``repliers`` maps "email" and chat platforms ("telegram", "whatsapp", ...) to their Replier.
    The relay's counters are exported as metrics; ``probes`` (if given) watches the relay thread.
    The repliers are closed on return (this call owns them)."""
    relay = OutboxRelay(store, bus, repliers, batch=settings.relay_batch, lease_seconds=settings.relay_lease_s,
                        max_attempts=settings.relay_max_attempts)
    relay_thread = threading.Thread(target=relay.run, args=(stop, settings.relay_interval_s), name="relay")
    default_metrics().watch_relay(relay)
    if probes is not None:
        probes.watch_thread(relay_thread)
    relay_thread.start()
    runner = StageRunner("dispatch", bus, bus.consumer(settings.group, [bus.topics.triaged]),
                         DispatchProcessor(store, on_applied=relay.wake))
    try:
        runner.run(stop)
    finally:
        stop.set()
        relay.wake()
        relay_thread.join()
        for replier in repliers.values():
            replier.close()


def _case_row(case: Case) -> dict[str, Any]:
    due = aware(case.first_response_due)
    return {
        "reference": case.reference, "status": case.status, "queue": case.queue, "priority": case.priority,
        "category": case.category, "urgency": case.urgency, "language": case.language, "channel": case.channel,
        "customer": {"id": f"cus_{case.customer.id}", "name": case.customer.display_name,
                     "identities": sorted(f"{i.kind}:{i.value}" for i in case.customer.identities)},
        "acknowledged": case.acknowledged, "message_count": case.message_count, "subject": case.subject,
        "first_response_due": due.isoformat() if due else None, "created_at": aware(case.created_at).isoformat(),
        "routing_rule": case.routing_rule, "needs_review": case.needs_review,
        "possible_thread_match": case.possible_thread_match,
    }


def list_cases(store: SqlCaseStore, queue: str | None, status: str | None, limit: int = 500) -> list[dict[str, Any]]:
    """The ``limit`` most urgent cases of ``queue`` with ``status`` (None: any); :func:`count_cases` says
    how many there are in all."""
    def query(session: Session) -> list[dict[str, Any]]:
        stmt = select(Case).order_by(Case.priority, Case.first_response_due, Case.id).limit(limit)
        return [_case_row(c) for c in session.scalars(_where(stmt, queue, status)).unique()]

    return store.read(query)


def count_cases(store: SqlCaseStore, queue: str | None, status: str | None) -> int:
    """How many cases :func:`list_cases` would list without a limit."""
    return store.read(lambda session: session.scalar(_where(select(func.count(Case.id)), queue, status)) or 0)


def _where(stmt: Select[Any], queue: str | None, status: str | None) -> Select[Any]:
    if queue:
        stmt = stmt.where(Case.queue == queue)
    if status:
        stmt = stmt.where(Case.status == status)
    return stmt


def show_case(store: SqlCaseStore, reference: str) -> dict[str, Any] | None:
    def query(session: Session) -> dict[str, Any] | None:
        case = session.scalar(select(Case).where(Case.reference == reference))
        if case is None:
            return None
        out = _case_row(case)
        out["messages"] = [
            {"id": m.id, "direction": m.direction, "external_id": m.external_id, "sender": m.sender,
             "subject": m.subject, "text": m.text, "received_at": aware(m.received_at).isoformat(), "triage": m.triage}
            for m in session.scalars(select(Message).where(Message.case_id == case.id).order_by(Message.received_at))
        ]
        out["history"] = [
            {"at": aware(h.at).isoformat(), "event": h.event, "message_id": h.message_id, "detail": h.detail}
            for h in session.scalars(select(HistoryEntry).where(HistoryEntry.case_id == case.id)
                                     .order_by(HistoryEntry.id))
        ]
        return out

    return store.read(query)
