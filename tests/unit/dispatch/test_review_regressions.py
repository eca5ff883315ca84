"""Regressions: acknowledgements to our own From address, one mail in two mailboxes, references past
case 999,999, shared conversations, case events through a long broker outage or refused for good,
sends that could outlast the lease, and a relay that must not die. In-memory SQLite, memory bus."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import select, text

from dispatch.base import MemoryReplier, OutboundReply
from dispatch.cases import Context
from dispatch.thread_keys import fitted, reference_pattern
from dispatch.commands import list_cases, show_case
from dispatch.relay import OutboxRelay
from dispatch.routing import RoutingTable
from dispatch.settings import DispatchSettings
from dispatch.store.models import OutboxRow
from dispatch.store.sql import SqlCaseStore
from frontdesk.bus.memory import MemoryBus
from frontdesk.codec import decode
from frontdesk.errors import BusError, BusUnavailable, ConfigError
from frontdesk.messages import CaseEvent, DeadLetter, InboundMessage, Party, ThreadHints, Triage, TriagedMessage
from frontdesk.metrics import Metrics
from tests.unit.dispatch.test_cases import NOW, Clock, chat


def make_store(clock: Clock, **settings: object) -> SqlCaseStore:
    s = DispatchSettings(**settings)  # type: ignore[arg-type]
    return SqlCaseStore("sqlite://", Context(s, RoutingTable.load(s.routing_file)), clock=clock)


def mail(connector: str, message_id: str, sender: str = "aysel@mail.az", subject: str = "Withdrawal") -> TriagedMessage:
    msg = InboundMessage.create(connector=connector, external_id=message_id, channel="email", platform="email",
                                sender=Party(address=sender, name="Aysel"), subject=subject, text="hello",
                                received_at=NOW, thread=ThreadHints())
    return TriagedMessage(message=msg, triaged_at=NOW,
                          triage=Triage(category="payments", urgency="normal", language="en", model_version="t"))


def memory_relay(store: SqlCaseStore, **kwargs: object) -> tuple[OutboxRelay, MemoryBus, MemoryReplier]:
    bus, replier = MemoryBus(), MemoryReplier()
    return OutboxRelay(store, bus, {"email": replier, "telegram": replier}, **kwargs), bus, replier  # type: ignore[arg-type]


def outbox(store: SqlCaseStore, kind: str) -> list[tuple[str, int, str | None]]:
    return store.read(lambda s: [(r.status, r.attempts, r.last_error) for r in
                                 s.scalars(select(OutboxRow).where(OutboxRow.kind == kind).order_by(OutboxRow.id))])


# 1. Our own From address is never acknowledged.

@pytest.mark.parametrize("sender", ["support@frontdesk.example", "Support@FrontDesk.EXAMPLE"])
def test_mail_from_our_from_address_gets_no_acknowledgement(sender: str) -> None:
    store = make_store(Clock(), from_address="Support@frontdesk.example")  # our_addresses left empty
    assert store.apply(mail("imap:support", "<x1@frontdesk.example>", sender)).ack == "own_address"
    assert store.apply(mail("imap:support", "<x2@mail.az>")).ack == "ok"
    rel, _, replier = memory_relay(store)
    rel.run_once()
    assert [r.recipient for r in replier.sent] == ["aysel@mail.az"]


# 2. One mail delivered to two watched mailboxes.

@pytest.mark.parametrize("together", [False, True])
def test_one_mail_in_two_mailboxes_is_one_case_with_one_acknowledgement(together: bool) -> None:
    store = make_store(Clock())
    copies = [mail("imap:support", "<same@mail.az>"), mail("imap:payments", "<same@mail.az>")]
    results = store.apply_many(copies) if together else [store.apply(c) for c in copies]
    assert [(r.case_reference, r.created, r.ack) for r in results] == [
        ("FD-2026-000001", True, "ok"), ("FD-2026-000001", False, "none")]
    case = show_case(store, "FD-2026-000001")
    assert case is not None and case["message_count"] == 2 and len(case["messages"]) == 2
    events = [h["event"] for h in case["history"]]
    assert events.count("created") == 1 and events.count("copy_added") == 1 and events.count("ack_queued") == 1
    assert len(list_cases(store, None, None)) == 1
    rel, bus, replier = memory_relay(store)
    rel.run_once()
    assert len(replier.sent) == 1
    assert [decode(r.value, CaseEvent).type for r in bus.records(bus.topics.cases)] == ["created"]
    assert store.apply(copies[1]).duplicate  # each copy is still idempotent under its own id


def test_two_different_mails_reusing_one_message_id_are_two_cases() -> None:
    """A web form that gives every mail the same Message-ID: the second mail is a request of its own
    (its own case and acknowledgement), not a copy of the first."""
    store = make_store(Clock())
    first, second = (mail("imap:support", "<form@bet.az>", subject=s) for s in ("Withdrawal", "Bonus"))
    second = second.model_copy(update={"message": InboundMessage.create(
        **second.message.model_dump(exclude={"id", "connector", "external_id"}), connector="imap:support",
        external_id="<form@bet.az>", content_digest="b" * 64)})
    results = [store.apply(first), store.apply(second)]
    assert [(r.created, r.ack) for r in results] == [(True, "ok"), (True, "ok")]
    assert len({r.case_reference for r in results}) == 2
    case = show_case(store, results[1].case_reference)
    assert case is not None and "copy_added" not in [h["event"] for h in case["history"]]


def test_a_stranger_reusing_a_message_id_never_joins_the_case() -> None:
    store = make_store(Clock())
    first = store.apply(mail("imap:support", "<same@mail.az>"))
    forged = store.apply(mail("imap:payments", "<same@mail.az>", sender="mallory@evil.example"))
    assert forged.created and forged.case_reference != first.case_reference
    assert forged.possible_thread_match == first.case_reference
    case = show_case(store, first.case_reference)
    assert case is not None and case["message_count"] == 1


# 3. References past case 999,999.

def test_a_seven_digit_reference_in_the_subject_joins_its_case() -> None:
    store = make_store(Clock())
    with store.engine.begin() as c:  # the id sequence after a million cases
        c.execute(text("INSERT INTO customers(id, display_name, created_at) VALUES (1, 'x', '2026-01-01')"))
        c.execute(text("INSERT INTO cases(id, status, queue, priority, routing_rule, category, urgency, language,"
                       " channel, connector, subject, customer_id, created_at, updated_at, message_count,"
                       " acknowledged, needs_review) VALUES (999999, 'closed', 'q', 3, 'r', 'other', 'normal', 'en',"
                       " 'email', 'c', '', 1, '2026-01-01', '2026-01-01', 1, 1, 0)"))
    first = store.apply(mail("imap:support", "<m1@mail.az>"))
    assert first.case_reference == "FD-2026-1000000"
    again = store.apply(mail("imap:support", "<m2@mail.az>", subject="re: fd-2026-1000000 still waiting"))
    assert (again.case_reference, again.created, again.ack) == ("FD-2026-1000000", False, "none")
    case = show_case(store, "FD-2026-1000000")
    assert case is not None and case["message_count"] == 2


def test_the_reference_pattern_uses_the_configured_prefix() -> None:
    found = [m.group(1) for m in reference_pattern("HD").finditer(
        "HD-2026-000042, hd-2026-12345678, FD-2026-000001, HD-2026-00042, XHD-2026-000001, HD-2026-0000011x")]
    assert found == ["HD-2026-000042", "hd-2026-12345678"]


# 7. Shared conversations.

def test_group_chat_follow_ups_join_each_participants_own_case() -> None:
    store = make_store(Clock())
    a1 = store.apply(chat(1, "111", "-100500"))
    b1 = store.apply(chat(2, "222", "-100500"))
    b2, b3 = store.apply(chat(3, "222", "-100500")), store.apply(chat(4, "222", "-100500"))
    a2 = store.apply(chat(5, "111", "-100500"))
    assert b1.created and b1.case_reference != a1.case_reference and b1.possible_thread_match == a1.case_reference
    assert {b2.case_reference, b3.case_reference} == {b1.case_reference} and not (b2.created or b3.created)
    assert a2.case_reference == a1.case_reference and not a2.created
    counts = {c["reference"]: c["message_count"] for c in list_cases(store, None, None)}
    assert counts == {a1.case_reference: 2, b1.case_reference: 3}
    c1 = store.apply(chat(6, "333", "-100500"))  # a third participant: own, flagged case, never A's or B's
    assert c1.created and c1.case_reference not in counts
    rel, _, replier = memory_relay(store)
    rel.run_once()
    assert sorted(r.case_reference for r in replier.sent) == sorted([a1.case_reference, b1.case_reference,
                                                                     c1.case_reference])


# 5. Case events through a long broker outage; a refused event is dead-lettered.

class DownBus(MemoryBus):
    def __init__(self, error: Exception | None) -> None:
        super().__init__()
        self.error = error

    def publish(self, records):  # type: ignore[no-untyped-def]
        if self.error is not None and any(r.topic == self.topics.cases for r in records):
            raise self.error
        super().publish(records)


def test_case_events_survive_a_broker_outage_of_many_hours() -> None:
    clock = Clock()
    store = make_store(clock)
    store.apply(mail("imap:support", "<m1@mail.az>"))
    bus = DownBus(BusUnavailable("broker down"))
    rel = OutboxRelay(store, bus, {"email": MemoryReplier()}, max_attempts=3)
    for _ in range(120):  # 10 hours
        rel.run_once()
        clock.now += timedelta(seconds=301)
    assert outbox(store, "event")[0][:2] == ("pending", 120)
    bus.error = None
    rel.run_once()
    assert [decode(r.value, CaseEvent).type for r in bus.records(bus.topics.cases)] == ["created"]
    assert outbox(store, "event")[0][0] == "sent" and bus.records(bus.topics.deadletter) == []


def test_an_event_the_bus_refuses_for_good_is_dead_lettered_and_replayable() -> None:
    from frontdesk.replay import ReplayOptions, Replayer

    clock = Clock()
    store = make_store(clock)
    store.apply(mail("imap:support", "<m1@mail.az>"))
    store.apply(mail("imap:support", "<m2@mail.az>", sender="other@mail.az"))
    bus = DownBus(None)
    refused = store.read(lambda s: s.scalars(select(OutboxRow.payload).where(OutboxRow.kind == "event")).first())
    real_publish = MemoryBus.publish

    def publish(records):  # type: ignore[no-untyped-def]
        if any(r.value == refused.encode() for r in records):
            raise BusError("record too large")
        real_publish(bus, records)

    bus.publish = publish  # type: ignore[method-assign]
    registry = Metrics(CollectorRegistry())
    rel = OutboxRelay(store, bus, {"email": MemoryReplier()}, metrics=registry)
    rel.run_once()
    assert [s for s, _, _ in outbox(store, "event")] == ["failed", "sent"]  # the other event is published
    [letter] = [decode(r.value, DeadLetter) for r in bus.records(bus.topics.deadletter)]
    assert (letter.stage, letter.error_type, letter.source_topic) == ("relay", "BusError", bus.topics.cases)
    assert letter.message_id == json.loads(refused)["event_id"] and rel.stats.events_dead_lettered == 1
    assert registry.errors.labels("relay", "poison", "BusError")._value.get() == 1

    bus.publish = lambda records: real_publish(bus, records)  # type: ignore[method-assign]
    summary = Replayer(bus, ReplayOptions(stage="relay", assign_timeout_s=5)).run()
    assert summary.total == 1
    replayed = [r for r in bus.records(bus.topics.cases) if r.value == refused.encode()]
    assert len(replayed) == 1 and replayed[0].key == str(json.loads(refused)["case"]["id"]).encode()


def test_acknowledgements_still_end_after_max_attempts() -> None:
    clock = Clock()
    store = make_store(clock)
    store.apply(mail("imap:support", "<m1@mail.az>"))
    rel, _, replier = memory_relay(store, max_attempts=3)
    replier.fail_next = 10
    for _ in range(5):
        rel.run_once()
        clock.now += timedelta(seconds=301)
    assert outbox(store, "ack")[0][:2] == ("failed", 3) and rel.stats.acks_failed == 1


# 6. A send starts only if it ends within the lease.

class BoundedReplier(MemoryReplier):
    """Each send takes ``step`` seconds of the relay's (fake) clock and declares ``max_send_s``."""

    def __init__(self, ticks: list[float], step: float, bound: float) -> None:
        super().__init__()
        self.ticks, self.step, self.max_send_s = ticks, step, bound

    def send(self, reply: OutboundReply) -> None:
        self.ticks[0] += self.step
        super().send(reply)


def test_a_send_starts_only_if_its_bound_fits_in_the_rest_of_the_lease() -> None:
    clock = Clock()
    store = make_store(clock)
    for n in range(5):
        store.apply(mail("imap:support", f"<m{n}@mail.az>", sender=f"c{n}@mail.az"))
    ticks = [0.0]
    replier = BoundedReplier(ticks, step=10.0, bound=25.0)
    rel = OutboxRelay(store, MemoryBus(), {"email": replier}, lease_seconds=60, clock=lambda: ticks[0])
    rel.run_once()
    assert len(replier.sent) == 3  # started at 0, 10, 20 s: 30 + 25 > 54 (60 s less the margin to mark)
    assert store.claim_outbox(10, lease_seconds=60) == []
    clock.now += timedelta(seconds=61)
    rel.run_once()
    assert len({r.message_id for r in replier.sent}) == 5


def test_a_replier_that_cannot_finish_within_the_lease_is_refused_at_start() -> None:
    store = make_store(Clock())
    with pytest.raises(ConfigError, match="relay_lease_s"):
        OutboxRelay(store, MemoryBus(), {"email": BoundedReplier([0.0], 1, bound=55.0)}, lease_seconds=60)


# 8. The relay never dies.

class BrokenReplier(MemoryReplier):
    def send(self, reply: OutboundReply) -> None:
        if reply.recipient == "c0@mail.az":
            raise RuntimeError("bug in a replier")
        super().send(reply)


def test_an_unexpected_error_is_counted_its_row_retried_and_the_rest_delivered() -> None:
    clock = Clock()
    store = make_store(clock)
    for n in range(3):
        store.apply(mail("imap:support", f"<m{n}@mail.az>", sender=f"c{n}@mail.az"))
    registry = Metrics(CollectorRegistry())
    replier = BrokenReplier()
    rel = OutboxRelay(store, MemoryBus(), {"email": replier}, metrics=registry)
    rel.run_once()
    assert sorted(r.recipient for r in replier.sent) == ["c1@mail.az", "c2@mail.az"]
    assert [s for s, _, _ in outbox(store, "ack")] == ["pending", "sent", "sent"]
    assert "RuntimeError: bug in a replier" in (outbox(store, "ack")[0][2] or "")
    assert rel.stats.errors == 1 and registry.errors.labels("relay", "unexpected", "RuntimeError")._value.get() == 1


def test_the_relay_loop_survives_unexpected_errors_and_backs_off() -> None:
    store = make_store(Clock())
    registry = Metrics(CollectorRegistry())
    rel, _, _ = memory_relay(store, metrics=registry)
    calls: list[float] = []

    def broken() -> int:
        calls.append(time.monotonic())
        raise RuntimeError("boom")

    rel.run_once = broken  # type: ignore[method-assign]
    stop = threading.Event()
    worker = threading.Thread(target=rel.run, args=(stop, 0.05))
    worker.start()
    try:
        time.sleep(0.5)
        for _ in range(20):
            rel.wake()  # new rows do not cut the backoff short
        time.sleep(0.3)
        assert worker.is_alive() and 3 <= len(calls) <= 6  # 0.05, 0.1, 0.2, 0.4 s apart: no busy loop
        assert rel.stats.errors == len(calls)
    finally:
        stop.set()
        rel.wake()
        worker.join(timeout=5)
    assert not worker.is_alive()


# Store review: timestamps with an offset, and chat rate keys longer than the recipient column.

def test_a_received_at_with_an_offset_is_stored_as_its_utc_instant() -> None:
    from datetime import UTC, datetime, timezone

    baku = datetime(2026, 12, 6, 16, 0, tzinfo=timezone(timedelta(hours=4)))
    msg = mail("imap:support", "<tz@mail.az>")
    cases = []
    for received in (baku, baku.astimezone(UTC)):  # the same instant, with and without an offset
        store = make_store(Clock())
        store.apply(msg.model_copy(update={"message": msg.message.model_copy(update={"received_at": received})}))
        [case] = list_cases(store, None, None)
        [stored] = show_case(store, case["reference"])["messages"]  # type: ignore[index]
        cases.append((stored["received_at"], case["first_response_due"]))
    assert cases[0] == cases[1] and cases[0][0].startswith("2026-12-06T12:00:00")


def test_a_chat_rate_key_longer_than_the_recipient_column_is_cut_with_a_digest() -> None:
    from dispatch.store.rows import RECIPIENT_MAX

    long_a, long_b = "whatsapp-business-az:" + "7" * 320, "whatsapp-business-az:" + "7" * 319 + "8"
    assert len(fitted(long_a)) == RECIPIENT_MAX and fitted(long_a) == fitted(long_a)
    assert fitted(long_a) != fitted(long_b) and fitted("telegram:42") == "telegram:42"
