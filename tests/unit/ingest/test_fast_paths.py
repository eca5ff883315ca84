"""The parser's fast paths give exactly what the slow paths they stand in for give.

``ingest.mail.flags.addresses`` reads common address headers with a regex instead of
``email.utils.getaddresses``; ``ingest.mail.replies._LineAnchored`` tries mail-parser-reply's header
and signature patterns only at line starts and newlines; ``ingest.mail.message.CachedMessage``
remembers content types, header parameters and raw header values; ``flags._may_name`` skips
parameter parsing where no name can be; the reply-header pattern skips text without ':' or '--' and
the disclaimer pattern (it cannot match) is not run; ``bounds._delimiters`` counts delimiter lines
with ``find``; ``text.has_visible_text`` tells whether ``normalise_text`` leaves anything with one
search. Each is compared with the original on every mail of the MIME and hostile corpora,
plus crafted cases. (``quickparse`` has its own file, ``test_quickparse.py``.)
"""

from __future__ import annotations

import random
from collections.abc import Callable
from email import message_from_bytes
from email.message import Message
from email.utils import getaddresses

import pytest

from ingest.mail import parse_mail
from ingest.mail import flags
from ingest.mail.flags import addresses, attachment_filename, raw_headers
from ingest.mail.message import parse_bytes
from ingest.mail.parse import MailLimits, MailRejected
from ingest.mail.replies import _LANGUAGES, _LineAnchored, _ReplyMessage, _prepare
from tests.fixtures.hostile.mail import build_hostile_mails
from tests.fixtures.mail.corpus import build_corpus

RAWS = [m.raw for m in build_corpus()] + [m.raw for m in build_hostile_mails() if len(m.raw) < 2_000_000]

CRAFTED_ADDRESSES = [
    "a@b.c", "John Doe <j@x.org>", '"Doe, John" <j@x.org>', "a@b.c, d@e.f", "J. Doe <a@b.c>",
    "=?utf-8?B?0JjQstCw0L0=?= <ivan@mail.ru>", "John \t  Doe   <a@b>", "undisclosed-recipients:;", "", " ",
    "a@b.c,", ",a@b.c", "a@b.c,,d@e.f", "<a@b.c>", "<>", "Name <>", "a@b.c (comment)", "Name (x) <a@b.c>",
    '"quoted \\" escape" <a@b.c>', '"unterminated <a@b.c>', "a..b@c.d", ".a@b.c", "a@-b.c", "a@b..c", "a@b.c.",
    "a b@c.d", "Name <a@b.c> trailing", "Name <a@b.c>, Other <d@e.f>", '"A" <a@b.c>, "B" <d@e.f>',
    "Имя Фамилия <a@b.az>", "Elvin\xa0Məmmədov <e@m.az>", "x\udcff\udcfey <a@b.c>", "group: a@b.c, d@e.f;",
    "a@[127.0.0.1]", "Name <a@b.c", "Name a@b.c>", "@b.c", "a@", "Name <<a@b.c>>", "a@b.c <d@e.f>",
    "  spaced  <a@b.c>  ", "Name\r\n <a@b.c>", "a+tag@sub.example.co.uk", "O'Neil <o'neil@x.ie>",
]


def address_values() -> list[list[str]]:
    values: list[list[str]] = [[v] for v in CRAFTED_ADDRESSES]
    values += [[a, b] for a, b in zip(CRAFTED_ADDRESSES, CRAFTED_ADDRESSES[1:])]
    for raw in RAWS:
        try:
            message = message_from_bytes(raw)
        except Exception:  # the stdlib's own parser failing is the hostile corpus's business
            continue
        for header in ("From", "Sender", "To", "Cc", "Reply-To"):
            found = raw_headers(message, header)
            if found:
                values.append([v.replace("\r\n ", " ").replace("\n ", " ") for v in found])
    return values


def test_addresses_equal_getaddresses_on_every_corpus_header_and_crafted_case() -> None:
    cases = address_values()
    assert len(cases) > 400
    for values in cases:
        assert outcome(addresses, values) == outcome(getaddresses, values), values


def outcome(parse: Callable[[list[str]], list[tuple[str, str]]], values: list[str]) -> object:
    """What ``parse`` returns, or the type of what it raises (hostile comments nest past the recursion limit)."""
    try:
        return parse(values)
    except RecursionError as exc:
        return type(exc)


def test_the_address_fast_path_is_taken_for_the_common_forms(monkeypatch: pytest.MonkeyPatch) -> None:
    import ingest.mail.flags as flags

    monkeypatch.setattr(flags, "getaddresses", lambda values: pytest.fail(f"slow path for {values}"))
    assert addresses(["Elvin Məmmədov <elvin@mail.az>", "a@b.c, Desk <d@q.az>"]) == [
        ("Elvin Məmmədov", "elvin@mail.az"), ("", "a@b.c"), ("Desk", "d@q.az")]
    assert addresses(['"Support, Desk" <s@q.az>']) == [("Support, Desk", "s@q.az")]


def texts() -> list[str]:
    out = []
    limits = MailLimits()
    for raw in RAWS:
        try:
            out.append(parse_mail(raw, connector="t", channel="email", blobs=None, limits=limits).full_text)
        except MailRejected:
            continue
    lines = [line for text in out for line in text.split("\n")]
    rng = random.Random(7)
    out += ["\n".join(rng.choice(lines) for _ in range(rng.randint(1, 40))) for _ in range(300)]
    out += ["", "\n", "\n\n", "From: a\nSent: b\n", "\nFrom: a\nTo: b", "> On Mon, X wrote:\n> hi",
            "text\n-----Original Message-----\nold", "x\n\n" + "-" * 40]
    # the same without colons and double dashes: the header pattern must find nothing in them
    # (the line-anchored search skips such texts), whatever headers they otherwise resemble
    out += [t.replace(":", " ").replace("--", "- ") for t in out if ":" in t or "--" in t]
    out += ["On Mon, 1 Jan 2024 at 10 00, Elvin <e@mail.az> wrote\n> hi", "From x\nSent y\nTo z\nSubject w",
            "Kimden x\nKime y\nKonu z", "От x\nОтправлено y\nКому z", "Kimdən x\nKimə y\nMövzu z",
            "— Original Message —", "- - Original Message - -", "Begin forwarded message", "12.03.2024, Ali yazdı",
            "Пн, 12 мар. 2024 г. в 10 00, Иван <i@mail.ru>\n> пишет"]
    return out


def test_line_anchored_findall_equals_findall_on_every_corpus_text() -> None:
    anchored = _ReplyMessage(text="x", languages=list(_LANGUAGES))._header_regex  # the production patterns
    assert isinstance(anchored, _LineAnchored)
    cases = texts()
    assert len(cases) > 600
    matched = 0
    for text in cases:
        prepared = _prepare(text)
        for candidate in (prepared, text):
            expected = anchored.pattern.findall(candidate)
            assert anchored.findall(candidate) == expected, candidate[:200]
            matched += bool(expected)
    assert matched > 50, "the comparison covered texts with reply headers"


def test_line_anchored_search_equals_search_on_every_corpus_text() -> None:
    anchored = _ReplyMessage(text="x", languages=list(_LANGUAGES))._signature_regex
    assert isinstance(anchored, _LineAnchored)
    found = 0
    extra = ["Thanks\nBest regards", "hi \nSent from my iPhone", "a\t\nRegards,", "x\n\n" + "_" * 40, "-- \nJohn",
             "text\n--\nsig", "Hörmətlə", "ok\nС уважением,\nИван", "   \nKind regards", "tail "]
    for text in texts() + extra:
        prepared = _prepare(text)
        for candidate in (prepared, text, "\n".join(line.strip() for line in prepared.split("\n"))):
            fast, slow = anchored.search(candidate), anchored.pattern.search(candidate)
            assert (fast and (fast.span(), fast.group())) == (slow and (slow.span(), slow.group())), candidate[:200]
            found += slow is not None
    assert found > 50, "the comparison covered texts with signatures"


def looked_up(part: Message) -> tuple[object, ...]:
    return (part.get_content_type(), part.get_content_maintype(), part.get_params(), part.get_content_charset(),
            part.get_params(header="Content-Disposition", unquote=False), part.get_filename(), part.get_boundary(),
            raw_headers(part, "Content-Type"))


def content_types(message: Message) -> list[tuple[object, ...]]:
    return [looked_up(part) for part in message.walk()]


MUTATIONS: list[Callable[[list[Message]], None]] = [  # the content type is compared after each
    lambda parts: parts[0].set_param("boundary", "changed"),
    lambda parts: parts[-1].set_default_type("message/rfc822"),
    lambda parts: parts[-1].__delitem__("Content-Type"),
    lambda parts: parts[-1].add_header("Content-Type", "image/png", name="x.png"),
    lambda parts: parts[-1].replace_header("Content-Type", "multipart/mixed; boundary=b"),
    lambda parts: parts[-1].set_boundary("again"),
    lambda parts: parts[-1].__delitem__("Content-Type"),
    lambda parts: parts[-1].__setitem__("Content-Type", "text/html"),
    lambda parts: parts[-1].__delitem__("Content-Type"),
    lambda parts: parts[-1].set_raw("Content-Type", "audio/ogg"),
    lambda parts: parts[-1].set_type("application/x-changed"),
]


def header_values(message: Message) -> list[list[tuple[str, list[str]]]]:
    """Per part, every header name (and a few absent ones) with its raw values as ``raw_headers`` sees them."""
    out = []
    for part in message.walk():
        present = sorted({k.lower() for k in part.keys()})
        names = present[:: max(1, len(present) // 40)] + ["x-absent", "From", "CONTENT-TYPE"]  # bombs have thousands
        out.append([(n, raw_headers(part, n)) for n in names])
    return out


def test_cached_content_types_and_raw_headers_equal_the_stdlib_ones_also_after_each_change() -> None:
    compared = 0
    for raw in RAWS:
        try:
            plain, cached = message_from_bytes(raw), parse_bytes(raw)
        except Exception:
            continue
        assert content_types(cached) == content_types(plain)
        assert header_values(cached) == header_values(plain)
        plain_parts, cached_parts = list(plain.walk()), list(cached.walk())
        for mutate in MUTATIONS:
            for parts in (plain_parts, cached_parts):
                mutate(parts)
            for i in (0, -1):  # the parts the mutations touch
                assert looked_up(cached_parts[i]) == looked_up(plain_parts[i])
        assert content_types(cached) == content_types(plain) and header_values(cached) == header_values(plain)
        compared += 1
    assert compared > 400


CRAFTED_PARTS = [
    b"Content-Type: text/plain; NAME=a.txt\n\nx", b"Content-Disposition: attachment; FileName=\"b c.pdf\"\n\nx",
    b"Content-Disposition: attachment; filename*0*=utf-8''%D0%B0; filename*1=.txt\n\nx",
    b"Content-Disposition: inline\nContent-Disposition: attachment; filename=second.txt\n\nx",
    b"Content-Type: application/pdf;\n name=\"\xd0\xb0\xd0\xb1.pdf\"\n\nx", b"Content-Type: image/png; x-name\n\nx",
    b"Content-Disposition: attachment; filename=\n\nx", b"Content-Type: text/plain; charset=\xff\xfe\n\nx",
    b"Content-Type: application/octet-stream; name*=iso-8859-9''%FDs.txt\n\nx", b"Subject: name\n\nx",
]


def test_attachment_names_are_the_same_without_the_may_name_shortcut(monkeypatch: pytest.MonkeyPatch) -> None:
    parts = [parse_bytes(raw) for raw in CRAFTED_PARTS]
    for raw in RAWS:
        try:
            parts += [part for part in parse_bytes(raw).walk()]
        except Exception:
            continue
    fast = [attachment_filename(part) for part in parts]
    skipped = [p for p in parts if not flags._may_name(p, "content-type") and not flags._may_name(p, "content-disposition")]
    assert sum(1 for name in fast if name) > 40 and len(skipped) > 500
    monkeypatch.setattr(flags, "_may_name", lambda part, header: True)
    assert [attachment_filename(part) for part in parts] == fast


def test_delimiter_count_equals_the_regex_count() -> None:
    """``bounds._delimiters`` (find-based) counts what the compiled alternation counts."""
    from ingest.mail.bounds import _BOUNDARY_PARAM, _delimiters, _delimiters_by_regex

    cases = [(raw, sorted({q or b for q, b in _BOUNDARY_PARAM.findall(raw)})) for raw in RAWS]
    lines = [b"--b", b"--b--", b"--b \t", b"--b\r", b"--b--\r", b"--b -- ", b"--bx", b"--b---", b"x--b", b" --b",
             b"--b--x", b"--b\r\r", b"--bb", b"--bb--", b"----b", b"--", b"--b\t--"]
    rng = random.Random(5)
    for _ in range(300):
        data = b"\n".join(rng.choice(lines) for _ in range(rng.randint(0, 12)))
        cases.append((data + rng.choice([b"", b"\n", b"\r\n"]), rng.choice([[b"b"], [b"b", b"bb"], [b"b--"], [b"b", b"b--"]])))
    for data, boundaries in cases:
        if boundaries:
            assert _delimiters(data, boundaries, 10**9) == _delimiters_by_regex(data, boundaries), (data[:200], boundaries)
    assert _delimiters(b"\n".join([b"--b"] * 1000), [b"b"], 402) == 403  # stops counting past the limit


def test_shared_reply_patterns_follow_the_languages_asked_for() -> None:
    """An English-only message built first must not give clean_text English-only patterns."""
    english = _ReplyMessage(text="x", languages=["en"])
    full = _ReplyMessage(text="x", languages=list(_LANGUAGES))
    assert english._header_regex is not full._header_regex
    assert "yazdı" in full._header_regex.pattern.pattern and "yazdı" not in english._header_regex.pattern.pattern


def test_the_disclaimer_pattern_never_matches_and_is_not_run() -> None:
    from ingest.mail.replies import _NoMatch

    disclaimers = _ReplyMessage(text="x", languages=list(_LANGUAGES))._disclaimers_regex
    assert isinstance(disclaimers, _NoMatch)
    for text in texts() + ["CAUTION: this email is external", "Disclaimer: mail", "x.\nWarning: mail"]:
        assert disclaimers.pattern.findall(_prepare(text)) == [] and disclaimers.pattern.findall(text) == []


def test_has_visible_text_is_whether_normalise_text_leaves_anything() -> None:
    from ingest.mail.text import has_visible_text, normalise_text

    alphabet = [" ", "\t", "\n", "\r", "\x00", "\x0b", "\x0c", "\x1c", "\x1f", "\x7f", "\x85", "\xa0", "\u2028",
                "\u3000", "\ufeff", "\ufffe", "\uffff", "\u200b", "\ufffd", "a", "ş", "-", "\udcff"]
    rng = random.Random(11)
    cases = texts() + ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6))) for _ in range(5000)]
    cases += [c * 3 for c in alphabet]
    assert sum(1 for text in cases if not normalise_text(text)) > 500
    for text in cases:
        assert has_visible_text(text) == bool(normalise_text(text)), repr(text)
