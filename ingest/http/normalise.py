"""Platform payloads -> :class:`InboundMessage`: the shared cleaning and typed access, and the Telegram Update.

Contract of every normaliser here and in :mod:`ingest.http.meta` and :mod:`ingest.http.api`:

* pure: no I/O, nothing downloaded; the same payload and ``received_at`` give the same message, and
  the id depends only on (connector, platform message id), so a replayed webhook is a no-op downstream;
* events that are not customer messages (other update types, service messages, receipts, automatic
  forwards of our channel's posts, anonymous group admins) give ``None`` / nothing, whatever fields
  they lack; a customer message with the wrong shape raises :class:`PayloadError` naming the field;
* :func:`telegram_normalised` and :func:`ingest.http.meta.meta_normalised` give a :class:`Normalised`:
  each part of a body (an update, a Meta change, event or WhatsApp message) is normalised on its
  own and a malformed one becomes a :class:`Rejected` (for the dead-letter topic) instead of failing
  the others; only a body that is not a JSON object raises;
* text is untrusted data: NUL and control characters (except newline and tab) and lone surrogates
  are removed and it is cut at ``max_text`` characters; names and ids become single lines;
* what a customer shares without text (a location, a contact card, a button they tapped) becomes a
  short descriptive text such as ``[location 40.40926,49.86709] Nizami St 5`` or
  ``[contact Elvin +994501234567]``.

An edit gets its own external id (``<original>#edit:<version>``) and ``flags.edited``, with the
original in ``thread.references``, so it is not mistaken for a replay of the original.

Media are not downloaded here. Every platform attachment keeps the platform's file reference in
``Attachment.ref`` (Telegram ``file_id``, WhatsApp media id, Messenger/Instagram URL) so the support
team can fetch it later, with ``stored_at=None``. ``Attachment.sha256`` is required, but Telegram and
Messenger send no content hash: their attachments carry ``reference_digest(platform, file id)`` with
``sha256_of="reference"`` — a stable identifier of the file, not a hash of its bytes. (WhatsApp's own
media hash is a content hash and is used as is, ``sha256_of="content"``.)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from frontdesk.codec import encode
from frontdesk.errors import RecordTooLarge
from frontdesk.messages import Attachment, Flags, InboundMessage, Party, ThreadHints

MAX_TEXT = 20_000
MAX_NAME = 200
MAX_ID = 300
RECORD_OVERHEAD = 1024  # a message record's key and headers, generously
Loc = tuple[str | int, ...]
T = TypeVar("T")

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufeff\ud800-\udfff]")
_LINE_BREAKS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ufeff\ud800-\udfff]+")
_MIME = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*$")
_TG_USERNAME = re.compile(r"^[A-Za-z0-9_]{4,32}$")


class PayloadError(ValueError):
    """A payload part we understand has the wrong shape; ``loc`` names the field (under the body)."""

    def __init__(self, loc: Loc, msg: str) -> None:
        super().__init__(f"{'.'.join(map(str, loc)) or 'body'}: {msg}")
        self.loc, self.msg = loc, msg

    def detail(self) -> list[dict[str, Any]]:
        return [{"type": "payload", "loc": ["body", *self.loc], "msg": self.msg}]


def clean_text(text: str, limit: int = MAX_TEXT) -> str:
    """Unix newlines, no NUL/control characters or lone surrogates, outer whitespace trimmed, cut at ``limit``."""
    text = _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    return text.strip()[:limit]


def single_line(text: str | None, limit: int = MAX_NAME) -> str:
    """``text`` as one line (no CR/LF/controls: safe in any header), spaces collapsed, cut at ``limit``."""
    return " ".join(_LINE_BREAKS.sub(" ", text or "").split())[:limit]


def as_handle(value: str | None) -> str | None:
    """A handle without its leading '@', as one line; None if empty."""
    return single_line(value, MAX_NAME).lstrip("@") or None


def reference_digest(platform: str, reference: str) -> str:
    """Stand-in ``Attachment.sha256`` for media known only by a platform file id (not a content hash)."""
    return hashlib.sha256(f"{platform}-file\x00{reference}".encode()).hexdigest()


def platform_ref(value: str | None, limit: int = 4096) -> str | None:
    """A platform file id or URL kept verbatim for fetching later; None if absent, not one line, or too long
    (cutting it would make it useless)."""
    if not value or len(value) > limit or _LINE_BREAKS.search(value) or not value.strip():
        return None
    return value


def content_digest(value: str | None) -> str | None:
    """A platform-sent SHA-256 (hex or base64, as WhatsApp sends it) as lower-case hex, else None."""
    if not value:
        return None
    if re.fullmatch(r"[0-9a-fA-F]{64}", value):
        return value.lower()
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw.hex() if len(raw) == 32 else None


def media_type(value: str | None, default: str) -> str:
    """A bare, lower-case ``type/subtype`` (parameters dropped), or ``default`` if it is not one."""
    base = (value or "").split(";", 1)[0].strip().lower()
    return base if _MIME.match(base) else default


def unix_time(value: Any, loc: Loc, *, millis: bool = False) -> datetime | None:
    """A Unix timestamp (int, float or numeric string; ms if ``millis``) as an aware UTC datetime."""
    if value is None:
        return None
    try:
        seconds = float(value) / (1000 if millis else 1)
        return datetime.fromtimestamp(seconds, UTC)
    except (TypeError, ValueError, OverflowError, OSError) as exc:
        raise PayloadError(loc, "expected a Unix timestamp") from exc


@dataclass(frozen=True, slots=True)
class Node:
    """A value inside an untrusted JSON document and where it sits, for typed access with clear errors."""

    value: Any
    loc: Loc = ()

    def has(self, key: str) -> bool:
        return isinstance(self.value, dict) and self.value.get(key) is not None

    def child(self, key: str) -> Node:
        return Node(self.value.get(key) if isinstance(self.value, dict) else None, (*self.loc, key))

    def obj(self, key: str) -> Node | None:
        """The object under ``key``; None if absent or null."""
        node = self.child(key)
        if node.value is None:
            return None
        if not isinstance(node.value, dict):
            raise PayloadError(node.loc, "expected an object")
        return node

    def need(self, key: str) -> Node:
        """The object under ``key``, which must be there."""
        node = self.obj(key)
        if node is None:
            raise PayloadError((*self.loc, key), "field required")
        return node

    def items(self, key: str) -> list[Node]:
        """The array of objects under ``key``; [] if absent or null."""
        node = self.child(key)
        if node.value is None:
            return []
        if not isinstance(node.value, list):
            raise PayloadError(node.loc, "expected an array")
        for i, item in enumerate(node.value):
            if not isinstance(item, dict):
                raise PayloadError((*node.loc, i), "expected an object")
        return [Node(item, (*node.loc, i)) for i, item in enumerate(node.value)]

    def string(self, key: str) -> str | None:
        node = self.child(key)
        if node.value is not None and not isinstance(node.value, str):
            raise PayloadError(node.loc, "expected a string")
        return node.value

    def ident(self, key: str) -> str | None:
        """An id sent as a string or an integer, as a clean single line; None if absent."""
        node = self.child(key)
        if node.value is None:
            return None
        if isinstance(node.value, bool) or not isinstance(node.value, (str, int)):
            raise PayloadError(node.loc, "expected an id (string or integer)")
        ident = single_line(str(node.value), MAX_ID)
        if not ident:
            raise PayloadError(node.loc, "empty id")
        return ident

    def need_id(self, key: str) -> str:
        ident = self.ident(key)
        if ident is None:
            raise PayloadError((*self.loc, key), "field required")
        return ident

    def flag(self, key: str) -> bool:
        return isinstance(self.value, dict) and self.value.get(key) is True

    def size(self, key: str) -> int:
        value = self.value.get(key) if isinstance(self.value, dict) else None
        return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def root(payload: Any) -> Node:
    if not isinstance(payload, dict):
        raise PayloadError((), "expected a JSON object")
    return Node(payload)


def edit_id(original: str, version: str | None, text: str) -> str:
    return f"{original}#edit:{version or hashlib.sha256(text.encode()).hexdigest()[:16]}"


def json_bytes(value: Any) -> bytes:
    """``value`` as UTF-8 JSON. A lone surrogate (valid JSON, not valid UTF-8) stays a ``\\uXXXX`` escape."""
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "backslashreplace")


def location_text(place: Node, *labels: str | None) -> str:
    """``[location <lat>,<lon>] <labels>`` for a shared location (its ``latitude`` / ``longitude``)."""
    coordinates = ",".join(_coordinate(place.child(key)) for key in ("latitude", "longitude"))
    return " ".join(filter(None, (f"[location {coordinates}]", ", ".join(filter(None, map(single_line, labels))))))


def contact_text(name: str | None, phones: Iterable[str | None]) -> str:
    """``[contact <name> <phones>]`` for a shared contact card."""
    return "[" + " ".join(filter(None, ("contact", single_line(name), *(single_line(p, 40) for p in phones)))) + "]"


def _coordinate(node: Node) -> str:
    value = node.value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or abs(value) > 180:
        raise PayloadError(node.loc, "expected a coordinate in degrees")
    return f"{value:.5f}".rstrip("0").rstrip(".")  # 5 decimals: about 1 m


# --- Bodies of several parts ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rejected:
    """A part of a platform body that could not be taken: the connector, where it was (``update:<update_id>``,
    ``webhook:<loc>``, ``message:<external id>``), why (PayloadError, RecordTooLarge), its bytes."""

    connector: str
    where: str
    error: Exception
    raw: bytes


@dataclass(slots=True)
class Normalised:
    """What one body gave: its customer messages (in order, one per id: the last wins) and its rejected parts."""

    connector: str = ""
    by_id: dict[str, InboundMessage] = field(default_factory=dict)
    rejected: list[Rejected] = field(default_factory=list)

    @property
    def messages(self) -> list[InboundMessage]:
        return list(self.by_id.values())

    def add(self, message: InboundMessage | None) -> None:
        if message is not None:
            self.by_id[message.id] = message

    def reject(self, part: Node, error: PayloadError) -> None:
        where = "webhook:" + (".".join(map(str, part.loc)) or "body")
        self.rejected.append(Rejected(self.connector, where, error, json_bytes(part.value)))

    def attempt(self, part: Node, normalise: Callable[..., T], *args: Any) -> T | None:
        """``normalise(*args)``, or None with ``part`` rejected if it raises PayloadError."""
        try:
            return normalise(*args)
        except PayloadError as exc:
            self.reject(part, exc)
            return None

    def fit(self, max_bytes: int) -> None:
        """Reject every message whose record would be over the bus's ``max_bytes``: the bus would refuse the
        whole publish, at every redelivery."""
        for message in self.messages:
            raw = encode(message)
            if len(raw) + RECORD_OVERHEAD > max_bytes:
                del self.by_id[message.id]
                error = RecordTooLarge(f"the normalised message is {len(raw):,} bytes, over the bus's "
                                       f"{max_bytes:,}-byte record limit")
                self.rejected.append(Rejected(self.connector, f"message:{message.external_id}", error, raw))

    def parts(self, node: Node, key: str) -> list[Node]:
        """The objects of the array under ``key``; a value that is not an array, or an item that is not an
        object, is rejected on its own."""
        array = node.child(key)
        if array.value is None:
            return []
        if not isinstance(array.value, list):
            self.reject(array, PayloadError(array.loc, "expected an array"))
            return []
        items = [Node(item, (*array.loc, i)) for i, item in enumerate(array.value)]
        for item in items:
            if not isinstance(item.value, dict):
                self.reject(item, PayloadError(item.loc, "expected an object"))
        return [item for item in items if isinstance(item.value, dict)]


# --- Telegram -------------------------------------------------------------------------------------

_TELEGRAM_KINDS = (("message", False), ("edited_message", True), ("channel_post", False),
                   ("edited_channel_post", True))
_TELEGRAM_MEDIA = (("animation", "animation.mp4", "video/mp4"), ("document", "document", "application/octet-stream"),
                   ("audio", "audio.mp3", "audio/mpeg"), ("video", "video.mp4", "video/mp4"),
                   ("video_note", "video_note.mp4", "video/mp4"), ("voice", "voice.ogg", "audio/ogg"))


def telegram_update(update: Any, *, connector: str, received_at: datetime,
                    max_text: int = MAX_TEXT) -> InboundMessage | None:
    """The customer message of one Bot API ``Update``; None for other update types and service messages."""
    node = root(update)
    for key, edited in _TELEGRAM_KINDS:
        if (message := node.obj(key)) is not None:
            return _telegram_message(message, edited, connector, received_at, max_text)
    return None


def telegram_normalised(update: Any, *, connector: str, received_at: datetime, max_text: int = MAX_TEXT,
                        raw: bytes | None = None) -> Normalised:
    """:func:`telegram_update` for the webhook and the poller alike: a malformed update is rejected as
    ``update:<update_id>`` with ``raw`` (the bytes as received; default: its JSON), not raised."""
    node = root(update)
    out = Normalised(connector)
    try:
        out.add(telegram_update(update, connector=connector, received_at=received_at, max_text=max_text))
    except PayloadError as exc:
        update_id = node.child("update_id").value
        where = f"update:{update_id if isinstance(update_id, int) and not isinstance(update_id, bool) else '?'}"
        out.rejected.append(Rejected(connector, where, exc, json_bytes(update) if raw is None else raw))
    return out


def _telegram_message(m: Node, edited: bool, connector: str, received_at: datetime,
                      max_text: int) -> InboundMessage | None:
    if m.flag("is_automatic_forward"):  # our channel's post copied into its discussion group
        return None
    chat = m.need("chat")
    chat_id, message_id = chat.need_id("id"), m.need_id("message_id")
    origin = m.obj("sender_chat")
    if origin is not None and chat.string("type") != "channel" and origin.ident("id") == chat_id:
        return None  # an anonymous administrator of the group: staff
    text = clean_text(_telegram_text(m, edited), max_text)
    attachments = _telegram_attachments(m)
    if not text and not attachments:
        return None
    original = f"{chat_id}:{message_id}"
    sender, is_bot = _telegram_sender(m, origin, chat)
    reply = m.obj("reply_to_message")
    topic = m.ident("message_thread_id") if m.flag("is_topic_message") else None
    stamp = m.child("edit_date") if edited and m.has("edit_date") else m.child("date")
    return InboundMessage.create(
        connector=connector, external_id=_telegram_edit_id(original, m, text, attachments) if edited else original,
        channel="chat", platform="telegram", sender=sender, recipients=_telegram_group(chat),
        thread=ThreadHints(in_reply_to=f"{chat_id}:{reply.need_id('message_id')}" if reply else None,
                           references=(original,) if edited else (),
                           conversation_id=f"{chat_id}:{topic}" if topic else chat_id),
        text=text, full_text=text, attachments=attachments, received_at=received_at,
        sent_at=unix_time(stamp.value, stamp.loc),
        permalink=_telegram_permalink(chat, message_id), flags=Flags(auto_submitted=is_bot, edited=edited),
    )


def _telegram_text(m: Node, edited: bool) -> str:
    """The text, caption or sticker emoji; else a shared contact, venue or location as a short text (not for
    edits: a live location is streamed as edits of its message)."""
    sticker = m.obj("sticker")
    written = m.string("text") or m.string("caption") or (sticker.string("emoji") if sticker is not None else None)
    if written or edited:
        return written or ""
    if (contact := m.obj("contact")) is not None:
        name = " ".join(filter(None, (contact.string("first_name"), contact.string("last_name"))))
        return contact_text(name, [contact.string("phone_number")])
    venue = m.obj("venue")
    place = (venue.obj("location") if venue is not None else None) or m.obj("location")
    if place is None:
        return ""
    return location_text(place, *((venue.string("title"), venue.string("address")) if venue is not None else ()))


def _telegram_edit_id(original: str, m: Node, text: str, attachments: tuple[Attachment, ...]) -> str:
    """``edit_date`` has whole seconds, so a digest of what the edit says tells two edits of one second
    apart; a redelivered edit says the same and keeps its id."""
    content = "\x00".join((text, *(a.sha256 for a in attachments)))
    digest = hashlib.sha256(content.encode()).hexdigest()[:12]
    stamp = m.ident("edit_date")
    return edit_id(original, f"{stamp}.{digest}" if stamp else digest, text)


def _telegram_sender(m: Node, origin: Node | None, chat: Node) -> tuple[Party, bool]:
    """The user, or the chat a message was sent on behalf of: then ``from`` is a stand-in user (Channel_Bot,
    GroupAnonymousBot, Telegram), neither the sender nor a reason to flag the message auto-submitted."""
    user = m.obj("from")
    if user is not None and origin is None:
        name = " ".join(filter(None, (user.string("first_name"), user.string("last_name"))))
        return Party(platform_id=user.need_id("id"), handle=as_handle(user.string("username")),
                     name=single_line(name) or None), user.flag("is_bot")
    origin = origin or chat
    return Party(platform_id=origin.need_id("id"), handle=as_handle(origin.string("username")),
                 name=single_line(origin.string("title")) or None), False


def _telegram_group(chat: Node) -> tuple[Party, ...]:
    if chat.string("type") == "private":
        return ()
    return (Party(platform_id=chat.need_id("id"), handle=as_handle(chat.string("username")),
                  name=single_line(chat.string("title")) or None),)


def _telegram_permalink(chat: Node, message_id: str) -> str | None:
    username = chat.string("username") or ""
    if chat.string("type") in ("supergroup", "channel") and _TG_USERNAME.match(username):
        return f"https://t.me/{username}/{message_id}"
    return None


def _telegram_attachments(m: Node) -> tuple[Attachment, ...]:
    found: list[Attachment] = []
    if photos := m.items("photo"):
        found.append(_telegram_file(photos[-1], "photo.jpg", "image/jpeg"))
    for key, name, ctype in _TELEGRAM_MEDIA:
        if (media := m.obj(key)) is not None and not (key == "document" and m.has("animation")):
            found.append(_telegram_file(media, name, ctype))
    if (sticker := m.obj("sticker")) is not None:
        kind = "tgs" if sticker.flag("is_animated") else "webm" if sticker.flag("is_video") else "webp"
        ctype = {"tgs": "application/x-tgsticker", "webm": "video/webm", "webp": "image/webp"}[kind]
        found.append(_telegram_file(sticker, f"sticker.{kind}", ctype))
    return tuple(found)


def _telegram_file(node: Node, name: str, ctype: str) -> Attachment:
    file_id = node.need_id("file_id")
    return Attachment(name=single_line(node.string("file_name"), 255) or name,
                      content_type=media_type(node.string("mime_type"), ctype), size=node.size("file_size"),
                      sha256=reference_digest("telegram", node.ident("file_unique_id") or file_id),
                      sha256_of="reference", ref=file_id)
