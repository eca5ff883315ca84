"""The FETCH fast path reads responses exactly as imapclient's parser does, and falls back to it
for anything of another shape (crafted responses as imaplib collects them)."""

from __future__ import annotations

from typing import Any

import pytest
from imapclient.exceptions import ProtocolError
from imapclient.response_parser import parse_fetch_response

from ingest import imap_fetch
from ingest.imap_fetch import BODY, SIZE_AND_DATE, read_response

DATE = b'"05-Dec-2026 01:33:41 +0300"'


def described(*lines: bytes) -> list[Any]:
    return list(lines)


def bodies(*mails: tuple[int, int, bytes]) -> list[Any]:
    data: list[Any] = []
    for seq, uid, raw in mails:
        data += [(b"%d (UID %d BODY[] {%d}" % (seq, uid, len(raw)), raw), b")"]
    return data


USUAL = {
    "described": (SIZE_AND_DATE, described(b"1 (UID 7 RFC822.SIZE 1234 INTERNALDATE " + DATE + b")",
                                           b"2 (UID 9 RFC822.SIZE 0 INTERNALDATE " + DATE + b")")),
    "bodies": (BODY, bodies((1, 7, b"Subject: a\r\n\r\nbody\r\n"), (2, 9, b""), (3, 12, b")\r\n{5}\r\n"))),
}

UNUSUAL = {
    "unsolicited flags": (SIZE_AND_DATE, described(b"1 (UID 7 RFC822.SIZE 12 INTERNALDATE " + DATE + b")",
                                                   b"4 (FLAGS (\\Seen))")),
    "items in another order": (SIZE_AND_DATE, described(b"1 (RFC822.SIZE 12 UID 7 INTERNALDATE " + DATE + b")")),
    "unreadable date": (SIZE_AND_DATE, described(b'1 (UID 7 RFC822.SIZE 12 INTERNALDATE "yesterday")')),
    "one uid twice": (SIZE_AND_DATE, described(b"1 (UID 7 RFC822.SIZE 12 INTERNALDATE " + DATE + b")",
                                               b"1 (UID 7 RFC822.SIZE 13 INTERNALDATE " + DATE + b")")),
    "no responses": (SIZE_AND_DATE, [None]),
    "uid after the literal": (BODY, [(b"1 (BODY[] {4}", b"abcd"), b" UID 7)"]),
    "flags after the literal": (BODY, [(b"1 (UID 7 BODY[] {4}", b"abcd"), b" FLAGS (\\Seen))"]),
    "unsolicited flags between bodies": (BODY, bodies((1, 7, b"ab"))[:2] + [b"2 (FLAGS ())"] + bodies((3, 9, b"c"))),
    "no body responses": (BODY, [None]),
}


@pytest.mark.parametrize("normalise", [False, True])
@pytest.mark.parametrize("case", sorted({**USUAL, **UNUSUAL}))
def test_same_result_as_imapclient(case: str, normalise: bool) -> None:
    items, data = {**USUAL, **UNUSUAL}[case]
    assert read_response(list(data), items, normalise) == dict(parse_fetch_response(list(data), normalise, True))


@pytest.mark.parametrize("case", sorted(USUAL))
def test_the_usual_shapes_never_reach_imapclients_parser(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object) -> None:
        raise AssertionError("imapclient's parser was used")

    monkeypatch.setattr(imap_fetch, "parse_fetch_response", refuse)
    items, data = USUAL[case]
    assert len(read_response(list(data), items, False)) == len(data) // (2 if items == BODY else 1)


@pytest.mark.parametrize("case", sorted(UNUSUAL))
def test_other_shapes_go_to_imapclients_parser(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[object] = []

    def spy(data: list[Any], normalise: bool, uid_is_key: bool) -> Any:
        calls.append(data)
        return parse_fetch_response(data, normalise, uid_is_key)

    monkeypatch.setattr(imap_fetch, "parse_fetch_response", spy)
    items, data = UNUSUAL[case]
    read_response(list(data), items, False)
    assert len(calls) == 1


def test_a_literal_shorter_than_announced_is_the_error_imapclient_raises() -> None:
    data = [(b"1 (UID 7 BODY[] {10}", b"abcd"), b")"]
    with pytest.raises(ProtocolError, match="Expecting literal of size 10, got 4"):
        read_response(data, BODY, False)
