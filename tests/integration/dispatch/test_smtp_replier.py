"""The SMTP Replier against the real (aiosmtpd) server: connection reuse and its failure paths."""

from __future__ import annotations

from email.message import EmailMessage

import pytest

from dispatch.base import OutboundReply
from dispatch.smtp import SmtpReplier
from frontdesk.errors import ReplyUnavailable
from tests.integration.dispatch.test_dispatch_real import smtp_settings

pytestmark = pytest.mark.smtp


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
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

    smtp_server.restart()  # the kept connection is dead: the NOOP check notices, nothing is lost
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
