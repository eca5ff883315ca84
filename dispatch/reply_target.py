"""Where a chat or social acknowledgement goes: which Replier, in which mode, to which platform ids.

Modes (the outbox payload's ``mode``, handed to the Replier as ``OutboundReply.extra["mode"]``):

* ``chat`` — a chat message answered in its conversation (Telegram chat or forum topic, WhatsApp,
  Messenger / Instagram Direct, a chat widget);
* ``public_reply`` — a public reply under a social mention (``dispatch.public_mentions: reply``);
* ``dm`` — the acknowledgement sent privately to the author of a mention (``public_mentions: dm``).

Replier choice: messages from our own platform connectors go to that platform's Replier
(``telegram``, ``whatsapp``, ``facebook``, ``instagram``); messages forwarded to ``POST /v1/messages``
(connector ``http:<platform>``) and messages without a platform go to the generic signed ``webhook``,
whose receiver — the tool that forwarded them — knows how to post on that platform. The relay also
falls back to ``webhook`` when the platform has no Replier configured.

Pure functions of the inbound message; nothing is looked up.
"""

from __future__ import annotations

from typing import Literal

from frontdesk.messages import InboundMessage

Mode = Literal["chat", "public_reply", "dm"]
_META = ("facebook", "instagram")


def ack_mode(msg: InboundMessage, public_mentions: str) -> Mode | None:
    """The mode of an acknowledgement of ``msg``; None when it gets none (email: not a Replier's).

    A chat message from a group, supergroup or channel (:func:`in_group_chat`) is answered as a
    public mention is (``dispatch.public_mentions``): every member of the group would read a chat
    acknowledgement, with the customer's name and case reference.
    """
    if msg.channel == "chat" and not in_group_chat(msg):
        return "chat"
    if msg.channel in ("chat", "social"):
        return {"reply": "public_reply", "dm": "dm"}.get(public_mentions)  # type: ignore[return-value]
    return None


def in_group_chat(msg: InboundMessage) -> bool:
    """True for a chat message our Telegram connector took from a group, supergroup or channel (it
    names that chat as the recipient; a private chat has none)."""
    return msg.channel == "chat" and replier_key(msg) == "telegram" and bool(msg.recipients)


def reply_thread(msg: InboundMessage, mode: Mode) -> str | None:
    """The message an acknowledgement in ``mode`` answers as a reply (``OutboundReply.thread_id``), if any:
    the chat message itself, also under a public reply in a group chat."""
    return msg.external_id if mode == "chat" or (mode == "public_reply" and in_group_chat(msg)) else None


def replier_key(msg: InboundMessage) -> str:
    """The key of the Replier that answers ``msg`` (see the module docstring)."""
    if msg.connector.startswith("http:") or not msg.platform:
        return "webhook"
    return msg.platform


def chat_recipient(msg: InboundMessage) -> str | None:
    """Where a chat reply goes: the Telegram chat (or chat:topic), else the sender's platform id."""
    if msg.platform == "telegram":
        return msg.thread.conversation_id or msg.sender.platform_id
    return msg.sender.platform_id or msg.sender.phone


def reply_target(msg: InboundMessage, mode: Mode) -> tuple[str | None, dict[str, str]]:
    """``(recipient, target ids)`` of an acknowledgement of ``msg`` in ``mode``; ``(None, {})`` if it cannot go.

    * ``chat``, and a public reply in a Telegram group: the chat recipient, no further ids.
    * A mention from our Meta webhook: public reply → under the comment (or the post / Instagram
      media), with ``post_id``/``comment_id`` (Facebook) or ``account_id``/``media_id``/``comment_id``
      (Instagram); dm → a Meta private reply keyed by the comment (or Facebook post) id, the only
      way to write first to someone known through a comment. An Instagram caption mention has no
      comment to reply to privately and no known author: no dm.
    * Anything else (``/v1/messages``, social mailboxes): public reply → the mention's ``external_id``
      (target: ``external_id``, ``permalink``, ``conversation_id``, ``author_id``, ``author_handle``);
      dm → the author's platform id, with the same target ids.
    """
    if mode == "chat" or (mode == "public_reply" and in_group_chat(msg)):
        recipient = chat_recipient(msg)
        return (recipient, {}) if recipient else (None, {})
    if replier_key(msg) in _META:
        return _meta_target(msg, mode)
    target = {key: value for key, value in (
        ("external_id", msg.external_id), ("permalink", msg.permalink),
        ("conversation_id", msg.thread.conversation_id), ("author_id", msg.sender.platform_id),
        ("author_handle", msg.sender.handle)) if value}
    recipient = msg.external_id if mode == "public_reply" else msg.sender.platform_id
    return (recipient, target) if recipient else (None, {})


def _meta_target(msg: InboundMessage, mode: Mode) -> tuple[str | None, dict[str, str]]:
    """Ids of a mention normalised by :mod:`ingest.http.meta` (``mention:<id>``, conversation = post/media)."""
    original = msg.external_id.split("#edit:", 1)[0]
    if not original.startswith("mention:") or not msg.thread.conversation_id:
        return None, {}
    mentioned, parent = original.removeprefix("mention:"), msg.thread.conversation_id
    if msg.platform == "facebook":
        ids = {"post_id": parent} if mentioned == parent else {"post_id": parent, "comment_id": mentioned}
        return mentioned, ids
    comment = None if mentioned.startswith("media:") else mentioned
    if mode == "dm":
        return (comment, {"comment_id": comment}) if comment else (None, {})
    account = msg.recipients[0].platform_id if msg.recipients else None
    if not account:
        return None, {}
    ids = {"account_id": account, "media_id": parent} | ({"comment_id": comment} if comment else {})
    return comment or parent, ids
