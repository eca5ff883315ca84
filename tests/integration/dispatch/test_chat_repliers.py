"""Chat repliers against a local recording stand-in for the Telegram, WhatsApp, Graph API and webhook endpoints
(real HTTP)."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from dispatch.base import OutboundReply
from dispatch.chat_repliers import (ChatReplySettings, TelegramReplier, WebhookReplier, WhatsAppReplier,
                                    build_repliers)
from dispatch.meta_replier import MetaReplier
from frontdesk.errors import ReplyError, ReplyUnavailable
from tests.harness.recorder import Answer, Recorder

BOT_TOKEN = "123456789:AAH-reply_token"
WA_TOKEN = "EAAG-whatsapp-access-token"
SECRET = "webhook-signing-secret"


@pytest.fixture()
def far() -> Iterator[Recorder]:
    server = Recorder()
    yield server
    server.close()


def reply(**over: Any) -> OutboundReply:
    fields: dict[str, Any] = dict(channel="chat", connector="telegram", recipient="5123456789",
                                  body="Salam! Müraciətiniz qeydə alındı: FD-000123", message_id="ack.abc123@frontdesk",
                                  case_reference="FD-000123")
    fields.update(over)
    return OutboundReply(**fields)


def test_telegram_sends_once_to_the_chat(far: Recorder) -> None:
    TelegramReplier(far.base, SecretStr(BOT_TOKEN)).send(reply(thread_id="5123456789:1204"))
    [seen] = far.requests
    assert seen.path == f"/bot{BOT_TOKEN}/sendMessage"
    assert seen.json == {"chat_id": 5123456789, "text": "Salam! Müraciətiniz qeydə alındı: FD-000123",
                         "reply_parameters": {"message_id": 1204, "allow_sending_without_reply": True}}


def test_telegram_forum_topic_and_channel_recipients(far: Recorder) -> None:
    replier = TelegramReplier(far.base, BOT_TOKEN)
    replier.send(reply(recipient="-1003344556677:4402"))
    replier.send(reply(recipient="@bahisforumtr"))
    assert far.requests[0].json["chat_id"] == -1003344556677 and far.requests[0].json["message_thread_id"] == 4402
    assert far.requests[1].json["chat_id"] == "@bahisforumtr" and "reply_parameters" not in far.requests[1].json


def test_whatsapp_sends_once_with_bearer_token(far: Recorder) -> None:
    far.script = [Answer(body={"messaging_product": "whatsapp", "messages": [{"id": "wamid.OUT"}]})]
    WhatsAppReplier(far.base, "106540352242922", SecretStr(WA_TOKEN)).send(
        reply(connector="whatsapp", recipient="994501234567", thread_id="wamid.HBgMOTk0NTAxMjM0NTY3"))
    [seen] = far.requests
    assert seen.path == "/v21.0/106540352242922/messages"
    assert seen.headers["authorization"] == f"Bearer {WA_TOKEN}"
    assert seen.json == {"messaging_product": "whatsapp", "recipient_type": "individual", "to": "994501234567",
                         "type": "text", "text": {"body": "Salam! Müraciətiniz qeydə alındı: FD-000123"},
                         "context": {"message_id": "wamid.HBgMOTk0NTAxMjM0NTY3"}}


def test_webhook_is_signed_and_carries_an_idempotency_key(far: Recorder) -> None:
    WebhookReplier(f"{far.base}/hooks/frontdesk", SecretStr(SECRET)).send(reply())
    [seen] = far.requests
    assert seen.path == "/hooks/frontdesk" and seen.headers["content-type"] == "application/json"
    expected = hmac.new(SECRET.encode(), seen.raw, hashlib.sha256).hexdigest()
    assert seen.headers["x-frontdesk-signature"] == f"sha256={expected}"
    assert seen.headers["idempotency-key"] == "ack.abc123@frontdesk"
    assert seen.json == {"channel": "chat", "platform": None, "connector": "telegram", "mode": "chat",
                         "recipient": "5123456789", "target": {}, "in_reply_to": None,
                         "body": "Salam! Müraciətiniz qeydə alındı: FD-000123", "message_id": "ack.abc123@frontdesk",
                         "case_reference": "FD-000123"}


def test_webhook_carries_the_mode_and_the_ids_a_social_tool_needs(far: Recorder) -> None:
    target = {"external_id": "1790012345678901234", "permalink": "https://x.com/rauf_az/status/1790012345678901234",
              "author_id": "44196397"}
    replier = WebhookReplier(f"{far.base}/hook", SECRET)
    replier.send(reply(channel="social", connector="http:twitter", recipient="1790012345678901234",
                       body="Thanks, please DM us.", extra={"mode": "public_reply", "platform": "twitter", **target}))
    replier.send(reply(channel="social", connector="http:twitter", recipient="44196397",
                       extra={"mode": "dm", "platform": "twitter", **target}))
    public, private = (r.json for r in far.requests)
    assert (public["mode"], public["recipient"], public["platform"]) == ("public_reply", "1790012345678901234",
                                                                          "twitter")
    assert public["target"] == target and private["target"] == target
    assert (private["mode"], private["recipient"]) == ("dm", "44196397")


def test_429_with_retry_after_is_waited_out_then_succeeds(far: Recorder) -> None:
    far.script = [Answer(429, {"ok": False, "error_code": 429, "description": "Too Many Requests"},
                         {"Retry-After": "1"})]
    started = time.monotonic()
    TelegramReplier(far.base, BOT_TOKEN).send(reply())
    assert time.monotonic() - started >= 0.95 and len(far.requests) == 2
    assert far.requests[0].raw == far.requests[1].raw


def test_telegram_retry_after_in_the_body_is_honoured(far: Recorder) -> None:
    far.script = [Answer(429, {"ok": False, "error_code": 429, "description": "Too Many Requests: retry after 30",
                               "parameters": {"retry_after": 30}})]
    with pytest.raises(ReplyUnavailable) as info:  # longer than max_retry_after_s: left to the relay
        TelegramReplier(far.base, BOT_TOKEN, max_retry_after_s=5).send(reply())
    assert info.value.retry_after == 30 and len(far.requests) == 1  # type: ignore[attr-defined]


@pytest.mark.parametrize("make", [
    lambda base: TelegramReplier(base, BOT_TOKEN, backoff_s=0.01),
    lambda base: WhatsAppReplier(base, "106540352242922", WA_TOKEN, backoff_s=0.01),
    lambda base: WebhookReplier(base, SECRET, backoff_s=0.01),
], ids=["telegram", "whatsapp", "webhook"])
def test_5xx_is_retried_then_unavailable(far: Recorder, make: Any) -> None:
    far.script = [Answer(500, {"ok": False, "description": "Internal Server Error"}) for _ in range(3)]
    with pytest.raises(ReplyUnavailable):
        make(far.base).send(reply())
    assert len(far.requests) == 3
    far.script = [Answer(503, {})]
    make(far.base).send(reply())  # one more 5xx, then accepted
    assert len(far.requests) == 5


@pytest.mark.parametrize("answer", [
    Answer(400, {"ok": False, "error_code": 400, "description": "Bad Request: chat not found"}),
    Answer(403, {"ok": False, "error_code": 403, "description": "Forbidden: bot was blocked by the user"}),
    Answer(200, {"ok": False, "description": "odd"}),
], ids=["400", "403", "ok-false"])
def test_permanent_failures_are_reply_errors(far: Recorder, answer: Answer) -> None:
    far.script = [answer]
    with pytest.raises(ReplyError) as info:
        TelegramReplier(far.base, BOT_TOKEN).send(reply())
    assert not isinstance(info.value, ReplyUnavailable) and len(far.requests) == 1
    assert BOT_TOKEN not in str(info.value)


def test_whatsapp_400_is_permanent_but_its_throttling_codes_are_not(far: Recorder) -> None:
    replier = WhatsAppReplier(far.base, "106540352242922", WA_TOKEN, backoff_s=0.01, max_attempts=2)
    far.script = [Answer(400, {"error": {"message": "Invalid parameter", "type": "OAuthException", "code": 100}})]
    with pytest.raises(ReplyError) as info:
        replier.send(reply(recipient="994501234567"))
    assert not isinstance(info.value, ReplyUnavailable) and WA_TOKEN not in str(info.value)
    far.script = [Answer(400, {"error": {"message": "Rate limit hit", "code": 130429}})]
    replier.send(reply(recipient="994501234567"))
    assert len(far.requests) == 3


def test_connection_refused_is_unavailable() -> None:
    with pytest.raises(ReplyUnavailable) as info:
        TelegramReplier("http://127.0.0.1:9", BOT_TOKEN, backoff_s=0.01).send(reply())
    assert BOT_TOKEN not in str(info.value)


def test_build_repliers_from_settings(far: Recorder) -> None:
    assert build_repliers(ChatReplySettings()) == {}
    settings = ChatReplySettings(telegram_api_base=far.base, telegram_bot_token=SecretStr(BOT_TOKEN),
                                 whatsapp_api_base=far.base, whatsapp_phone_number_id="106540352242922",
                                 whatsapp_access_token=SecretStr(WA_TOKEN), webhook_url=f"{far.base}/hook",
                                 webhook_secret=SecretStr(SECRET))
    repliers = build_repliers(settings)
    assert set(repliers) == {"telegram", "whatsapp", "webhook"}
    for replier in repliers.values():
        replier.send(reply())
    assert [r.path for r in far.requests] == [f"/bot{BOT_TOKEN}/sendMessage", "/v21.0/106540352242922/messages",
                                              "/hook"]
    with pytest.raises(ValidationError):
        ChatReplySettings(webhook_url=f"{far.base}/hook")  # never unsigned
    with pytest.raises(ValidationError):
        ChatReplySettings(whatsapp_phone_number_id="106540352242922")


PAGE_TOKEN = "EAAB-page-access-token"


def meta_reply(platform: str, mode: str, recipient: str, **ids: str) -> OutboundReply:
    return reply(channel="chat" if mode == "chat" else "social", connector=platform, recipient=recipient,
                 body="Salam!", extra={"mode": mode, "platform": platform, **ids})


def test_meta_chat_uses_the_send_api_with_the_page_token(far: Recorder) -> None:
    replier = MetaReplier(far.base, SecretStr(PAGE_TOKEN))
    replier.send(meta_reply("facebook", "chat", "6954875731257890"))
    replier.send(meta_reply("instagram", "chat", "1240993217703251"))
    messenger, direct = far.requests
    assert messenger.path == direct.path == "/v21.0/me/messages"
    assert messenger.headers["authorization"] == f"Bearer {PAGE_TOKEN}" and PAGE_TOKEN not in messenger.path
    assert messenger.json == {"recipient": {"id": "6954875731257890"}, "message": {"text": "Salam!"},
                              "messaging_type": "RESPONSE"}
    assert direct.json == {"recipient": {"id": "1240993217703251"}, "message": {"text": "Salam!"}}


def test_meta_dm_is_a_private_reply_to_the_comment_or_post(far: Recorder) -> None:
    replier = MetaReplier(far.base, PAGE_TOKEN, page_id="104587302351112")
    replier.send(meta_reply("facebook", "dm", "733_9001", post_id="100089_733", comment_id="733_9001"))
    replier.send(meta_reply("facebook", "dm", "100089_733", post_id="100089_733"))
    replier.send(meta_reply("instagram", "dm", "17894227972186120", comment_id="17894227972186120"))
    assert {r.path for r in far.requests} == {"/v21.0/104587302351112/messages"}
    assert [r.json["recipient"] for r in far.requests] == [
        {"comment_id": "733_9001"}, {"post_id": "100089_733"}, {"comment_id": "17894227972186120"}]
    assert all(r.json["message"] == {"text": "Salam!"} for r in far.requests)


def test_meta_public_replies_go_under_the_comment_or_to_the_mentions_edge(far: Recorder) -> None:
    replier = MetaReplier(far.base, PAGE_TOKEN, api_version="v22.0")
    replier.send(meta_reply("facebook", "public_reply", "733_9001", post_id="100089_733", comment_id="733_9001"))
    replier.send(meta_reply("facebook", "public_reply", "100089_733", post_id="100089_733"))
    replier.send(meta_reply("instagram", "public_reply", "17894227972186120", account_id="17841405726653026",
                            media_id="17918195224117851", comment_id="17894227972186120"))
    replier.send(meta_reply("instagram", "public_reply", "17918195224117999", account_id="17841405726653026",
                            media_id="17918195224117999"))
    assert [r.path for r in far.requests] == ["/v22.0/733_9001/comments", "/v22.0/100089_733/comments",
                                              "/v22.0/17841405726653026/mentions", "/v22.0/17841405726653026/mentions"]
    assert far.requests[0].json == far.requests[1].json == {"message": "Salam!"}
    assert far.requests[2].json == {"media_id": "17918195224117851", "comment_id": "17894227972186120",
                                    "message": "Salam!"}
    assert far.requests[3].json == {"media_id": "17918195224117999", "message": "Salam!"}


@pytest.mark.parametrize("bad", [
    meta_reply("instagram", "dm", "17918195224117999", media_id="17918195224117999"),  # a caption: no comment
    meta_reply("instagram", "public_reply", "17894227972186120", comment_id="17894227972186120"),  # no account
    meta_reply("facebook", "carrier-pigeon", "1"),
], ids=["dm-without-comment", "public-without-account", "unknown-mode"])
def test_meta_reply_without_the_ids_it_needs_is_a_permanent_error(far: Recorder, bad: OutboundReply) -> None:
    with pytest.raises(ReplyError) as info:
        MetaReplier(far.base, PAGE_TOKEN).send(bad)
    assert not isinstance(info.value, ReplyUnavailable) and far.requests == []


def test_meta_graph_throttling_is_retried_and_other_errors_are_not(far: Recorder) -> None:
    replier = MetaReplier(far.base, PAGE_TOKEN, backoff_s=0.01)
    far.script = [Answer(400, {"error": {"message": "Calls to this api have exceeded the rate limit.", "code": 613}})]
    replier.send(meta_reply("facebook", "chat", "6954875731257890"))
    assert len(far.requests) == 2
    far.script = [Answer(400, {"error": {"message": "(#10) This message is sent outside of allowed window.",
                                         "code": 10, "error_subcode": 2018278}})]
    with pytest.raises(ReplyError) as info:
        replier.send(meta_reply("facebook", "chat", "6954875731257890"))
    assert "outside of allowed window" in str(info.value) and PAGE_TOKEN not in str(info.value)
    assert len(far.requests) == 3


def test_build_repliers_serves_facebook_and_instagram_with_one_meta_replier(far: Recorder) -> None:
    repliers = build_repliers(ChatReplySettings(meta_api_base=far.base, meta_page_access_token=SecretStr(PAGE_TOKEN),
                                                meta_page_id="104587302351112"))
    assert set(repliers) == {"facebook", "instagram"} and repliers["facebook"] is repliers["instagram"]
    repliers["instagram"].send(meta_reply("instagram", "chat", "1240993217703251"))
    assert far.requests[0].path == "/v21.0/104587302351112/messages"
    with pytest.raises(ValidationError):
        ChatReplySettings(meta_page_id="my-page")


def test_the_relay_waits_out_a_flood_wait_longer_than_the_replier_does(far: Recorder) -> None:
    """Telegram's 429 ``retry_after`` (here 10 minutes) is left to the relay: it must not ask again
    sooner (each early request prolongs the flood wait), however short its own backoff is."""
    from datetime import timedelta

    from dispatch.relay import OutboxRelay
    from frontdesk.bus.memory import MemoryBus
    from tests.unit.dispatch.test_cases import Clock, chat
    from tests.unit.dispatch.test_review_regressions import make_store, outbox

    clock = Clock()
    store = make_store(clock)
    store.apply(chat(1, "5123456789", "5123456789"))
    far.script = [Answer(429, {"ok": False, "error_code": 429, "description": "Too Many Requests: retry after 600",
                               "parameters": {"retry_after": 600}})]
    relay = OutboxRelay(store, MemoryBus(), {"telegram": TelegramReplier(far.base, BOT_TOKEN)})
    relay.run_once()
    for _ in range(9):  # 9 minutes: the relay's own backoff would have tried several times
        clock.now += timedelta(seconds=60)
        relay.run_once()
    assert len(far.requests) == 1 and outbox(store, "ack")[0][:2] == ("pending", 1)
    clock.now += timedelta(seconds=61)
    relay.run_once()
    assert len(far.requests) == 2 and outbox(store, "ack")[0][0] == "sent"


@pytest.mark.parametrize("header", ["inf", "nan", "1e400"])
def test_a_retry_after_that_is_not_a_number_of_seconds_is_ignored(far: Recorder, header: str) -> None:
    far.script = [Answer(429, {"ok": False, "error_code": 429}, {"Retry-After": header})] * 2
    with pytest.raises(ReplyUnavailable) as info:
        TelegramReplier(far.base, BOT_TOKEN, max_attempts=2, backoff_s=0.01).send(reply())
    assert info.value.retry_after is None and len(far.requests) == 2  # type: ignore[attr-defined]
