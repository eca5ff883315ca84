"""Case rows → the published ``CaseEvent`` (schema ``frontdesk/schemas/cases.v1.json``)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from dispatch.store.rows import CustomerInfo
from frontdesk.messages import CaseCustomer, CaseEvent, CaseSnapshot


def aware(value: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes for timezone-aware columns; everything stored is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def snapshot(case: Mapping[str, Any], customer: CustomerInfo) -> CaseSnapshot:
    """``case``: a row of the cases table as a mapping (column name → value)."""
    return CaseSnapshot(
        id=f"case_{case['id']}", reference=case["reference"] or "", status=case["status"],
        queue=case["queue"], priority=case["priority"], category=case["category"], urgency=case["urgency"],
        language=case["language"], channel=case["channel"],
        customer=CaseCustomer(id=f"cus_{customer.id}", name=customer.name, identities=customer.identities),
        first_response_due=aware(case["first_response_due"]), created_at=aware(case["created_at"]),
        updated_at=aware(case["updated_at"]), message_count=max(case["message_count"], 1),
        acknowledged=bool(case["acknowledged"]), possible_thread_match=case["possible_thread_match"],
    )


def event_id(case_id: int, message_id: str, kind: str) -> str:
    return "evt_" + hashlib.sha256(f"{case_id}\x00{message_id}\x00{kind}".encode()).hexdigest()[:32]


def case_event(case: Mapping[str, Any], customer: CustomerInfo, message_id: str, kind: str,
               changes: tuple[str, ...], now: datetime) -> CaseEvent:
    return CaseEvent(event_id=event_id(case["id"], message_id, kind), type=kind,  # type: ignore[arg-type]
                     occurred_at=aware(now), message_id=message_id, changes=changes,  # type: ignore[arg-type]
                     case=snapshot(case, customer))
