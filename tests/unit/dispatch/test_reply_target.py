"""Where acknowledgements go: mode, Replier and platform ids, from messages normalised from real payload fixtures."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from dispatch.reply_target import ack_mode, chat_recipient, in_group_chat, replier_key, reply_target, reply_thread
from frontdesk.messages import InboundMessage
from ingest.http.api import MessageIn, api_message
from ingest.http.meta import MetaConnectors, meta_batch
from ingest.http.telegram_update import telegram_update

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "webhooks"
NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))


def meta(name: str) -> InboundMessage:
    [message] = meta_batch(fixture(name), connectors=MetaConnectors(), received_at=NOW)
    return message


def telegram(name: str) -> InboundMessage:
    message = telegram_update(fixture(name), connector="telegram", received_at=NOW)
    assert message is not None
    return message


def forwarded(**over: Any) -> InboundMessage:
    body: dict[str, Any] = {"channel": "social", "platform": "twitter", "external_id": "1790012345678901234",
                            "author": {"id": "44196397", "handle": "@rauf_az"}, "text": "@BetAz pulumu qaytarın!",
                            "permalink": "https://x.com/rauf_az/status/1790012345678901234"}
    return api_message(MessageIn.model_validate({**body, **over}), received_at=NOW)


def test_modes_follow_the_channel_and_the_setting() -> None:
    private, mention = telegram("telegram/private_text"), forwarded()
    email = private.model_copy(update={"channel": "email", "platform": None})
    assert [ack_mode(private, m) for m in ("none", "reply", "dm")] == ["chat"] * 3
    assert [ack_mode(mention, m) for m in ("none", "reply", "dm")] == [None, "public_reply", "dm"]
    assert ack_mode(email, "reply") is None


@pytest.mark.parametrize("name", ["telegram/group_text", "telegram/forum_topic", "telegram/channel_post"])
def test_a_telegram_group_is_answered_as_a_public_mention_is(name: str) -> None:
    """Every member of a group reads what the bot writes there: no case reference or name unless
    dispatch.public_mentions allows it; a public reply answers the message in its chat (and topic)."""
    m = telegram(name)
    assert in_group_chat(m)
    assert [ack_mode(m, p) for p in ("none", "reply", "dm")] == [None, "public_reply", "dm"]
    assert reply_target(m, "public_reply") == (m.thread.conversation_id, {})
    assert reply_thread(m, "public_reply") == m.external_id
    assert reply_target(m, "dm")[0] == m.sender.platform_id and reply_thread(m, "dm") is None


def test_private_chats_and_forwarded_chats_are_not_group_chats() -> None:
    assert not in_group_chat(telegram("telegram/private_text"))
    assert not in_group_chat(meta("whatsapp/text")) and not in_group_chat(meta("messenger/text"))
    group = telegram("telegram/group_text")
    relayed = group.model_copy(update={"connector": "http:telegram"})
    assert relayed.recipients and not in_group_chat(relayed)  # the forwarding tool chose "chat"
    assert reply_thread(telegram("telegram/private_text"), "chat") == telegram("telegram/private_text").external_id


def test_our_connectors_use_their_platform_replier_and_forwarded_messages_the_webhook() -> None:
    assert replier_key(telegram("telegram/private_text")) == "telegram"
    assert replier_key(meta("whatsapp/text")) == "whatsapp"
    assert replier_key(meta("messenger/text")) == "facebook"
    assert replier_key(meta("instagram/mentions_comment")) == "instagram"
    assert replier_key(forwarded()) == "webhook"
    assert replier_key(forwarded(platform="instagram", channel="chat")) == "webhook"  # the social team's tool posts


def test_chat_replies_go_to_the_chat() -> None:
    group, topic = telegram("telegram/group_text"), telegram("telegram/forum_topic")
    assert reply_target(group, "chat") == (group.thread.conversation_id, {})
    assert reply_target(topic, "chat")[0] == topic.thread.conversation_id and ":" in (topic.thread.conversation_id or "")
    assert reply_target(meta("whatsapp/text"), "chat") == ("994501234567", {})
    assert chat_recipient(meta("messenger/text")) == meta("messenger/text").sender.platform_id


def test_instagram_comment_mention() -> None:
    m = meta("instagram/mentions_comment")
    assert reply_target(m, "public_reply") == ("17894227972186120", {
        "account_id": "17841405726653026", "media_id": "17918195224117851", "comment_id": "17894227972186120"})
    assert reply_target(m, "dm") == ("17894227972186120", {"comment_id": "17894227972186120"})


def test_instagram_caption_mention_can_be_answered_publicly_only() -> None:
    m = meta("instagram/mentions_media")
    assert reply_target(m, "public_reply") == ("17918195224117999", {
        "account_id": "17841405726653026", "media_id": "17918195224117999"})
    assert reply_target(m, "dm") == (None, {})  # no comment for a private reply, no known author


def test_facebook_post_and_comment_mentions() -> None:
    post, comment = meta("messenger/mention"), meta("messenger/mention_comment")
    assert reply_target(post, "public_reply") == reply_target(post, "dm") == (
        "100089001122334_733012345678901", {"post_id": "100089001122334_733012345678901"})
    assert reply_target(comment, "public_reply") == ("733012345678901_1120334455667788", {
        "post_id": "100089001122334_733012345678901", "comment_id": "733012345678901_1120334455667788"})
    edited = comment.model_copy(update={"external_id": f"{comment.external_id}#edit:1767265200"})
    assert reply_target(edited, "dm") == reply_target(comment, "dm")


def test_forwarded_mentions_carry_the_external_id_permalink_and_author() -> None:
    m = forwarded(conversation_id="1790012345000000000")
    ids = {"external_id": "1790012345678901234", "permalink": "https://x.com/rauf_az/status/1790012345678901234",
           "conversation_id": "1790012345000000000", "author_id": "44196397", "author_handle": "rauf_az"}
    assert reply_target(m, "public_reply") == ("1790012345678901234", ids)
    assert reply_target(m, "dm") == ("44196397", ids)


@pytest.mark.parametrize("mode", ["public_reply", "dm"])
def test_a_mention_without_what_the_mode_needs_has_no_target(mode: str) -> None:
    orphan = meta("instagram/mentions_comment").model_copy(update={"recipients": ()})
    assert reply_target(orphan, "public_reply") == (None, {})
    broken = meta("messenger/mention").model_copy(update={"external_id": "something-else"})
    assert reply_target(broken, mode) == (None, {})  # type: ignore[arg-type]
