"""The stdlib parser's result for well-formed mail, built without its line-by-line machinery.

``email.feedparser`` reads a mail one line at a time through generators, a pushback buffer and a
stack of end-of-part predicates it tries on every line: about a fifth of normalising a mail.
:func:`quick_parse` builds the same ``Message`` tree (headers, payloads, preambles,
epilogues) from slices of the text: one regex per header section, ``str.find`` for the delimiter
lines of each multipart. It does so only where it reproduces the feedparser exactly, and returns
``None`` for everything else, which the caller then parses the stdlib way:

* a carriage return that is not part of CRLF (the feedparser also ends lines there);
* anything the feedparser would record as a defect: a header section that does not end in an empty
  line, a continuation line first, an envelope ``From`` line or a header without a name; a
  multipart without boundary, with a transfer encoding other than 7bit/8bit/binary, without a
  first or a closing delimiter;
* adjacent delimiter lines (the feedparser swallows the second one, even a closing one);
* ``message/*`` parts (another parse inside the part) and ``multipart/digest`` (whose parts default
  to ``message/rfc822``); nesting deeper than :data:`MAX_DEPTH`.

Why the regions are exact: the feedparser ends a part at the first line that matches its own or
any enclosing boundary. A part's region here lies between two delimiter lines of its parent, and
the parent's region between two of the grandparent's, so no region holds an enclosing boundary's
line: searching a region for its own multipart's delimiters finds what the feedparser's predicate
stack would stop at. ``tests/unit/ingest/test_quickparse.py`` compares whole trees with the
feedparser's on both mail corpora and on generated structures.
"""

from __future__ import annotations

import re
from email._policybase import compat32
from email.message import Message
from typing import TypeVar

__all__ = ["MAX_DEPTH", "quick_parse"]

MAX_DEPTH = 20
# one header field: a name (printable ASCII but ":"; the feedparser's headerRE), its first line and
# its continuation lines; the value as compat32's header_source_parse keeps it (leading blanks off)
_FIELD = re.compile(r"([!-9;-~]+):[ \t]*([^\n]*\n(?:[ \t][^\n]*\n)*)")
_FIELDS = re.compile(r"(?:[!-9;-~]+:[^\n]*\n(?:[ \t][^\n]*\n)*)*")
_PLAIN_ENCODINGS = ("7bit", "8bit", "binary")
M = TypeVar("M", bound=Message)


class _Decline(Exception):
    """The feedparser would do something here that :func:`quick_parse` does not reproduce."""


def quick_parse(raw: bytes, factory: type[M]) -> M | None:
    """``email.message_from_bytes(raw, _class=factory)`` (compat32) for well-formed mail, else None
    (see the module docstring). Pure; never raises on any input."""
    text = raw.decode("ascii", "surrogateescape")
    if "\r" in text and text.count("\r") != text.count("\r\n"):
        return None
    try:
        return _part(factory, text, 0, len(text), 0)
    except Exception:  # _Decline, or a header the stdlib chokes on: its own parse says what happens
        return None


def _part(factory: type[M], text: str, start: int, end: int, depth: int) -> M:
    """The entity in ``text[start:end]``: its headers, then its body."""
    if depth > MAX_DEPTH:
        raise _Decline
    msg = factory(policy=compat32)
    body = _headers(msg, text, start, end)
    ctype = msg.get_content_type()
    maintype = ctype.partition("/")[0]
    if maintype == "message" or ctype == "multipart/digest":
        raise _Decline
    if maintype == "multipart":
        _multipart(factory, msg, text, body, end, depth)
    else:
        msg._payload = text[body:end]  # type: ignore[attr-defined]
    return msg


def _headers(msg: Message, text: str, start: int, end: int) -> int:
    """Read the header section at ``start`` into ``msg``; returns where the body starts."""
    fields = _FIELDS.match(text, start, end)
    stop = fields.end() if fields is not None else start
    if stop < end:  # what ends the section must be an empty line
        if text.startswith("\n", stop):
            body = stop + 1
        elif text.startswith("\r\n", stop):
            body = stop + 2
        else:
            raise _Decline
    else:
        body = end
    headers = msg._headers  # type: ignore[attr-defined]
    for name, value in _FIELD.findall(text, start, stop):
        headers.append((name, value.rstrip("\r\n")))
    return body


def _multipart(factory: type[M], msg: Message, text: str, start: int, end: int, depth: int) -> None:
    """Split ``text[start:end]`` at ``msg``'s delimiter lines: preamble, parts, epilogue."""
    boundary = msg.get_boundary()
    if not boundary or "\n" in boundary or "\r" in boundary:
        raise _Decline
    if str(msg.get("content-transfer-encoding", "8bit")).lower() not in _PLAIN_ENCODINGS:
        raise _Decline
    lines = _delimiter_lines(text, "--" + boundary, start, end)
    if not lines or lines[0][2]:
        raise _Decline  # no delimiter, or a closing one first
    first = lines[0][0]
    if first > start:
        msg.preamble = _strip_eol(text[start:first])
    parts: list[M] = []
    for (_, after, _), (following, _, closing) in zip(lines, lines[1:]):
        if following == after:
            raise _Decline
        parts.append(_child(factory, text, after, following, depth))
        if closing:
            break
    else:
        raise _Decline  # no closing delimiter
    msg._payload = parts  # type: ignore[attr-defined]
    msg.epilogue = text[lines[len(parts)][1] : end]


def _child(factory: type[M], text: str, start: int, end: int, depth: int) -> M:
    """A part, with the line end before the next delimiter taken off (it belongs to the delimiter)."""
    child = _part(factory, text, start, end, depth + 1)
    if child.get_content_maintype() == "multipart":
        child.epilogue = _strip_eol(child.epilogue) if child.epilogue else None
    else:
        child._payload = _strip_eol(child._payload)  # type: ignore[attr-defined]
    return child


def _delimiter_lines(text: str, sep: str, start: int, end: int) -> list[tuple[int, int, bool]]:
    """(line start, line end, closing?) of every delimiter line of ``sep`` in ``text[start:end]``,
    up to and including the first closing one."""
    found: list[tuple[int, int, bool]] = []
    at = start if text.startswith(sep, start, end) else _next_line_with(text, sep, start, end)
    while at >= 0:
        newline = text.find("\n", at, end)
        stop = end if newline < 0 else newline + 1
        kind = _delimiter_kind(text[at + len(sep) : stop])
        if kind is not None:
            found.append((at, stop, kind))
            if kind:
                break
        at = _next_line_with(text, sep, stop - 1, end)
    return found


def _next_line_with(text: str, sep: str, start: int, end: int) -> int:
    at = text.find("\n" + sep, start, end)
    return at + 1 if at >= 0 else -1


def _delimiter_kind(rest: str) -> bool | None:
    """What the feedparser's boundary regex makes of a line after the separator: True (closing,
    ``--``), False (between parts) or None (not a delimiter): only blanks and the line end may follow."""
    if rest.startswith("--") and _blank(rest[2:]):
        return True
    return False if _blank(rest) else None


def _blank(rest: str) -> bool:
    if rest.endswith("\n"):
        rest = rest[:-2] if rest.endswith("\r\n") else rest[:-1]
    return not rest.strip(" \t")


def _strip_eol(value: str | None) -> str:
    """``value`` less one final line end (CRLF or LF); None stays ''."""
    if not value:
        return ""
    if value.endswith("\r\n"):
        return value[:-2]
    return value[:-1] if value.endswith("\n") else value
