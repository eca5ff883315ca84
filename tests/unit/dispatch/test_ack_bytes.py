"""ack_email_bytes gives exactly build_ack_email(...).as_bytes(), on ordinary and hostile inputs."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta

import pytest

from dispatch.ack import build_ack_email, render_ack
from dispatch.ack_bytes import ack_email_bytes
from frontdesk.errors import ConfigError, ReplyError
from frontdesk.messages import InboundMessage, Party, ThreadHints
from tests.unit.dispatch.test_ack import INJECTION, REF, TEMPLATES, inbound

SUBJECTS = ["", "Pul çıxarışı", "Withdrawal pending", "Re: Re: AW: [FD-2026-000123] still nothing", "x" * 70,
            "word " * 30, "Вывод средств — 3 дня", "=?utf-8?b?SGVsbG8=?=", INJECTION, "tab\there  two  spaces",
            " lead and trail ", "\u202eevil\u202c", "😀 emoji", "a" * 400, "İade talebi: 20.000 TL çekim"]
NAMES = [None, "Aysel", "Ayşə Məmmədova", 'Quote "me"', INJECTION, "x" * 200]
FROM_NAMES = ["Bet.az Dəstək", "Support", "Bet, Support Team", 'Say "hi"', ""]
EXTERNAL_IDS = ["<abc@mail.az>", "no-brackets@mail.az", "<" + "k" * 110 + "@" + "h" * 110 + ">", "garbage", ""]
REFERENCES = [(), ("<p1@mail.az>",), tuple(f"<p{i}-{'r' * 20}@mail.az>" for i in range(40)), ("<bad id>", "<p2@x.az>")]
DATES = [datetime(2026, 11, 22, 10, 30, tzinfo=UTC), datetime(2027, 1, 2, 3, 4, 5, tzinfo=UTC)]
ASCII_BODY = "Hello,\n\nwe received your message.\n"


def bodies() -> list[str]:
    due = datetime(2026, 11, 22, 14, 45, tzinfo=UTC)
    rendered = [render_ack(REF, lang, timedelta(minutes=15), due, "Aysel", TEMPLATES) for lang in ("az", "ru", "en", "tr")]
    return [*rendered, ASCII_BODY, "short\nçok kısa\n", "x" * 200 + "\n", "a\r\nb\rc\n\n\nd", "=3D=\n", ""]


def both(**kwargs: object) -> tuple[bytes, bytes]:
    return ack_email_bytes(**kwargs), build_ack_email(**kwargs).as_bytes()  # type: ignore[arg-type]


def arguments(rng: random.Random, n: int) -> list[dict[str, object]]:
    out = []
    for _ in range(n):
        msg = inbound(subject=rng.choice(SUBJECTS), external_id=rng.choice(EXTERNAL_IDS),
                      sender=Party(address=rng.choice(["aysel@mail.az", "Kamran.O@Example.COM", "x@bücher.de"]),
                                   name=rng.choice(NAMES)),
                      thread=ThreadHints(in_reply_to=rng.choice([None, "<p2@mail.az>", "junk"]),
                                         references=rng.choice(REFERENCES)))
        out.append(dict(inbound=msg, case_reference=rng.choice([REF, "FD-2026-000001", "X-1"]), body=rng.choice(bodies()),
                        from_address=rng.choice(["support@bet.az", "destek@bet.com.tr"]),
                        from_name=rng.choice(FROM_NAMES), message_id_domain=rng.choice(["bet.az", "frontdesk.bet.az"]),
                        date=rng.choice(DATES)))
    return out


def test_same_bytes_as_the_email_package_on_600_varied_acknowledgements() -> None:
    for kwargs in arguments(random.Random(7), 600):
        fast, slow = both(**kwargs)
        assert fast == slow, kwargs


@pytest.mark.parametrize(("subject", "body"), list(itertools.product(SUBJECTS, bodies())))
def test_same_bytes_for_every_subject_and_body(subject: str, body: str) -> None:
    fast, slow = both(inbound=inbound(subject=subject), case_reference=REF, body=body, from_address="support@bet.az",
                      from_name="Bet.az Dəstək", message_id_domain="bet.az", date=DATES[0])
    assert fast == slow


def test_the_common_acknowledgement_is_written_directly() -> None:
    body = bodies()[0]
    raw = ack_email_bytes(inbound=inbound(), case_reference=REF, body=body, from_address="support@bet.az",
                          from_name="Support", message_id_domain="bet.az", date=DATES[0])
    assert raw.startswith(b"From: Support <support@bet.az>\r\nTo: aysel@mail.az\r\nSubject: =?utf-8?")
    assert b"\r\nContent-Transfer-Encoding: base64\r\nMIME-Version: 1.0\r\n\r\n" in raw


@pytest.mark.parametrize("body", bodies())
def test_no_body_is_sent_8bit(body: str) -> None:
    """SMTP may carry 8-bit data only after BODY=8BITMIME, which the replier does not declare: a short-lined
    UTF-8 body ("short\nçok kısa") is quoted-printable or base64, not 8bit."""
    for build in (ack_email_bytes, lambda **kw: build_ack_email(**kw).as_bytes()):
        raw = build(inbound=inbound(), case_reference=REF, body=body, from_address="support@bet.az",
                    from_name="Bet.az Dəstək", message_id_domain="bet.az", date=DATES[0])
        assert all(b < 128 for b in raw) and b"Content-Transfer-Encoding: 8bit" not in raw


def test_same_errors() -> None:
    good = dict(inbound=inbound(), case_reference=REF, body=ASCII_BODY, from_address="support@bet.az",
                from_name="S", message_id_domain="bet.az")
    for over, error in [({"inbound": inbound(sender=Party(address=None))}, ReplyError),
                        ({"from_address": "not an address"}, ConfigError), ({"message_id_domain": "a b"}, ConfigError),
                        ({"case_reference": "bad ref!"}, ValueError)]:
        for build in (ack_email_bytes, build_ack_email):
            with pytest.raises(error):
                build(**{**good, **over})  # type: ignore[arg-type]


def test_injected_header_lines_stay_inside_their_header() -> None:
    msg = InboundMessage.create(connector="imap:support", external_id=f"<a@b.c>{INJECTION}", channel="email",
                                sender=Party(address="aysel@mail.az", name=INJECTION), subject=INJECTION,
                                received_at=DATES[0], thread=ThreadHints(references=(INJECTION,)))
    raw = ack_email_bytes(inbound=msg, case_reference=REF, body=ASCII_BODY, from_address="support@bet.az",
                          from_name=INJECTION, message_id_domain="bet.az", date=DATES[0])
    head = raw.split(b"\r\n\r\n")[0]
    assert b"\r\nBcc:" not in head and b"\nBcc:" not in head


ODD_VALUES = [" lead", "trail ", "a  b", "a\tb", "ünï", "=?utf-8?q?x?=", "<a@b.c>", "x" * 80, "a b" * 30,
              "(comment) x", '"quoted"', "a,b", "<a@b> <c@d>", ""]


# a Message-ID holds one id (given two, the package drops the second)
@pytest.mark.parametrize(("name", "value"), [(n, v) for n in ("Subject", "Message-ID", "In-Reply-To", "References")
                                             for v in ODD_VALUES if n != "Message-ID" or " " not in v.strip()])
def test_a_header_line_is_what_the_package_folds(name: str, value: str) -> None:
    from dispatch.ack_bytes import _POLICY, _line

    assert _line(name, value) == _POLICY.fold(name, _POLICY.header_store_parse(name, value)[1])


def test_a_date_line_is_what_the_package_folds() -> None:
    from email.utils import format_datetime

    from dispatch.ack_bytes import _POLICY, _line

    for date in [*DATES, datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC), datetime.now(UTC)]:
        value = format_datetime(date)
        assert _line("Date", value) == _POLICY.fold("Date", _POLICY.header_store_parse("Date", value)[1])
