"""One raw RFC 5322 message → one :class:`InboundMessage`, or :class:`MailRejected` with the reason.

The MIME tree is the stdlib ``email`` parser's (``compat32``, the one mail-parser wraps; for
well-formed mail built faster by :mod:`ingest.mail.quickparse`, the same tree);
charsets, encoded-words, names and HTML are decoded by :mod:`ingest.mail.text` and
:mod:`ingest.mail.flags` (why: see the package docstring); limits and repairs of damaged structure
are :mod:`ingest.mail.bounds`.

Contract of :func:`parse_mail`:

* bounded: the size, header, part-count and depth limits are checked before the expensive
  work, so a hostile mail costs milliseconds, not seconds;
* pure until the end: blobs (the raw message, attachments within their limit) are written only
  once the whole message is normalised, so a rejected mail leaves nothing behind;
* deterministic: the same bytes give the same message (id, attachment names, texts); only
  ``received_at`` defaults to "now";
* total: anything the email package cannot make sense of raises :class:`MailRejected`, never a
  library exception; only a failing blob write raises (``BlobWriteFailed``, transient).
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from email.generator import BytesGenerator
from email.message import Message
from io import BytesIO
from typing import Any, Literal

from frontdesk.messages import Attachment, InboundMessage, ThreadHints
from ingest.blobs import REF_PREFIX, BlobStore, blob_ref
from ingest.mail import flags as headers
from ingest.mail.bounds import MailLimits, MailRejected, check_bounds, check_structure, over_limit, repair_header_section
from ingest.mail.message import parse_bytes
from ingest.mail.replies import clean_text
from ingest.mail.text import decode_bytes, has_visible_text, html_to_text, normalise_text

__all__ = ["MailLimits", "MailRejected", "normalise_mail", "over_limit", "parse_mail", "to_parse_json"]

SUBJECT_MAX = 998
HTML_FACTOR = 5  # HTML beyond 5x max_text_chars costs seconds in html2text and rarely adds text
BLANK_CHECK_CHARS = 4096  # a blank alternative is an encoded line end or two, not kilobytes
SYNTHETIC_DOMAIN = "frontdesk.invalid"
_BODY_TYPES = ("text/plain", "text/html")
_MESSAGE_TYPES = ("message/rfc822", "message/global")
_REPORT_PARTS = {"message/delivery-status", "message/global-delivery-status", "text/rfc822-headers",
                 "message/global-headers", "message/disposition-notification", "message/feedback-report"}
_EXTENSIONS = {"application/pdf": ".pdf", "image/jpeg": ".jpg", "image/png": ".png", "image/gif": ".gif",
               "text/plain": ".txt", "text/html": ".html", "text/calendar": ".ics", "message/rfc822": ".eml"}


def parse_mail(raw: bytes, *, connector: str, channel: Literal["email", "social"], blobs: BlobStore | None,
               limits: MailLimits, received_at: datetime | None = None) -> InboundMessage:
    """Normalise ``raw`` (contract: module docstring) and store its blobs in ``blobs`` (if given).

    ``external_id`` is the Message-ID, or ``<sha256(raw)@frontdesk.invalid>`` without one. The
    pipeline id is derived from it and the sha256 of ``raw`` (:func:`~frontdesk.messages.message_id`),
    so a re-import of the same bytes has the same id, and two different mails with one Message-ID (web
    forms and broken mailers reuse a fixed one) have two. ``received_at`` must be aware.
    """
    inbound, payloads = normalise_mail(raw, connector=connector, channel=channel, store=blobs is not None,
                                       limits=limits, received_at=received_at)
    if blobs is not None:
        blobs.put_many(payloads)
    return inbound


def normalise_mail(raw: bytes, *, connector: str, channel: Literal["email", "social"], store: bool,
                   limits: MailLimits, received_at: datetime | None = None) -> tuple[InboundMessage, list[bytes]]:
    """:func:`parse_mail` without writing anything (it runs in worker processes): the message and,
    if ``store``, the blobs its ``raw_ref`` / ``stored_at`` name — ``raw`` first, then attachments —
    which the caller must store durably before it publishes the message."""
    if received_at is not None and received_at.tzinfo is None:
        raise ValueError("received_at must be timezone-aware")
    check_bounds(raw, limits)
    try:
        message = parse_bytes(repair_header_section(raw, limits.max_header_bytes))
        check_structure(message, limits)
        digest = hashlib.sha256(raw).hexdigest()
        fields, payloads = _normalise(message, digest, limits, store=store)
        inbound = InboundMessage.create(
            connector=connector, channel=channel, platform="email" if channel == "email" else None,
            received_at=(received_at or datetime.now(UTC)).astimezone(UTC), content_digest=digest,
            raw_ref=REF_PREFIX + digest if store else None, **fields)
    except MailRejected:
        raise
    except RecursionError as exc:
        raise MailRejected("MIME structure is nested too deeply to parse") from exc
    except Exception as exc:  # the email package raises a wide, undocumented set on hostile input
        raise MailRejected(f"unparseable message: {type(exc).__name__}: {exc}"[:500]) from exc
    return inbound, [raw, *payloads] if store else []


def _normalise(
    message: Message, digest: str, limits: MailLimits, *, store: bool
) -> tuple[dict[str, Any], list[bytes]]:
    """The InboundMessage fields (but the connector's and the id's) and the attachment bytes to store
    (``digest``: the raw mail's sha256)."""
    bodies: list[Message] = []
    parts: list[Message] = []
    _visit(message, bodies, parts, in_body=True)
    full_text = normalise_text("\n\n".join(_body_text(part, limits) for part in bodies))
    full_text = full_text[: limits.max_text_chars]
    described = [_attachment(part, index, limits, store=store) for index, part in enumerate(parts, start=1)]
    subject = headers.header_text(message, "Subject", SUBJECT_MAX)
    sender = headers.mail_sender(message)
    fields = {
        "external_id": headers.normalise_msgid(headers.header_text(message, "Message-ID", 4000))
        or f"<{digest}@{SYNTHETIC_DOMAIN}>",
        "thread": ThreadHints(
            in_reply_to=headers.normalise_msgid(headers.header_text(message, "In-Reply-To", 4000)),
            references=headers.msgid_list(headers.header_text(message, "References", 200_000)),
        ),
        "sender": sender,
        "recipients": headers.mail_recipients(message),
        "subject": subject,
        "text": clean_text(full_text)[: limits.max_text_chars],
        "full_text": full_text,
        "attachments": tuple(attachment for attachment, _ in described),
        "sent_at": headers.mail_date(message),
        "flags": headers.mail_flags(message, subject=subject, sender=sender.address),
    }
    return fields, [data for attachment, data in described if attachment.stored_at is not None]


def _visit(part: Message, bodies: list[Message], attachments: list[Message], *, in_body: bool) -> None:
    """Sort the tree into body parts (reading order) and attachments (document order).

    Of a multipart/alternative only one branch is read (plain text preferred); of a
    multipart/report only the first, human-readable part. Report parts are neither.
    """
    ctype = part.get_content_type()
    if ctype in _REPORT_PARTS:
        return
    if _is_attachment(part, ctype):
        attachments.append(part)
    elif not part.is_multipart():
        if in_body and (ctype in _BODY_TYPES or part.get_content_maintype() == "multipart"):
            bodies.append(part)  # an unrecoverable multipart is still better read than dropped
    else:
        children = [child for child in part.get_payload() if isinstance(child, Message)]
        chosen = _choose_alternative(children) if ctype == "multipart/alternative" else None
        for index, child in enumerate(children):
            readable = (chosen is None or child is chosen) and (ctype != "multipart/report" or index == 0)
            _visit(child, bodies, attachments, in_body=in_body and readable)


def _is_attachment(part: Message, ctype: str) -> bool:
    if ctype in _MESSAGE_TYPES:
        return True
    if part.is_multipart() or part.get_content_maintype() == "multipart":
        return False
    if part.get_content_disposition() == "attachment" or headers.attachment_filename(part):
        return True
    return ctype not in _BODY_TYPES


def _choose_alternative(children: list[Message]) -> Message | None:
    """The first text/plain alternative with text, else the first HTML-bearing one, else the last."""
    for child in children:
        if child.get_content_type() == "text/plain" and _has_text(child):
            return child
    for child in children:
        if any(sub.get_content_type() == "text/html" for sub in child.walk()):
            return child
    return children[-1] if children else None


def _has_text(part: Message) -> bool:
    """Whether a text/plain part gives any text, judged on its decoded payload (base64 or
    quoted-printable whitespace is blank). Payloads over :data:`BLANK_CHECK_CHARS` are blank only
    if their raw form is: they are not decoded twice."""
    payload = part.get_payload()
    if not isinstance(payload, str) or not payload or payload.isspace():
        return False
    if len(payload) > BLANK_CHECK_CHARS:
        return True
    data = part.get_payload(decode=True)
    return isinstance(data, bytes) and has_visible_text(decode_bytes(data, part.get_content_charset()))


def _body_text(part: Message, limits: MailLimits) -> str:
    data = part.get_payload(decode=True)
    if not isinstance(data, bytes):
        return ""
    charset = part.get_content_charset()
    if part.get_content_type() == "text/html":
        return html_to_text(decode_bytes(data, charset), limits.max_text_chars * HTML_FACTOR)
    return decode_bytes(_utf8_prefix(data, limits.max_text_chars * 4), charset)  # 4: the most bytes a character takes


def _utf8_prefix(data: bytes, size: int) -> bytes:
    """``data[:size]``, less up to 3 bytes so that it does not end inside a UTF-8 character: a cut
    one would make valid UTF-8 invalid, and the label (maybe a wrong 8-bit one) would decide."""
    if len(data) <= size:
        return data
    end = size
    while end > size - 3 and 0x80 <= data[end] < 0xC0:  # data[end] continues a character
        end -= 1
    return data[:end]


def _attachment(part: Message, index: int, limits: MailLimits, *, store: bool) -> tuple[Attachment, bytes]:
    data = _payload_bytes(part)
    ctype, disposition = part.get_content_type(), part.get_content_disposition()
    attachment = Attachment(
        name=headers.attachment_filename(part) or f"attachment-{index}{_EXTENSIONS.get(ctype, '.bin')}",
        content_type=ctype,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        stored_at=blob_ref(data) if store and len(data) <= limits.max_attachment_bytes else None,
        inline=disposition == "inline" or (disposition is None and part.get("Content-ID") is not None),
    )
    return attachment, data


def _payload_bytes(part: Message) -> bytes:
    """The attachment's bytes: transfer-decoded content, or the embedded message re-serialised."""
    if part.is_multipart():
        buffer = BytesIO()
        inner = part.get_payload(0) if part.get_content_type() in _MESSAGE_TYPES else part
        BytesGenerator(buffer, mangle_from_=False, maxheaderlen=0).flatten(inner)
        return buffer.getvalue()
    data = part.get_payload(decode=True)
    return data if isinstance(data, bytes) else b""


def to_parse_json(msg: InboundMessage) -> dict[str, object]:
    """The operator view printed by ``frontdesk parse-mail --json``: one flat, JSON-safe object."""
    flags = msg.flags
    return {
        "message_id": msg.id,
        "external_id": msg.external_id,
        "connector": msg.connector,
        "channel": msg.channel,
        "subject": msg.subject,
        "sender": msg.sender.address,
        "sender_name": msg.sender.name,
        "recipients": [party.address for party in msg.recipients if party.address],
        "in_reply_to": msg.thread.in_reply_to,
        "references": list(msg.thread.references),
        "text": msg.text,
        "full_text": msg.full_text,
        "attachments": [
            {"name": a.name, "content_type": a.content_type, "size": a.size, "sha256": a.sha256,
             "inline": a.inline, "stored_at": a.stored_at}
            for a in msg.attachments
        ],
        "auto_submitted": flags.auto_submitted,
        "auto_reply": flags.auto_reply,
        "bounce": flags.bounce,
        "bounced_message_id": flags.bounced_message_id,
        "bulk": flags.bulk,
        "list_id": flags.list_id,
        "suppress_autoreply": flags.suppress_autoreply,
        "sent_at": msg.sent_at.isoformat() if msg.sent_at else None,
        "received_at": msg.received_at.isoformat(),
        "raw_ref": msg.raw_ref,
    }
