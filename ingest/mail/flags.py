"""Facts from the headers: sender, recipients, ids, date, attachment names and dispatcher flags.

Every value is decoded (RFC 2047, raw 8-bit) and flattened to one line, so CR/LF/NUL from a
hostile header cannot reach a reply or a log line. Flag sources: Auto-Submitted (RFC 3834),
Precedence, List-Id / List-Unsubscribe (RFC 2919 / 2369), X-Auto-Response-Suppress (Microsoft),
X-Autoreply / X-Autorespond, auto-reply subject markers in en/ru/tr/az, and delivery status
reports (RFC 3464, RFC 6522) with the id of the message that bounced.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email.message import Message
from email.parser import HeaderParser
from email.utils import collapse_rfc2231_value, getaddresses, parsedate_to_datetime

from frontdesk.messages import Flags, Party
from ingest.mail.message import CachedMessage
from ingest.mail.text import decode_bytes, decode_header_value, single_line, unfold

NAME_MAX = 256
FILENAME_MAX = 255
ADDRESS_MAX = 320
MAX_RECIPIENTS = 100
MSGID_MAX = 998
MAX_REFERENCES = 100
_MSGID = re.compile(r"<([^<>\s]{1,990})>")
_XTEXT_HEX = re.compile(r"\+([0-9A-Fa-f]{2})")
# Only at the start of the subject and followed by ':' or ']' (or nothing): a customer writing
# "Why did I only get an auto-reply?" must not be taken for an automatic reply.
_AUTO_REPLY_SUBJECT = re.compile(
    r"^\s*\[?\s*(?:auto|automatic reply|auto[- ]?reply|autoresponse"
    r"|out of (?:the )?office(?: auto[- ]?reply)?|автоответ|автоматический ответ"
    r"|otomatik (?:yanıt|cevap)|avtomatik (?:cavab|cavabı))\s*(?::|\]|$)",
    re.IGNORECASE,
)
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_ADDR_SPEC = _ATEXT + r"+(?:\." + _ATEXT + r"+)*@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
_PHRASE_WORD = r"[^\s\"(),.:;<>@\[\]\\]+"
_SIMPLE_PARTY = re.compile(
    r"[ \t]*(?:(?:\"([^\"\\\r\n]*)\"|((?:" + _PHRASE_WORD + r"[ \t]+)*" + _PHRASE_WORD + r")?)[ \t]*<(" + _ADDR_SPEC
    + r")>|(" + _ADDR_SPEC + r"))[ \t]*"
)
_NULL_PATH = re.compile(r"\s*<\s*>\s*")
_BULK_PRECEDENCE = {"bulk", "list", "junk"}
_SUPPRESS_TOKENS = {"all", "autoreply", "oof"}
_DAEMONS = {"mailer-daemon", "postmaster"}
_ORIGINAL_PARTS = {"message/rfc822", "message/global", "text/rfc822-headers", "message/global-headers"}
_STATUS_PARTS = {"message/delivery-status", "message/global-delivery-status"}


def raw_headers(message: Message, name: str) -> list[str]:
    """All values of a header as stored (raw 8-bit bytes as surrogate escapes).

    ``Message.get`` would turn a value with 8-bit bytes into a Header object whose str() has
    already replaced them with U+FFFD; ``raw_items`` keeps them for our charset guessing.
    """
    if isinstance(message, CachedMessage):
        return message.raw_values(name)
    wanted = name.lower()
    return [str(value) for key, value in message.raw_items() if key.lower() == wanted]


def _raw_filename(part: Message) -> str:
    """The filename as sent (RFC 2231 parameters decoded with our charset fallback), or ''."""
    for param, header in (("filename", "content-disposition"), ("name", "content-type")):
        if not _may_name(part, header):
            continue
        value = _header_view(part, header).get_param(param, header=header)
        if isinstance(value, tuple):
            charset, _language, text = value
            try:
                return decode_bytes(text.encode("latin-1", "surrogateescape"), charset)
            except UnicodeEncodeError:
                return text
        if value:
            return str(collapse_rfc2231_value(value))
    return ""


def _may_name(part: Message, header: str) -> bool:
    """False when ``get_param`` cannot find a ``name`` / ``filename`` (or RFC 2231 ``filename*0*``)
    parameter in ``header``: it reads the first value, and every such parameter name contains "name".
    Most parts have none; parsing their parameters was ~8% of a parse."""
    values = raw_headers(part, header)
    return bool(values) and "name" in values[0].lower()


def _header_view(part: Message, header: str) -> Message:
    """``part`` itself, or a stand-in whose ``header`` has raw 8-bit bytes decoded by our rules
    (the stdlib would have replaced them with U+FFFD)."""
    values = raw_headers(part, header)
    if not values or values[0].isascii():
        return part
    view = Message()
    view[header] = decode_bytes(values[0].encode("utf-8", "surrogateescape"), None)
    return view


def attachment_filename(part: Message) -> str:
    """A safe display name: RFC 2047 decoded, one line, no directories, at most 255 characters."""
    raw = _raw_filename(part)
    if not raw:  # most parts: nothing to decode
        return ""
    name = single_line(decode_header_value(raw), 4 * FILENAME_MAX)
    name = re.split(r"[/\\]", name)[-1].strip(" .")
    if len(name) > FILENAME_MAX:
        stem, dot, ext = name.rpartition(".")
        keep_ext = dot and len(ext) <= 10
        name = stem[: FILENAME_MAX - len(ext) - 1] + "." + ext if keep_ext else name[:FILENAME_MAX]
    return name


def header_text(message: Message, name: str, limit: int = 2000) -> str:
    """A header's first value, decoded, on one line ('' if absent), at most ``limit`` characters."""
    values = raw_headers(message, name)
    return single_line(decode_header_value(values[0]), limit) if values else ""


def normalise_msgid(value: str | None) -> str | None:
    """``<id>`` from a Message-ID-like value: its first ``<...>`` token, or a bare token wrapped."""
    if not value:
        return None
    flat = single_line(value, 4 * MSGID_MAX)
    match = _MSGID.search(flat)
    if match is not None:
        return f"<{match.group(1)}>"
    token = flat.strip("<> ").split(" ", 1)[0].strip("<>")
    if not token or len(token) > MSGID_MAX - 2:
        return None
    return f"<{token}>"


def msgid_list(value: str) -> tuple[str, ...]:
    """All message ids in a References-like value, in order, without duplicates (capped)."""
    flat = single_line(value, 200 * MSGID_MAX)
    found = [f"<{token}>" for token in _MSGID.findall(flat)]
    if not found:
        found = [f"<{token}>" for token in flat.split() if "@" in token and len(token) < MSGID_MAX - 2]
    unique = list(dict.fromkeys(found))
    if len(unique) > MAX_REFERENCES:
        unique = unique[:1] + unique[-(MAX_REFERENCES - 1) :]  # the root and the newest matter
    return tuple(unique)


def addresses(values: list[str]) -> list[tuple[str, str]]:
    """``email.utils.getaddresses(values)``: the same (name, address) pairs (tested on the corpora),
    but the common forms — ``addr``, ``Name <addr>``, ``"Name" <addr>``, comma-separated — are
    read by one regex, at a fifth of the stdlib parser's cost; anything else goes to the stdlib."""
    found: list[tuple[str, str]] = []
    for value in values:
        for piece in [value] if '"' in value else value.split(","):
            match = _SIMPLE_PARTY.fullmatch(piece)
            if match is None:
                return getaddresses(values)
            quoted, words, address, bare = match.groups()
            found.append((quoted if quoted is not None else " ".join((words or "").split()), address or bare))
    return found


def _parties(message: Message, header: str) -> list[Party]:
    """The addresses of one address header: lower-cased address, decoded one-line display name."""
    values = [unfold(value) for value in raw_headers(message, header)]
    parties = []
    for name, address in addresses(values):
        address = single_line(decode_header_value(address), ADDRESS_MAX).replace(" ", "").lower()
        address = address if "@" in address.strip("@") else ""
        display = single_line(decode_header_value(name), NAME_MAX)
        if address or display:
            parties.append(Party(address=address or None, name=display or None))
    return parties


def mail_sender(message: Message) -> Party:
    """The author: the first From address (Sender if From is unusable). Reply-To is ignored."""
    senders = _parties(message, "From") or _parties(message, "Sender")
    return senders[0] if senders else Party()


def mail_recipients(message: Message) -> tuple[Party, ...]:
    """To and Cc addresses, de-duplicated, in order, at most MAX_RECIPIENTS."""
    seen: dict[str, Party] = {}
    for party in _parties(message, "To") + _parties(message, "Cc"):
        key = party.address or f"name:{party.name}"
        seen.setdefault(key, party)
    return tuple(seen.values())[:MAX_RECIPIENTS]


def mail_date(message: Message) -> datetime | None:
    """The Date header as an aware UTC datetime, or None if absent or invalid."""
    try:
        parsed = parsedate_to_datetime(header_text(message, "Date", 200))
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def mail_flags(message: Message, *, subject: str, sender: str | None) -> Flags:
    """The dispatcher flags of a parsed message (structure already checked against the limits)."""
    auto_submitted = header_text(message, "Auto-Submitted", 200).split(";", 1)[0].strip().lower()
    precedence = header_text(message, "Precedence", 200).lower()
    list_id = _list_id(header_text(message, "List-Id", 1000))
    auto_reply = (
        auto_submitted == "auto-replied"
        or precedence == "auto_reply"
        or any(message.get(name) is not None for name in ("X-Autoreply", "X-Autorespond", "X-Autoreply-From"))
        or header_text(message, "X-Autogenerated", 200).lower() == "reply"
        or _AUTO_REPLY_SUBJECT.search(subject) is not None
    )
    suppress = {
        token.strip().lower() for token in header_text(message, "X-Auto-Response-Suppress", 500).split(",")
    }
    bounce, bounced_id = _bounce(message, sender)
    return Flags(
        auto_submitted=auto_submitted not in ("", "no") or _null_return_path(message),
        auto_reply=auto_reply,
        bounce=bounce,
        bounced_message_id=bounced_id,
        bulk=precedence in _BULK_PRECEDENCE
        or list_id is not None
        or message.get("List-Unsubscribe") is not None,
        list_id=list_id,
        suppress_autoreply=bool(suppress & _SUPPRESS_TOKENS),
    )


def _null_return_path(message: Message) -> bool:
    """True if the delivering server recorded an empty envelope sender (``Return-Path: <>``): bounces,
    receipts and auto-replies are sent so, and an answer to one has nowhere to go (RFC 3834 §2)."""
    return _NULL_PATH.fullmatch(header_text(message, "Return-Path", 200)) is not None


def _list_id(value: str) -> str | None:
    if not value:
        return None
    match = re.search(r"<([^<>]{1,255})>", value)
    return match.group(1).strip() if match else value[:255]


def _bounce(message: Message, sender: str | None) -> tuple[bool, str | None]:
    """(is a delivery status report, Message-ID of the message that bounced if known)."""
    parts = list(message.walk())
    is_report = message.get_content_type() == "multipart/report" and (
        str(collapse_rfc2231_value(message.get_param("report-type") or "")).lower() == "delivery-status"
    )
    status = next((part for part in parts if part.get_content_type() in _STATUS_PARTS), None)
    local_part = (sender or "").split("@", 1)[0]
    from_daemon = local_part in _DAEMONS
    has_original = any(part.get_content_type() in _ORIGINAL_PARTS for part in parts)
    if not (is_report or (from_daemon and (status is not None or has_original))):
        return False, None
    return True, _original_id(parts) or _envelope_id(status)


def _original_id(parts: list[Message]) -> str | None:
    """The Message-ID of the returned original: a message/rfc822 or text/rfc822-headers part."""
    for part in parts:
        ctype = part.get_content_type()
        if ctype in ("message/rfc822", "message/global"):
            payload = part.get_payload()
            inner = payload[0] if isinstance(payload, list) and payload else None
            if isinstance(inner, Message) and header_text(inner, "Message-ID"):
                return normalise_msgid(header_text(inner, "Message-ID"))
        elif ctype in ("text/rfc822-headers", "message/global-headers"):
            data = part.get_payload(decode=True)
            if isinstance(data, bytes):
                headers = HeaderParser().parsestr(decode_bytes(data, part.get_content_charset()))
                found = normalise_msgid(headers.get("Message-ID"))
                if found:
                    return found
    return None


def _envelope_id(status: Message | None) -> str | None:
    """Original-Envelope-Id (RFC 3461 xtext) of the per-message block of a delivery-status part."""
    if status is None:
        return None
    blocks = status.get_payload()
    first = blocks[0] if isinstance(blocks, list) and blocks else None
    if not isinstance(first, Message) or first.get("Original-Envelope-Id") is None:
        return None
    value = _XTEXT_HEX.sub(lambda m: chr(int(m.group(1), 16)), header_text(first, "Original-Envelope-Id"))
    return normalise_msgid(value) if "@" in value else (value.strip() or None)
