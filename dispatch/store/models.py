"""SQLAlchemy 2 typed ORM of the case store (schema owned by the Alembic migrations beside it).

Tables: customers and their identities across channels, cases, messages (one row per source
message id: the idempotency key of the dispatcher), thread keys (Message-IDs and conversation ids
that lead to a case), case history, and the outbox (case events and acknowledgements to deliver).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Boolean, DateTime, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    type_annotation_map = {datetime: DateTime(timezone=True)}


class Customer(Base):
    __tablename__ = "customers"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    display_name: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime]
    identities: Mapped[list[Identity]] = relationship(back_populates="customer", lazy="selectin")


class Identity(Base):
    """One way to reach a customer: 'email:a@b.az', 'telegram:123', 'handle:instagram:aysel'."""

    __tablename__ = "identities"
    __table_args__ = (UniqueConstraint("kind", "value", name="uq_identity"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    kind: Mapped[str] = mapped_column(String(40))
    value: Mapped[str] = mapped_column(String(320))
    customer: Mapped[Customer] = relationship(back_populates="identities")


class Case(Base):
    __tablename__ = "cases"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    reference: Mapped[str | None] = mapped_column(String(32), unique=True)
    status: Mapped[str] = mapped_column(String(16), default="open", index=True)
    queue: Mapped[str] = mapped_column(String(64), index=True)
    priority: Mapped[int] = mapped_column(Integer)
    routing_rule: Mapped[str] = mapped_column(String(64))
    category: Mapped[str] = mapped_column(String(40))
    urgency: Mapped[str] = mapped_column(String(16))
    language: Mapped[str] = mapped_column(String(8))
    channel: Mapped[str] = mapped_column(String(16))
    connector: Mapped[str] = mapped_column(String(100))
    subject: Mapped[str] = mapped_column(String(500), default="")
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    first_response_due: Mapped[datetime | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    message_count: Mapped[int] = mapped_column(Integer, default=0)
    acknowledged: Mapped[bool] = mapped_column(Boolean, default=False)
    needs_review: Mapped[bool] = mapped_column(Boolean, default=False)
    possible_thread_match: Mapped[str | None] = mapped_column(String(32))
    customer: Mapped[Customer] = relationship(lazy="joined")


class Message(Base):
    """A message of a case; ``id`` is the pipeline message id (unique: re-delivery is a no-op)."""

    __tablename__ = "messages"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"), index=True)
    direction: Mapped[str] = mapped_column(String(8), default="in")
    external_id: Mapped[str] = mapped_column(String(500))
    connector: Mapped[str] = mapped_column(String(100))
    sender: Mapped[str] = mapped_column(String(320))
    subject: Mapped[str] = mapped_column(String(500), default="")
    text: Mapped[str] = mapped_column(Text, default="")
    received_at: Mapped[datetime]
    triage: Mapped[dict] = mapped_column(JSON, default=dict)  # type: ignore[type-arg]


class ThreadKey(Base):
    """'mid:<id@host>' (inbound Message-IDs and our acknowledgements') or 'conv:<connector>:<id>'."""

    __tablename__ = "thread_keys"
    key: Mapped[str] = mapped_column(String(600), primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"), index=True)


class HistoryEntry(Base):
    __tablename__ = "case_history"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"), index=True)
    at: Mapped[datetime]
    event: Mapped[str] = mapped_column(String(40))
    message_id: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[dict] = mapped_column(JSON, default=dict)  # type: ignore[type-arg]


class OutboxRow(Base):
    """Effects to deliver after the transaction: a case event for the bus or an acknowledgement.

    ``dedupe_key`` makes writing the same effect twice impossible; ``lease_until`` lets several
    relays share the outbox and a crashed relay's claims expire.
    """

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_due", "status", "next_attempt_at"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))
    dedupe_key: Mapped[str] = mapped_column(String(200), unique=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"), index=True)
    recipient: Mapped[str | None] = mapped_column(String(320), index=True)
    payload: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime]
    next_attempt_at: Mapped[datetime]
    lease_until: Mapped[datetime | None]
    sent_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
