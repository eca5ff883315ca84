"""Interfaces of the dispatch stage: where cases live (CaseStore) and how replies leave (Replier)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True, slots=True)
class OutboundReply:
    """One acknowledgement to deliver. ``message_id`` is deterministic per (case, inbound message),
    so a duplicate delivery (the one documented crash window) is recognisable by the recipient."""

    channel: str
    connector: str
    recipient: str
    body: str
    message_id: str
    case_reference: str
    raw: bytes | None = None
    thread_id: str | None = None
    extra: dict[str, str] = field(default_factory=dict)


class Replier(ABC):
    """Delivers replies on one channel. ``send`` blocks until the far side accepted the reply.

    Raises ReplyUnavailable when a retry may succeed (connection refused, 4xx), ReplyError when it
    cannot (recipient rejected, 5xx). Must be safe to call again for the same reply.
    ``max_send_s``: the longest one send can take, if the replier enforces a bound (the relay then
    starts a send only when it ends within its lease on the row); None if unknown.
    """

    max_send_s: float | None = None

    @abstractmethod
    def send(self, reply: OutboundReply) -> None: ...

    def close(self) -> None:
        """Release connections at shutdown (idempotent); the owner of the repliers calls it."""


class MemoryReplier(Replier):
    """Records replies; can be told to fail the next N sends transiently (tests)."""

    def __init__(self) -> None:
        self.sent: list[OutboundReply] = []
        self.fail_next = 0

    def send(self, reply: OutboundReply) -> None:
        from frontdesk.errors import ReplyUnavailable

        if self.fail_next:
            self.fail_next -= 1
            raise ReplyUnavailable("simulated outage")
        self.sent.append(reply)


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What applying one triaged message did to the case store."""

    case_reference: str
    created: bool
    duplicate: bool = False
    rerouted: bool = False
    ack: str = "none"
    possible_thread_match: str | None = None


@dataclass(frozen=True, slots=True)
class OutboxItem:
    id: int
    kind: str
    case_reference: str
    payload: str
    attempts: int
    created_at: datetime


class CaseStore(ABC):
    """Durable cases. ``apply`` is one transaction keyed by the message id (re-applying is a no-op)."""

    @abstractmethod
    def apply(self, triaged: object) -> ApplyResult: ...

    def apply_many(self, batch: Sequence[object]) -> list[ApplyResult]:
        """``apply`` for each, in order; an implementation may use one transaction for all of them
        (then all or none are applied)."""
        return [self.apply(t) for t in batch]

    @abstractmethod
    def claim_outbox(self, limit: int, lease_seconds: float) -> list[OutboxItem]:
        """Lease up to ``limit`` due outbox rows; a crashed relay's lease expires and they return."""

    @abstractmethod
    def mark_sent(self, item_id: int) -> None: ...

    @abstractmethod
    def mark_sent_many(self, item_ids: Sequence[int]) -> None:
        """Mark several rows sent in one transaction; rows already sent are left alone."""

    @abstractmethod
    def mark_retry(self, item_id: int, error: str, delay_seconds: float, permanent: bool = False) -> None: ...
