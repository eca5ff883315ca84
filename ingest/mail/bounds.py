"""What a mail may cost, checked before the expensive work: size, header section, MIME part count
and depth (:class:`MailLimits`; beyond a limit :class:`MailRejected`), plus the repairs that let
the stdlib parser see a damaged mail's structure (junk lines in the header section, a multipart
whose boundary parameter is missing or wrong). A hostile mail costs milliseconds here, not seconds
in the parser.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from email.message import Message

from frontdesk.errors import RecordError
from ingest.mail.message import parse_bytes

KiB = 1024
MiB = 1024 * KiB
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_HEADER_LINE = re.compile(rb"From |[!-9;-~]*:|[ \t]")  # what the stdlib feedparser takes for a header line
_KNOWN_HEADER = re.compile(
    rb"(?:from|to|cc|subject|date|message-id|mime-version|content-[a-z-]+|reply-to|in-reply-to|references"
    rb"|sender|return-path|received|x-[!-9;-~]+)[ \t]*:",
    re.IGNORECASE,
)
_BOUNDARY_PARAM = re.compile(rb'boundary\s*=\s*(?:"([^"\r\n]{1,200})"|([^\s;"]{1,200}))', re.IGNORECASE)
_DELIMITER = re.compile(rb"^--([!-~]{1,70}?)(?:--)?[ \t\r]*$", re.MULTILINE)
_MANY_CANDIDATES = 20_000


@dataclass(frozen=True)
class MailLimits:
    """What one mail may cost. Beyond a limit the mail is rejected; an attachment over
    ``max_attachment_bytes`` is only described (metadata, no stored content)."""

    max_message_bytes: int = 25 * MiB
    max_attachment_bytes: int = 15 * MiB
    max_parts: int = 200
    max_text_chars: int = 100_000
    max_header_bytes: int = 64 * KiB
    max_depth: int = 10


class MailRejected(RecordError):
    """The mail cannot become an InboundMessage; ``reason`` says why, for the dead-letter record."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def check_bounds(raw: bytes, limits: MailLimits) -> None:
    """The checks that need no parse. The part count is bounded from the delimiter lines because
    the stdlib parser needs seconds for the ~700,000 parts that fit in 25 MiB."""
    if len(raw) > limits.max_message_bytes:
        raise MailRejected(f"message is {over_limit(len(raw), limits.max_message_bytes)} limit")
    if not raw.strip(b"\x00\r\n\t "):
        raise MailRejected("message is empty")
    if _header_section_size(raw, limits.max_header_bytes) > limits.max_header_bytes:
        raise MailRejected(f"header section is over the {_human(limits.max_header_bytes)} limit")
    # most mail is single-part: a case-folded substring test spares the case-insensitive scan
    found = _BOUNDARY_PARAM.findall(raw) if b"boundary" in raw.lower() else []
    boundaries = {quoted or bare for quoted, bare in found}
    # every part is announced by a delimiter line, every multipart also has a closing one
    most = 2 * limits.max_parts + 2
    if len(boundaries) > limits.max_parts + 1 or _delimiters(raw, boundaries, most) > most:
        raise MailRejected(f"message has more than {limits.max_parts} MIME parts")


def _delimiters(data: bytes, boundaries: Iterable[bytes], most: int) -> int:
    """How many lines of ``data`` are delimiters of one of ``boundaries`` (``--b`` or ``--b--``,
    then blanks), counted up to ``most + 1`` (hostile mail holds ~700,000). Found with ``find``:
    a regex would be compiled for every mail's own boundaries (~50 µs each); only when there are
    very many candidate lines is the regex cheaper, and used."""
    boundaries = list(boundaries)
    if not boundaries:
        return 0
    if len(boundaries) * data.count(b"\n--") > _MANY_CANDIDATES:
        return _delimiters_by_regex(data, boundaries)
    starts: set[int] = set()
    for boundary in boundaries:
        sep = b"--" + boundary
        at = 0 if data.startswith(sep) else _line_with(data, sep, 0)
        while at >= 0 and len(starts) <= most:
            end = data.find(b"\n", at)
            if _is_delimiter_rest(data[at + len(sep) : end if end >= 0 else len(data)]):
                starts.add(at)
            at = _line_with(data, sep, at + 1)
    return len(starts)


def _line_with(data: bytes, sep: bytes, start: int) -> int:
    at = data.find(b"\n" + sep, start - 1 if start else 0)
    return at + 1 if at >= 0 else -1


def _is_delimiter_rest(rest: bytes) -> bool:
    """``(?:--)?[ \\t]*\\r?`` and nothing else: what may follow the boundary on a delimiter line."""
    rest = rest[:-1] if rest.endswith(b"\r") else rest
    return not rest.strip(b" \t") or (rest.startswith(b"--") and not rest[2:].strip(b" \t"))


def _delimiters_by_regex(data: bytes, boundaries: list[bytes]) -> int:
    alternatives = b"|".join(re.escape(boundary) for boundary in boundaries)
    pattern = re.compile(rb"^--(?:" + alternatives + rb")(?:--)?[ \t]*\r?$", re.MULTILINE)
    return sum(1 for _ in pattern.finditer(data))


def over_limit(actual: int, limit: int) -> str:
    """'31.2 MiB, over the 25 MiB' — in bytes when rounding would hide the difference."""
    shown, bound = _human(actual), _human(limit)
    return f"{shown}, over the {bound}" if shown != bound else f"{actual} bytes, over the {limit}-byte"


def _human(count: int) -> str:
    for unit, size in (("MiB", MiB), ("KiB", KiB)):
        if count >= size:
            return f"{count / size:.1f}".removesuffix(".0") + f" {unit}"
    return f"{count} bytes"


def _header_section_size(raw: bytes, limit: int) -> int:
    """Bytes of the top-level header section as the parser sees it (``limit + 1`` if longer)."""
    head = raw[: limit + 1]
    lines = head.splitlines(keepends=True)
    if len(raw) > len(head) and lines:  # the line the limit cuts may have lost its colon: judge it whole
        lines[-1] = raw[len(head) - len(lines[-1]) : 2 * limit + 2].splitlines(keepends=True)[0]
    size = 0
    for line in lines:
        if not _HEADER_LINE.match(line):
            return size
        size += len(line)
    return size if len(raw) <= limit else limit + 1


def repair_header_section(raw: bytes, limit: int) -> bytes:
    """Drop up to two junk lines (no colon) from the header section when known headers follow:
    the stdlib parser would end the headers there and read Content-Type & co. as body text."""
    end = _HEADER_END.search(raw, 0, limit + 4)
    if end is None:
        return raw
    lines = raw[: end.start()].split(b"\n")
    junk = [index for index, line in enumerate(lines) if not _HEADER_LINE.match(line)]
    if not junk or len(junk) > 2 or not any(_KNOWN_HEADER.match(line) for line in lines[junk[-1] + 1 :]):
        return raw
    kept = [line for index, line in enumerate(lines) if index not in junk]
    return b"\n".join(kept) + raw[end.start() :]


def check_structure(message: Message, limits: MailLimits) -> None:
    """Reject more than ``max_parts`` entities below the root, or nesting deeper than ``max_depth``.
    Walks iteratively (a hostile tree is deep) and repairs broken multiparts on the way."""
    count, stack = 0, [(message, 0)]
    while stack:
        part, depth = stack.pop()
        if part.get_content_maintype() == "multipart" and not part.is_multipart():
            _recover_multipart(part, limits)
        if not part.is_multipart():
            continue
        if depth >= limits.max_depth:
            raise MailRejected(f"MIME nesting is deeper than {limits.max_depth} levels")
        for child in part.get_payload():
            count += 1
            if count > limits.max_parts:
                raise MailRejected(f"message has more than {limits.max_parts} MIME parts")
            stack.append((child, depth + 1))


def _recover_multipart(part: Message, limits: MailLimits) -> None:
    """A multipart whose boundary parameter is missing or wrong: split at the delimiter lines found."""
    data = part.get_payload(decode=True)  # the raw body: a multipart has no transfer encoding
    match = _DELIMITER.search(data) if isinstance(data, bytes) else None
    if match is None:
        return
    if _delimiters(data, [match.group(1)], 2 * limits.max_parts + 2) > 2 * limits.max_parts + 2:
        raise MailRejected(f"message has more than {limits.max_parts} MIME parts")
    boundary = match.group(1).decode("ascii")
    header = f'Content-Type: {part.get_content_type()}; boundary="{boundary}"\n\n'.encode()
    rebuilt = parse_bytes(header + data)
    if rebuilt.is_multipart():
        part.set_payload(rebuilt.get_payload())
        part.set_param("boundary", boundary)
