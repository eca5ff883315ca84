from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import jsonschema
import pytest
from pydantic import ValidationError

from frontdesk.codec import decode, encode, json_schema, schema_path
from frontdesk.errors import DecodeError
from frontdesk.messages import (
    PIPELINE_TYPES,
    Attachment,
    CaseCustomer,
    CaseEvent,
    CaseSnapshot,
    Flags,
    InboundMessage,
    Party,
    ThreadHints,
    Triage,
    TriagedMessage,
    message_id,
)

NOW = datetime(2026, 11, 22, 10, 30, tzinfo=UTC)


def inbound(**over: object) -> InboundMessage:
    fields: dict[str, object] = dict(
        connector="imap:support", external_id="<abc@mail.az>", channel="email",
        sender=Party(address="aysel@mail.az", name="Aysel Məmmədova"),
        recipients=(Party(address="support@bet.az"),), subject="Pul çıxarışı", text="Pulum gəlmədi",
        full_text="Pulum gəlmədi\n> old", received_at=NOW,
        thread=ThreadHints(in_reply_to="<x@y>", references=("<x@y>",)),
        attachments=(Attachment(name="çek.pdf", content_type="application/pdf", size=10, sha256="a" * 64),),
        flags=Flags(auto_submitted=True),
    )
    fields.update(over)
    return InboundMessage.create(**fields)  # type: ignore[arg-type]


def case_event() -> CaseEvent:
    snap = CaseSnapshot(
        id="case_1", reference="FD-2026-000123", status="open", queue="payments", priority=2, category="payments",
        urgency="high", language="az", channel="email", customer=CaseCustomer(id="cus_1", identities=("email:a@b.az",)),
        first_response_due=NOW + timedelta(hours=4), created_at=NOW, updated_at=NOW, message_count=1,
    )
    return CaseEvent(event_id="evt_1", type="created", occurred_at=NOW, message_id="msg_1", case=snap)


def test_message_id_is_stable_and_source_scoped() -> None:
    assert message_id("imap:a", "<1@x>") == message_id("imap:a", "<1@x>")
    assert message_id("imap:a", "<1@x>") != message_id("imap:b", "<1@x>")
    assert inbound().id == message_id("imap:support", "<abc@mail.az>")
    assert message_id("imap:a", "<1@x>", "d1") == message_id("imap:a", "<1@x>", "d1")
    assert len({message_id("imap:a", "<1@x>"), message_id("imap:a", "<1@x>", "d1"),
                message_id("imap:a", "<1@x>", "d2")}) == 3, "the content digest tells apart mails of one Message-ID"
    assert inbound(content_digest="d1").id == message_id("imap:support", "<abc@mail.az>", "d1")


def test_messages_are_frozen_and_strict() -> None:
    msg = inbound()
    with pytest.raises(ValidationError):
        msg.subject = "changed"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        inbound(unknown_field=1)
    with pytest.raises(ValidationError):
        inbound(received_at=datetime(2026, 1, 1))  # naive datetimes are refused


@pytest.mark.parametrize("message", [inbound(), case_event()], ids=["inbound", "case"])
def test_roundtrip(message: object) -> None:
    raw = encode(message)  # type: ignore[arg-type]
    assert decode(raw, type(message)) == message  # type: ignore[arg-type]


def test_triaged_roundtrip_keeps_unicode() -> None:
    tri = TriagedMessage(
        message=inbound(), triaged_at=NOW,
        triage=Triage(category="payments", urgency="high", language="az", confidence={"category": 0.91},
                      model_version="e5-heads-1"),
    )
    raw = encode(tri)
    assert "Pul çıxarışı" in raw.decode()
    assert decode(raw, TriagedMessage).id == tri.message.id


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\xff\xfe", "not valid JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"kind": "case", "version": 1}', "expected kind 'inbound'"),
        (b'{"kind": "inbound", "version": 2}', "unsupported inbound version 2"),
        (b'{"kind": "inbound", "version": 1, "id": "x"}', "invalid inbound message"),
        (b'{"kind": "inbound", "version": 1, "subject": "a \\ud83d b"}', "lone UTF-16 surrogate"),
        (b'{"kind": "inbound", "version": 1, "x": ["\\udc00"]}', "lone UTF-16 surrogate"),
    ],
)
def test_decode_errors_carry_raw_bytes(raw: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode(raw, InboundMessage)
    assert info.value.raw == raw
    assert reason in info.value.reason


@pytest.mark.parametrize("topic", sorted(PIPELINE_TYPES))
def test_committed_schemas_match_the_code(topic: str) -> None:
    committed = json.loads(schema_path(topic).read_text())
    assert committed == json_schema(topic), "run `frontdesk schemas --write` and commit the result"


def test_emitted_events_validate_against_the_published_schema() -> None:
    schema = json.loads(schema_path("cases").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(json.loads(encode(case_event())), schema)
    jsonschema.validate(json.loads(encode(inbound())), json.loads(schema_path("inbound").read_text()))
    bad = json.loads(encode(case_event()))
    bad["case"]["priority"] = 9
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_escaped_surrogate_pairs_and_escaped_backslashes_are_ordinary_text() -> None:
    msg = InboundMessage.create(connector="t", external_id="1", channel="chat", sender=Party(handle="u"),
                                text="x", received_at=datetime.now(UTC))
    for text, expected in (('\\ud83d\\ude00', "\U0001F600"), ('\\\\ud83d', "\\ud83d")):
        raw = encode(msg).replace(b'"text":"x"', b'"text":"' + text.encode() + b'"')
        assert decode(raw, InboundMessage).text == expected
