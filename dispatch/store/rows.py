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
from datetime import UTC, datetime
from itertools import groupby
from typing import Any

from sqlalchemy import Connection, DateTime, Integer, Row, bindparam, func, insert, or_, select, text, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite

from dispatch.store.models import Case, Customer, HistoryEntry, Identity, Message, OutboxRow, ThreadKey
from frontdesk.errors import StoreError

CASES = Case.__table__
CUSTOMERS = Customer.__table__
IDENTITIES = Identity.__table__
MESSAGES = Message.__table__
THREAD_KEYS = ThreadKey.__table__
HISTORY = HistoryEntry.__table__
OUTBOX = OutboxRow.__table__
KEY_MAX = 600
PREFETCH_KEYS = 2000
RECIPIENT_MAX = 320  # outbox.recipient: an email address, or a chat acknowledgement's rate key

# Built once: a statement built per call costs as much CPU again as executing it.
_INSERT = {table: insert(table) for table in (CASES, CUSTOMERS, IDENTITIES, MESSAGES, THREAD_KEYS, HISTORY, OUTBOX)}
_NEW_THREAD_KEYS = {backend.dialect.name: backend.insert(THREAD_KEYS).on_conflict_do_nothing(index_elements=["key"])
                    .returning(THREAD_KEYS.c.key)
                    for backend in (postgresql, sqlite)}  # the two databases the store supports
_KEYED_CASES = select(THREAD_KEYS.c.key, THREAD_KEYS.c.case_id).where(
    THREAD_KEYS.c.key.in_(bindparam("keys", expanding=True)))
_STORED = (select(MESSAGES.c.case_id, CASES.c.reference).outerjoin(CASES, CASES.c.id == MESSAGES.c.case_id)
           .where(MESSAGES.c.id == bindparam("message_id")))
_STORED_MANY = (select(MESSAGES.c.id, CASES.c.reference).outerjoin(CASES, CASES.c.id == MESSAGES.c.case_id)
                .where(MESSAGES.c.id.in_(bindparam("ids", expanding=True))))
_FOUND, _ALL = IDENTITIES.alias("found"), IDENTITIES.alias("all_")
_CUSTOMERS = (select(_FOUND.c.kind, _FOUND.c.value, CUSTOMERS.c.id, CUSTOMERS.c.display_name, _ALL.c.kind.label("k"),
                     _ALL.c.value.label("v"))
              .join(CUSTOMERS, CUSTOMERS.c.id == _FOUND.c.customer_id).join(_ALL, _ALL.c.customer_id == CUSTOMERS.c.id)
              .where(tuple_(_FOUND.c.kind, _FOUND.c.value).in_(bindparam("pairs", expanding=True))))
_ACK_TIMES = select(OUTBOX.c.recipient, OUTBOX.c.created_at).where(
    OUTBOX.c.kind == "ack", OUTBOX.c.recipient.in_(bindparam("recipients", expanding=True)),
    OUTBOX.c.created_at > bindparam("since"))
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
_RETRY_VALUES = {"attempts": OUTBOX.c.attempts + 1, "last_error": bindparam("error_text"), "lease_until": None,
                 "next_attempt_at": bindparam("retry_at")}
_RETRY = {permanent: (update(OUTBOX).where(OUTBOX.c.id == bindparam("item_id"), OUTBOX.c.status != "sent")
                      .values(**_RETRY_VALUES, **({"status": "failed"} if permanent else {}))
                      .returning(OUTBOX.c.case_id, OUTBOX.c.kind))
          for permanent in (False, True)}
_ACKNOWLEDGED = update(CASES).where(CASES.c.id.in_(bindparam("ids", expanding=True))).values(acknowledged=True)
# PostgreSQL: mark_sent's three statements as one (data-modifying CTEs), run alone in autocommit: one
# round trip and one commit instead of five round trips, for every acknowledgement the relay sends.
MARK_SENT_ONE_STATEMENT = text("""
WITH done AS (
    UPDATE outbox SET status = 'sent', sent_at = :now, lease_until = NULL, attempts = attempts + 1
    WHERE id = ANY(:ids) AND status <> 'sent'
    RETURNING id, kind, case_id, payload
), acked AS (
    UPDATE cases SET acknowledged = true WHERE id IN (SELECT case_id FROM done WHERE kind = 'ack')
)
INSERT INTO case_history (case_id, at, event, message_id, detail)
SELECT case_id, :now, 'acknowledged', NULL, json_build_object('message_id', payload::json ->> 'message_id')
FROM done WHERE kind = 'ack' ORDER BY id
""").bindparams(bindparam("ids", type_=postgresql.ARRAY(Integer)), bindparam("now", type_=DateTime(timezone=True)))
_RECENT_ACKS = select(func.count()).select_from(OUTBOX).where(
    OUTBOX.c.kind == "ack", OUTBOX.c.recipient == bindparam("recipient"), OUTBOX.c.created_at > bindparam("since"))


class ThreadKeyTaken(StoreError):
    """A concurrent dispatcher stored a thread key this transaction found missing (a unique-key race)."""


@dataclass(frozen=True)
class CustomerInfo:
    """What a case event says about the customer."""

    id: int
    name: str | None
    identities: tuple[str, ...]  # "kind:value", sorted


@dataclass
class Writes:
    """One transaction's view beyond the database: the rows and case updates its messages add,
    written together by :meth:`flush` (one statement per table), and what :func:`prefetch` read
    for them. The lookups below see both, so each message of a transaction sees the ones before
    it as if they had been written, and a prefetched lookup costs no round trip."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    references: dict[str, str] = field(default_factory=dict)  # message id -> its case's reference
    thread_keys: dict[str, int] = field(default_factory=dict)
    missing_keys: set[str] = field(default_factory=set)  # looked up and not stored: another writer may race us
    stored_keys: dict[str, int] = field(default_factory=dict)  # thread keys read from the database
    read_keys: set[str] = field(default_factory=set)  # thread keys whose stored state was read (stored or not)
    identities: list[dict[str, Any]] = field(default_factory=list)
    cases: dict[int, dict[str, Any]] = field(default_factory=dict)  # case id -> columns to set
    history: list[dict[str, Any]] = field(default_factory=list)
    outbox: list[dict[str, Any]] = field(default_factory=list)
    # Read by prefetch, kept up to date by the writes above:
    checked: set[str] = field(default_factory=set)  # message ids not stored unless in ``references``
    customers: dict[tuple[str, str], CustomerInfo | None] = field(default_factory=dict)
    ack_times: dict[str, list[datetime]] = field(default_factory=dict)  # recipient -> stored acks' times

    def flush(self, conn: Connection) -> None:
        """Write everything collected, in foreign-key order; thread keys already stored are kept.
        Called once, last in the transaction: what was read before is not valid after it. Raises
        ThreadKeyTaken if a key that a lookup of this transaction found missing is stored by now
        (another dispatcher won the race: the caller rolls back and re-runs, and then finds it)."""
        if self.identities:
            conn.execute(_INSERT[IDENTITIES], self.identities)
        if self.messages:
            conn.execute(_INSERT[MESSAGES], self.messages)
        if self.thread_keys:
            inserted = set(conn.execute(_NEW_THREAD_KEYS[conn.dialect.name],
                                        [{"key": k, "case_id": case_id} for k, case_id in self.thread_keys.items()]
                                        ).scalars())
            taken = sorted(k for k in self.thread_keys if k not in inserted and k in self.missing_keys)
            if taken:  # found missing, stored meanwhile by another dispatcher: this transaction must re-run
                raise ThreadKeyTaken(f"thread keys stored by another dispatcher meanwhile: {taken[:3]}")
        updates = sorted(({**v, "case_id_": k} for k, v in self.cases.items()), key=lambda u: sorted(u))
        for _, same_columns in groupby(updates, key=lambda u: sorted(u)):
            conn.execute(_UPDATE_CASE, list(same_columns))
        for table, rows in ((HISTORY, self.history), (OUTBOX, self.outbox)):
            if rows:
                conn.execute(_INSERT[table], rows)


def prefetch(conn: Connection, writes: Writes, message_ids: Sequence[str], identities: Sequence[tuple[str, str]],
             recipients: Sequence[str], since: datetime, thread_keys: Sequence[str] = ()) -> None:
    """Read in four statements what the lookups of several messages would read one by one:
    which are stored, the customers of their identities, the acknowledgements queued to their
    recipients after ``since`` (the earliest rate-limit window among them), and the cases of the
    thread keys they may look up."""
    if thread_keys:  # at most PREFETCH_KEYS (a mail can name thousands of References): the rest on demand
        _read_keys(conn, writes, list(dict.fromkeys(k[:KEY_MAX] for k in thread_keys))[:PREFETCH_KEYS])
    if message_ids:
        for message_id, reference in conn.execute(_STORED_MANY, {"ids": list(message_ids)}):
            writes.references[message_id] = reference or ""
        writes.checked.update(message_ids)
    if identities:
        found: dict[tuple[str, str], tuple[int, str | None, list[str]]] = {}
        for r in conn.execute(_CUSTOMERS, {"pairs": list(identities)}):
            found.setdefault((r.kind, r.value), (r.id, r.display_name, []))[2].append(f"{r.k}:{r.v}")
        for ident in identities:
            hit = found.get(ident)
            writes.customers[ident] = CustomerInfo(hit[0], hit[1], tuple(sorted(hit[2]))) if hit else None
    if recipients:
        times: dict[str, list[datetime]] = {r: [] for r in recipients}
        for recipient, created_at in conn.execute(_ACK_TIMES, {"recipients": list(recipients), "since": since}):
            times[recipient].append(created_at if created_at.tzinfo else created_at.replace(tzinfo=UTC))
        writes.ack_times.update(times)


def stored_case_of(conn: Connection, message_id: str, writes: Writes) -> str | None:
    """The reference of the case holding this message ("" if its case has none), or None if new."""
    if message_id in writes.references:
        return writes.references[message_id]
    if message_id in writes.checked:
        return None
    row = conn.execute(_STORED, {"message_id": message_id}).first()
    return None if row is None else row.reference or ""


def find_customer(conn: Connection, kind: str, value: str, writes: Writes) -> CustomerInfo | None:
    if (kind, value) in writes.customers:
        return writes.customers[kind, value]
    row = conn.execute(_CUSTOMER, {"kind": kind, "value": value}).first()
    if row is None:
        return None
    found = conn.execute(_IDENTITIES, {"customer": row.id})
    return CustomerInfo(row.id, row.display_name, tuple(sorted(f"{k}:{v}" for k, v in found)))


def add_customer(conn: Connection, name: str | None, identity: tuple[str, str] | None, now: datetime,
                 writes: Writes) -> CustomerInfo:
    """Insert the customer now (its id is needed); its identity row waits for the flush."""
    customer_id = conn.execute(_INSERT[CUSTOMERS], {"display_name": name, "created_at": now}).inserted_primary_key[0]
    if identity is None:
        return CustomerInfo(customer_id, name, ())
    writes.identities.append({"customer_id": customer_id, "kind": identity[0], "value": identity[1]})
    info = writes.customers[identity] = CustomerInfo(customer_id, name, (f"{identity[0]}:{identity[1]}",))
    return info


def case_by_thread_key(conn: Connection, keys: Sequence[str], writes: Writes) -> dict[str, Any] | None:
    """The case of the first of ``keys`` (in order) that is stored (or about to be)."""
    keys = [k[:KEY_MAX] for k in keys]
    if not keys:
        return None
    _read_keys(conn, writes, [k for k in keys if k not in writes.read_keys])
    stored = {k: writes.stored_keys[k] for k in keys if k in writes.stored_keys}
    writes.missing_keys.update(k for k in keys if k not in stored)
    found = {**writes.thread_keys, **stored}  # stored ones win
    first = next((found[k] for k in keys if k in found), None)
    return None if first is None else load_case(conn, first, writes)


def _read_keys(conn: Connection, writes: Writes, keys: list[str]) -> None:
    if keys:
        writes.stored_keys.update(conn.execute(_KEYED_CASES, {"keys": keys}).all())
        writes.read_keys.update(keys)


def case_by_reference(conn: Connection, reference: str, writes: Writes) -> dict[str, Any] | None:
    pending = next((case_id for case_id, v in writes.cases.items() if v.get("reference") == reference), None)
    if pending is not None:
        return load_case(conn, pending, writes)
    row = conn.execute(_CASE_BY_REFERENCE, {"reference": reference}).mappings().first()
    return dict(row) if row is not None else None


def load_case(conn: Connection, case_id: int, writes: Writes, *, lock: bool = False) -> dict[str, Any] | None:
    """The case row as a dict, with this transaction's pending updates; ``lock``: ``SELECT ...
    FOR UPDATE`` (no-op on SQLite)."""
    row = conn.execute(_CASE_LOCKED if lock else _CASE, {"case": case_id}).mappings().first()
    return {**row, **writes.cases.get(case_id, {})} if row is not None else None


def add_case(conn: Connection, values: dict[str, Any]) -> int:
    return int(conn.execute(_INSERT[CASES], values).inserted_primary_key[0])


def update_case(case_id: int, values: dict[str, Any], writes: Writes) -> None:
    """Set the columns named in ``values`` (at the flush; lookups see them before)."""
    writes.cases.setdefault(case_id, {}).update(values)


def recent_acks(conn: Connection, recipient: str, since: datetime, writes: Writes) -> int:
    """Acknowledgements queued to ``recipient`` after ``since`` (the rate limit)."""
    pending = sum(1 for r in writes.outbox if r["kind"] == "ack" and r["recipient"] == recipient and r["created_at"] > since)
    if recipient in writes.ack_times:
        return sum(1 for t in writes.ack_times[recipient] if t > since) + pending
    return int(conn.scalar(_RECENT_ACKS, {"recipient": recipient, "since": since}) or 0) + pending


def lease_due(conn: Connection, now: datetime, until: datetime, limit: int) -> list[Row[Any]]:
    """Lease up to ``limit`` due rows until ``until`` and return them (id order) with their case
    references. A row another relay leased between the pick and the lease is not returned."""
    ids = conn.scalars(_DUE, {"now": now, "limit": limit}).all()
    won = conn.scalars(_LEASE, {"ids": ids, "now": now, "until": until}).all() if ids else []
    return list(conn.execute(_LEASED, {"ids": won})) if won else []


def mark_sent(conn: Connection, ids: Sequence[int], now: datetime) -> None:
    """Mark rows sent (rows already sent are left alone); a sent acknowledgement marks its case
    acknowledged and adds that to the case history. (PostgreSQL: ``MARK_SENT_ONE_STATEMENT``.)"""
    done = sorted(conn.execute(_MARK_SENT, {"ids": list(ids), "now": now}), key=lambda r: r.id)
    acks = [r for r in done if r.kind == "ack"]
    if acks:
        conn.execute(_ACKNOWLEDGED, {"ids": sorted({r.case_id for r in acks})})
        conn.execute(_INSERT[HISTORY], [{"case_id": r.case_id, "at": now, "event": "acknowledged", "message_id": None,
                                         "detail": {"message_id": json.loads(r.payload).get("message_id")}}
                                        for r in acks])


def mark_retry(conn: Connection, item_id: int, error: str, retry_at: datetime, permanent: bool, now: datetime) -> None:
    """Count a failed attempt and schedule the next one (a row already sent is left alone); a
    permanent failure marks the row failed and adds ``<kind>_failed`` to the case history."""
    failed = conn.execute(_RETRY[permanent], {"item_id": item_id, "error_text": error[:2000],
                                              "retry_at": retry_at}).first()
    if failed is not None and permanent:
        conn.execute(_INSERT[HISTORY], {"case_id": failed.case_id, "at": now, "event": f"{failed.kind}_failed",
                                        "message_id": None, "detail": {"error": error[:500]}})
