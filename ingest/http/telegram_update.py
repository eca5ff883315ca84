"""Telegram Bot API ``Update`` -> :class:`InboundMessage`, for the webhook and the poller alike.

The contract is :mod:`ingest.http.normalise`'s. Messages, edited messages and channel posts (and their
edits) become messages; every other update type, service messages and staff writing as the group
(anonymous administrators, automatic forwards of our channel's posts) give ``None``.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from typing import Any

from frontdesk.messages import Attachment, Flags, InboundMessage, Party, ThreadHints
from ingest.http.normalise import (MAX_TEXT, Node, Normalised, PayloadError, Rejected, as_handle, clean_text,
                                   contact_text, edit_id, json_bytes, location_text, media_type, reference_digest,
                                   root, single_line, unix_time)

_TG_USERNAME = re.compile(r"^[A-Za-z0-9_]{4,32}$")

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
