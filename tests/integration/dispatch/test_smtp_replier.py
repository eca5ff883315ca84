"""The SMTP Replier against real (aiosmtpd) servers: connection reuse, its failure paths, which SMTP
answers are permanent, and the deadline of one send."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage

import pytest

from dispatch.base import OutboundReply
from dispatch.cases import Context
from dispatch.relay import OutboxRelay
from dispatch.routing import RoutingTable
from dispatch.settings import SmtpSettings
from dispatch.smtp import SmtpReplier
from dispatch.store.sql import SqlCaseStore
from frontdesk.bus.memory import MemoryBus
from frontdesk.errors import ReplyError, ReplyUnavailable
from tests.integration.dispatch.test_dispatch_real import SETTINGS, smtp_settings, triaged

pytestmark = pytest.mark.smtp


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CaseClock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


def reply(n: int) -> OutboundReply:
    mail = EmailMessage()
    mail["From"], mail["To"], mail["Subject"] = "support@bet.example", f"c{n}@mail.ru", f"[FD-{n}] Re: test"
    mail["Message-ID"] = f"<ack{n}@bet.example>"
    mail.set_content(f"case FD-{n}")
    return OutboundReply(channel="email", connector="imap:support", recipient=f"c{n}@mail.ru", body=f"case FD-{n}",
                         message_id=f"<ack{n}@bet.example>", case_reference=f"FD-{n}", raw=mail.as_bytes())


def test_one_connection_serves_a_batch_and_is_replaced_when_it_breaks(smtp_server) -> None:  # type: ignore[no-untyped-def]
    smtp_server.clear()
    clock = Clock()
    replier = SmtpReplier(smtp_settings(smtp_server), "support@bet.example", clock=clock)
    for n in range(5):
        replier.send(reply(n))
        clock.now += 1
    got = smtp_server.wait_for(5)
    assert [m.rcpt_tos for m in got] == [[f"c{n}@mail.ru"] for n in range(5)]
    assert replier.connections == 1 and len({m.peer for m in got}) == 1 and all(m.tls and m.login for m in got)

    smtp_server.restart()  # the kept connection (used 1 s ago: no NOOP) is dead at MAIL: sent again on a new one
    replier.send(reply(5))
    assert replier.connections == 2 and smtp_server.wait_for(6)[-1].rcpt_tos == ["c5@mail.ru"]

    smtp_server.refuse()
    try:
        with pytest.raises(ReplyUnavailable, match="451"):
            replier.send(reply(6))
    finally:
        smtp_server.refuse(False)
    replier.send(reply(6))  # the refused session was dropped; a new one delivers
    assert replier.connections == 3 and smtp_server.wait_for(7)[-1].rcpt_tos == ["c6@mail.ru"]

    clock.now += SmtpReplier.REUSE_S  # idle too long: not reused, even though it still works
    replier.send(reply(7))
    assert replier.connections == 4
    got = smtp_server.wait_for(8)
    assert len(got) == 8 and len({m.peer for m in got}) == 4  # nothing sent twice
    replier.close()
    replier.close()


def test_an_unreachable_server_is_transient_and_leaves_no_connection(smtp_server) -> None:  # type: ignore[no-untyped-def]
    replier = SmtpReplier(smtp_settings(smtp_server).model_copy(update={"port": 1}), "support@bet.example")
    with pytest.raises(ReplyUnavailable, match="unavailable"):
        replier.send(reply(1))
    assert replier.connections == 0 and replier._client is None


class _Scripted:
    """aiosmtpd handler answering MAIL, RCPT and DATA as told, optionally slowly; records what it accepted."""

    def __init__(self) -> None:
        self.mail, self.rcpt, self.data = "250 OK", "250 OK", "250 OK"
        self.rcpt_delay = self.data_delay = 0.0
        self.accepted: list[bytes] = []
        self.noops = 0
        self.drop_after_data = False  # accept the message, then close the connection without an answer

    async def handle_NOOP(self, server, session, envelope, arg):  # type: ignore[no-untyped-def]
        self.noops += 1
        return "250 OK"

    async def handle_MAIL(self, server, session, envelope, address, options):  # type: ignore[no-untyped-def]
        if self.mail.startswith("250"):
            envelope.mail_from = address
        return self.mail

    async def handle_RCPT(self, server, session, envelope, address, options):  # type: ignore[no-untyped-def]
        await asyncio.sleep(self.rcpt_delay)
        if self.rcpt.startswith("250"):
            envelope.rcpt_tos.append(address)
        return self.rcpt

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        await asyncio.sleep(self.data_delay)
        if self.data.startswith("250"):
            self.accepted.append(envelope.content)
        if self.drop_after_data:
            server.transport.close()
        return self.data


@pytest.fixture()
def scripted() -> Iterator[tuple[_Scripted, SmtpSettings]]:
    from aiosmtpd.controller import Controller

    from tests.harness.process import HOST, free_port

    handler, port = _Scripted(), free_port()
    controller = Controller(handler, hostname=HOST, port=port, server_hostname="localhost")
    controller.start()
    try:
        yield handler, SmtpSettings(host=HOST, port=port, security="none", timeout_s=3.0)
    finally:
        controller.stop()


@pytest.mark.parametrize(("stage", "answer", "permanent"), [
    ("mail", "530 5.7.0 Authentication required", False),
    ("mail", "553 5.7.1 Sender address rejected", False),
    ("mail", "421 4.3.0 try later", False),
    ("rcpt", "550 5.1.1 No such user", True),
    ("rcpt", "450 4.2.0 Mailbox busy", False),
    ("data", "554 5.7.1 Message rejected as spam", True),
    ("data", "451 4.3.0 try later", False),
])
def test_only_a_refused_recipient_or_message_is_permanent(scripted, stage: str, answer: str, permanent: bool) -> None:  # type: ignore[no-untyped-def]
    handler, settings = scripted
    setattr(handler, stage, answer)
    replier = SmtpReplier(settings, "support@bet.example")
    with pytest.raises(ReplyError, match=answer.split()[0]) as raised:
        replier.send(reply(1))
    assert isinstance(raised.value, ReplyUnavailable) is not permanent
    setattr(handler, stage, "250 OK")
    replier.send(reply(1))
    assert len(handler.accepted) == 1
    replier.close()


def test_a_session_refused_by_the_server_keeps_every_acknowledgement_for_later(scripted) -> None:  # type: ignore[no-untyped-def]
    """530 at MAIL FROM (expired credentials): retried with backoff, all delivered once it is fixed."""
    handler, settings = scripted
    handler.mail = "530 5.7.0 Authentication required"
    clock = CaseClock()
    store = SqlCaseStore("sqlite://", Context(SETTINGS, RoutingTable.load(SETTINGS.routing_file)), clock=clock)
    for n in range(3):
        store.apply(triaged(n))
    relay = OutboxRelay(store, MemoryBus(), {"email": SmtpReplier(settings, SETTINGS.from_address)})
    relay.run_once()
    assert relay.stats.acks_failed == 0 and relay.stats.retries == 3
    handler.mail = "250 OK"
    clock.now += timedelta(seconds=5)
    relay.run_once()
    assert relay.stats.acks_sent == 3 and len(handler.accepted) == 3


def test_a_slow_server_cannot_stretch_one_send_past_its_deadline(scripted) -> None:  # type: ignore[no-untyped-def]
    handler, settings = scripted
    handler.rcpt_delay = handler.data_delay = 2.5  # each operation under the 3 s timeout, the send not
    replier = SmtpReplier(settings, "support@bet.example")
    started = time.monotonic()
    with pytest.raises(ReplyUnavailable, match="deadline of 3s"):
        replier.send(reply(1))
    assert time.monotonic() - started < 3.5 and replier._client is None
    handler.rcpt_delay = handler.data_delay = 0
    replier.send(reply(2))  # a new connection; the aborted one is gone
    assert replier.connections == 2 and len(handler.accepted) == 1


def test_two_relays_and_a_slow_server_send_one_acknowledgement_once(scripted, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Relay A's send is cut off at its deadline, inside its lease and before the message was
    transferred; relay B, claiming after A's lease, delivers it: the customer gets it once."""
    handler, settings = scripted
    handler.rcpt_delay = 5.0
    store = SqlCaseStore(f"sqlite:///{tmp_path / 'cases.sqlite3'}",
                         Context(SETTINGS, RoutingTable.load(SETTINGS.routing_file)))
    store.apply(triaged(1))

    def relay() -> OutboxRelay:
        return OutboxRelay(store, MemoryBus(), {"email": SmtpReplier(settings, SETTINGS.from_address)}, lease_seconds=4.0)

    a, b = relay(), relay()
    worker = threading.Thread(target=a.run_once)
    worker.start()
    time.sleep(4.5)  # A's lease is over; its send was cut at 3 s and the row handed back
    handler.rcpt_delay = 0
    b.run_once()
    worker.join()
    assert a.stats.acks_sent == 0 and a.stats.retries == 1 and b.stats.acks_sent == 1
    assert len(handler.accepted) == 1


def test_an_acknowledgement_from_a_wrapped_template_reaches_the_server_7bit(smtp_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Templates wrapped at ~72 columns, as mail templates often are, gave an Azerbaijani or Turkish
    body the email package sends as 8bit; the replier declares no BODY=8BITMIME (RFC 6152 forbids
    8-bit data without it). Every acknowledgement must be 7-bit clean, whatever the template's lines."""
    from dispatch.ack import render_ack
    from dispatch.ack_bytes import ack_email_bytes
    from tests.unit.dispatch.test_ack import inbound

    (tmp_path / "ack.az.txt.j2").write_text(
        "Salam{% if customer_name %}, {{ customer_name }}{% endif %}!\n\n"
        "Müraciətinizi aldıq və {{ reference }} nömrəsi ilə qeydə\naldıq. Sizə {{ sla_text }} cavab verəcəyik.\n",
        encoding="utf-8")
    body = render_ack("FD-2026-000042", "az", timedelta(hours=4), datetime(2026, 11, 22, 13, tzinfo=UTC), "Aysel",
                      tmp_path)
    raw = ack_email_bytes(inbound=inbound(), case_reference="FD-2026-000042", body=body,
                          from_address="support@bet.example", from_name="Dəstək", message_id_domain="bet.example")
    smtp_server.clear()
    replier = SmtpReplier(smtp_settings(smtp_server), "support@bet.example")
    replier.send(OutboundReply(channel="email", connector="imap:support", recipient="aysel@mail.az", body=body,
                               message_id="<a@bet.example>", case_reference="FD-2026-000042", raw=raw))
    replier.close()
    [got] = smtp_server.wait_for(1)
    assert all(b < 128 for b in got.raw) or "BODY=8BITMIME" in got.mail_options
    assert got.message["Content-Transfer-Encoding"] in ("7bit", "quoted-printable", "base64")
    assert got.message.get_content().replace("\r\n", "\n") == body


def test_a_connection_used_just_before_is_reused_without_a_noop_and_never_resent_after_mail(scripted) -> None:  # type: ignore[no-untyped-def]
    """No NOOP round trip within ``UNCHECKED_S`` of the last send; one after. A kept connection that
    dies after its MAIL FROM was answered is not retried here: the server may have the message."""
    handler, settings = scripted
    clock = Clock()
    replier = SmtpReplier(settings, "support@bet.example", clock=clock)
    for n in range(3):
        replier.send(reply(n))
        clock.now += 0.5
    assert handler.noops == 0 and replier.connections == 1 and len(handler.accepted) == 3
    clock.now += SmtpReplier.UNCHECKED_S
    replier.send(reply(3))
    assert handler.noops == 1 and replier.connections == 1 and len(handler.accepted) == 4

    handler.drop_after_data = True
    with pytest.raises(ReplyUnavailable):
        replier.send(reply(4))
    assert len(handler.accepted) == 5 and replier.connections == 1  # accepted once, not sent again
    handler.drop_after_data = False
    replier.send(reply(5))
    assert len(handler.accepted) == 6 and replier.connections == 2
    replier.close()
