"""Cases, threading, routing, acknowledgements and the relay on the in-memory SQLite store."""

from __future__ import annotations

import json
import re
import threading
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from pathlib import Path

import jsonschema
import pytest

from dispatch.base import MemoryReplier
from dispatch.cases import Context
from dispatch.commands import list_cases, show_case
from dispatch.relay import OutboxRelay
from dispatch.routing import RoutingTable
from dispatch.settings import DispatchSettings
from dispatch.store.sql import SqlCaseStore
from frontdesk.bus.memory import MemoryBus
from frontdesk.codec import decode, schema_path
from frontdesk.errors import StoreUnavailable
from frontdesk.messages import CaseEvent, Flags, InboundMessage, Party, ThreadHints, Triage, TriagedMessage

NOW = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture()
def clock() -> Clock:
    return Clock()


@pytest.fixture()
def store(clock: Clock) -> SqlCaseStore:
    settings = DispatchSettings(our_addresses=("@bet.example",), from_address="support@bet.example",
                                message_id_domain="bet.example")
    return SqlCaseStore("sqlite://", Context(settings, RoutingTable.load(settings.routing_file)), clock=clock)


def email(n: int, sender: str = "aysel@mail.az", subject: str = "Pul çıxarışı", *, in_reply_to: str | None = None,
          category: str = "payments", urgency: str = "high", language: str = "az", flags: Flags | None = None,
          name: str | None = "Aysel") -> TriagedMessage:
    msg = InboundMessage.create(
        connector="imap:support", external_id=f"<m{n}@mail.az>", channel="email", platform="email",
        sender=Party(address=sender, name=name), subject=subject, text=f"message {n}", received_at=NOW,
        thread=ThreadHints(in_reply_to=in_reply_to, references=(in_reply_to,) if in_reply_to else ()),
        flags=flags or Flags())
    triage = Triage(category=category, urgency=urgency, language=language, model_version="test")  # type: ignore[arg-type]
    return TriagedMessage(message=msg, triage=triage, triaged_at=NOW)


def chat(n: int, user: str, conversation: str, urgency: str = "normal") -> TriagedMessage:
    msg = InboundMessage.create(
        connector="telegram:bot", external_id=f"{conversation}:{n}", channel="chat", platform="telegram",
        sender=Party(platform_id=user, handle=f"user{user}"), text=f"chat {n}", received_at=NOW,
        thread=ThreadHints(conversation_id=conversation))
    triage = Triage(category="bonuses", urgency=urgency, language="ru", model_version="test")  # type: ignore[arg-type]
    return TriagedMessage(message=msg, triage=triage, triaged_at=NOW)


def relay(store: SqlCaseStore) -> tuple[OutboxRelay, MemoryBus, MemoryReplier]:
    bus, replier = MemoryBus(), MemoryReplier()
    return OutboxRelay(store, bus, {"email": replier}), bus, replier


def test_new_case_is_routed_acknowledged_and_announced(store: SqlCaseStore) -> None:
    result = store.apply(email(1))
    assert result.created and result.case_reference == "FD-2026-000001" and result.ack == "ok"
    [case] = list_cases(store, None, None)
    assert (case["queue"], case["priority"], case["category"]) == ("payments-priority", 2, "payments")
    assert case["first_response_due"] == (NOW + timedelta(hours=1)).isoformat()
    rel, bus, replier = relay(store)
    assert rel.run_once() == 2
    [sent] = replier.sent
    mail = message_from_bytes(sent.raw or b"", policy=policy.default)
    assert mail["Subject"] == "[FD-2026-000001] Re: Pul çıxarışı" and mail["In-Reply-To"] == "<m1@mail.az>"
    assert mail["Auto-Submitted"] == "auto-replied" and "FD-2026-000001" in mail.get_content()
    [record] = bus.records(bus.topics.cases)
    event = decode(record.value, CaseEvent)
    assert record.key == b"case_1" and event.type == "created" and event.case.reference == "FD-2026-000001"
    jsonschema.validate(json.loads(record.value), json.loads(schema_path("cases").read_text()))
    shown = show_case(store, "FD-2026-000001")
    assert shown is not None and shown["acknowledged"]
    assert [h["event"] for h in shown["history"]] == ["created", "message_added", "ack_queued", "acknowledged"]


def test_redelivery_is_a_no_op(store: SqlCaseStore) -> None:
    first = store.apply(email(1))
    again = store.apply(email(1))
    assert again.duplicate and again.case_reference == first.case_reference
    rel, bus, replier = relay(store)
    rel.run_once()
    assert len(replier.sent) == 1 and len(bus.records(bus.topics.cases)) == 1


def test_follow_up_by_header_by_our_ack_and_by_subject_reference(store: SqlCaseStore) -> None:
    ref = store.apply(email(1)).case_reference
    rel, _, replier = relay(store)
    rel.run_once()
    by_header = store.apply(email(2, in_reply_to="<m1@mail.az>"))
    by_ack = store.apply(email(3, in_reply_to=replier.sent[0].message_id))
    by_subject = store.apply(email(4, subject=f"Re: [{ref}] hələ də yoxdur"))
    assert {r.case_reference for r in (by_header, by_ack, by_subject)} == {ref}
    assert not any(r.created for r in (by_header, by_ack, by_subject))
    assert list_cases(store, None, None)[0]["message_count"] == 4
    rel.run_once()
    assert len(replier.sent) == 1, "follow-ups get no second acknowledgement"


def test_stranger_replying_into_a_thread_gets_a_flagged_new_case(store: SqlCaseStore) -> None:
    ref = store.apply(email(1)).case_reference
    stranger = store.apply(email(2, sender="someone@else.az", subject=f"Re: [{ref}]", in_reply_to="<m1@mail.az>"))
    assert stranger.created and stranger.case_reference != ref and stranger.possible_thread_match == ref
    original = show_case(store, ref)
    assert original is not None and original["message_count"] == 1


def test_chat_follow_up_by_conversation_and_reroute_when_urgency_rises(store: SqlCaseStore) -> None:
    first = store.apply(chat(1, "42", "c-1"))
    second = store.apply(chat(2, "42", "c-1", urgency="critical"))
    assert second.case_reference == first.case_reference and second.rerouted
    case = show_case(store, first.case_reference)
    assert case is not None and case["urgency"] == "critical"
    assert "rerouted" in [h["event"] for h in case["history"]]
    assert first.ack == "ok"


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"flags": Flags(auto_submitted=True)}, "auto_submitted"),
        ({"flags": Flags(bounce=True)}, "bounce"),
        ({"flags": Flags(bulk=True)}, "bulk"),
        ({"sender": "no-reply@shop.az"}, "noreply_sender"),
        ({"sender": "agent@bet.example"}, "own_address"),
        ({"category": "spam", "urgency": "low"}, "spam"),
    ],
)
def test_no_acknowledgement_for_robots_and_spam(store: SqlCaseStore, kwargs: dict, reason: str) -> None:  # type: ignore[type-arg]
    result = store.apply(email(1, **kwargs))
    assert result.ack == reason
    rel, _, replier = relay(store)
    rel.run_once()
    assert replier.sent == []


def test_rate_limit_per_sender(store: SqlCaseStore, clock: Clock) -> None:
    acks = [store.apply(email(i, subject=f"question {i}")).ack for i in range(5)]
    assert acks == ["ok", "ok", "ok", "rate_limited", "rate_limited"]
    clock.now = NOW + timedelta(minutes=11)
    assert store.apply(email(9, subject="later")).ack == "ok"


def test_transient_reply_failure_is_retried_and_a_crashed_relay_lease_expires(store: SqlCaseStore,
                                                                              clock: Clock) -> None:
    store.apply(email(1))
    rel, _, replier = relay(store)
    replier.fail_next = 1
    rel.run_once()
    assert replier.sent == []
    clock.now += timedelta(seconds=1)
    rel.run_once()
    assert len(replier.sent) == 1
    store.apply(email(2, sender="other@mail.az"))
    claimed = store.claim_outbox(10, lease_seconds=60)
    assert claimed and store.claim_outbox(10, lease_seconds=60) == []
    clock.now += timedelta(seconds=61)
    assert {i.id for i in store.claim_outbox(10, lease_seconds=60)} == {i.id for i in claimed}


def test_an_outage_between_send_and_mark_does_not_repeat_the_acknowledgement(store: SqlCaseStore,
                                                                            clock: Clock) -> None:
    """The far side accepted, then the database went away before the row was marked sent: the relay
    remembers the delivery and marks it first once the database is back; nothing is sent twice."""
    store.apply(email(1))
    rel, bus, replier = relay(store)
    real_mark, calls = store.mark_sent_many, []

    def mark(ids: list[int]) -> None:
        calls.append(list(ids))
        if len(calls) in (2, 3):  # the event is marked; then the database is down for two attempts
            raise StoreUnavailable("database unavailable: connection refused")
        real_mark(ids)

    store.mark_sent_many = mark  # type: ignore[method-assign]
    with pytest.raises(StoreUnavailable):
        rel.run_once()  # event published and marked, acknowledgement accepted, marking it fails
    with pytest.raises(StoreUnavailable):
        rel.run_once()  # still down: nothing claimed, nothing sent
    assert len(replier.sent) == 1
    rel.run_once()  # back: the remembered delivery is marked before anything is claimed
    clock.now += timedelta(seconds=61)  # past the lease the acknowledgement was claimed with
    rel.run_once()
    assert len(replier.sent) == 1 and len(bus.records(bus.topics.cases)) == 1
    assert calls[1] == calls[2] == calls[3] and store.claim_outbox(10, lease_seconds=60) == []


@pytest.mark.parametrize("back_at_stop", [True, False])
def test_a_stop_during_an_outage_marks_what_it_can_and_says_what_it_cannot(
        store: SqlCaseStore, clock: Clock, back_at_stop: bool, caplog: pytest.LogCaptureFixture) -> None:
    store.apply(email(1))
    rel, _, replier = relay(store)
    real_mark, down = store.mark_sent_many, [True]

    def mark(ids: list[int]) -> None:
        if down[0] and any(i in rel._delivered for i in ids) and replier.sent:
            raise StoreUnavailable("database unavailable: connection refused")
        real_mark(ids)

    store.mark_sent_many = mark  # type: ignore[method-assign]
    with pytest.raises(StoreUnavailable):
        rel.run_once()  # the acknowledgement was accepted; marking it failed
    down[0] = not back_at_stop
    stop = threading.Event()
    stop.set()
    rel.run(stop)  # a clean stop: one last try to mark it, never an exception
    clock.now += timedelta(seconds=61)
    down[0] = False
    relay(store)[0].run_once()  # the restarted relay, past the lease
    resent = len(replier.sent) - 1
    assert resent == 0 if back_at_stop else "will be delivered again after the restart" in caplog.text


class SlowReplier(MemoryReplier):
    """Each send takes ``step`` seconds of the relay's (fake) monotonic clock."""

    def __init__(self, ticks: list[float], step: float) -> None:
        super().__init__()
        self.ticks, self.step = ticks, step

    def send(self, reply: object) -> None:  # type: ignore[override]
        self.ticks[0] += self.step
        super().send(reply)  # type: ignore[arg-type]


def test_relay_starts_sends_only_in_the_first_half_of_its_lease(store: SqlCaseStore, clock: Clock) -> None:
    """Another relay may claim the rows once the lease expires: we must not be sending them then."""
    for n in range(5):
        store.apply(email(n, sender=f"c{n}@mail.az"))
    ticks = [0.0]
    replier = SlowReplier(ticks, step=20.0)
    rel = OutboxRelay(store, MemoryBus(), {"email": replier}, lease_seconds=60, clock=lambda: ticks[0])
    rel.run_once()
    assert len(replier.sent) == 2  # started at 0 s and 20 s; 40 s is past half of the 60 s lease
    assert store.claim_outbox(10, lease_seconds=60) == []  # the rest is still leased to us
    clock.now += timedelta(seconds=61)
    rel.run_once()
    assert len(replier.sent) == 4 and len({r.message_id for r in replier.sent}) == 4


def test_bad_routing_file_names_the_line(tmp_path: Path) -> None:
    from frontdesk.errors import ConfigError

    bad = tmp_path / "routing.yaml"
    bad.write_text("default: {queue: general, priority: 4, sla: 1d}\nrules:\n  - name: x\n    match: {category: nope}\n"
                   "    queue: q\n")
    with pytest.raises(ConfigError, match=r"routing.yaml:\d+"):
        RoutingTable.load(bad)


def test_migrations_match_the_models(store: SqlCaseStore) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from dispatch.store.models import Base

    with store.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []


def test_cases_cli_json(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from frontdesk.cli import app

    url = f"sqlite:///{tmp_path / 'cases.sqlite3'}"
    settings = DispatchSettings(database_url=url)
    file_store = SqlCaseStore(url, Context(settings, RoutingTable.load(settings.routing_file)))
    ref = file_store.apply(email(1)).case_reference
    file_store.apply(email(2, in_reply_to="<m1@mail.az>"))
    file_store.close()
    env = {"FRONTDESK_DISPATCH_DATABASE_URL": url, "FRONTDESK_STORAGE_DATA_DIR": str(tmp_path)}
    listed = CliRunner().invoke(app, ["cases", "list", "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    [row] = json.loads(listed.stdout)
    for key in ("reference", "queue", "priority", "category", "urgency", "language", "channel", "status",
                "customer", "acknowledged", "message_count"):
        assert key in row
    assert (row["reference"], row["message_count"]) == (ref, 2)
    shown = CliRunner().invoke(app, ["cases", "show", ref, "--json"], env=env)
    case = json.loads(shown.stdout)
    assert len(case["messages"]) == 2 and case["history"][0]["event"] == "created"
    missing = CliRunner().invoke(app, ["cases", "show", "FD-2026-999999"], env=env)
    assert missing.exit_code == 1


def test_chat_acknowledgement_goes_to_the_platform_replier_once(store: SqlCaseStore) -> None:
    first = store.apply(chat(1, "42", "-100777"))
    store.apply(chat(2, "42", "-100777"))
    assert first.ack == "ok"
    bus, telegram, email_out = MemoryBus(), MemoryReplier(), MemoryReplier()
    OutboxRelay(store, bus, {"email": email_out, "telegram": telegram}).run_once()
    [sent] = telegram.sent
    assert (sent.recipient, sent.channel) == ("-100777", "chat") and first.case_reference in sent.body
    assert "UTC+04:00" in sent.body  # dispatch.timezone: Asia/Baku by default
    assert email_out.sent == []


def test_public_mentions_are_not_acknowledged_by_default(store: SqlCaseStore) -> None:
    mention = chat(1, "77", "post-9")
    mention = mention.model_copy(update={"message": mention.message.model_copy(update={"channel": "social"})})
    assert store.apply(mention).ack == "public_mention_policy"


def in_group(tm: TriagedMessage) -> TriagedMessage:
    """``tm`` as our Telegram connector gives a group message: the group is its recipient."""
    group = Party(platform_id=tm.message.thread.conversation_id, name="Bet fans")
    return tm.model_copy(update={"message": tm.message.model_copy(update={"recipients": (group,)})})


def test_a_telegram_group_message_gets_no_case_reference_in_the_group(clock: Clock) -> None:
    assert mention_store("none", clock).apply(in_group(chat(1, "42", "-100777"))).ack == "public_mention_policy"
    store = mention_store("reply", clock)
    result = store.apply(in_group(chat(1, "42", "-100777")))
    telegram = MemoryReplier()
    OutboxRelay(store, MemoryBus(), {"telegram": telegram}).run_once()
    [sent] = telegram.sent
    assert (sent.recipient, sent.thread_id, sent.extra["mode"]) == ("-100777", "-100777:1", "public_reply")
    assert result.case_reference not in sent.body


def mention_store(mode: str, clock: Clock) -> SqlCaseStore:
    settings = DispatchSettings(public_mentions=mode)  # type: ignore[arg-type]
    return SqlCaseStore("sqlite://", Context(settings, RoutingTable.load(settings.routing_file)), clock=clock)


def instagram_mention(comment: str | None = "17894227972186120") -> TriagedMessage:
    msg = InboundMessage.create(
        connector="instagram", external_id=f"mention:{comment}" if comment else "mention:media:17918195224117999",
        channel="social", platform="instagram", sender=Party(), recipients=(Party(platform_id="17841405726653026"),),
        thread=ThreadHints(conversation_id="17918195224117851"), received_at=NOW)
    triage = Triage(category="account_access", urgency="high", language="az", model_version="test")
    return TriagedMessage(message=msg, triage=triage, triaged_at=NOW)


def forwarded_mention() -> TriagedMessage:
    msg = InboundMessage.create(
        connector="http:twitter", external_id="1790012345678901234", channel="social", platform="twitter",
        sender=Party(platform_id="44196397", handle="rauf_az"), text="@BetAz pulumu qaytarın!", received_at=NOW,
        permalink="https://x.com/rauf_az/status/1790012345678901234")
    triage = Triage(category="payments", urgency="high", language="ru", model_version="test")
    return TriagedMessage(message=msg, triage=triage, triaged_at=NOW)


def test_public_reply_mode_answers_under_the_mention_without_the_reference(clock: Clock) -> None:
    store = mention_store("reply", clock)
    result = store.apply(instagram_mention())
    assert result.ack == "ok"
    instagram = MemoryReplier()
    OutboxRelay(store, MemoryBus(), {"instagram": instagram}).run_once()
    [sent] = instagram.sent
    assert (sent.channel, sent.recipient) == ("social", "17894227972186120")
    assert sent.extra == {"mode": "public_reply", "platform": "instagram", "account_id": "17841405726653026",
                          "media_id": "17918195224117851", "comment_id": "17894227972186120"}
    assert sent.body.startswith("Bizə yazdığınız üçün") and result.case_reference not in sent.body


def test_dm_mode_sends_the_full_acknowledgement_privately(clock: Clock) -> None:
    store = mention_store("dm", clock)
    result = store.apply(instagram_mention())
    caption = store.apply(instagram_mention(comment=None))
    assert (result.ack, caption.ack) == ("ok", "no_address")  # a caption mention has nobody to write to
    instagram = MemoryReplier()
    OutboxRelay(store, MemoryBus(), {"instagram": instagram}).run_once()
    [sent] = instagram.sent
    assert sent.extra == {"mode": "dm", "platform": "instagram", "comment_id": "17894227972186120"}
    assert result.case_reference in sent.body and sent.body.startswith("Salam!")


def test_forwarded_mentions_go_to_the_signed_webhook_with_their_ids(clock: Clock) -> None:
    store = mention_store("reply", clock)
    store.apply(forwarded_mention())
    webhook, email_out = MemoryReplier(), MemoryReplier()
    OutboxRelay(store, MemoryBus(), {"email": email_out, "webhook": webhook}).run_once()
    [sent] = webhook.sent
    assert (sent.recipient, sent.extra["mode"], sent.extra["platform"]) == ("1790012345678901234", "public_reply",
                                                                             "twitter")
    assert sent.extra["permalink"] == "https://x.com/rauf_az/status/1790012345678901234"
    assert sent.extra["author_id"] == "44196397" and sent.body.startswith("Спасибо, что написали")


def test_a_chat_platform_without_its_replier_falls_back_to_the_webhook_or_fails(clock: Clock) -> None:
    store = mention_store("none", clock)
    store.apply(chat(1, "42", "-100777"))
    assert store.apply(forwarded_mention()).ack == "public_mention_policy"
    webhook = MemoryReplier()
    OutboxRelay(store, MemoryBus(), {"webhook": webhook}).run_once()
    [sent] = webhook.sent
    assert (sent.recipient, sent.extra["mode"], sent.thread_id) == ("-100777", "chat", "-100777:1")
    lonely = mention_store("none", clock)
    lonely.apply(chat(1, "42", "-100777"))
    rel = OutboxRelay(lonely, MemoryBus(), {})
    rel.run_once()
    assert rel.stats.acks_failed == 1 and rel.stats.acks_sent == 0


def test_acknowledged_follow_ups_keep_the_due_time_aware_on_sqlite(clock: Clock) -> None:
    # SQLite hands the stored due time back naive; rendering it raised and dead-lettered the follow-up
    settings = DispatchSettings(ack_follow_ups=True, our_addresses=("@bet.example",), from_address="support@bet.example",
                                message_id_domain="bet.example")
    store = SqlCaseStore("sqlite://", Context(settings, RoutingTable.load(settings.routing_file)), clock=clock)
    first = store.apply(email(1))
    follow_up = store.apply(email(2, in_reply_to="<m1@mail.az>"))
    assert (follow_up.case_reference, follow_up.created, follow_up.ack) == (first.case_reference, False, "ok")
    store.apply(chat(1, "42", "c-1"))
    assert store.apply(chat(2, "42", "c-1")).ack == "ok"
    rel, _, replier = relay(store)
    rel.run_once()
    assert [s.recipient for s in replier.sent] == ["aysel@mail.az", "aysel@mail.az"]
    assert all("FD-2026-000001" in s.body for s in replier.sent)


def test_a_woken_relay_delivers_at_once_not_at_its_next_poll(store: SqlCaseStore) -> None:
    import time

    from dispatch.stage import DispatchProcessor
    from frontdesk.bus.base import Record
    from frontdesk.codec import encode

    rel, _, replier = relay(store)
    stop = threading.Event()
    worker = threading.Thread(target=rel.run, args=(stop, 60.0))
    worker.start()
    try:
        time.sleep(0.2)  # the relay found nothing and waits for its next poll, a minute away
        woken: list[int] = []
        processor = DispatchProcessor(store, on_applied=lambda: (woken.append(1), rel.wake()))
        processor.process([Record("triaged", 0, 0, encode(email(1)), b"k")])
        deadline = time.monotonic() + 5
        while not replier.sent and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(replier.sent) == 1 and woken == [1]
    finally:
        stop.set()
        rel.wake()
        worker.join(timeout=5)
    assert not worker.is_alive(), "a woken relay stops without waiting out its interval"


_DATE = re.compile(r"Date: \w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d [+-]\d{4}")  # the wall clock


def _tables(store: SqlCaseStore) -> dict[str, list[tuple[object, ...]]]:
    """Every row of the case store, the acknowledgements' Date headers masked."""
    from sqlalchemy import text

    with store.transaction() as s:
        return {t: [tuple(_DATE.sub("Date: -", v) if isinstance(v, str) else v for v in r)
                    for r in s.execute(text(f"SELECT * FROM {t} ORDER BY 1"))]
                for t in ("customers", "identities", "cases", "messages", "thread_keys", "case_history", "outbox")}


def _two_stores(clock: Clock) -> tuple[SqlCaseStore, SqlCaseStore]:
    settings = DispatchSettings(our_addresses=("@bet.example",), from_address="support@bet.example",
                                message_id_domain="bet.example")
    one, many = (SqlCaseStore("sqlite://", Context(settings, RoutingTable.load(settings.routing_file)), clock=clock)
                 for _ in range(2))
    return one, many


def test_a_batch_in_one_transaction_gives_what_one_by_one_gives(clock: Clock) -> None:
    def batch() -> list[TriagedMessage]:
        ack_of_1 = "<ack.placeholder@bet.example>"
        return [email(1), email(1), email(2, in_reply_to="<m1@mail.az>", urgency="critical"),
                *[email(10 + i, sender="rate@mail.az", subject=f"q {i}") for i in range(5)],
                email(3, sender="someone@else.az", in_reply_to="<m1@mail.az>"), chat(1, "42", "c-1"),
                chat(2, "42", "c-1", urgency="critical"), email(4, in_reply_to=ack_of_1, flags=Flags(bulk=True)),
                email(5, subject="Re: FD-2026-000001 still waiting")]  # the reference of the case email(1) opens

    one, many = _two_stores(clock)
    singly = [one.apply(t) for t in batch()]
    together = many.apply_many(batch())
    assert together == singly and [r.duplicate for r in together].count(True) == 1
    assert [r.ack for r in together[3:8]] == ["ok", "ok", "ok", "rate_limited", "rate_limited"]
    assert together[-1].case_reference == together[0].case_reference and not together[-1].created
    assert _tables(many) == _tables(one)


def test_a_batch_after_earlier_ones_reads_what_they_stored(clock: Clock) -> None:
    """What a batch reads at once (stored message ids, customers, acknowledgements in the rate
    window) gives what reading it message by message gives."""
    earlier = [email(1), email(2, sender="rate@mail.az", subject="a"), email(3, sender="rate@mail.az", subject="b"),
               chat(1, "42", "c-1"), chat(2, "43", "c-2")]
    later = [email(1), email(4, name="Aysel Q."), email(5, sender="rate@mail.az", subject="c"),
             email(6, sender="rate@mail.az", subject="d"), chat(3, "42", "c-9"), chat(4, "43", "c-2", urgency="critical"),
             email(7, sender="new@mail.az"), email(8, sender="new@mail.az", subject="again")]
    one, many = _two_stores(clock)
    for store in (one, many):
        for t in earlier:
            store.apply(t)
    clock.now += timedelta(minutes=1)
    singly = [one.apply(t) for t in later]
    many.apply = lambda t: pytest.fail("the batch fell back to one by one")  # type: ignore[method-assign]
    together = many.apply_many(later)
    assert together == singly
    assert together[0].duplicate and [r.ack for r in together[2:4]] == ["ok", "rate_limited"]
    assert _tables(many) == _tables(one)
    assert len(_tables(many)["customers"]) == 5  # aysel, rate, new, telegram users 42 and 43
    assert together[4].created and not together[5].created and together[5].rerouted


def test_a_poison_record_in_a_chunk_is_dead_lettered_and_the_rest_applied_once(store: SqlCaseStore) -> None:
    from dispatch.stage import CHUNK, DispatchProcessor
    from frontdesk.bus.base import Outgoing
    from frontdesk.codec import encode
    from frontdesk.messages import DeadLetter
    from frontdesk.stage import StageRunner

    bus = MemoryBus()
    good = [email(i, sender=f"c{i}@mail.az") for i in range(CHUNK + 4)]
    values = [encode(t) for t in good]
    values.insert(CHUNK + 2, b'{"not": "a triaged message"}')  # in the second chunk, after a committed one
    bus.publish([Outgoing(bus.topics.triaged, v, str(i).encode()) for i, v in enumerate(values)])
    runner = StageRunner("dispatch", bus, bus.consumer("d", [bus.topics.triaged]), DispatchProcessor(store),
                         poll_timeout=0.01)
    while runner.run_once():
        pass
    assert sorted(c["message_count"] for c in list_cases(store, None, None)) == [1] * len(good)
    [letter] = [decode(r.value, DeadLetter) for r in bus.records(bus.topics.deadletter)]
    assert letter.stage == "dispatch" and letter.error_type == "DecodeError"
    rel, _, replier = relay(store)
    while rel.run_once():
        pass
    assert sorted(s.recipient for s in replier.sent) == sorted(f"c{i}@mail.az" for i in range(len(good)))


def test_mark_retry_counts_the_attempt_and_a_permanent_failure_is_recorded(store: SqlCaseStore, clock: Clock) -> None:
    from dispatch.store.models import HistoryEntry, OutboxRow
    from sqlalchemy import select

    store.apply(email(1))
    items = store.claim_outbox(10, 30)
    ack = next(i for i in items if i.kind == "ack")
    event = next(i for i in items if i.kind != "ack")
    store.mark_retry(ack.id, "451 try later " + "x" * 3000, 8)
    store.mark_retry(event.id, "bus down", 0, permanent=True)
    store.mark_sent(ack.id)
    store.mark_retry(ack.id, "late failure report", 8, permanent=True)  # a sent row stays sent

    def rows(session):  # type: ignore[no-untyped-def]
        outbox = {r.id: (r.status, r.attempts, r.last_error, r.next_attempt_at, r.lease_until)
                  for r in session.scalars(select(OutboxRow))}
        return outbox, [(h.event, h.detail) for h in session.scalars(select(HistoryEntry)) if h.event.endswith("_failed")]

    outbox, failures = store.read(rows)
    status, attempts, error, _, lease = outbox[ack.id]
    assert (status, attempts, lease) == ("sent", 2, None) and error.startswith("451 try later") and len(error) == 2000
    status, attempts, error, next_at, lease = outbox[event.id]
    assert (status, attempts, error, lease) == ("failed", 1, "bus down", None)
    assert next_at.replace(tzinfo=UTC) == NOW
    assert failures == [(f"{event.kind}_failed", {"error": "bus down"})]
