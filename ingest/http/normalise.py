"""Platform payloads -> :class:`InboundMessage`: the shared cleaning and typed access, and the Telegram Update.

Contract of every normaliser here and in :mod:`ingest.http.meta` and :mod:`ingest.http.api`:

* pure: no I/O, nothing downloaded; the same payload and ``received_at`` give the same message, and
  the id depends only on (connector, platform message id), so a replayed webhook is a no-op downstream;
* events that are not customer messages (other update types, service messages, receipts) give
  ``None`` / nothing; a part we do understand but that has the wrong shape raises
  :class:`PayloadError` naming the field (the app answers 422);
* text is untrusted data: NUL and control characters (except newline and tab) and lone surrogates
  are removed and it is cut at ``max_text`` characters; names and ids become single lines.

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
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from frontdesk.messages import Attachment, Flags, InboundMessage, Party, ThreadHints

MAX_TEXT = 20_000
MAX_NAME = 200
MAX_ID = 300
Loc = tuple[str | int, ...]

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


def _telegram_message(m: Node, edited: bool, connector: str, received_at: datetime,
                      max_text: int) -> InboundMessage | None:
    chat = m.need("chat")
    chat_id, message_id = chat.need_id("id"), m.need_id("message_id")
    sticker = m.obj("sticker")
    emoji = sticker.string("emoji") if sticker is not None else None
    text = clean_text(m.string("text") or m.string("caption") or emoji or "", max_text)
    attachments = _telegram_attachments(m)
    if not text and not attachments:
        return None
    original = f"{chat_id}:{message_id}"
    sender, is_bot = _telegram_sender(m, chat)
    reply = m.obj("reply_to_message")
    topic = m.ident("message_thread_id") if m.flag("is_topic_message") else None
    stamp = m.child("edit_date") if edited and m.has("edit_date") else m.child("date")
    return InboundMessage.create(
        connector=connector, external_id=edit_id(original, m.ident("edit_date"), text) if edited else original,
        channel="chat", platform="telegram", sender=sender, recipients=_telegram_group(chat),
        thread=ThreadHints(in_reply_to=f"{chat_id}:{reply.need_id('message_id')}" if reply else None,
                           references=(original,) if edited else (),
                           conversation_id=f"{chat_id}:{topic}" if topic else chat_id),
        text=text, full_text=text, attachments=attachments, received_at=received_at,
        sent_at=unix_time(stamp.value, stamp.loc),
        permalink=_telegram_permalink(chat, message_id), flags=Flags(auto_submitted=is_bot, edited=edited),
    )


def _telegram_sender(m: Node, chat: Node) -> tuple[Party, bool]:
    user = m.obj("from")
    if user is not None:
        name = " ".join(filter(None, (user.string("first_name"), user.string("last_name"))))
        return Party(platform_id=user.need_id("id"), handle=as_handle(user.string("username")),
                     name=single_line(name) or None), user.flag("is_bot")
    origin = m.obj("sender_chat") or chat
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
