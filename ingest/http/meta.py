"""Meta webhooks -> :class:`InboundMessage`: WhatsApp Cloud API, Messenger, Instagram messaging and mentions.

One POST carries a batch: ``{"object": ..., "entry": [...]}``. What becomes a message:

* ``whatsapp_business_account``: ``entry[].changes[]`` with field ``messages``: ``value.messages[]``
  (names from ``value.contacts[]``). Text, media (image, video, audio, document, sticker), button
  and interactive replies, reactions with an emoji. ``value.statuses[]`` (receipts) are ignored.
* ``page`` (Messenger) and ``instagram`` (Direct): ``entry[].messaging[]`` events with ``message``
  (text and attachments; echoes of our own messages, deletions and self-tests are skipped) or
  ``message_edit`` (flagged ``edited``). Receipts, reactions, postbacks and the like are ignored.
* mentions: ``entry[].changes[]`` with field ``mention`` (Facebook Page: post or comment text and
  its author) or ``mentions`` (Instagram: only ``media_id`` and ``comment_id``, so the message has
  no text and no known sender; fetching the comment through the Graph API is not done here).
  What a reply needs is kept: the external id is ``mention:<comment id>`` (or ``mention:<post id>``
  for a Facebook post, ``mention:media:<media id>`` for an Instagram caption), the conversation is
  the post / media id, and ``recipients`` is the mentioned account (the webhook entry: our Page or
  Instagram account id). :func:`dispatch.reply_target.reply_target` reads exactly these.

Media are not downloaded: ``Attachment.ref`` keeps the WhatsApp media id or the Messenger/Instagram
URL, see :mod:`ingest.http.normalise`.

Same contract as :mod:`ingest.http.normalise`: pure, deterministic ids, PayloadError for wrong shapes.
"""

from __future__ import annotations

import mimetypes
import posixpath
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import unquote, urlsplit

from frontdesk.messages import Attachment, Flags, InboundMessage, Party, ThreadHints
from ingest.http.normalise import (MAX_TEXT, Node, PayloadError, clean_text, content_digest, edit_id, media_type,
                                   platform_ref, reference_digest, root, single_line, unix_time)

_WHATSAPP_MEDIA = {"image": "image/jpeg", "video": "video/mp4", "audio": "audio/ogg",
                   "document": "application/octet-stream", "sticker": "image/webp"}


@dataclass(frozen=True, slots=True)
class MetaConnectors:
    """Connector names per platform (they scope message ids and conversations)."""

    whatsapp: str = "whatsapp"
    facebook: str = "facebook"
    instagram: str = "instagram"


@dataclass(frozen=True, slots=True)
class _Ctx:
    platform: str
    connector: str
    received_at: datetime
    max_text: int


def meta_batch(payload: Any, *, connectors: MetaConnectors, received_at: datetime,
               max_text: int = MAX_TEXT) -> list[InboundMessage]:
    """Every customer message of one Meta webhook body, in order, without duplicate ids."""
    node = root(payload)
    kind = node.string("object")
    platform = {"whatsapp_business_account": "whatsapp", "page": "facebook", "instagram": "instagram"}.get(kind or "")
    if platform is None:
        return []
    ctx = _Ctx(platform, getattr(connectors, platform), received_at, max_text)
    found: list[InboundMessage | None] = []
    for entry in node.items("entry"):
        for change in entry.items("changes"):
            found += (_whatsapp_change(change, ctx) if platform == "whatsapp"
                      else [_mention(change, ctx, entry.ident("id"))])
        if platform != "whatsapp":
            found += [_messaging(event, ctx) for event in entry.items("messaging")]
    unique = {m.id: m for m in found if m is not None}
    return list(unique.values())


# --- WhatsApp -------------------------------------------------------------------------------------


def _whatsapp_change(change: Node, ctx: _Ctx) -> list[InboundMessage | None]:
    if change.string("field") != "messages" or (value := change.obj("value")) is None:
        return []
    metadata = value.obj("metadata")
    business = metadata.ident("phone_number_id") if metadata is not None else None
    names = {}
    for contact in value.items("contacts"):
        profile = contact.obj("profile")
        names[contact.ident("wa_id")] = single_line(profile.string("name")) if profile is not None else ""
    return [_whatsapp_message(message, business, names, ctx) for message in value.items("messages")]


def _whatsapp_message(m: Node, business: str | None, names: dict[str | None, str],
                      ctx: _Ctx) -> InboundMessage | None:
    kind = m.string("type")
    text, attachments, reacted_to = _whatsapp_content(m, kind or "")
    text = clean_text(text or "", ctx.max_text)
    if not text and not attachments:
        return None
    wa_id = m.need_id("from")
    context = m.obj("context")
    return InboundMessage.create(
        connector=ctx.connector, external_id=m.need_id("id"), channel="chat",
        platform="whatsapp", sender=Party(platform_id=wa_id, phone=f"+{wa_id}" if wa_id.isdigit() else None,
                                          name=names.get(wa_id) or None),
        thread=ThreadHints(in_reply_to=reacted_to or (context.ident("id") if context is not None else None),
                           conversation_id=f"{business}:{wa_id}" if business else wa_id),
        text=text, full_text=text, attachments=attachments, received_at=ctx.received_at,
        sent_at=unix_time(m.child("timestamp").value, m.child("timestamp").loc),
    )


def _whatsapp_content(m: Node, kind: str) -> tuple[str | None, tuple[Attachment, ...], str | None]:
    """(text, attachments, id of the message reacted to) of one WhatsApp message."""
    if kind == "text":
        return m.need("text").string("body"), (), None
    if kind in _WHATSAPP_MEDIA:
        media = m.need(kind)
        return media.string("caption"), (_whatsapp_media(media, kind),), None
    if kind == "reaction":
        reaction = m.need("reaction")
        return reaction.string("emoji"), (), reaction.ident("message_id")
    if kind == "button":
        return m.need("button").string("text"), (), None
    if kind == "interactive":
        interactive = m.need("interactive")
        reply = interactive.obj("button_reply") or interactive.obj("list_reply")
        return (reply.string("title") if reply is not None else None), (), None
    return None, (), None


def _whatsapp_media(media: Node, kind: str) -> Attachment:
    ctype = media_type(media.string("mime_type"), _WHATSAPP_MEDIA[kind])
    default = ("voice" if media.flag("voice") else kind) + (mimetypes.guess_extension(ctype) or "")
    media_id, digest = media.need_id("id"), content_digest(media.string("sha256"))
    return Attachment(name=single_line(media.string("filename"), 255) or default, content_type=ctype,
                      size=media.size("file_size"), sha256=digest or reference_digest("whatsapp", media_id),
                      sha256_of="content" if digest else "reference", ref=media_id)


# --- Messenger and Instagram Direct ---------------------------------------------------------------


def _messaging(event: Node, ctx: _Ctx) -> InboundMessage | None:
    sender = event.need("sender")
    user = sender.ident("id") or sender.ident("user_ref")
    recipient = event.obj("recipient")
    page = recipient.ident("id") if recipient is not None else None
    if (message := event.obj("message")) is not None:
        if any(message.flag(f) for f in ("is_echo", "is_deleted", "is_self")):
            return None
        external_id = original = message.need_id("mid")
        text, edited = clean_text(message.string("text") or "", ctx.max_text), False
        reply = message.obj("reply_to")
        in_reply_to, attachments = (reply.ident("mid") if reply is not None else None), _attachments(message, ctx)
    elif (edit := event.obj("message_edit")) is not None:
        original = edit.need_id("mid")
        text, edited, in_reply_to, attachments = clean_text(edit.string("text") or "", ctx.max_text), True, None, ()
        external_id = edit_id(original, edit.ident("num_edit"), text)
    else:
        return None
    if not user or not (text or attachments):
        return None
    return InboundMessage.create(
        connector=ctx.connector, external_id=external_id, channel="chat", platform=ctx.platform,
        sender=Party(platform_id=user), recipients=(Party(platform_id=page),) if page else (),
        thread=ThreadHints(in_reply_to=in_reply_to, references=(original,) if edited else (),
                           conversation_id=f"{page}:{user}" if page else user),
        text=text, full_text=text, attachments=attachments, received_at=ctx.received_at,
        sent_at=unix_time(event.child("timestamp").value, event.child("timestamp").loc, millis=True),
        flags=Flags(edited=edited),
    )


def _attachments(message: Node, ctx: _Ctx) -> tuple[Attachment, ...]:
    """Attachment metadata by URL; a sticker sent as both 'image' and 'sticker' counts once."""
    found: dict[str, Attachment] = {}
    for item in message.items("attachments"):
        payload = item.obj("payload")
        if payload is None:
            continue
        url, sticker = payload.string("url"), payload.ident("sticker_id")
        kind = "sticker" if sticker else (item.string("type") or "file")
        reference = f"sticker:{sticker}" if sticker else url
        if not reference or reference in found:
            continue
        path = unquote(urlsplit(url).path) if url else ""
        name = single_line(posixpath.basename(path), 255) or kind
        ctype = media_type(mimetypes.guess_type(path)[0], "application/octet-stream")
        found[reference] = Attachment(name=name, content_type=ctype, size=0,
                                      sha256=reference_digest(ctx.platform, reference), sha256_of="reference",
                                      ref=platform_ref(url) or reference)
    return tuple(found.values())


# --- Mentions -------------------------------------------------------------------------------------


def _mention(change: Node, ctx: _Ctx, account: str | None) -> InboundMessage | None:
    field, value = change.string("field"), change.obj("value")
    if value is None:
        return None
    mentioned = (Party(platform_id=account),) if account else ()
    if ctx.platform == "instagram" and field == "mentions":
        return _instagram_mention(value, ctx, mentioned)
    if ctx.platform == "facebook" and field == "mention":
        return _page_mention(value, ctx, mentioned)
    return None


def _instagram_mention(value: Node, ctx: _Ctx, mentioned: tuple[Party, ...]) -> InboundMessage:
    media, comment = value.need_id("media_id"), value.ident("comment_id")
    return InboundMessage.create(
        connector=ctx.connector, external_id=f"mention:{comment}" if comment else f"mention:media:{media}",
        channel="social", platform="instagram", sender=Party(), recipients=mentioned,
        thread=ThreadHints(conversation_id=media), received_at=ctx.received_at,
    )


def _page_mention(value: Node, ctx: _Ctx, mentioned: tuple[Party, ...]) -> InboundMessage | None:
    verb = value.string("verb") or "add"
    if verb not in ("add", "edit", "edited"):
        return None
    post, comment = value.need_id("post_id"), value.ident("comment_id")
    author = value.obj("from") or Node({})
    sender = Party(platform_id=value.ident("sender_id") or author.ident("id"),
                   name=single_line(value.string("sender_name") or author.string("name")) or None)
    text = clean_text(value.string("message") or "", ctx.max_text)
    original, edited = f"mention:{comment or post}", verb != "add"
    external_id = edit_id(original, value.ident("edited_time"), text) if edited else original
    return InboundMessage.create(
        connector=ctx.connector, external_id=external_id, channel="social", platform="facebook", sender=sender,
        recipients=mentioned, text=text, full_text=text,
        thread=ThreadHints(references=(original,) if edited else (), conversation_id=post),
        received_at=ctx.received_at, sent_at=_optional_time(value.child("created_time")), flags=Flags(edited=edited),
    )


def _optional_time(node: Node) -> datetime | None:
    """Page webhooks send created_time as a Unix time; anything else is not worth rejecting a mention for."""
    try:
        return unix_time(node.value, node.loc)
    except PayloadError:
        return None
