"""Meta webhooks -> :class:`InboundMessage`: WhatsApp Cloud API, Messenger, Instagram messaging and mentions.

One POST carries a batch: ``{"object": ..., "entry": [...]}``. What becomes a message:

* ``whatsapp_business_account``: ``entry[].changes[]`` with field ``messages``: ``value.messages[]``
  (names from ``value.contacts[]``). Text, media (image, video, audio, document, sticker), button
  and interactive replies, reactions with an emoji, locations and contact cards (as a short text,
  see :mod:`ingest.http.normalise`). ``value.statuses[]`` (receipts) are ignored.
* ``page`` (Messenger) and ``instagram`` (Direct): ``entry[].messaging[]`` events with ``message``
  (text and attachments; echoes of our own messages, deletions and self-tests are skipped),
  ``message_edit`` (flagged ``edited``) or ``postback`` (a button the customer tapped: its title is
  the text). Receipts, reactions, policy notices and the like are ignored, whatever fields they lack.
* mentions: ``entry[].changes[]`` with field ``mention`` (Facebook Page: post or comment text and
  its author) or ``mentions`` (Instagram: only ``media_id`` and ``comment_id``, so the message has
  no text and no known sender; fetching the comment through the Graph API is not done here).
  What a reply needs is kept: the external id is ``mention:<comment id>`` (or ``mention:<post id>``
  for a Facebook post, ``mention:media:<media id>`` for an Instagram caption), the conversation is
  the post / media id, and ``recipients`` is the mentioned account (the webhook entry: our Page or
  Instagram account id). :func:`dispatch.reply_target.reply_target` reads exactly these.

Media are not downloaded: ``Attachment.ref`` keeps the WhatsApp media id or the Messenger/Instagram
URL, see :mod:`ingest.http.normalise`.

Same contract as :mod:`ingest.http.normalise`: pure, deterministic ids. :func:`meta_normalised` (the
intake) normalises every entry, change, messaging event and WhatsApp message on its own: a malformed
one is rejected (for the dead-letter topic) and the rest of the batch is kept. :func:`meta_batch` is
the all-or-nothing form: it raises the first PayloadError.
"""

from __future__ import annotations

import mimetypes
import posixpath
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import unquote, urlsplit

from frontdesk.messages import Attachment, Flags, InboundMessage, Party, ThreadHints
from ingest.http.normalise import (MAX_TEXT, Node, Normalised, PayloadError, clean_text, contact_text, content_digest,
                                   edit_id, location_text, media_type, platform_ref, reference_digest, root,
                                   single_line, unix_time)

_PLATFORMS = {"whatsapp_business_account": "whatsapp", "page": "facebook", "instagram": "instagram"}
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


def meta_normalised(payload: Any, *, connectors: MetaConnectors, received_at: datetime,
                    max_text: int = MAX_TEXT) -> Normalised:
    """Every customer message of one Meta webhook body, in order, one per id, and the parts that were
    malformed (each rejected alone). Raises PayloadError only if the body is not a JSON object."""
    node = root(payload)
    kind = node.child("object").value
    platform = _PLATFORMS.get(kind) if isinstance(kind, str) else None
    if platform is None:
        return Normalised()
    ctx = _Ctx(platform, getattr(connectors, platform), received_at, max_text)
    out = Normalised(ctx.connector)
    for entry in out.parts(node, "entry"):
        for change in out.parts(entry, "changes"):
            if platform == "whatsapp":
                _whatsapp_change(change, ctx, out)
            else:
                out.add(out.attempt(change, _mention, change, ctx, entry))
        if platform != "whatsapp":
            for event in out.parts(entry, "messaging"):
                out.add(out.attempt(event, _messaging, event, ctx))
    return out


def meta_batch(payload: Any, *, connectors: MetaConnectors, received_at: datetime,
               max_text: int = MAX_TEXT) -> list[InboundMessage]:
    """Every customer message of one Meta webhook body, in order, without duplicate ids; all or nothing:
    raises the PayloadError of the first malformed part."""
    found = meta_normalised(payload, connectors=connectors, received_at=received_at, max_text=max_text)
    if found.rejected:
        raise found.rejected[0].error
    return found.messages


# --- WhatsApp -------------------------------------------------------------------------------------


def _whatsapp_change(change: Node, ctx: _Ctx, out: Normalised) -> None:
    """The messages of one ``messages`` change, each on its own."""
    if change.child("field").value != "messages":
        return
    context = out.attempt(change, _whatsapp_context, change)
    if context is None:
        return
    value, business, names = context
    for message in out.parts(value, "messages"):
        out.add(out.attempt(message, _whatsapp_message, message, business, names, ctx))


def _whatsapp_context(change: Node) -> tuple[Node, str | None, dict[str | None, str]] | None:
    """(value, our phone number id, customer names by wa_id) of a ``messages`` change; None without a value."""
    if (value := change.obj("value")) is None:
        return None
    metadata = value.obj("metadata")
    business = metadata.ident("phone_number_id") if metadata is not None else None
    names = {}
    for contact in value.items("contacts"):
        profile = contact.obj("profile")
        names[contact.ident("wa_id")] = single_line(profile.string("name")) if profile is not None else ""
    return value, business, names


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
    if kind == "location":
        place = m.need("location")
        return location_text(place, place.string("name"), place.string("address")), (), None
    if kind == "contacts":
        return "\n".join(_whatsapp_contact(card) for card in m.items("contacts")), (), None
    return None, (), None


def _whatsapp_contact(card: Node) -> str:
    name = card.obj("name")
    return contact_text(name.string("formatted_name") if name is not None else None,
                        [phone.string("phone") for phone in card.items("phones")])


def _whatsapp_media(media: Node, kind: str) -> Attachment:
    ctype = media_type(media.string("mime_type"), _WHATSAPP_MEDIA[kind])
    default = ("voice" if media.flag("voice") else kind) + (mimetypes.guess_extension(ctype) or "")
    media_id, digest = media.need_id("id"), content_digest(media.string("sha256"))
    return Attachment(name=single_line(media.string("filename"), 255) or default, content_type=ctype,
                      size=media.size("file_size"), sha256=digest or reference_digest("whatsapp", media_id),
                      sha256_of="content" if digest else "reference", ref=media_id)


# --- Messenger and Instagram Direct ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Said:
    """What one messaging event says: its ids, text and attachments."""

    external_id: str
    original: str
    text: str
    attachments: tuple[Attachment, ...] = ()
    in_reply_to: str | None = None
    edited: bool = False


def _messaging(event: Node, ctx: _Ctx) -> InboundMessage | None:
    """The customer message of one messaging event; None for the other events, whatever fields they lack."""
    said = _said(event, ctx)
    if said is None or not (said.text or said.attachments):
        return None
    user = _sender_id(event)
    recipient = event.obj("recipient")
    page = recipient.ident("id") if recipient is not None else None
    return InboundMessage.create(
        connector=ctx.connector, external_id=said.external_id, channel="chat", platform=ctx.platform,
        sender=Party(platform_id=user), recipients=(Party(platform_id=page),) if page else (),
        thread=ThreadHints(in_reply_to=said.in_reply_to, references=(said.original,) if said.edited else (),
                           conversation_id=f"{page}:{user}" if page else user),
        text=said.text, full_text=said.text, attachments=said.attachments, received_at=ctx.received_at,
        sent_at=unix_time(event.child("timestamp").value, event.child("timestamp").loc, millis=True),
        flags=Flags(edited=said.edited),
    )


def _said(event: Node, ctx: _Ctx) -> _Said | None:
    """A message, an edit or a postback; None for every other event (and for echoes, deletions, self-tests)."""
    if (message := event.obj("message")) is not None:
        if any(message.flag(f) for f in ("is_echo", "is_deleted", "is_self")):
            return None
        mid, reply = message.need_id("mid"), message.obj("reply_to")
        return _Said(mid, mid, clean_text(message.string("text") or "", ctx.max_text), _attachments(message, ctx),
                     reply.ident("mid") if reply is not None else None)
    if (edit := event.obj("message_edit")) is not None:
        original, text = edit.need_id("mid"), clean_text(edit.string("text") or "", ctx.max_text)
        return _Said(edit_id(original, edit.ident("num_edit"), text), original, text, edited=True)
    if (postback := event.obj("postback")) is not None:
        mid = postback.ident("mid") or f"postback:{_sender_id(event)}:{event.need_id('timestamp')}"
        return _Said(mid, mid, clean_text(postback.string("title") or "", ctx.max_text))
    return None


def _sender_id(event: Node) -> str:
    sender = event.need("sender")
    user = sender.ident("id") or sender.ident("user_ref")
    if user is None:
        raise PayloadError((*sender.loc, "id"), "field required")
    return user


def _attachments(message: Node, ctx: _Ctx) -> tuple[Attachment, ...]:
    """Attachment metadata by URL (only a URL :func:`platform_ref` keeps); a sticker sent as both 'image' and
    'sticker' counts once."""
    found: dict[str, Attachment] = {}
    for item in message.items("attachments"):
        payload = item.obj("payload")
        if payload is None:
            continue
        url, sticker = platform_ref(payload.string("url")), payload.ident("sticker_id")
        kind = "sticker" if sticker else (single_line(item.string("type"), 40) or "file")
        reference = f"sticker:{sticker}" if sticker else url
        if not reference or reference in found:
            continue  # no usable URL (absent, not one line, too long) and no sticker id: nothing to refer to
        path = unquote(urlsplit(url).path) if url else ""
        name = single_line(posixpath.basename(path), 255) or kind
        ctype = media_type(mimetypes.guess_type(path)[0], "application/octet-stream")
        found[reference] = Attachment(name=name, content_type=ctype, size=0,
                                      sha256=reference_digest(ctx.platform, reference), sha256_of="reference",
                                      ref=url or reference)
    return tuple(found.values())


# --- Mentions -------------------------------------------------------------------------------------


def _mention(change: Node, ctx: _Ctx, entry: Node) -> InboundMessage | None:
    """The mention of one change (the entry is the mentioned account); None for other fields."""
    field = change.child("field").value
    instagram = ctx.platform == "instagram" and field == "mentions"
    if not (instagram or (ctx.platform == "facebook" and field == "mention")) or (value := change.obj("value")) is None:
        return None
    account = entry.ident("id")
    mentioned = (Party(platform_id=account),) if account else ()
    return _instagram_mention(value, ctx, mentioned) if instagram else _page_mention(value, ctx, mentioned)


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
