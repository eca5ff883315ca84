"""Platform payloads -> InboundMessage: the documented webhook fixtures, edits, media, hostile text, bad shapes."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from frontdesk.codec import decode, encode
from frontdesk.errors import ConfigError
from frontdesk.messages import InboundMessage, message_id
from ingest.http.api import MessageIn, api_message
from ingest.http.meta import MetaConnectors, meta_batch, meta_normalised
from ingest.http.settings import HttpIntakeSettings
from ingest.http.normalise import (
    Normalised,
    PayloadError,
    clean_text,
    content_digest,
    json_bytes,
    media_type,
    reference_digest,
    single_line,
)
from ingest.http.telegram_update import telegram_normalised, telegram_update

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "webhooks"
NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
CONNECTORS = MetaConnectors(whatsapp="whatsapp:main", facebook="facebook:page", instagram="instagram:biz")


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))


def telegram(payload: Any, received_at: datetime = NOW) -> InboundMessage | None:
    return telegram_update(payload, connector="telegram", received_at=received_at)


def meta(payload: Any, received_at: datetime = NOW) -> list[InboundMessage]:
    return meta_batch(payload, connectors=CONNECTORS, received_at=received_at)


def meta_parts(payload: Any) -> Normalised:
    return meta_normalised(payload, connectors=CONNECTORS, received_at=NOW)


def one(payload: Any) -> InboundMessage:
    messages = meta(payload)
    assert len(messages) == 1
    return messages[0]


def all_fixtures() -> list[str]:
    return sorted(str(p.relative_to(FIXTURES).with_suffix("")) for p in FIXTURES.glob("*/*.json"))


@pytest.mark.parametrize("name", all_fixtures())
def test_every_fixture_normalises_to_valid_records_deterministically(name: str) -> None:
    payload = fixture(name)
    later = datetime(2026, 6, 1, tzinfo=UTC)
    if name.startswith("telegram/"):
        first, again = [m for m in [telegram(payload)] if m], [m for m in [telegram(payload, later)] if m]
    else:
        first, again = meta(payload), meta(payload, later)
    assert [m.id for m in first] == [m.id for m in again]
    for m in first:
        assert decode(encode(m), InboundMessage) == m
        assert m.id == message_id(m.connector, m.external_id)


# --- Telegram -------------------------------------------------------------------------------------


def test_telegram_private_text() -> None:
    m = telegram(fixture("telegram/private_text"))
    assert m is not None
    assert (m.connector, m.platform, m.channel, m.external_id) == ("telegram", "telegram", "chat", "5123456789:1204")
    assert m.sender.platform_id == "5123456789" and m.sender.handle == "elvin_m"
    assert m.sender.name == "Elvin Məmmədov"
    assert m.thread.conversation_id == "5123456789" and m.recipients == ()
    assert m.text == m.full_text == "Salam, 3 gündür pulumu çıxara bilmirəm. Hesabım: 448812"
    assert m.sent_at == datetime.fromtimestamp(1767261600, UTC) and m.received_at == NOW
    assert not m.flags.edited and not m.flags.auto_submitted


def test_telegram_group_message_is_from_the_member_in_the_group_conversation() -> None:
    m = telegram(fixture("telegram/group_text"))
    assert m is not None
    assert m.thread.conversation_id == "-1001987654321"
    assert (m.sender.platform_id, m.sender.name, m.sender.handle) == ("6011223344", "Анна Петрова", None)
    assert [(r.platform_id, r.name) for r in m.recipients] == [("-1001987654321", "BetAz Support Community")]
    assert m.thread.in_reply_to == "-1001987654321:98190"
    assert m.permalink == "https://t.me/betaz_support/98211"


def test_telegram_forum_topic_is_its_own_conversation() -> None:
    m = telegram(fixture("telegram/forum_topic"))
    assert m is not None and m.thread.conversation_id == "-1003344556677:4402" and m.permalink is None


def test_telegram_edit_is_a_new_message_pointing_at_the_original() -> None:
    original, edit = telegram(fixture("telegram/private_text")), telegram(fixture("telegram/edited_message"))
    assert original is not None and edit is not None
    assert edit.flags.edited and edit.id != original.id
    assert edit.external_id.startswith("5123456789:1204#edit:1767261655.")
    assert edit.thread.references == (original.external_id,)
    assert edit.sent_at == datetime.fromtimestamp(1767261655, UTC)
    assert "250 AZN" in edit.text


def test_telegram_edit_without_edit_date_is_versioned_by_its_text() -> None:
    payload = fixture("telegram/edited_message")
    del payload["edited_message"]["edit_date"]
    first = telegram(payload)
    payload["edited_message"]["text"] = "another edit"
    second = telegram(payload)
    assert first is not None and second is not None and first.id != second.id


def test_telegram_photo_keeps_the_largest_size_as_metadata() -> None:
    m = telegram(fixture("telegram/photo_caption"))
    assert m is not None and m.text == "Bu ekran görüntüsüdür, xəta verir"
    (photo,) = m.attachments
    assert (photo.name, photo.content_type, photo.size) == ("photo.jpg", "image/jpeg", 98112)
    assert photo.sha256 == reference_digest("telegram", "AQADIdoxG1jhiUt9") and photo.stored_at is None
    assert (photo.sha256_of, photo.ref) == (
        "reference", "AgACAgIAAxkBAAIEt2ZxQ1mK3vYf0Bq8p1mQbHkAAb4AAiHaMRtY4YlLq4Yx3Y9lqv8BAAMCAAN4AAM1BA")


@pytest.mark.parametrize(("name", "expected"), [
    ("document", ("kimlik_on_yuz.pdf", "application/pdf", 482113)),
    ("voice", ("voice.ogg", "audio/ogg", 51200)),
    ("sticker", ("sticker.webp", "image/webp", 27830)),
])
def test_telegram_media(name: str, expected: tuple[str, str, int]) -> None:
    m = telegram(fixture(f"telegram/{name}"))
    assert m is not None
    assert [(a.name, a.content_type, a.size) for a in m.attachments] == [expected]


def test_telegram_sticker_and_emoji_only_messages_keep_their_emoji() -> None:
    sticker, emoji = telegram(fixture("telegram/sticker")), telegram(fixture("telegram/emoji_only"))
    assert sticker is not None and sticker.text == "😡"
    assert emoji is not None and emoji.text == "😡😡👨‍👩‍👧🇦🇿"


def test_telegram_animated_sticker_type() -> None:
    payload = fixture("telegram/sticker")
    payload["message"]["sticker"]["is_animated"] = True
    m = telegram(payload)
    assert m is not None and [(a.name, a.content_type) for a in m.attachments] == [("sticker.tgs",
                                                                                    "application/x-tgsticker")]


def test_telegram_channel_post_comes_from_the_channel() -> None:
    m = telegram(fixture("telegram/channel_post"))
    assert m is not None
    assert (m.sender.platform_id, m.sender.handle) == ("-1002233445566", "bahisforumtr")
    assert m.sender.name == "Bahis Forum TR"
    assert m.permalink == "https://t.me/bahisforumtr/311"


@pytest.mark.parametrize("name", ["callback_query", "new_chat_members"])
def test_telegram_non_messages_are_ignored(name: str) -> None:
    assert telegram(fixture(f"telegram/{name}")) is None


def test_telegram_bot_senders_are_flagged_so_no_acknowledgement_loops() -> None:
    payload = fixture("telegram/private_text")
    payload["message"]["from"]["is_bot"] = True
    m = telegram(payload)
    assert m is not None and m.flags.auto_submitted


@pytest.mark.parametrize(("mutate", "loc"), [
    (lambda p: p["message"].pop("chat"), ("message", "chat")),
    (lambda p: p["message"].update(chat=[1]), ("message", "chat")),
    (lambda p: p["message"].update(message_id={"x": 1}), ("message", "message_id")),
    (lambda p: p["message"].update(text=42), ("message", "text")),
    (lambda p: p["message"].update(date="yesterday"), ("message", "date")),
    (lambda p: p.update(message="hi"), ("message",)),
])
def test_telegram_wrong_shapes_name_the_field(mutate: Any, loc: tuple[str, ...]) -> None:
    payload = fixture("telegram/private_text")
    mutate(payload)
    with pytest.raises(PayloadError) as err:
        telegram(payload)
    assert err.value.loc == loc
    assert err.value.detail()[0]["loc"] == ["body", *loc]


# --- Telegram: messages sent on behalf of a chat, automatic forwards, anonymous admins ---------------

CHANNEL_BOT = {"id": 136817688, "is_bot": True, "first_name": "Channel", "username": "Channel_Bot"}


def on_behalf_of(sender_chat: dict[str, Any], stand_in: dict[str, Any] = CHANNEL_BOT) -> dict[str, Any]:
    """group_text sent by a chat: the Bot API puts a stand-in user in ``from`` and the real sender in ``sender_chat``."""
    payload = fixture("telegram/group_text")
    payload["message"].update({"from": stand_in, "sender_chat": sender_chat})
    return payload


def test_telegram_message_on_behalf_of_a_channel_is_from_that_channel() -> None:
    first = telegram(on_behalf_of({"id": -1002000000001, "title": "Rauf's\nchannel", "username": "rauf_az",
                                   "type": "channel"}))
    second = telegram(on_behalf_of({"id": -1002000000002, "title": "Elena shop", "type": "channel"}))
    assert first is not None and second is not None
    assert (first.sender.platform_id, first.sender.name, first.sender.handle) == (
        "-1002000000001", "Rauf's channel", "rauf_az")
    assert (second.sender.platform_id, second.sender.name, second.sender.handle) == (
        "-1002000000002", "Elena shop", None)
    assert not first.flags.auto_submitted and not second.flags.auto_submitted  # Channel_Bot is a stand-in
    assert first.thread.conversation_id == "-1001987654321"
    assert [r.platform_id for r in first.recipients] == ["-1001987654321"]


def test_telegram_automatic_forward_of_our_channel_post_is_not_a_customer_message() -> None:
    payload = on_behalf_of({"id": -1002111111111, "title": "BetAz News", "username": "betaz_news", "type": "channel"},
                           {"id": 777000, "is_bot": False, "first_name": "Telegram"})
    payload["message"]["is_automatic_forward"] = True
    assert telegram(payload) is None
    del payload["message"]["is_automatic_forward"]
    assert telegram(payload) is not None


def test_telegram_anonymous_group_admin_is_staff_and_ignored() -> None:
    group = fixture("telegram/group_text")["message"]["chat"]
    payload = on_behalf_of(group, {"id": 1087968824, "is_bot": True, "first_name": "Group",
                                   "username": "GroupAnonymousBot"})
    assert telegram(payload) is None
    edited = {"update_id": 1, "edited_message": {**payload["message"], "edit_date": 1767261800}}
    assert telegram(edited) is None
    post = telegram(fixture("telegram/channel_post"))  # a channel's own post: sender_chat is the chat too
    assert post is not None and post.sender.platform_id == "-1002233445566"


def test_telegram_two_edits_in_one_second_get_two_ids_and_a_redelivery_keeps_its_id() -> None:
    payload = fixture("telegram/edited_message")
    first, again = telegram(payload), telegram(copy.deepcopy(payload), datetime(2026, 6, 1, tzinfo=UTC))
    payload["edited_message"]["text"] = "250 AZN, not 200"
    second = telegram(payload)
    assert first is not None and again is not None and second is not None
    assert first.id == again.id and first.id != second.id
    assert first.external_id.startswith("5123456789:1204#edit:1767261655.")
    assert second.external_id.startswith("5123456789:1204#edit:1767261655.")
    assert first.thread.references == second.thread.references == ("5123456789:1204",)


def test_telegram_contact_location_and_venue_become_short_texts() -> None:
    def shared(**fields: Any) -> InboundMessage | None:
        payload = fixture("telegram/private_text")
        del payload["message"]["text"]
        payload["message"].update(fields)
        return telegram(payload)

    contact = shared(contact={"phone_number": "+994501234567", "first_name": "Elvin", "last_name": "M\r\nX",
                              "user_id": 5123456789})
    location = shared(location={"latitude": 40.409264, "longitude": 49.867092})
    venue = shared(location={"latitude": 40.4, "longitude": 49.8},
                   venue={"location": {"latitude": 40.4, "longitude": 49.8}, "title": "BetAz office",
                          "address": "Nizami St 5"})
    assert contact is not None and contact.text == "[contact Elvin M X +994501234567]"
    assert location is not None and location.text == "[location 40.40926,49.86709]"
    assert venue is not None and venue.text == "[location 40.4,49.8] BetAz office, Nizami St 5"
    with pytest.raises(PayloadError) as err:
        shared(location={"latitude": "north", "longitude": 49.8})
    assert err.value.loc == ("message", "location", "latitude")


def test_telegram_live_location_updates_are_not_new_messages() -> None:
    payload = fixture("telegram/edited_message")
    del payload["edited_message"]["text"]
    payload["edited_message"]["location"] = {"latitude": 40.41, "longitude": 49.87, "live_period": 900}
    assert telegram(payload) is None


def test_telegram_normalised_rejects_a_malformed_update_with_its_bytes() -> None:
    payload = fixture("telegram/private_text")
    payload["message"]["date"] = "yesterday"
    raw = json.dumps(payload).encode()
    found = telegram_normalised(json.loads(raw), connector="telegram", received_at=NOW, raw=raw)
    assert found.messages == []
    (rejected,) = found.rejected
    assert (rejected.connector, rejected.where, rejected.raw) == ("telegram", "update:874512301", raw)
    assert rejected.error.loc == ("message", "date")
    default = telegram_normalised(payload, connector="telegram", received_at=NOW)
    assert json.loads(default.rejected[0].raw) == payload
    good = telegram_normalised(fixture("telegram/private_text"), connector="telegram", received_at=NOW)
    assert [m.external_id for m in good.messages] == ["5123456789:1204"] and good.rejected == []
    assert telegram_normalised(fixture("telegram/callback_query"), connector="telegram",
                               received_at=NOW).messages == []
    with pytest.raises(PayloadError):
        telegram_normalised([], connector="telegram", received_at=NOW)


def test_non_object_payloads_are_refused() -> None:
    for payload in ([], "x", None, 3):
        with pytest.raises(PayloadError):
            telegram(payload)
        with pytest.raises(PayloadError):
            meta(payload)


# --- WhatsApp -------------------------------------------------------------------------------------


def test_whatsapp_text() -> None:
    m = one(fixture("whatsapp/text"))
    assert (m.connector, m.platform, m.channel) == ("whatsapp:main", "whatsapp", "chat")
    assert m.external_id == "wamid.HBgMOTk0NTAxMjM0NTY3FQIAEhgUM0VCMEQ0NzE4QTdGNzBDRjQ3RTIA"
    assert (m.sender.platform_id, m.sender.phone, m.sender.name) == ("994501234567", "+994501234567", "Leyla Əliyeva")
    assert m.thread.conversation_id == "106540352242922:994501234567"
    assert m.sent_at == datetime.fromtimestamp(1767263000, UTC)


def test_whatsapp_media_uses_the_platform_hash() -> None:
    image, document = one(fixture("whatsapp/image")), one(fixture("whatsapp/document"))
    expected = base64.b64decode("SfInY0gGKTsJlUWbwxC1k+FAD0FZHvzwfpvO0zX0GUI=").hex()
    assert [(a.name, a.content_type, a.sha256) for a in image.attachments] == [("image.jpg", "image/jpeg", expected)]
    assert image.text == "Ödəniş qəbzi"
    assert [(a.name, a.content_type) for a in document.attachments] == [("passport_scan.pdf", "application/pdf")]
    assert document.attachments[0].sha256 == hashlib.sha256(b"passport_scan.pdf").hexdigest()
    assert (image.attachments[0].sha256_of, image.attachments[0].ref) == ("content", "1003383421387256")


def test_whatsapp_voice_and_sticker() -> None:
    voice, sticker = one(fixture("whatsapp/audio_voice")), one(fixture("whatsapp/sticker"))
    assert voice.attachments[0].content_type == "audio/ogg" and voice.attachments[0].name.startswith("voice")
    assert voice.text == "" and sticker.text == ""
    assert sticker.attachments[0].content_type == "image/webp"


def test_whatsapp_replies_reactions_and_buttons() -> None:
    reply, reaction = one(fixture("whatsapp/text_reply")), one(fixture("whatsapp/reaction"))
    button = one(fixture("whatsapp/interactive_button_reply"))
    assert reply.thread.in_reply_to == "wamid.HBgMOTk0NTAxMjM0NTY3FQIAERgSNzQ3QkFCMDA5QzQ1RjY0RTk2AA=="
    assert reaction.text == "👎" and reaction.thread.in_reply_to == reply.thread.in_reply_to
    assert button.text == "Para çekme sorunu"
    assert one(fixture("whatsapp/emoji_only")).text == "🙏🙏🙏"


@pytest.mark.parametrize("name", ["statuses", "reaction_removed", "unsupported"])
def test_whatsapp_non_messages_are_ignored(name: str) -> None:
    assert meta(fixture(f"whatsapp/{name}")) == []


def test_whatsapp_batch_keeps_order_and_names() -> None:
    messages = meta(fixture("whatsapp/batch"))
    assert [(m.sender.phone, m.sender.name) for m in messages] == [("+994501234567", "Leyla Əliyeva"),
                                                                   ("+905321234567", "Ayşe Kaya")]


def test_duplicates_within_a_batch_are_published_once() -> None:
    payload = fixture("whatsapp/text")
    payload["entry"].append(copy.deepcopy(payload["entry"][0]))
    assert len(meta(payload)) == 1


def test_whatsapp_missing_sender_names_the_field() -> None:
    payload = fixture("whatsapp/text")
    del payload["entry"][0]["changes"][0]["value"]["messages"][0]["from"]
    with pytest.raises(PayloadError) as err:
        meta(payload)
    assert err.value.loc == ("entry", 0, "changes", 0, "value", "messages", 0, "from")


# --- Messenger and Instagram ----------------------------------------------------------------------


def test_messenger_text_and_reply() -> None:
    text, reply = one(fixture("messenger/text")), one(fixture("messenger/reply"))
    assert (text.connector, text.platform, text.channel) == ("facebook:page", "facebook", "chat")
    assert text.sender.platform_id == "6954875731257890"
    assert text.thread.conversation_id == "104587302351112:6954875731257890"
    assert text.sent_at == datetime.fromtimestamp(1767264100.187, UTC)
    assert reply.thread.in_reply_to == "m_1fTq8oLumEyIp3Q2MR-aY7IfLZDamVrALniheU"


def test_messenger_attachments_are_metadata_by_url() -> None:
    m = one(fixture("messenger/attachments"))
    assert [(a.name, a.content_type, a.size) for a in m.attachments] == [
        ("441187654_1201456_n.jpg", "image/jpeg", 0), ("bank_statement.pdf", "application/pdf", 0)]
    assert len({a.sha256 for a in m.attachments}) == 2 and m.text == ""
    assert {a.sha256_of for a in m.attachments} == {"reference"}
    assert m.attachments[1].ref == ("https://cdn.fbsbx.com/v/t59.2708-21/441190001_bank_statement.pdf/"
                                    "bank_statement.pdf?_nc_cat=109&ccb=1-7&oh=03_Q7cD1QH&oe=6790F1A3")


def test_messenger_sticker_sent_as_image_and_sticker_counts_once() -> None:
    m = one(fixture("messenger/sticker"))
    assert len(m.attachments) == 1 and m.attachments[0].content_type == "image/png"
    assert m.attachments[0].sha256 == reference_digest("facebook", "sticker:369239263222822")


def test_messenger_edit_is_flagged_and_distinct() -> None:
    original, edit = one(fixture("messenger/text")), one(fixture("messenger/message_edit"))
    assert edit.flags.edited and edit.id != original.id
    assert edit.thread.references == (original.external_id,)
    assert edit.external_id == f"{original.external_id}#edit:1"


@pytest.mark.parametrize("name", ["messenger/echo", "messenger/delivery_read", "instagram/deleted"])
def test_echoes_receipts_and_deletions_are_ignored(name: str) -> None:
    assert meta(fixture(name)) == []


def test_page_mention_is_a_social_message_from_its_author() -> None:
    m = one(fixture("messenger/mention"))
    assert (m.channel, m.platform, m.external_id) == ("social", "facebook", "mention:100089001122334_733012345678901")
    assert (m.sender.platform_id, m.sender.name) == ("100089001122334", "Kamran Hüseynov")
    assert m.thread.conversation_id == "100089001122334_733012345678901" and "biabırçılıqdır" in m.text
    assert [p.platform_id for p in m.recipients] == ["104587302351112"]  # the mentioned Page


def test_instagram_direct_message_keeps_html_as_inert_text() -> None:
    m = one(fixture("instagram/text"))
    assert (m.connector, m.platform) == ("instagram:biz", "instagram")
    assert m.text == "Hi, I was charged twice for the same deposit <b>please help</b>"
    assert one(fixture("instagram/image")).attachments[0].name == "image"
    edit = one(fixture("instagram/message_edit"))
    assert edit.flags.edited and edit.thread.references == (m.external_id,)


def test_instagram_mentions_carry_ids_only() -> None:
    comment, media = one(fixture("instagram/mentions_comment")), one(fixture("instagram/mentions_media"))
    assert (comment.channel, comment.external_id) == ("social", "mention:17894227972186120")
    assert comment.thread.conversation_id == "17918195224117851"
    assert comment.sender.platform_id is None and not comment.flags.suppress_autoreply
    assert [p.platform_id for p in comment.recipients] == ["17841405726653026"]  # our account: replies go there
    assert media.external_id == "mention:media:17918195224117999"


# --- Meta: events without a sender, malformed parts, attachment references, shared content ---------

POLICY = {"recipient": {"id": "104587302351112"}, "timestamp": 1458692752478,
          "policy_enforcement": {"action": "block", "reason": "The bot violated our Platform Policies"}}


def messenger_with(*events: Any) -> dict[str, Any]:
    payload = fixture("messenger/text")
    payload["entry"][0]["messaging"].extend(events)
    return payload


def test_events_without_sender_that_are_not_messages_are_ignored() -> None:
    assert meta({"object": "page", "entry": [{"id": "104587302351112", "messaging": [POLICY]}]}) == []
    assert [m.sender.platform_id for m in meta(messenger_with(POLICY, {"read": {"watermark": 1}}))] == [
        "6954875731257890"]


def test_a_customer_message_without_sender_names_the_field() -> None:
    payload = fixture("messenger/text")
    payload["entry"][0]["messaging"][0]["sender"] = {}
    with pytest.raises(PayloadError) as err:
        meta(payload)
    assert err.value.loc == ("entry", 0, "messaging", 0, "sender", "id")


def test_one_malformed_event_is_rejected_alone_and_the_rest_kept() -> None:
    bad = copy.deepcopy(fixture("messenger/text")["entry"][0]["messaging"][0])
    bad["message"] = {"text": "no mid"}
    payload = messenger_with(bad, POLICY, "not an event")
    payload["entry"].append(fixture("messenger/reply")["entry"][0])
    found = meta_parts(payload)
    assert [m.external_id for m in found.messages] == [
        fixture("messenger/text")["entry"][0]["messaging"][0]["message"]["mid"],
        fixture("messenger/reply")["entry"][0]["messaging"][0]["message"]["mid"]]
    assert [(r.connector, r.where, str(r.error)) for r in found.rejected] == [
        ("facebook:page", "webhook:entry.0.messaging.3", "entry.0.messaging.3: expected an object"),
        ("facebook:page", "webhook:entry.0.messaging.1", "entry.0.messaging.1.message.mid: field required")]
    assert json.loads(found.rejected[1].raw) == bad
    with pytest.raises(PayloadError):
        meta(payload)  # meta_batch is all or nothing


def test_one_malformed_whatsapp_message_is_rejected_alone() -> None:
    payload = fixture("whatsapp/batch")
    payload["entry"][0]["changes"][0]["value"]["messages"][0]["text"] = "not an object"
    payload["entry"].append({"id": "1", "changes": [{"field": "messages", "value": {"contacts": 7}}]})
    found = meta_parts(payload)
    assert [m.sender.phone for m in found.messages] == ["+905321234567"]
    assert [(r.where, r.error.loc) for r in found.rejected] == [
        ("webhook:entry.0.changes.0.value.messages.0", ("entry", 0, "changes", 0, "value", "messages", 0, "text")),
        ("webhook:entry.1.changes.0", ("entry", 1, "changes", 0, "value", "contacts"))]


def test_malformed_entries_and_arrays_are_rejected_without_raising() -> None:
    found = meta_parts({"object": "page", "entry": "everything"})
    assert found.messages == [] and [(r.where, str(r.error)) for r in found.rejected] == [
        ("webhook:entry", "entry: expected an array")]
    found = meta_parts({"object": "instagram", "entry": [None, {"id": "1", "messaging": {}}]})
    assert [r.where for r in found.rejected] == ["webhook:entry.0", "webhook:entry.1.messaging"]
    assert meta_parts({"object": 5, "entry": 5}).rejected == []  # not a Meta object we subscribe to
    change = {"field": "feed", "value": "not an object"}
    assert meta_parts({"object": "page", "entry": [{"id": "1", "changes": [change]}]}).rejected == []


@pytest.mark.parametrize("url", ["https://x.example/a.jpg\r\nX-Injected: 1", "https://x.example/" + "a" * 5000,
                                 "https://x.example/\ud800.jpg", "   "])
def test_messenger_attachment_urls_platform_ref_refuses_are_dropped(url: str) -> None:
    payload = fixture("messenger/attachments")
    payload["entry"][0]["messaging"][0]["message"]["attachments"][0]["payload"]["url"] = url
    m = one(payload)
    assert [a.name for a in m.attachments] == ["bank_statement.pdf"]
    assert m.attachments[0].sha256 == reference_digest("facebook", m.attachments[0].ref or "")
    assert decode(encode(m), InboundMessage) == m
    payload["entry"][0]["messaging"][0]["message"]["attachments"].pop()
    payload["entry"][0]["messaging"][0]["message"]["text"] = "see photo"
    assert one(payload).attachments == ()


def test_messenger_sticker_with_a_bad_url_keeps_its_sticker_reference_and_clean_kind() -> None:
    payload = fixture("messenger/attachments")
    items = payload["entry"][0]["messaging"][0]["message"]["attachments"]
    items[0] = {"type": "sticker", "payload": {"url": "https://x/\ud800", "sticker_id": 369239263222822}}
    items[1] = {"type": "fi\r\nle\ud800", "payload": {"url": "https://cdn.example/"}}
    m = one(payload)
    assert [(a.name, a.ref, a.sha256) for a in m.attachments] == [
        ("sticker", "sticker:369239263222822", reference_digest("facebook", "sticker:369239263222822")),
        ("fi le", "https://cdn.example/", reference_digest("facebook", "https://cdn.example/"))]


def test_whatsapp_location_and_contacts_become_short_texts() -> None:
    def message(kind: str, content: Any) -> InboundMessage:
        payload = fixture("whatsapp/text")
        m = payload["entry"][0]["changes"][0]["value"]["messages"][0]
        del m["text"]
        m.update({"type": kind, kind: content})
        return one(payload)

    location = message("location", {"latitude": 40.3777, "longitude": 49.892, "name": "Filial",
                                    "address": "Baku\nNizami 5"})
    contacts = message("contacts", [
        {"name": {"formatted_name": "Rauf Əliyev", "first_name": "Rauf"},
         "phones": [{"phone": "+994 50 111 22 33", "wa_id": "994501112233", "type": "CELL"}]},
        {"name": {"formatted_name": "Nigar"}, "phones": []}])
    assert location.text == "[location 40.3777,49.892] Filial, Baku Nizami 5"
    assert contacts.text == "[contact Rauf Əliyev +994 50 111 22 33]\n[contact Nigar]"
    assert location.sender.phone == "+994501234567"


def test_messenger_postback_is_the_button_the_customer_tapped() -> None:
    tapped = {"sender": {"id": "6954875731257890"}, "recipient": {"id": "104587302351112"},
              "timestamp": 1767264500000,
              "postback": {"title": "Withdrawal problem", "payload": "WITHDRAWAL", "mid": "m_postback_1"}}
    old = {**tapped, "postback": {"title": "Get Started", "payload": "GET_STARTED"}}
    m, without_mid = one({"object": "page", "entry": [{"id": "1", "messaging": [tapped]}]}), one(
        {"object": "page", "entry": [{"id": "1", "messaging": [old]}]})
    assert (m.external_id, m.text, m.sender.platform_id) == ("m_postback_1", "Withdrawal problem", "6954875731257890")
    assert m.thread.conversation_id == "104587302351112:6954875731257890"
    assert (without_mid.external_id, without_mid.text) == ("postback:6954875731257890:1767264500000", "Get Started")


def test_messages_too_big_for_a_bus_record_are_rejected_not_published() -> None:
    payload = fixture("whatsapp/batch")
    payload["entry"][0]["changes"][0]["value"]["messages"][0]["text"]["body"] = "ə" * 20_000
    found = meta_parts(payload)
    found.fit(30_000)
    assert [m.sender.phone for m in found.messages] == ["+905321234567"]
    (rejected,) = found.rejected
    assert type(rejected.error).__name__ == "RecordTooLarge" and "over the bus's 30,000-byte" in str(rejected.error)
    assert rejected.where.startswith("message:wamid.") and decode(rejected.raw, InboundMessage).text == "ə" * 20_000


def test_json_bytes_keeps_lone_surrogates_as_escapes() -> None:
    value = {"t": "a\ud800b", "n": "Анна"}
    raw = json_bytes(value)
    assert json.loads(raw) == value and "Анна".encode() in raw


def test_unknown_meta_objects_are_ignored() -> None:
    assert meta({"object": "permissions", "entry": [{"id": "1", "changes": []}]}) == []


# --- Text and helpers -----------------------------------------------------------------------------


def test_clean_text_removes_controls_but_keeps_lines_tabs_and_emoji() -> None:
    raw = "  a\x00b\x07c\r\nd\re\tf \u200d\ud800 👍🏽\x1b[31m \x85 \n"
    assert clean_text(raw) == "abc\nd\ne\tf \u200d 👍🏽[31m"
    assert clean_text("x" * 50, 10) == "x" * 10


def test_single_line_defeats_header_injection() -> None:
    assert single_line("Eve\r\nBcc: all@bet.az\u2028X\x00") == "Eve Bcc: all@bet.az X"
    assert single_line(None) == ""


def test_names_from_platforms_are_single_lines() -> None:
    payload = fixture("telegram/private_text")
    payload["message"]["from"]["first_name"] = "Elvin\r\nX-Injected: yes"
    m = telegram(payload)
    assert m is not None and m.sender.name == "Elvin X-Injected: yes Məmmədov"


def test_webhook_text_is_cut_at_the_limit() -> None:
    payload = fixture("telegram/private_text")
    payload["message"]["text"] = "ə" * 30_000
    m = telegram_update(payload, connector="telegram", received_at=NOW, max_text=20_000)
    assert m is not None and len(m.text) == 20_000


def test_content_digest_and_media_type() -> None:
    digest = hashlib.sha256(b"x").digest()
    assert content_digest(base64.b64encode(digest).decode()) == digest.hex()
    assert content_digest(digest.hex().upper()) == digest.hex()
    assert content_digest("abc") is None and content_digest("") is None and content_digest(None) is None
    assert media_type("Audio/OGG; codecs=opus", "x/y") == "audio/ogg"
    assert media_type("not a type", "application/octet-stream") == "application/octet-stream"


# --- v1 messages API ------------------------------------------------------------------------------


def api_body(**over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "channel": "social", "platform": "twitter", "external_id": "1790012345678901234",
        "author": {"id": "44196397", "handle": "@rauf_az", "name": "Rauf"},
        "text": "@BetAz pulumu qaytarın!", "conversation_id": "1790012345000000000",
        "permalink": "https://x.com/rauf_az/status/1790012345678901234", "sent_at": "2026-01-01T09:00:00+04:00",
        "attachments": [{"name": "ekran.png", "content_type": "image/png", "size": 1024, "sha256": "AB" * 32,
                         "url": "https://pbs.twimg.com/media/x.png"}],
    }
    body.update(over)
    return body


def test_api_body_becomes_a_message() -> None:
    m = api_message(MessageIn.model_validate(api_body()), received_at=NOW)
    assert (m.connector, m.platform, m.channel) == ("http:twitter", "twitter", "social")
    assert m.id == message_id("http:twitter", "1790012345678901234")
    assert (m.sender.platform_id, m.sender.handle, m.sender.name) == ("44196397", "rauf_az", "Rauf")
    assert m.thread.conversation_id == "1790012345000000000"
    assert m.sent_at == datetime(2026, 1, 1, 5, 0, tzinfo=UTC)
    assert [(a.name, a.sha256, a.sha256_of, a.ref) for a in m.attachments] == [
        ("ekran.png", "ab" * 32, "content", "https://pbs.twimg.com/media/x.png")]


@pytest.mark.parametrize(("body", "loc"), [
    (api_body(author={"handle": "x"}), ("author", "id")),
    (api_body(channel="email"), ("channel",)),
    (api_body(platform="Twitter X"), ("platform",)),
    (api_body(external_id="a\r\nb"), ("external_id",)),
    (api_body(sent_at="2026-01-01T09:00:00"), ("sent_at",)),
    (api_body(text="x" * 20_001), ("text",)),
    (api_body(attachments=[{"name": "a", "content_type": "image/png", "size": 1, "sha256": "zz"}]),
     ("attachments", 0, "sha256")),
    (api_body(surprise=True), ("surprise",)),
])
def test_api_schema_errors_name_the_field(body: dict[str, Any], loc: tuple[Any, ...]) -> None:
    with pytest.raises(ValidationError) as err:
        MessageIn.model_validate(body)
    assert loc in [e["loc"] for e in err.value.errors()]


def test_api_names_are_kept_as_plain_single_lines() -> None:
    body = api_body(author={"id": "1", "name": "<script>alert(1)</script>\r\nSet-Cookie: a=b", "handle": None},
                    text="<img src=x onerror=alert(1)>\x00")
    m = api_message(MessageIn.model_validate(body), received_at=NOW)
    assert m.sender.name == "<script>alert(1)</script> Set-Cookie: a=b"
    assert m.text == "<img src=x onerror=alert(1)>"


# --- Settings -------------------------------------------------------------------------------------


def test_settings_from_env_and_yaml_keep_secrets_hidden(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "frontdesk.yaml"
    config.write_text("http:\n  port: 9090\n  telegram_connector: telegram:support\n  meta_app_secret: from-yaml\n")
    monkeypatch.setenv("FRONTDESK_HTTP_API_TOKENS", '["token-aaaaaaaaaaaaaaaa", "token-bbbbbbbbbbbbbbbb"]')
    monkeypatch.setenv("FRONTDESK_HTTP_HMAC_SECRET", "hmac-from-env")
    settings = HttpIntakeSettings.load(config)
    assert (settings.port, settings.telegram_connector, settings.max_body_bytes) == (9090, "telegram:support", 2**20)
    assert [t.get_secret_value() for t in settings.api_tokens] == ["token-aaaaaaaaaaaaaaaa", "token-bbbbbbbbbbbbbbbb"]
    assert settings.meta_app_secret is not None and settings.meta_app_secret.get_secret_value() == "from-yaml"
    shown = repr(settings) + str(settings.model_dump())
    assert "token-aaaa" not in shown and "hmac-from-env" not in shown and "from-yaml" not in shown


@pytest.mark.parametrize(("field", "value"), [
    ("telegram_secret_token", "has spaces and a secret!"), ("api_tokens", '["short-secret"]'), ("hmac_secret", "  "),
    ("telegram_connector", "tele gram"), ("max_body_bytes", "10"),
])
def test_settings_refuse_unsafe_values_without_echoing_secrets(field: str, value: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(f"FRONTDESK_HTTP_{field.upper()}", value)
    with pytest.raises(ConfigError) as err:
        HttpIntakeSettings.load()
    assert f"http.{field}" in str(err.value)
    assert "has spaces" not in str(err.value) and "short-secret" not in str(err.value)


def test_lone_surrogates_from_json_escapes_never_break_encoding() -> None:
    payload = json.loads(json.dumps(fixture("telegram/group_text")).replace("Анна", "\\ud800Анна")
                         .replace("Заявка", "\\udfffЗаявка"))
    m = telegram(payload)
    assert m is not None and m.sender.name == "Анна Петрова" and m.text.startswith("Заявка")
    assert decode(encode(m), InboundMessage) == m
