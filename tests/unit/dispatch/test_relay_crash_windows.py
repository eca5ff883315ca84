"""The relay's windows between two steps that the other tests leave out.

* Between a case event's dead letter and the mark that ends its row (``dispatch/relay.py``): a kill
  leaves the row pending, the next claim is refused again and dead-letters it again, so the
  dead-letter topic holds it twice under one ``event_id``; a replay then publishes it twice, which
  consumers of the cases topic drop by ``event_id``. Nothing is lost.
* Between the start of a claim and its return: the lease runs from the moment the claim started, so a
  claim that waited (a lock, a stalled database) leaves less of it; a send must still end before it
  does, or a second relay claims the row and sends it too.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select

from dispatch.base import MemoryReplier, OutboundReply
from dispatch.relay import OutboxRelay
from dispatch.store.models import OutboxRow
from frontdesk.bus.memory import MemoryBus
from frontdesk.codec import decode
from frontdesk.errors import BusError
from frontdesk.messages import DeadLetter
from frontdesk.replay import Replayer, ReplayOptions
from tests.unit.dispatch.test_cases import NOW, Clock
from tests.unit.dispatch.test_review_regressions import mail, make_store, outbox


class RefusingCases(MemoryBus):
    """Refuses every case event for good (as a broker refusing the record would)."""

    refusing = True

    def publish(self, records: Any) -> None:
        if self.refusing and any(r.topic == self.topics.cases for r in records):
            raise BusError("refused for good (test)")
        super().publish(records)


def test_a_kill_between_an_events_dead_letter_and_its_mark_dead_letters_it_again_under_its_event_id() -> None:
    clock = Clock()
    store = make_store(clock)
    store.apply(mail("imap:support", "<m1@mail.az>"))
    event = store.read(lambda s: s.scalars(select(OutboxRow.payload).where(OutboxRow.kind == "event")).one())
    bus = RefusingCases()
    killed = OutboxRelay(store, bus, {"email": MemoryReplier()})
    real_mark = store.mark_retry

    def kill_on_the_permanent_mark(item_id: int, error: str, delay: float, permanent: bool = False) -> None:
        if permanent:
            raise SystemExit("killed after the dead letter, before the mark")
        real_mark(item_id, error, delay, permanent)

    store.mark_retry = kill_on_the_permanent_mark  # type: ignore[method-assign]
    try:
        killed.run_once()
    except SystemExit:
        pass
    store.mark_retry = real_mark  # type: ignore[method-assign]
    assert [s for s, _, _ in outbox(store, "event")] == ["pending"]  # still leased to the dead relay
    clock.now += timedelta(seconds=61)  # its lease runs out
    OutboxRelay(store, bus, {"email": MemoryReplier()}).run_once()
    assert [s for s, _, _ in outbox(store, "event")] == ["failed"]
    letters = [decode(r.value, DeadLetter) for r in bus.records(bus.topics.deadletter)]
    assert [d.message_id for d in letters] == [json.loads(event)["event_id"]] * 2  # twice, one event id

    bus.refusing = False  # fixed: the replay publishes both, one event_id
    assert Replayer(bus, ReplayOptions(stage="relay", assign_timeout_s=5)).run().total == 2
    published = [json.loads(r.value)["event_id"] for r in bus.records(bus.topics.cases)]
    assert published == [json.loads(event)["event_id"]] * 2


class Time:
    """One fake time: the database's wall clock (call it) and the relays' monotonic clock."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def __call__(self) -> datetime:
        return NOW + timedelta(seconds=self.seconds)

    def monotonic(self) -> float:
        return self.seconds


class TenSecondSends(MemoryReplier):
    """A bounded replier (like SMTP's) whose sends take 10 s; ``halfway`` runs in the middle of each."""

    max_send_s = 10.0

    def __init__(self, time: Time, sent: list[str], halfway: Callable[[], object] = lambda: None) -> None:
        super().__init__()
        self.time, self.log, self.halfway = time, sent, halfway

    def send(self, reply: OutboundReply) -> None:
        self.time.seconds += 5
        self.halfway()
        self.time.seconds += 5
        self.log.append(reply.message_id)


def test_a_claim_that_waited_leaves_less_lease_and_no_send_outlasts_it() -> None:
    time = Time()
    store = make_store(time)  # type: ignore[arg-type]
    for n in range(3):
        store.apply(mail("imap:support", f"<m{n}@mail.az>", sender=f"c{n}@mail.az"))
    sent: list[str] = []
    other = OutboxRelay(store, MemoryBus(), {"email": TenSecondSends(time, sent)}, lease_seconds=60,
                        clock=time.monotonic)
    first = OutboxRelay(store, MemoryBus(), {"email": TenSecondSends(time, sent, halfway=other.run_once)},
                        lease_seconds=60, clock=time.monotonic)
    real_claim, waits = store.claim_outbox, [40.0]

    def claim_that_waits(limit: int, lease_seconds: float) -> list[Any]:
        claimed = real_claim(limit, lease_seconds)  # leased from the time the claim started...
        time.seconds += waits.pop() if waits else 0.0  # ...the first one returns 40 s later (a lock wait)
        return claimed

    store.claim_outbox = claim_that_waits  # type: ignore[method-assign]
    first.run_once()  # the other relay polls halfway through each of its sends
    time.seconds += 61
    other.run_once()  # what the first relay left for a later claim
    assert len(sent) == 3 and Counter(sent).most_common(1)[0][1] == 1, Counter(sent)
