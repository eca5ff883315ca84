"""Dispatch against real PostgreSQL and SQLite, a real SMTP server, and SIGKILLs at every step."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from email import message_from_bytes, policy
from pathlib import Path

import jsonschema
import pytest

from dispatch.base import OutboxItem
from dispatch.cases import Context
from dispatch.commands import list_cases
from dispatch.relay import OutboxRelay
from dispatch.routing import RoutingTable
from dispatch.settings import DispatchSettings, SmtpSettings
from dispatch.smtp import SmtpReplier
from dispatch.store.sql import SqlCaseStore
from frontdesk.bus.base import Outgoing
from frontdesk.bus.memory import MemoryBus
from frontdesk.bus.sqlite import SqliteBus
from frontdesk.codec import encode, schema_path
from frontdesk.messages import Flags, InboundMessage, Party, ThreadHints, Triage, TriagedMessage
from tests.conftest import SMTP_USERS

SETTINGS = DispatchSettings(our_addresses=("@bet.example",), from_address="support@bet.example",
                            message_id_domain="bet.example")


def triaged(n: int, sender: str | None = None, *, in_reply_to: str | None = None, flags: Flags | None = None,
            category: str = "payments", language: str = "ru") -> TriagedMessage:
    msg = InboundMessage.create(
        connector="imap:support", external_id=f"<c{n}@mail.ru>", channel="email", platform="email",
        sender=Party(address=sender or f"customer{n}@mail.ru", name=f"Клиент {n}"), subject=f"Вывод {n}",
        text="Вывод не пришёл", received_at=datetime.now(UTC), flags=flags or Flags(),
        thread=ThreadHints(in_reply_to=in_reply_to, references=(in_reply_to,) if in_reply_to else ()))
    return TriagedMessage(message=msg, triaged_at=datetime.now(UTC),
                          triage=Triage(category=category, urgency="high", language=language, model_version="t"))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'cases.sqlite3'}"
        return
    server = request.getfixturevalue("postgres_server")
    yield server.create_database(f"dispatch_{os.getpid()}_{time.monotonic_ns() % 10**9}")


def smtp_settings(smtp_server) -> SmtpSettings:  # type: ignore[no-untyped-def]
    user, password = next(iter(SMTP_USERS.items()))
    return SmtpSettings(host=smtp_server.host, port=smtp_server.port, security="starttls", username=user,
                        password=password, ca_file=smtp_server.ca_pem_path, timeout_s=10)


@pytest.mark.smtp
def test_cases_threading_loop_protection_and_acks_over_real_smtp(database_url: str, smtp_server) -> None:  # type: ignore[no-untyped-def]
    smtp_server.clear()
    store = SqlCaseStore(database_url, Context(SETTINGS, RoutingTable.load(SETTINGS.routing_file)))
    bus = MemoryBus()
    relay = OutboxRelay(store, bus, {"email": SmtpReplier(smtp_settings(smtp_server), SETTINGS.from_address)})
    first = store.apply(triaged(1))
    relay.run_once()
    [ack] = smtp_server.wait_for(1, timeout=10)
    mail = message_from_bytes(ack.raw, policy=policy.default)
    assert mail["To"] == "customer1@mail.ru" and mail["In-Reply-To"] == "<c1@mail.ru>"
    assert mail["Subject"] == f"[{first.case_reference}] Re: Вывод 1" and mail["Auto-Submitted"] == "auto-replied"
    assert first.case_reference in mail.get_content() and ack.tls
    follow = store.apply(triaged(2, "customer1@mail.ru", in_reply_to=mail["Message-ID"]))
    stranger = store.apply(triaged(3, "stranger@mail.ru", in_reply_to="<c1@mail.ru>"))
    robots = [store.apply(triaged(10 + i, flags=f)) for i, f in enumerate(
        [Flags(auto_submitted=True), Flags(bounce=True), Flags(bulk=True), Flags(list_id="<l.x>"),
         Flags(auto_reply=True), Flags(suppress_autoreply=True)])]
    noreply = store.apply(triaged(20, "noreply@shop.ru"))
    spam = store.apply(triaged(21, category="spam"))
    relay.run_once()
    assert follow.case_reference == first.case_reference and not follow.created
    assert stranger.created and stranger.possible_thread_match == first.case_reference
    assert [r.ack for r in robots] == ["auto_submitted", "bounce", "bulk", "list", "auto_reply", "suppress_autoreply"]
    assert (noreply.ack, spam.ack) == ("noreply_sender", "spam")
    received = smtp_server.wait_for(2, timeout=10)
    assert [m.rcpt_tos for m in received] == [["customer1@mail.ru"], ["stranger@mail.ru"]]
    schema = json.loads(schema_path("cases").read_text())
    events = bus.records(bus.topics.cases)
    assert len(events) == 1 + 1 + 1 + 6 + 2  # created, updated, stranger, robots, noreply + spam
    for record in events:
        jsonschema.validate(json.loads(record.value), schema)
    store.close()


def test_concurrent_relays_never_claim_the_same_row(database_url: str) -> None:
    """Two relays (two stores, as two dispatch replicas have) claim in parallel: every outbox row is
    leased to exactly one of them, with its case reference, in id order within a claim."""
    ctx = Context(SETTINGS, RoutingTable.load(SETTINGS.routing_file))
    stores = [SqlCaseStore(database_url, ctx) for _ in range(2)]
    references = {r.case_reference for r in (stores[0].apply(triaged(n)) for n in range(40))}
    claims: list[list[OutboxItem]] = [[], []]

    def claim(k: int) -> None:
        while batch := stores[k].claim_outbox(7, lease_seconds=600):
            assert [i.id for i in batch] == sorted(i.id for i in batch)
            claims[k] += batch

    threads = [threading.Thread(target=claim, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    ids = [i.id for c in claims for i in c]
    assert len(ids) == len(set(ids)) == 80  # an event and an acknowledgement per case
    assert {i.case_reference for c in claims for i in c} == references
    assert Counter(i.kind for c in claims for i in c) == {"event": 40, "ack": 40}
    stores[0].mark_sent_many([i.id for i in claims[0] if i.kind == "ack"])
    stores[1].mark_sent_many([i.id for i in claims[1] if i.kind == "ack"])
    assert all(c["acknowledged"] for c in list_cases(stores[0], None, None, limit=100))
    for store in stores:
        store.close()


@pytest.mark.postgres
def test_two_replicas_applying_the_same_chunks_at_once_store_everything_once(postgres_server) -> None:  # type: ignore[no-untyped-def]
    """Two dispatch replicas (two stores) apply the same 64 messages at once (as after a consumer-group
    rebalance), in chunks, in opposite orders; a chunk that fails transiently is retried one by one,
    as the stage does. Whatever interleaving happens: each message stored once, one customer per
    sender, case counters that match their messages, one creation event and at most one
    acknowledgement per case."""
    from sqlalchemy import text

    from frontdesk.errors import StoreUnavailable

    url = postgres_server.create_database(f"replicas_{os.getpid()}_{time.monotonic_ns() % 10**9}")
    ctx = Context(SETTINGS, RoutingTable.load(SETTINGS.routing_file))
    stores = [SqlCaseStore(url, ctx) for _ in range(2)]
    messages = [triaged(16 * k + s, f"sender{s}@mail.ru", in_reply_to=f"<c{s}@mail.ru>" if k else None)
                for k in range(4) for s in range(16)]  # per sender: a first mail and three replies to it
    chunks = [messages[i:i + 16] for i in range(0, 64, 16)]
    failures: list[BaseException] = []

    def replica(k: int) -> None:
        try:
            for chunk in chunks if k == 0 else [c[::-1] for c in reversed(chunks)]:
                try:
                    stores[k].apply_many(chunk)
                except StoreUnavailable:  # e.g. a deadlock between the two: the stage retries one by one
                    for t in chunk:
                        stores[k].apply(t)
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=replica, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not failures, failures

    def rows(sql: str) -> list[tuple[object, ...]]:
        return stores[0].read(lambda session: [tuple(r) for r in session.execute(text(sql))])

    assert rows("SELECT count(*), count(DISTINCT id) FROM messages") == [(64, 64)]
    assert rows("SELECT count(*) FROM customers") == [(16,)] == rows("SELECT count(*) FROM identities")
    assert rows("SELECT count(*) FROM cases c WHERE message_count <> "
                "(SELECT count(*) FROM messages m WHERE m.case_id = c.id)") == [(0,)]
    assert rows("SELECT count(*) FROM messages m JOIN cases c ON c.id = m.case_id JOIN identities i "
                "ON i.customer_id = c.customer_id WHERE i.value <> m.sender") == [(0,)]
    created = rows("SELECT count(*) FROM case_history WHERE event = 'created'")
    assert created == rows("SELECT count(*) FROM cases") == rows("SELECT count(DISTINCT case_id) FROM outbox "
                                                                 "WHERE kind = 'event'")
    assert rows("SELECT count(*) FROM cases WHERE reference IS NULL") == [(0,)]
    assert rows("SELECT max(n) FROM (SELECT count(*) AS n FROM outbox WHERE kind = 'ack' "
                "GROUP BY case_id) AS acks")[0][0] == 1
    for store in stores:
        store.close()


def _dispatch_env(tmp: Path, database_url: str, smtp_server) -> dict[str, str]:  # type: ignore[no-untyped-def]
    s = smtp_settings(smtp_server)
    return {**os.environ, "FRONTDESK_STORAGE_DATA_DIR": str(tmp), "FRONTDESK_DISPATCH_DATABASE_URL": database_url,
            "FRONTDESK_DISPATCH_FROM_ADDRESS": "support@bet.example",
            "FRONTDESK_DISPATCH_MESSAGE_ID_DOMAIN": "bet.example", "FRONTDESK_DISPATCH_RELAY_INTERVAL_S": "0.1",
            "FRONTDESK_SMTP_HOST": s.host, "FRONTDESK_SMTP_PORT": str(s.port), "FRONTDESK_SMTP_SECURITY": "starttls",
            "FRONTDESK_SMTP_USERNAME": s.username or "", "FRONTDESK_SMTP_PASSWORD": "secret",
            "FRONTDESK_SMTP_CA_FILE": str(s.ca_file), "FRONTDESK_LOG_LEVEL": "WARNING"}


@pytest.mark.smtp
@pytest.mark.slow
def test_sigkill_at_every_step_loses_nothing_and_doubles_only_in_the_window(tmp_path: Path, database_url: str,
                                                                             smtp_server) -> None:  # type: ignore[no-untyped-def]
    smtp_server.clear()
    n = 120
    bus = SqliteBus(tmp_path / "bus.sqlite3")
    bus.ensure_topics()
    bus.publish([Outgoing(bus.topics.triaged, encode(t), t.id.encode()) for t in (triaged(i) for i in range(n))])
    env = _dispatch_env(tmp_path, database_url, smtp_server)
    # Stage crashes first, while input remains; each process counts its own passes.
    crashes = ["dispatch.after_db_commit:7", "dispatch.after_db_commit:20", "relay.after_publish:2",
               "relay.after_send:5", "relay.after_send:9"]
    for crash in crashes:
        proc = subprocess.run([sys.executable, "-m", "frontdesk", "dispatch"], env={**env, "FRONTDESK_CRASH_AT": crash},
                              capture_output=True, text=True, timeout=90)
        assert proc.returncode == -signal.SIGKILL, f"{crash} never reached: {proc.stderr[-1500:]}"
    proc = subprocess.Popen([sys.executable, "-m", "frontdesk", "dispatch"], env=env, stderr=subprocess.PIPE, text=True)
    store = SqlCaseStore(database_url, Context(SETTINGS, RoutingTable.load(SETTINGS.routing_file)))
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not _all_acknowledged(store, n):
            time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    cases = list_cases(store, None, None)
    assert len(cases) == n and all(c["acknowledged"] for c in cases), "lost or unacknowledged cases"
    assert len({c["reference"] for c in cases}) == n
    per_id = Counter(m.message["Message-ID"] for m in smtp_server.messages)
    assert len(per_id) == n, "an acknowledgement is missing"
    duplicates = sum(c - 1 for c in per_id.values())
    # The relay sends one acknowledgement at a time, so a kill (at any crash point: the relay runs in
    # a thread of the same process) can repeat at most the one that was between "accepted" and "marked".
    assert duplicates <= len(crashes), "duplicate acknowledgements outside the documented window"
    assert duplicates >= sum(1 for c in crashes if c.startswith("relay.after_send")), "crash points not exercised"
    print(f"\n{n} cases, {len(crashes)} SIGKILLs, {duplicates} duplicate acknowledgement(s) in the window")
    events = {json.loads(r.value)["event_id"] for r in _all(bus, bus.topics.cases)}
    assert len(events) == n
    store.close()


def _all_acknowledged(store: SqlCaseStore, n: int) -> bool:
    cases = list_cases(store, None, None)
    return len(cases) == n and all(c["acknowledged"] for c in cases)


def _all(bus: SqliteBus, topic: str) -> list:  # type: ignore[type-arg]
    out = []
    with bus.consumer(f"check-{time.monotonic_ns()}", [topic]) as consumer:
        while batch := consumer.poll(1000, timeout=0.5):
            out.extend(batch)
    return out


def test_copies_shared_conversations_and_long_references_on_the_real_database(database_url: str) -> None:
    """One mail in two mailboxes is one case; group-chat participants keep their own cases; a
    reference past case 999,999 in a subject threads (SQLite and PostgreSQL)."""
    from sqlalchemy import text

    store = SqlCaseStore(database_url, Context(SETTINGS, RoutingTable.load(SETTINGS.routing_file)))
    first = triaged(1)
    copy = TriagedMessage(message=first.message.model_copy(update={"connector": "imap:payments", "id": "copy-1"}),
                          triage=first.triage, triaged_at=first.triaged_at)
    opened, copied = store.apply_many([first, copy])
    assert (copied.case_reference, copied.created, copied.ack) == (opened.case_reference, False, "none")

    def group(n: int, user: str) -> TriagedMessage:
        msg = InboundMessage.create(connector="telegram:bot", external_id=f"-100:{n}", channel="chat",
                                    platform="telegram", sender=Party(platform_id=user), text=f"m{n}",
                                    received_at=datetime.now(UTC), thread=ThreadHints(conversation_id="-100"))
        return TriagedMessage(message=msg, triaged_at=datetime.now(UTC),
                              triage=Triage(category="bonuses", urgency="normal", language="ru", model_version="t"))

    a, b1 = store.apply(group(1, "1")), store.apply(group(2, "2"))
    b2, a2 = store.apply_many([group(3, "2"), group(4, "1")])
    assert b1.possible_thread_match == a.case_reference and b2.case_reference == b1.case_reference != a.case_reference
    assert a2.case_reference == a.case_reference and not (b2.created or a2.created)

    with store.engine.begin() as conn:  # the id sequence after a million cases
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT setval(pg_get_serial_sequence('cases', 'id'), 999999)"))
        else:
            conn.execute(text("INSERT INTO cases(id, status, queue, priority, routing_rule, category, urgency, language,"
                              " channel, connector, subject, customer_id, created_at, updated_at, message_count,"
                              " acknowledged, needs_review) SELECT 999999, 'closed', 'q', 3, 'r', 'other', 'normal',"
                              " 'en', 'email', 'c', '', customer_id, created_at, updated_at, 0, 1, 0 FROM cases"
                              " LIMIT 1"))  # SQLite: the next id is the largest plus one
    late = store.apply(triaged(7))
    assert late.case_reference.endswith("-1000000")
    reply = triaged(8, "customer7@mail.ru")
    reply = TriagedMessage(message=reply.message.model_copy(update={"subject": f"re: {late.case_reference.lower()}"}),
                           triage=reply.triage, triaged_at=reply.triaged_at)
    assert store.apply(reply).case_reference == late.case_reference
    counts = {c["reference"]: c["message_count"] for c in list_cases(store, None, None)}
    assert counts[opened.case_reference] == 2 and counts[late.case_reference] == 2
    assert len(counts) == (4 if database_url.startswith("postgresql") else 5)
    store.close()


def test_two_replicas_racing_for_one_thread_key_make_one_case_and_one_ack(database_url: str,  # type: ignore[no-untyped-def]
                                                                          monkeypatch) -> None:
    """Both replicas read before either writes (a barrier before the writes): the copy of one mail
    delivered to two mailboxes, and two messages of one new chat conversation, find no thread key
    and each opens a case; the loser of the key's insert must re-run and join the winner's case."""
    from dispatch.store import rows

    settings = DispatchSettings(from_address="support@bet.example", message_id_domain="bet.example")
    stores = [SqlCaseStore(database_url, Context(settings, RoutingTable.load(settings.routing_file)))
              for _ in range(2)]
    barrier, flush = threading.Barrier(2, timeout=10), rows.Writes.flush

    def flush_together(self, conn) -> None:  # type: ignore[no-untyped-def]
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            pass  # the re-run goes alone
        flush(self, conn)

    def message(connector: str, external_id: str, channel: str, conv: str | None) -> TriagedMessage:
        sender = Party(address="known@mail.az") if channel == "email" else Party(platform_id="user-7")
        inbound = InboundMessage.create(connector=connector, external_id=external_id, channel=channel,
                                        platform="email" if channel == "email" else "webchat", sender=sender,
                                        subject="Withdrawal", text="pul gelmedi", received_at=datetime.now(UTC),
                                        thread=ThreadHints(conversation_id=conv))
        return TriagedMessage(message=inbound, triaged_at=datetime.now(UTC),
                              triage=Triage(category="payments", urgency="high", language="az", model_version="t"))

    def race(a: TriagedMessage, b: TriagedMessage) -> list[object]:
        barrier.reset()
        out: list[object] = [None, None]
        threads = [threading.Thread(target=lambda i=i, t=t: out.__setitem__(i, stores[i].apply(t)))
                   for i, t in enumerate((a, b))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        return out

    stores[0].apply(message("imap:support", "<old@mail.az>", "email", None))  # a known customer
    monkeypatch.setattr(rows.Writes, "flush", flush_together)
    try:
        copies = race(message("imap:support", "<m1@mail.az>", "email", None),
                      message("imap:sales", "<m1@mail.az>", "email", None))
        chat = race(message("http:webchat", "c-1", "chat", "conv-42"), message("http:webchat", "c-2", "chat", "conv-42"))
        for results in (copies, chat):
            assert len({r.case_reference for r in results}) == 1, results  # type: ignore[attr-defined]
            assert sorted(r.created for r in results) == [False, True], results  # type: ignore[attr-defined]
            assert sorted(r.ack for r in results) == ["none", "ok"], results  # type: ignore[attr-defined]
        listed = list_cases(stores[0], None, None)
        assert len(listed) == 3 and sorted(c["message_count"] for c in listed) == [1, 2, 2]
    finally:
        for store in stores:
            store.close()


@pytest.mark.postgres
def test_replicas_starting_together_on_an_empty_database_migrate_it_once(postgres_server) -> None:  # type: ignore[no-untyped-def]
    """Without the advisory lock two simultaneous Alembic upgrades collided (UniqueViolation on
    pg_type) about every other time; three rounds of three starters each."""
    settings = DispatchSettings()
    for round_ in range(3):
        url = postgres_server.create_database(f"migrate_{os.getpid()}_{round_}_{time.monotonic_ns() % 10**9}")
        results: list[object] = []
        barrier = threading.Barrier(3, timeout=30)

        def start() -> None:
            barrier.wait()
            try:
                store = SqlCaseStore(url, Context(settings, RoutingTable.load(settings.routing_file)))
                results.append(len(list_cases(store, None, None)))
                store.close()
            except Exception as exc:  # noqa: BLE001  # collected, asserted below
                results.append(exc)

        threads = [threading.Thread(target=start) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert results == [0, 0, 0], results


def test_marking_sent_writes_the_same_rows_on_both_databases(database_url: str) -> None:
    """PostgreSQL marks in one statement (``rows.MARK_SENT_ONE_STATEMENT``), SQLite in three: the
    same rows either way; a row already sent is left alone, an event marks no case acknowledged."""
    from sqlalchemy import select

    from dispatch.store.models import Case, HistoryEntry, OutboxRow

    ctx = Context(SETTINGS, RoutingTable.load(SETTINGS.routing_file))
    clock = iter(datetime(2026, 12, 6, 12, n, tzinfo=UTC) for n in range(60))
    store = SqlCaseStore(database_url, ctx, clock=lambda: next(clock))
    for n in range(3):
        store.apply(triaged(n))
    items = store.claim_outbox(10, lease_seconds=600)
    acks, events = [i for i in items if i.kind == "ack"], [i for i in items if i.kind == "event"]
    store.mark_sent_many([acks[0].id, events[0].id])
    store.mark_sent_many([acks[0].id, acks[1].id])  # the first again: left alone

    def state(session):  # type: ignore[no-untyped-def]
        outbox = {r.id: (r.status, r.attempts, r.lease_until is None, r.sent_at)
                  for r in session.scalars(select(OutboxRow))}
        cases = sorted((c.reference, c.acknowledged) for c in session.scalars(select(Case)))
        history = [(h.case_id, h.event, h.detail, h.at) for h in
                   session.scalars(select(HistoryEntry).where(HistoryEntry.event == "acknowledged").order_by(HistoryEntry.id))]
        return outbox, cases, history

    outbox, cases, history = store.read(state)
    sent_at = {acks[0].id: outbox[acks[0].id][3], acks[1].id: outbox[acks[1].id][3]}
    assert sent_at[acks[0].id] < sent_at[acks[1].id]  # the second mark did not touch the first row
    assert {i: v[:3] for i, v in outbox.items() if v[0] == "sent"} == {
        acks[0].id: ("sent", 1, True), acks[1].id: ("sent", 1, True), events[0].id: ("sent", 1, True)}
    assert [ack for _, ack in cases] == [True, True, False]
    ack_ids = {json.loads(i.payload)["message_id"] for i in acks[:2]}
    assert len(history) == 2 and {h[2]["message_id"] for h in history} == ack_ids
    assert [h[3] for h in history] == [sent_at[acks[0].id], sent_at[acks[1].id]] and history[0][0] != history[1][0]
    store.close()
