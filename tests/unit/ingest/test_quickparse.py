"""``quick_parse`` builds exactly the stdlib feedparser's tree, or declines.

Oracle: ``email.message_from_bytes(raw, _class=CachedMessage)``. Whenever ``quick_parse`` returns a
message, the two trees must be equal in everything a ``Message`` holds (headers as stored,
payloads, preamble, epilogue, defects, envelope line, default type, charset). Inputs: every mail of
the MIME and hostile corpora, generated structures that mix line ends, blanks after delimiters,
delimiter look-alikes, nesting, empty parts and the malformations it must decline, and crafted
cases. It must also take most well-formed mail (else it would be dead code).
"""

from __future__ import annotations

import random
from email import message_from_bytes
from email.message import Message
from typing import Any

import pytest

from ingest.mail.message import CachedMessage, parse_bytes
from ingest.mail.quickparse import MAX_DEPTH, _delimiter_kind, quick_parse
from tests.fixtures.hostile.mail import build_hostile_mails
from tests.fixtures.mail.corpus import build_corpus

CORPUS = [m.raw for m in build_corpus()]
HOSTILE = [m.raw for m in build_hostile_mails() if len(m.raw) < 2_000_000]


def stdlib(raw: bytes) -> CachedMessage:
    return message_from_bytes(raw, _class=CachedMessage)  # type: ignore[no-any-return]


def tree(msg: Any) -> Any:
    """Everything a compat32 Message holds, recursively (the caches of CachedMessage left out)."""
    if not isinstance(msg, Message):
        return msg
    payload = msg._payload  # type: ignore[attr-defined]
    return (
        type(msg).__name__, list(msg._headers), msg.preamble, msg.epilogue,  # type: ignore[attr-defined]
        [type(d).__name__ for d in msg.defects], msg.get_unixfrom(), msg.get_default_type(), msg._charset,  # type: ignore[attr-defined]
        [tree(p) for p in payload] if isinstance(payload, list) else payload,
    )


def check(raw: bytes) -> bool:
    """True if quick_parse took ``raw`` (and then matched the stdlib), False if it declined."""
    quick = quick_parse(raw, CachedMessage)
    if quick is None:
        return False
    assert tree(quick) == tree(stdlib(raw)), raw[:300]
    return True


def test_every_corpus_mail_matches_or_is_declined() -> None:
    taken = sum(check(raw) for raw in CORPUS)
    assert taken >= 0.75 * len(CORPUS), f"took only {taken} of {len(CORPUS)} corpus mails"


def test_every_hostile_mail_matches_or_is_declined() -> None:
    for raw in HOSTILE:
        check(raw)


def test_parse_bytes_gives_the_stdlib_tree_either_way() -> None:
    for raw in CORPUS + HOSTILE:
        try:
            expected = tree(stdlib(raw))
        except RecursionError:  # the hostile corpus's deepest nesting: parse_mail rejects it
            with pytest.raises(RecursionError):
                parse_bytes(raw)
            continue
        assert tree(parse_bytes(raw)) == expected


# --- generated structures ---------------------------------------------------------------------

_WORDS = ["Salam", "withdrawal", "--", "-", "--b", "--bb", "--b--x", "From me", ":", "a:b", " ", "\t", "",
          "Привет", "çekim", "=?utf-8?q?x?=", "> quoted", "--b ", "--b\t", "--b-- ", "x--b"]


def _line(rng: random.Random) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(0, 4)))


def _headers(rng: random.Random, ctype: str, eol: str) -> str:
    fields = [f"Content-Type: {ctype}"] if ctype else []
    fields += rng.sample(["Subject: hi", "X-A: 1", "Content-Transfer-Encoding: 8bit", "X-Empty:",
                          "X-Long: a\n b", "Content-Transfer-Encoding: base64", "X-Tab:\tv", "Date: Mon"],
                         rng.randint(0, 3))
    rng.shuffle(fields)
    oddity = rng.random()
    if oddity < 0.03:
        fields.insert(0, " continuation first")
    elif oddity < 0.06:
        fields.insert(0, "From someone@example Mon")
    elif oddity < 0.09:
        fields.append("not a header")
    elif oddity < 0.11:
        fields.append(":no name")
    text = eol.join(fields).replace("\n b", eol + " b")
    return text + eol + ("" if rng.random() < 0.04 else eol) if fields else ("" if rng.random() < 0.1 else eol)


def _entity(rng: random.Random, depth: int, eol: str, boundaries: list[str]) -> str:
    if depth < 4 and rng.random() < 0.45:
        boundary = rng.choice(["b", "bb", "b2", "=_x", "b" * 3, boundaries[-1] if boundaries else "b"])
        subtype = rng.choice(["mixed", "alternative", "related", "digest" if rng.random() < 0.1 else "mixed"])
        quoted = f'"{boundary}"' if rng.random() < 0.5 else boundary
        param = "" if rng.random() < 0.03 else f"; boundary={quoted}"
        head = _headers(rng, f"multipart/{subtype}{param}", eol)
        parts = [_entity(rng, depth + 1, eol, [*boundaries, boundary]) for _ in range(rng.randint(0, 3))]
        body = "".join(_line(rng) + eol for _ in range(rng.randint(0, 2)))  # preamble
        for part in parts:
            body += f"--{boundary}{rng.choice(['', ' ', chr(9), '  '])}{eol}" + part
            if rng.random() < 0.05:
                body += f"--{boundary}{eol}"  # adjacent delimiters
            if not part.endswith(eol) or rng.random() < 0.5:
                body += eol
        if rng.random() > 0.05:
            body += f"--{boundary}--{rng.choice(['', ' '])}" + (eol if rng.random() < 0.9 else "")
        body += "".join(_line(rng) + eol for _ in range(rng.randint(0, 2)))  # epilogue
        return head + body
    ctype = rng.choice(["text/plain", "text/html; charset=utf-8", "", "application/pdf", "message/rfc822",
                        "text/plain; charset=koi8-r"])
    return _headers(rng, ctype, eol) + "".join(_line(rng) + eol for _ in range(rng.randint(0, 4)))


@pytest.mark.parametrize("seed", range(8))
def test_generated_structures_match_or_are_declined(seed: int) -> None:
    rng = random.Random(seed)
    taken = 0
    for _ in range(400):
        eol = rng.choice(["\n", "\r\n"])
        text = _entity(rng, 0, eol, [])
        if rng.random() < 0.05:
            text = text.replace(eol, "\r", 1)  # a lone CR: declined
        taken += check(text.encode("utf-8", "surrogateescape"))
    assert taken > 100


def test_delimiter_kind_is_the_feedparser_regex() -> None:
    import re

    sep = "--b"
    pattern = re.compile("(?P<sep>" + re.escape(sep) + r")(?P<end>--)?(?P<ws>[ \t]*)(?P<linesep>\r\n|\r|\n)?$")
    tails = ["", "\n", "\r\n", " \n", "\t \r\n", "--", "--\n", "-- \r\n", "--x\n", "x\n", "---\n", "-\n", " x\n",
             "-- -\n", "  --\n", "--  \t", " ", "--\t\n"]
    for tail in tails:
        match = pattern.match(sep + tail)
        expected = None if match is None else bool(match.group("end"))
        assert _delimiter_kind(tail) == expected, repr(tail)


@pytest.mark.parametrize("raw", [
    b"Subject: x\n\nbody",
    b"Subject: x\n",
    b"Subject: x",
    b"\nbody only",
    b"Content-Type: multipart/mixed; boundary=b\n\n--b\n\n--b--",
    b"Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: text/plain\n--b--\n",
    b"Content-Type: multipart/mixed; boundary=b\n\npre\n--b\n\nx\n--b--\n\nepi\n",
    b"Content-Type: multipart/mixed; boundary=b\n\n--b\n\n--b\n\n--b--",
    b"Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: multipart/alternative; boundary=c\n\n"
    b"--c\n\ninner\n--c--\n\n--b--\n",
    b"Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: multipart/alternative; boundary=c\n\n"
    b"--c\n\ninner\n--b--\n",  # the inner close is missing: declined
    b"Content-Type: multipart/mixed; boundary=\"a\n b\"\n\n--a\n b\n\nx\n--a\n b--\n",
    b"Content-Type: multipart/mixed; boundary=b\nContent-Transfer-Encoding: base64\n\n--b\n\nx\n--b--\n",
    b"Subject: \xff\xfe\n\n\xd0\x9f\xd1\x80\n",
])
def test_crafted_cases(raw: bytes) -> None:
    check(raw)


def test_deep_nesting_is_left_to_the_stdlib() -> None:
    raw = b""
    for level in range(MAX_DEPTH + 3):
        raw = (f"Content-Type: multipart/mixed; boundary=b{level}\n\n--b{level}\n".encode() + raw
               + f"\n--b{level}--\n".encode())
    assert quick_parse(raw, CachedMessage) is None
