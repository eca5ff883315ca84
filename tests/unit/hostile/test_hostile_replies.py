"""Injection in names, subjects, message ids and addresses never reaches an acknowledgement as syntax.

Cases on SQLite, the real relay, MemoryReplier for email and chat. An acknowledgement email must
have exactly our headers (no injected Bcc/Reply-To), its subject must be the cleaned original,
template syntax from the customer must come out literally (never evaluated: no "49"), and the
message must be one text/plain part (markup in a name is shown, not interpreted).
"""

from __future__ import annotations

from email import message_from_bytes, policy
from email.header import decode_header, make_header
from email.message import Message

import pytest

from dispatch.ack import ack_subject
from dispatch.base import MemoryReplier, OutboundReply
from dispatch.cases import Context
from dispatch.relay import OutboxRelay
from dispatch.routing import RoutingTable
from dispatch.settings import DispatchSettings
from dispatch.store.sql import SqlCaseStore
from frontdesk.bus.memory import MemoryBus
from frontdesk.messages import Party, ThreadHints
from ingest.mail import parse_mail
from tests.fixtures.hostile.mail import build_hostile_mails
from tests.fixtures.hostile.payloads import ENCODED_CRLF, INJECTIONS, inbound, triaged

SETTINGS = DispatchSettings(our_addresses=("@bet.example",), from_address="support@bet.example",
                            message_id_domain="bet.example")
OUR_HEADERS = {"from", "to", "subject", "date", "message-id", "in-reply-to", "references", "auto-submitted",
               "x-auto-response-suppress", "content-type", "content-transfer-encoding", "mime-version"}


def deliver(messages: list) -> tuple[list[OutboundReply], list[OutboundReply]]:  # type: ignore[type-arg]
    """Apply triaged messages and run the relay: (email replies, chat replies)."""
    store = SqlCaseStore("sqlite://", Context(SETTINGS, RoutingTable.load(SETTINGS.routing_file)))
    email, chat = MemoryReplier(), MemoryReplier()
    for message in messages:
        store.apply(message)
    OutboxRelay(store, MemoryBus(), {"email": email, "telegram": chat, "webhook": chat}).run_once()
    store.close()
    return email.sent, chat.sent


def check_email(reply: OutboundReply) -> tuple[Message, str]:
    """The acknowledgement's headers as sent (compat32: no decoding) and its decoded subject, after the
    structural checks every acknowledgement must pass."""
    assert reply.raw is not None
    head = reply.raw.split(b"\r\n\r\n", 1)[0]
    names = [line.split(b":", 1)[0].decode().lower() for line in head.split(b"\r\n") if line[:1] not in (b" ", b"\t")]
    assert set(names) <= OUR_HEADERS and len(names) == len(set(names)), names
    assert all(b"\r" not in line and b"\n" not in line for line in head.split(b"\r\n"))
    sent = message_from_bytes(reply.raw, policy=policy.compat32)
    assert not sent.is_multipart() and sent.get_content_type() == "text/plain" and sent.defects == []
    assert sent["To"] == reply.recipient
    for name in ("Bcc", "Cc", "Reply-To", "X-Injected"):
        assert sent[name] is None
    subject = str(make_header(decode_header(sent["Subject"])))
    assert not set(subject) & set("\r\n")
    return sent, subject


def body_of(sent: Message) -> str:
    payload = sent.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode("utf-8").replace("\r\n", "\n")


@pytest.mark.parametrize("text", INJECTIONS, ids=range(len(INJECTIONS)))
def test_injection_in_name_and_subject_stays_inert(text: str) -> None:
    mail = triaged(inbound(1, sender=Party(address="customer1@mail.example", name=text), subject=text))
    tg = triaged(inbound(2, connector="telegram", channel="chat", platform="telegram", external_id="42:7",
                         sender=Party(platform_id="42", name=text), thread=ThreadHints(conversation_id="42"),
                         subject=""))
    [email], [chat] = deliver([mail, tg])
    sent, subject = check_email(email)
    assert subject == ack_subject(email.case_reference, text)
    for body in (body_of(sent), chat.body):
        assert "Hello 49" not in body and "LOOPLOOP" not in body and "globals" not in body.replace(text, "")
        assert not set(body) & set("\x00\x1b\r\u2028\u202e")
        if "{" in text:
            assert text in body  # template syntax is shown as written, never evaluated


def test_encoded_words_in_ids_subject_and_address_cannot_smuggle_headers() -> None:
    """The email package decodes "=?...?=" in header values it parses, even inside addresses and ids:
    such values must be written so that nothing re-decodes them into CR/LF."""
    msg = inbound(3, sender=Party(address=f"{ENCODED_CRLF}@mail.example", name="Eve"), subject=ENCODED_CRLF,
                  external_id=f"<{ENCODED_CRLF}@mail.example>",
                  thread=ThreadHints(in_reply_to=f"<{ENCODED_CRLF}@bet.example>",
                                     references=(f"<{ENCODED_CRLF}@bet.example>", "<root@bet.example>")))
    [email], _ = deliver([triaged(msg)])
    sent, subject = check_email(email)
    assert sent["To"] == f"{ENCODED_CRLF}@mail.example".lower()
    assert subject.endswith(ENCODED_CRLF)  # decoded once: the customer's literal text
    assert sent["In-Reply-To"] is None and sent["References"] is None  # unusable ids are left out


def test_a_double_encoded_hostile_mail_gets_a_clean_acknowledgement() -> None:
    """The whole way: raw hostile mail → parse_mail → case → acknowledgement."""
    hostile = next(m for m in build_hostile_mails() if m.name == "encoded-word-double-encoded")
    msg = parse_mail(hostile.raw, connector="imap:support", channel="email", blobs=None, limits=hostile.mail_limits)
    [email], _ = deliver([triaged(msg)])
    sent, _ = check_email(email)
    assert "Refund please." not in body_of(sent)  # the customer's text is never echoed back
