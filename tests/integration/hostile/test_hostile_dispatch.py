"""Hostile messages through dispatch with real servers: acknowledgements received by the SMTP recorder
carry no injected header and no evaluated template; poison on PostgreSQL is dead-lettered, never retried."""

from __future__ import annotations

import base64
import os
import time
from email import message_from_bytes, policy
from pathlib import Path

import pytest

from dispatch.ack import ack_subject
from dispatch.base import OutboundReply
from dispatch.cases import Context
from dispatch.relay import OutboxRelay
from dispatch.routing import RoutingTable
from dispatch.smtp import SmtpReplier
from dispatch.stage import DispatchProcessor
from dispatch.suppress import valid_address
from dispatch.store.sql import SqlCaseStore
from frontdesk.bus.base import Outgoing
from frontdesk.bus.memory import MemoryBus
from frontdesk.codec import decode, encode
from frontdesk.messages import DeadLetter, Party, ThreadHints
from frontdesk.stage import StageRunner
from ingest.mail import parse_mail
from tests.fixtures.hostile.mail import build_hostile_mails
from tests.fixtures.hostile.payloads import ENCODED_CRLF, INJECTIONS, inbound, poison_records, triaged
from tests.integration.dispatch.test_dispatch_real import SETTINGS, smtp_settings
from tests.unit.hostile.test_hostile_replies import body_of, check_email


def hostile_messages() -> list:  # type: ignore[type-arg]
    """Every injection as name and subject, encoded-words in ids and address, and the parsed hostile mails."""
    messages = [triaged(inbound(i, sender=Party(address=f"customer{i}@mail.example", name=text), subject=text))
                for i, text in enumerate(INJECTIONS)]
    messages.append(triaged(inbound(50, sender=Party(address=f"{ENCODED_CRLF}@mail.example", name="Eve"),
                                    subject=ENCODED_CRLF, external_id=f"<{ENCODED_CRLF}@mail.example>",
                                    thread=ThreadHints(in_reply_to=f"<{ENCODED_CRLF}@bet.example>"))))
    for index, mail in enumerate(m for m in build_hostile_mails() if m.rejected is None and m.imap):
        msg = parse_mail(mail.raw, connector="imap:support", channel="email", blobs=None, limits=mail.mail_limits)
        if msg.sender.address:  # a distinct sender each, or the rate limit would suppress acknowledgements
            msg = msg.model_copy(update={"sender": msg.sender.model_copy(update={
                "address": f"h{index}.{msg.sender.address}"[:200]})})
        messages.append(triaged(msg))
    return messages


@pytest.mark.smtp
@pytest.mark.timeout(300)
def test_acknowledgements_of_hostile_messages_arrive_clean_over_smtp(smtp_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    smtp_server.clear()
    store = SqlCaseStore(f"sqlite:///{tmp_path / 'cases.sqlite3'}",
                         Context(SETTINGS, RoutingTable.load(SETTINGS.routing_file)))
    messages = hostile_messages()
    results = [store.apply(message) for message in messages]
    sent = sum(result.ack == "ok" for result in results)
    assert sent >= len(INJECTIONS) + 1 + 20, [r.ack for r in results]
    relay = OutboxRelay(store, MemoryBus(), {"email": SmtpReplier(smtp_settings(smtp_server), SETTINGS.from_address)})
    while relay.run_once():
        pass
    received = smtp_server.wait_for(sent, timeout=60)
    assert len(received) == sent
    acked = {ack_subject(r.case_reference, m.message.subject): m.message
             for r, m in zip(results, messages, strict=True) if r.ack == "ok"}
    # The To header as we wrote it (the recorder's own parse of RCPT TO decodes "=?...?=": not our bytes).
    headers = [message_from_bytes(mail.raw, policy=policy.compat32) for mail in received]
    assert {h["To"] for h in headers} == {valid_address(m.sender.address or "") for m in acked.values()}
    for mail, header in zip(received, headers, strict=True):
        reply = OutboundReply(channel="email", connector="imap:support", recipient=header["To"], body="",
                              message_id="", case_reference="", raw=mail.raw)
        sent_mail, subject = check_email(reply)
        name = acked[subject].sender.name or ""
        body = body_of(sent_mail)
        assert not set(body) & set("\x00\x1b\u2028\u202e") and "Hello 49" not in body
        if "{" in name:
            assert name in body, "template syntax from a customer is shown as written, never evaluated"
    store.close()


@pytest.mark.postgres
@pytest.mark.timeout(300)
def test_poison_on_postgresql_is_dead_lettered_and_the_stage_goes_on(postgres_server) -> None:  # type: ignore[no-untyped-def]
    """Decode errors, and what only PostgreSQL refuses (NUL in text), are poison: dead-lettered with the
    reason, never retried as if the database were down; the good messages around them make their cases."""
    url = postgres_server.create_database(f"hostile_{os.getpid()}_{time.monotonic_ns() % 10**9}")
    store = SqlCaseStore(url, Context(SETTINGS, RoutingTable.load(SETTINGS.routing_file)))
    bus = MemoryBus()
    nul = [triaged(inbound(100 + i, **over)) for i, over in enumerate(
        [{"text": "pay\x00ment"}, {"subject": "s\x00"}, {"sender": Party(address="n@mail.example", name="N\x00")}])]
    good = [triaged(inbound(i)) for i in range(5)]
    poison = [p.value for p in poison_records("triaged")] + [encode(t) for t in nul]
    records = [Outgoing(bus.topics.triaged, value, f"poison-{i}".encode()) for i, value in enumerate(poison)]
    records += [Outgoing(bus.topics.triaged, encode(t), t.id.encode()) for t in good]
    bus.publish(records)
    runner = StageRunner("dispatch", bus, bus.consumer("dispatch", [bus.topics.triaged]), DispatchProcessor(store),
                         poll_timeout=0.01)
    for _ in range(10):
        runner.run_once()
    assert runner.stats.transient_failures == 0 and runner.stats.consumed == len(records)
    letters = [decode(r.value, DeadLetter) for r in bus.records(bus.topics.deadletter)]
    assert sorted(base64.b64decode(letter.key_b64 or "") for letter in letters) == sorted(
        f"poison-{i}".encode() for i in range(len(poison)))
    assert all(letter.stage == "dispatch" and letter.reason for letter in letters)
    assert sum("NUL" in letter.reason for letter in letters) == len(nul)
    assert all(store.apply(t).duplicate for t in good)
    store.close()
