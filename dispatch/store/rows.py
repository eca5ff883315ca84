"""Core statements of the dispatcher's write path: lookups, and the rows one message adds.

:func:`dispatch.cases.apply_message` runs once per message, so it uses SQLAlchemy Core on one
connection rather than the ORM (the unit of work cost ~7 ms of CPU a message; these statements
a fraction of that). The tables are the ORM models' (:mod:`dispatch.store.models`), so both views
share one schema and its Alembic migrations. Nothing here commits: the caller's transaction does.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, bindparam, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from dispatch.store.models import Case, Customer, HistoryEntry, Identity, Message, OutboxRow, ThreadKey

CASES = Case.__table__
CUSTOMERS = Customer.__table__
IDENTITIES = Identity.__table__
MESSAGES = Message.__table__
THREAD_KEYS = ThreadKey.__table__
HISTORY = HistoryEntry.__table__
OUTBOX = OutboxRow.__table__
KEY_MAX = 600

# Built once: a statement built per call costs as much CPU again as executing it.
_INSERT = {table: insert(table) for table in (CASES, CUSTOMERS, IDENTITIES, MESSAGES, THREAD_KEYS, HISTORY, OUTBOX)}
_NEW_THREAD_KEYS = {backend.dialect.name: backend.insert(THREAD_KEYS).on_conflict_do_nothing(index_elements=["key"])
                    for backend in (postgresql, sqlite)}  # the two databases the store supports
_KEYED_CASES = select(THREAD_KEYS.c.key, THREAD_KEYS.c.case_id).where(
    THREAD_KEYS.c.key.in_(bindparam("keys", expanding=True)))
_STORED = (select(MESSAGES.c.case_id, CASES.c.reference).outerjoin(CASES, CASES.c.id == MESSAGES.c.case_id)
           .where(MESSAGES.c.id == bindparam("message_id")))
_CUSTOMER = (select(CUSTOMERS.c.id, CUSTOMERS.c.display_name).join(IDENTITIES, IDENTITIES.c.customer_id == CUSTOMERS.c.id)
             .where(IDENTITIES.c.kind == bindparam("kind"), IDENTITIES.c.value == bindparam("value")))
_IDENTITIES = select(IDENTITIES.c.kind, IDENTITIES.c.value).where(IDENTITIES.c.customer_id == bindparam("customer"))
_CASE = select(CASES).where(CASES.c.id == bindparam("case"))
_CASE_LOCKED = _CASE.with_for_update()
_CASE_BY_REFERENCE = select(CASES).where(CASES.c.reference == bindparam("reference"))
_UPDATE_CASE = update(CASES).where(CASES.c.id == bindparam("case_id_"))
_DUE = (select(OUTBOX.c.id).where(OUTBOX.c.status == "pending", OUTBOX.c.next_attempt_at <= bindparam("now"),
                                  or_(OUTBOX.c.lease_until.is_(None), OUTBOX.c.lease_until < bindparam("now")))
        .order_by(OUTBOX.c.id).limit(bindparam("limit")))
_LEASE = (update(OUTBOX).where(OUTBOX.c.id.in_(bindparam("ids", expanding=True)),
                               or_(OUTBOX.c.lease_until.is_(None), OUTBOX.c.lease_until < bindparam("now")))
          .values(lease_until=bindparam("until")).returning(OUTBOX.c.id))
_LEASED = (select(OUTBOX.c.id, OUTBOX.c.kind, CASES.c.reference, OUTBOX.c.payload, OUTBOX.c.attempts,
                  OUTBOX.c.created_at).outerjoin(CASES, CASES.c.id == OUTBOX.c.case_id)
           .where(OUTBOX.c.id.in_(bindparam("ids", expanding=True))).order_by(OUTBOX.c.id))
_MARK_SENT = (update(OUTBOX).where(OUTBOX.c.id.in_(bindparam("ids", expanding=True)), OUTBOX.c.status != "sent")
              .values(status="sent", sent_at=bindparam("now"), lease_until=None, attempts=OUTBOX.c.attempts + 1)
              .returning(OUTBOX.c.id, OUTBOX.c.kind, OUTBOX.c.case_id, OUTBOX.c.payload))
_ACKNOWLEDGED = update(CASES).where(CASES.c.id.in_(bindparam("ids", expanding=True))).values(acknowledged=True)
_RECENT_ACKS = select(func.count()).select_from(OUTBOX).where(
    OUTBOX.c.kind == "ack", OUTBOX.c.recipient == bindparam("recipient"), OUTBOX.c.created_at > bindparam("since"))


@dataclass(frozen=True)
class CustomerInfo:
    """What a case event says about the customer."""

    id: int
    name: str | None
    identities: tuple[str, ...]  # "kind:value", sorted


@dataclass
class Writes:
    """Rows the messages of one transaction add, written together by :meth:`flush` (one statement
    per table). Until then the lookups below see them too, so each message of a transaction sees
    the ones before it as if they had been written."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    references: dict[str, str] = field(default_factory=dict)  # message id -> its case's reference
    thread_keys: dict[str, int] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    outbox: list[dict[str, Any]] = field(default_factory=list)

    def flush(self, conn: Connection) -> None:
        """Insert everything collected, in foreign-key order; thread keys already stored are kept."""
        if self.messages:
            conn.execute(_INSERT[MESSAGES], self.messages)
        if self.thread_keys:
            conn.execute(_NEW_THREAD_KEYS[conn.dialect.name],
                         [{"key": k, "case_id": case_id} for k, case_id in self.thread_keys.items()])
        for table, rows in ((HISTORY, self.history), (OUTBOX, self.outbox)):
            if rows:
                conn.execute(_INSERT[table], rows)
        self.messages, self.references, self.thread_keys, self.history, self.outbox = [], {}, {}, [], []


def stored_case_of(conn: Connection, message_id: str, writes: Writes) -> str | None:
    """The reference of the case holding this message ("" if its case has none), or None if new."""
    if message_id in writes.references:
        return writes.references[message_id]
    row = conn.execute(_STORED, {"message_id": message_id}).first()
    return None if row is None else row.reference or ""


def find_customer(conn: Connection, kind: str, value: str) -> CustomerInfo | None:
    row = conn.execute(_CUSTOMER, {"kind": kind, "value": value}).first()
    if row is None:
        return None
    found = conn.execute(_IDENTITIES, {"customer": row.id})
    return CustomerInfo(row.id, row.display_name, tuple(sorted(f"{k}:{v}" for k, v in found)))


def add_customer(conn: Connection, name: str | None, identity: tuple[str, str] | None, now: datetime) -> CustomerInfo:
    customer_id = conn.execute(_INSERT[CUSTOMERS], {"display_name": name, "created_at": now}).inserted_primary_key[0]
    if identity is None:
        return CustomerInfo(customer_id, name, ())
    conn.execute(_INSERT[IDENTITIES], {"customer_id": customer_id, "kind": identity[0], "value": identity[1]})
    return CustomerInfo(customer_id, name, (f"{identity[0]}:{identity[1]}",))


def case_by_thread_key(conn: Connection, keys: Sequence[str], writes: Writes) -> dict[str, Any] | None:
    """The case of the first of ``keys`` (in order) that is stored (or about to be)."""
    keys = [k[:KEY_MAX] for k in keys]
    if not keys:
        return None
    found = {**writes.thread_keys, **dict(conn.execute(_KEYED_CASES, {"keys": keys}).all())}  # stored ones win
    first = next((found[k] for k in keys if k in found), None)
    return None if first is None else load_case(conn, first)


def case_by_reference(conn: Connection, reference: str) -> dict[str, Any] | None:
    row = conn.execute(_CASE_BY_REFERENCE, {"reference": reference}).mappings().first()
    return dict(row) if row is not None else None


def load_case(conn: Connection, case_id: int, *, lock: bool = False) -> dict[str, Any] | None:
    """The case row as a dict; ``lock``: ``SELECT ... FOR UPDATE`` (no-op on SQLite)."""
    row = conn.execute(_CASE_LOCKED if lock else _CASE, {"case": case_id}).mappings().first()
    return dict(row) if row is not None else None


def add_case(conn: Connection, values: dict[str, Any]) -> int:
    return int(conn.execute(_INSERT[CASES], values).inserted_primary_key[0])


def update_case(conn: Connection, case_id: int, values: dict[str, Any]) -> None:
    """Set the columns named in ``values``."""
    conn.execute(_UPDATE_CASE, {**values, "case_id_": case_id})


def recent_acks(conn: Connection, recipient: str, since: datetime, writes: Writes) -> int:
    """Acknowledgements queued to ``recipient`` after ``since`` (the rate limit)."""
    pending = sum(1 for r in writes.outbox if r["kind"] == "ack" and r["recipient"] == recipient and r["created_at"] > since)
    return int(conn.scalar(_RECENT_ACKS, {"recipient": recipient, "since": since}) or 0) + pending


def lease_due(conn: Connection, now: datetime, until: datetime, limit: int) -> list[Row[Any]]:
    """Lease up to ``limit`` due rows until ``until`` and return them (id order) with their case
    references. A row another relay leased between the pick and the lease is not returned."""
    ids = conn.scalars(_DUE, {"now": now, "limit": limit}).all()
    won = conn.scalars(_LEASE, {"ids": ids, "now": now, "until": until}).all() if ids else []
    return list(conn.execute(_LEASED, {"ids": won})) if won else []


def mark_sent(conn: Connection, ids: Sequence[int], now: datetime) -> None:
    """Mark rows sent (rows already sent are left alone); a sent acknowledgement marks its case
    acknowledged and adds that to the case history."""
    done = sorted(conn.execute(_MARK_SENT, {"ids": list(ids), "now": now}), key=lambda r: r.id)
    acks = [r for r in done if r.kind == "ack"]
    if acks:
        conn.execute(_ACKNOWLEDGED, {"ids": sorted({r.case_id for r in acks})})
        conn.execute(_INSERT[HISTORY], [{"case_id": r.case_id, "at": now, "event": "acknowledged", "message_id": None,
                                         "detail": {"message_id": json.loads(r.payload).get("message_id")}}
                                        for r in acks])
