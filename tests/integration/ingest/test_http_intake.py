"""The HTTP intake on a real uvicorn server (127.0.0.1, free port) over the memory and the embedded SQLite bus.

What a sender sees must match what the bus holds: a 2xx only once the records are durable, nothing
published for refused requests (401, 404, 413, 400/422), 503 + Retry-After while the bus is down
and nothing lost on retry, the same id for a replayed message; a malformed part of a webhook body
on the dead-letter topic and the rest of the body published.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from frontdesk.bus.base import Bus, Record
from frontdesk.bus.memory import MemoryBus
from frontdesk.bus.sqlite import SqliteBus
from frontdesk.codec import decode
from frontdesk.errors import BusError, BusUnavailable, SourceError
from frontdesk.messages import DeadLetter, InboundMessage, message_id
from ingest.http.app import OPENAPI_PATH, create_app
from ingest.http.server import make_server, serve
from ingest.http.settings import HttpIntakeSettings
from tests.harness.process import free_port

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "webhooks"
TOKEN = "test-token-0123456789abcdef"
HMAC_SECRET = "hmac-secret-for-tests"
TELEGRAM_SECRET = "tg-secret_123"
APP_SECRET = "meta-app-secret"
VERIFY_TOKEN = "meta-verify-token"
LIMIT = 8192
SETTINGS = HttpIntakeSettings(
    api_tokens=(SecretStr(TOKEN),), hmac_secret=SecretStr(HMAC_SECRET),
    telegram_secret_token=SecretStr(TELEGRAM_SECRET), meta_app_secret=SecretStr(APP_SECRET),
    meta_verify_token=SecretStr(VERIFY_TOKEN), max_body_bytes=LIMIT, meta_max_body_bytes=2 * LIMIT, retry_after_s=7,
)


class Served:
    """A running intake: its bus, an HTTP client on its base URL, and what the bus holds."""

    def __init__(self, bus: Bus, client: httpx.Client) -> None:
        self.bus, self.http = bus, client
        self.publish_calls = 0
        publish = bus.publish

        def counting(records: Any) -> None:
            self.publish_calls += 1
            publish(records)

        bus.publish = counting  # type: ignore[method-assign]

    def records(self, topic: str) -> list[Record]:
        consumer = self.bus.consumer(f"test-{uuid.uuid4().hex}", [topic])
        records = []
        try:
            while batch := consumer.poll(500, timeout=0.01):
                records += batch
        finally:
            consumer.close()
        return records

    def published(self) -> list[InboundMessage]:
        records = self.records(self.bus.topics.inbound)
        assert all(r.key == decode(r.value, InboundMessage).id.encode() for r in records)
        return [decode(r.value, InboundMessage) for r in records]

    def dead_letters(self) -> list[DeadLetter]:
        records = self.records(self.bus.topics.deadletter)
        assert all(r.header("frontdesk-stage") == b"ingest" for r in records)
        return [decode(r.value, DeadLetter) for r in records]

    def fail_next_publish(self) -> None:
        """The next publish raises BusUnavailable (as a broker outage would), then the bus recovers."""
        if isinstance(self.bus, MemoryBus):
            self.bus.fail_next_publish = BusUnavailable("broker unreachable (test)")
            return
        working = self.bus.publish

        def down(records: Any) -> None:
            self.bus.publish = working  # type: ignore[method-assign]
            raise BusUnavailable("broker unreachable (test)")

        self.bus.publish = down  # type: ignore[method-assign]


def running(settings: HttpIntakeSettings, bus: Bus) -> Iterator[httpx.Client]:
    port = free_port()
    server = make_server(settings.model_copy(update={"host": "127.0.0.1", "port": port}), bus)
    thread = threading.Thread(target=server.run, name="http-intake", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(10)
        assert not thread.is_alive()


@pytest.fixture(params=["memory", "sqlite"])
def intake(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Served]:
    bus: Bus = MemoryBus() if request.param == "memory" else SqliteBus(tmp_path / "bus.sqlite3")
    bus.ensure_topics()
    for client in running(SETTINGS, bus):
        yield Served(bus, client)
    bus.close()


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / f"{name}.json").read_bytes()


def signed(body: bytes, secret: str = APP_SECRET) -> dict[str, str]:
    return {"X-Hub-Signature-256": "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest(),
            "Content-Type": "application/json"}


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def api_body(**over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "channel": "chat", "platform": "webchat", "external_id": "chat-771-0001",
        "author": {"id": "visitor-9f2c", "handle": None, "name": "Nigar"},
        "text": "Salam, depozitim 2 saatdır görünmür", "conversation_id": "chat-771",
        "permalink": None, "sent_at": "2026-01-01T10:00:00Z", "attachments": [],
    }
    body.update(over)
    return body


# --- POST /v1/messages ----------------------------------------------------------------------------


def test_api_message_is_accepted_only_once_on_the_bus(intake: Served) -> None:
    response = intake.http.post("/v1/messages", json=api_body(), headers=bearer())
    assert response.status_code == 202, response.text
    expected = message_id("http:webchat", "chat-771-0001")
    assert response.json() == {"id": expected, "status": "accepted"}
    (m,) = intake.published()
    assert (m.id, m.connector, m.channel, m.platform) == (expected, "http:webchat", "chat", "webchat")
    assert (m.sender.platform_id, m.sender.name, m.thread.conversation_id) == ("visitor-9f2c", "Nigar", "chat-771")
    assert m.text == "Salam, depozitim 2 saatdır görünmür"


def test_api_accepts_an_hmac_signature_instead_of_a_token(intake: Served) -> None:
    raw = json.dumps(api_body(), ensure_ascii=False).encode()
    signature = "sha256=" + hmac.new(HMAC_SECRET.encode(), raw, hashlib.sha256).hexdigest()
    response = intake.http.post("/v1/messages", content=raw, headers={"X-Frontdesk-Signature": signature})
    assert response.status_code == 202, response.text
    assert [m.external_id for m in intake.published()] == ["chat-771-0001"]


@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": "Bearer wrong-token-0123456789"},
    {"Authorization": f"Basic {TOKEN}"},
    {"Authorization": "Bearer"},
    {"X-Frontdesk-Signature": "sha256=" + "0" * 64},
    {"X-Frontdesk-Signature": "sha256=" + hmac.new(b"wrong", b"{}", hashlib.sha256).hexdigest()},
    {"X-Frontdesk-Signature": "garbage"},
], ids=["missing", "wrong-token", "basic", "empty-bearer", "zero-signature", "wrong-key", "garbage-signature"])
def test_api_refuses_missing_or_forged_credentials(intake: Served, headers: dict[str, str]) -> None:
    response = intake.http.post("/v1/messages", json=api_body(), headers=headers)
    assert response.status_code == 401
    assert TOKEN not in response.text and HMAC_SECRET not in response.text
    assert intake.published() == []


def test_api_signature_must_cover_the_exact_body(intake: Served) -> None:
    raw = json.dumps(api_body()).encode()
    signature = "sha256=" + hmac.new(HMAC_SECRET.encode(), raw, hashlib.sha256).hexdigest()
    tampered = raw.replace(b"depozitim", b"DEPOZITIM")
    response = intake.http.post("/v1/messages", content=tampered, headers={"X-Frontdesk-Signature": signature})
    assert response.status_code == 401 and intake.published() == []


@pytest.mark.parametrize(("body", "loc"), [
    (api_body(author={"name": "x"}), ["body", "author", "id"]),
    (api_body(channel="fax"), ["body", "channel"]),
    (api_body(sent_at="yesterday"), ["body", "sent_at"]),
    (api_body(attachments=[{"name": "a.png", "content_type": "image/png", "size": -1, "sha256": "a" * 64}]),
     ["body", "attachments", 0, "size"]),
    ({k: v for k, v in api_body().items() if k != "text"}, ["body", "text"]),
])
def test_api_schema_errors_are_422_naming_the_field(intake: Served, body: dict[str, Any], loc: list[Any]) -> None:
    response = intake.http.post("/v1/messages", json=body, headers=bearer())
    assert response.status_code == 422
    assert loc in [e["loc"] for e in response.json()["detail"]]
    assert intake.published() == []


def test_api_replay_is_accepted_with_the_same_id(intake: Served) -> None:
    first = intake.http.post("/v1/messages", json=api_body(), headers=bearer())
    again = intake.http.post("/v1/messages", json=api_body(), headers=bearer())
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    assert {m.id for m in intake.published()} == {first.json()["id"]}


def test_bus_down_is_503_and_nothing_is_lost_on_retry(intake: Served) -> None:
    intake.fail_next_publish()
    down = intake.http.post("/v1/messages", json=api_body(), headers=bearer())
    assert down.status_code == 503 and down.headers["retry-after"] == "7"
    assert intake.published() == []
    retried = intake.http.post("/v1/messages", json=api_body(), headers=bearer())
    assert retried.status_code == 202
    assert [m.id for m in intake.published()] == [retried.json()["id"]]


def test_hostile_text_and_names_stay_inert_plain_text(intake: Served) -> None:
    body = api_body(text="<script>fetch('/x?c='+document.cookie)</script>\x00\x1b[2J ok",
                    author={"id": "u1", "name": "Mallory\r\nX-Injected: 1\r\n\r\n<h1>", "handle": "@mal\nlory"})
    response = intake.http.post("/v1/messages", json=body, headers=bearer())
    assert response.status_code == 202
    assert "script" not in response.text and "x-injected" not in response.headers
    (m,) = intake.published()
    assert m.text == "<script>fetch('/x?c='+document.cookie)</script>[2J ok"
    assert m.sender.name == "Mallory X-Injected: 1 <h1>" and m.sender.handle == "mal lory"
    assert not any(c in (m.sender.name or "") + (m.sender.handle or "") for c in "\r\n\x00")


def test_concurrent_submissions_are_all_published(intake: Served) -> None:
    def submit(i: int) -> httpx.Response:
        return intake.http.post("/v1/messages", json=api_body(external_id=f"chat-771-{i:04d}"), headers=bearer())

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(submit, range(24)))
    assert all(r.status_code == 202 for r in responses)
    assert sorted(m.id for m in intake.published()) == sorted(r.json()["id"] for r in responses)


# --- Limits and malformed bodies (every POST endpoint) --------------------------------------------


POSTS: dict[str, Callable[[bytes], dict[str, str]]] = {
    "/v1/messages": lambda raw: bearer(),
    "/webhooks/telegram": lambda raw: {"X-Telegram-Bot-Api-Secret-Token": TELEGRAM_SECRET},
    "/webhooks/meta": lambda raw: signed(raw),
}


@pytest.mark.parametrize("path", POSTS)
def test_oversized_bodies_are_413_by_content_length_and_while_reading(intake: Served, path: str) -> None:
    raw = b'{"text": "' + b"x" * (LIMIT * 4) + b'"}'
    assert intake.http.post(path, content=raw, headers=POSTS[path](raw)).status_code == 413

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(raw), 1024):
            yield raw[start:start + 1024]

    streamed = intake.http.post(path, content=chunks(), headers=POSTS[path](raw))
    assert "content-length" not in streamed.request.headers
    assert streamed.status_code == 413
    assert intake.published() == []


@pytest.mark.parametrize("path", POSTS)
@pytest.mark.parametrize("raw", [b"{not json", b"\xff\xfe\x00", b"", b'{"a": ' * 1300], ids=["broken", "binary",
                                                                                                "empty", "deep"])
def test_malformed_json_is_refused_and_nothing_published(intake: Served, path: str, raw: bytes) -> None:
    response = intake.http.post(path, content=raw, headers=POSTS[path](raw))
    assert response.status_code in (400, 422)
    assert intake.published() == []


# --- Telegram -------------------------------------------------------------------------------------


def test_telegram_updates_reach_the_bus_with_their_identities(intake: Served) -> None:
    headers = {"X-Telegram-Bot-Api-Secret-Token": TELEGRAM_SECRET, "Content-Type": "application/json"}
    for name in ("private_text", "group_text", "edited_message", "photo_caption", "sticker", "emoji_only"):
        response = intake.http.post("/webhooks/telegram", content=fixture_bytes(f"telegram/{name}"), headers=headers)
        assert response.status_code == 200 and response.json()["published"] == 1
    by_id = {m.external_id: m for m in intake.published()}
    (edit,) = [e for e in by_id if e.startswith("5123456789:1204#edit:1767261655.")]
    assert set(by_id) == {"5123456789:1204", "-1001987654321:98211", edit,
                          "5123456789:1207", "5123456789:1212", "5123456789:1213"}
    group = by_id["-1001987654321:98211"]
    assert group.thread.conversation_id == "-1001987654321" and group.sender.platform_id == "6011223344"
    assert by_id[edit].flags.edited
    assert all(m.connector == "telegram" for m in by_id.values())


@pytest.mark.parametrize("headers", [{}, {"X-Telegram-Bot-Api-Secret-Token": "tg-secret_124"},
                                     {"X-Telegram-Bot-Api-Secret-Token": ""}], ids=["missing", "wrong", "empty"])
def test_telegram_wrong_secret_is_401(intake: Served, headers: dict[str, str]) -> None:
    response = intake.http.post("/webhooks/telegram", content=fixture_bytes("telegram/private_text"), headers=headers)
    assert response.status_code == 401 and intake.published() == []


@pytest.mark.parametrize("name", ["callback_query", "new_chat_members"])
def test_telegram_unknown_updates_are_200_and_publish_nothing(intake: Served, name: str) -> None:
    response = intake.http.post("/webhooks/telegram", content=fixture_bytes(f"telegram/{name}"),
                                headers={"X-Telegram-Bot-Api-Secret-Token": TELEGRAM_SECRET})
    assert response.status_code == 200 and response.json() == {"published": 0, "ids": [], "dead_lettered": 0}
    assert intake.published() == [] and intake.publish_calls == 0


def test_telegram_malformed_update_is_dead_lettered_like_the_poller_does(intake: Served) -> None:
    update = json.loads(fixture_bytes("telegram/private_text"))
    update["message"]["date"] = "yesterday"
    raw = json.dumps(update).encode()
    response = intake.http.post("/webhooks/telegram", content=raw,
                                headers={"X-Telegram-Bot-Api-Secret-Token": TELEGRAM_SECRET})
    assert response.status_code == 200 and response.json() == {"published": 0, "ids": [], "dead_lettered": 1}
    assert intake.published() == []
    (letter,) = intake.dead_letters()
    assert (letter.stage, letter.error_type, letter.source_topic, letter.reason) == (
        "ingest", "PayloadError", "telegram/update:874512301", "message.date: expected a Unix timestamp")
    assert base64.b64decode(letter.value_b64) == raw  # the bytes as received
    (record,) = intake.records(intake.bus.topics.deadletter)
    assert record.key == b"telegram:update:874512301"


def test_telegram_body_that_is_not_an_object_is_422(intake: Served) -> None:
    response = intake.http.post("/webhooks/telegram", content=b"[1, 2]",
                                headers={"X-Telegram-Bot-Api-Secret-Token": TELEGRAM_SECRET})
    assert response.status_code == 422 and intake.publish_calls == 0


def test_telegram_message_on_behalf_of_a_channel_and_automatic_forwards(intake: Served) -> None:
    headers = {"X-Telegram-Bot-Api-Secret-Token": TELEGRAM_SECRET}
    update = json.loads(fixture_bytes("telegram/group_text"))
    update["message"]["from"] = {"id": 136817688, "is_bot": True, "first_name": "Channel", "username": "Channel_Bot"}
    update["message"]["sender_chat"] = {"id": -1002000000001, "title": "Rauf's channel", "type": "channel"}
    response = intake.http.post("/webhooks/telegram", json=update, headers=headers)
    assert response.status_code == 200 and response.json()["published"] == 1
    update["message"].update(message_id=98212, is_automatic_forward=True)
    ignored = intake.http.post("/webhooks/telegram", json=update, headers=headers)
    assert ignored.status_code == 200 and ignored.json()["published"] == 0
    (m,) = intake.published()
    assert (m.sender.platform_id, m.sender.name, m.flags.auto_submitted) == ("-1002000000001", "Rauf's channel",
                                                                             False)


def test_telegram_replay_yields_the_same_id(intake: Served) -> None:
    headers = {"X-Telegram-Bot-Api-Secret-Token": TELEGRAM_SECRET}
    ids = [intake.http.post("/webhooks/telegram", content=fixture_bytes("telegram/private_text"),
                            headers=headers).json()["ids"] for _ in range(2)]
    assert ids[0] == ids[1] and len(ids[0]) == 1
    assert {m.id for m in intake.published()} == set(ids[0])


# --- Meta -----------------------------------------------------------------------------------------


def test_meta_verification_challenge(intake: Served) -> None:
    ok = intake.http.get("/webhooks/meta", params={"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN,
                                                   "hub.challenge": "1158201444"})
    assert ok.status_code == 200 and ok.text == "1158201444"
    assert ok.headers["content-type"].startswith("text/plain")
    for params in ({"hub.mode": "subscribe", "hub.verify_token": "nope", "hub.challenge": "1"},
                   {"hub.mode": "unsubscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1"},
                   {"hub.challenge": "1"}):
        assert intake.http.get("/webhooks/meta", params=params).status_code == 403


def test_meta_batch_is_published_in_one_call(intake: Served) -> None:
    raw = fixture_bytes("whatsapp/batch")
    response = intake.http.post("/webhooks/meta", content=raw, headers=signed(raw))
    assert response.status_code == 200 and response.json()["published"] == 2
    assert intake.publish_calls == 1
    phones = {m.sender.phone: m for m in intake.published()}
    assert set(phones) == {"+994501234567", "+905321234567"}
    assert phones["+994501234567"].thread.conversation_id == "106540352242922:994501234567"
    assert all(m.connector == "whatsapp" for m in phones.values())


@pytest.mark.parametrize("name", ["whatsapp/text", "whatsapp/image", "whatsapp/sticker", "messenger/text",
                                  "messenger/message_edit", "messenger/mention", "instagram/text",
                                  "instagram/mentions_comment"])
def test_meta_messages_reach_the_bus(intake: Served, name: str) -> None:
    raw = fixture_bytes(name)
    response = intake.http.post("/webhooks/meta", content=raw, headers=signed(raw))
    assert response.status_code == 200 and response.json()["published"] == 1
    (m,) = intake.published()
    assert m.id == response.json()["ids"][0]
    assert m.platform == name.split("/")[0].replace("messenger", "facebook")


@pytest.mark.parametrize("name", ["whatsapp/statuses", "messenger/echo", "messenger/delivery_read",
                                  "instagram/deleted"])
def test_meta_non_messages_are_200_and_publish_nothing(intake: Served, name: str) -> None:
    raw = fixture_bytes(name)
    response = intake.http.post("/webhooks/meta", content=raw, headers=signed(raw))
    assert response.status_code == 200 and response.json()["published"] == 0
    assert intake.published() == []


def test_meta_signature_is_over_the_raw_body(intake: Served) -> None:
    raw = fixture_bytes("whatsapp/text")
    reserialised = json.dumps(json.loads(raw)).encode()
    for body, headers in ((raw, {}), (raw, signed(raw, "other-secret")), (reserialised, signed(raw)),
                          (raw, {"X-Hub-Signature-256": "sha1=" + hashlib.sha1(raw).hexdigest()})):
        assert intake.http.post("/webhooks/meta", content=body, headers=headers).status_code == 401
    assert intake.published() == []


def test_meta_malformed_parts_are_dead_lettered_and_the_rest_published(intake: Served) -> None:
    payload = json.loads(fixture_bytes("whatsapp/batch"))
    payload["entry"][0]["changes"][0]["value"]["messages"][1]["id"] = {"oops": 1}
    raw = json.dumps(payload).encode()
    response = intake.http.post("/webhooks/meta", content=raw, headers=signed(raw))
    assert response.status_code == 200, response.text
    assert response.json()["published"] == 1 and response.json()["dead_lettered"] == 1
    assert intake.publish_calls == 1  # the message and the dead letter in one durable publish
    assert [m.sender.phone for m in intake.published()] == ["+994501234567"]
    (letter,) = intake.dead_letters()
    assert (letter.stage, letter.error_type, letter.source_topic, letter.message_id) == (
        "ingest", "PayloadError", "whatsapp/webhook:entry.0.changes.0.value.messages.1", None)
    assert letter.reason == "entry.0.changes.0.value.messages.1.id: expected an id (string or integer)"
    assert json.loads(base64.b64decode(letter.value_b64)) == payload["entry"][0]["changes"][0]["value"]["messages"][1]


def test_meta_event_without_sender_does_not_refuse_the_customer_message_beside_it(intake: Served) -> None:
    payload = json.loads(fixture_bytes("messenger/text"))
    payload["entry"].append({"id": "104587302351112", "time": 1458692752478, "messaging": [
        {"recipient": {"id": "104587302351112"}, "timestamp": 1458692752478,
         "policy_enforcement": {"action": "block", "reason": "The bot violated our Platform Policies"}}]})
    raw = json.dumps(payload).encode()
    response = intake.http.post("/webhooks/meta", content=raw, headers=signed(raw))
    assert response.status_code == 200 and response.json()["published"] == 1
    assert response.json()["dead_lettered"] == 0 and intake.dead_letters() == []
    assert [m.sender.platform_id for m in intake.published()] == ["6954875731257890"]


@pytest.mark.parametrize("url", ["https://x.example/a.jpg\r\nX-Injected: 1", "https://x.example/" + "a" * 5000,
                                 "https://x.example/\ud800.jpg"], ids=["crlf", "5kb", "lone-surrogate"])
def test_meta_attachment_urls_that_are_not_clean_references_are_dropped(intake: Served, url: str) -> None:
    payload = json.loads(fixture_bytes("messenger/attachments"))
    payload["entry"][0]["messaging"][0]["message"]["attachments"][0]["payload"]["url"] = url
    raw = json.dumps(payload).encode()
    response = intake.http.post("/webhooks/meta", content=raw, headers=signed(raw))
    assert response.status_code == 200 and response.json()["published"] == 1
    (m,) = intake.published()
    assert [a.name for a in m.attachments] == ["bank_statement.pdf"]
    assert all(a.ref and "\n" not in a.ref and len(a.ref) < 300 for a in m.attachments)


def test_meta_delivery_over_the_general_limit_but_within_metas_is_published(intake: Served) -> None:
    """Meta batches many changes into one delivery, so its limit is its own: a batch bigger than
    ``max_body_bytes`` that was refused with 413 would be refused on every one of Meta's retries."""
    payload = json.loads(fixture_bytes("whatsapp/batch"))
    value = payload["entry"][0]["changes"][0]["value"]
    template = value["messages"][0]
    value["messages"] = [{**template, "id": f"wamid.batch{i:04d}", "text": {"body": f"Salam, {i} " + "ə" * 40}}
                         for i in range(25)]
    raw = json.dumps(payload).encode()
    assert LIMIT < len(raw) <= 2 * LIMIT
    response = intake.http.post("/webhooks/meta", content=raw, headers=signed(raw))
    assert response.status_code == 200, response.text
    assert response.json()["published"] == 25
    assert sorted(m.external_id for m in intake.published()) == [f"wamid.batch{i:04d}" for i in range(25)]


def test_meta_body_that_is_not_an_object_is_422(intake: Served) -> None:
    raw = b'[{"object": "page"}]'
    response = intake.http.post("/webhooks/meta", content=raw, headers=signed(raw))
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body"]
    assert intake.publish_calls == 0


def test_meta_bus_down_then_redelivery(intake: Served) -> None:
    raw = fixture_bytes("messenger/text")
    intake.fail_next_publish()
    down = intake.http.post("/webhooks/meta", content=raw, headers=signed(raw))
    assert down.status_code == 503 and "retry-after" in down.headers and intake.published() == []
    again = intake.http.post("/webhooks/meta", content=raw, headers=signed(raw))
    assert again.status_code == 200 and len(intake.published()) == 1


def test_dead_letters_wait_for_the_bus_like_messages(intake: Served) -> None:
    payload = json.loads(fixture_bytes("messenger/text"))
    payload["entry"][0]["messaging"].append({"sender": {"id": "1"}, "message": {"text": "no mid"}})
    raw = json.dumps(payload).encode()
    intake.fail_next_publish()
    down = intake.http.post("/webhooks/meta", content=raw, headers=signed(raw))
    assert down.status_code == 503 and intake.published() == [] and intake.dead_letters() == []
    again = intake.http.post("/webhooks/meta", content=raw, headers=signed(raw))
    assert again.status_code == 200 and again.json()["dead_lettered"] == 1
    assert len(intake.published()) == 1 and len(intake.dead_letters()) == 1


def test_a_message_too_big_for_a_bus_record_is_dead_lettered_not_refused_forever(intake: Served) -> None:
    intake.bus.max_record_bytes = 5_000
    update = json.loads(fixture_bytes("telegram/private_text"))
    update["message"]["text"] = "x" * 3_000  # in text and full_text: over 6 KB as a record
    response = intake.http.post("/webhooks/telegram", json=update,
                                headers={"X-Telegram-Bot-Api-Secret-Token": TELEGRAM_SECRET})
    assert response.status_code == 200 and response.json() == {"published": 0, "ids": [], "dead_lettered": 1}
    (letter,) = intake.dead_letters()
    assert (letter.error_type, letter.source_topic) == ("RecordTooLarge", "telegram/message:5123456789:1204")
    assert all(len(r.value) <= 5_000 for r in intake.records(intake.bus.topics.deadletter))


def test_an_api_message_too_big_for_a_bus_record_is_413_not_503_forever(intake: Served) -> None:
    intake.bus.max_record_bytes = 5_000
    body = api_body(text="x" * 3_000)  # in text and full_text: over 6 KB as a record, under the body limit
    for _ in range(2):  # a retry cannot mend it: the sender must be told so, not to retry later
        response = intake.http.post("/v1/messages", json=body, headers=bearer())
        assert response.status_code == 413, response.text
        assert "over the bus's 5,000-byte limit" in response.json()["detail"]
    assert intake.published() == [] and intake.dead_letters() == []


def test_any_bus_failure_is_503_with_retry_after(intake: Served) -> None:
    working = intake.bus.publish

    def failed(records: Any) -> None:
        intake.bus.publish = working  # type: ignore[method-assign]
        raise BusError("Kafka error while publishing 1 records: TopicAuthorizationFailedError()")

    intake.bus.publish = failed  # type: ignore[method-assign]
    down = intake.http.post("/v1/messages", json=api_body(), headers=bearer())
    assert down.status_code == 503 and down.headers["retry-after"] == "7" and intake.published() == []
    assert intake.http.post("/v1/messages", json=api_body(), headers=bearer()).status_code == 202


# --- Operations, disabled endpoints, OpenAPI ------------------------------------------------------


def test_health_and_readiness(intake: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    assert intake.http.get("/healthz").json() == {"status": "ok"}
    assert intake.http.get("/readyz").status_code == 200

    def broken(topic: str) -> dict[int, int]:
        raise BusUnavailable("down")

    monkeypatch.setattr(intake.bus, "end_offsets", broken)
    assert intake.http.get("/readyz").status_code == 503


def test_endpoints_without_credentials_are_disabled() -> None:
    bus = MemoryBus()
    for client in running(HttpIntakeSettings(), bus):
        raw = fixture_bytes("whatsapp/text")
        assert client.post("/v1/messages", json=api_body(), headers=bearer()).status_code == 404
        assert client.post("/webhooks/telegram", content=raw, headers={"X-Telegram-Bot-Api-Secret-Token": ""}
                           ).status_code == 404
        assert client.post("/webhooks/meta", content=raw, headers=signed(raw, "")).status_code == 404
        assert client.get("/webhooks/meta", params={"hub.mode": "subscribe", "hub.challenge": "1"}).status_code == 404
        assert client.get("/healthz").status_code == 200
    assert bus.records(bus.topics.inbound) == []


def test_secrets_are_never_logged(intake: Served, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    raw = fixture_bytes("whatsapp/text")
    intake.http.post("/v1/messages", json=api_body(), headers=bearer())
    intake.http.post("/v1/messages", json=api_body(), headers=bearer(TOKEN[:-1] + "x"))
    intake.http.post("/webhooks/telegram", content=fixture_bytes("telegram/private_text"),
                     headers={"X-Telegram-Bot-Api-Secret-Token": TELEGRAM_SECRET + "x"})
    intake.http.get("/webhooks/meta", params={"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN,
                                              "hub.challenge": "42"})
    intake.http.get("/webhooks/meta", params={"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN + "x",
                                              "hub.challenge": "42"})
    intake.http.post("/webhooks/meta", content=raw, headers=signed(raw))
    intake.http.post("/webhooks/meta", content=raw, headers=signed(raw, "forged"))
    server_side = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith(("httpx", "httpcore")))
    assert "refused" in server_side and "published" in server_side
    assert '"GET /webhooks/meta HTTP/1.1" 200' in server_side  # the access log, without the query string
    for secret in (TOKEN, HMAC_SECRET, TELEGRAM_SECRET, APP_SECRET, VERIFY_TOKEN, signed(raw)["X-Hub-Signature-256"]):
        assert secret not in server_side


def test_serve_runs_until_stopped_and_reports_a_busy_port() -> None:
    bus, stop, port = MemoryBus(), threading.Event(), free_port()
    settings = SETTINGS.model_copy(update={"port": port})
    thread = threading.Thread(target=serve, args=(settings, bus, stop), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while True:
        try:
            response = httpx.post(f"http://127.0.0.1:{port}/v1/messages", json=api_body(), headers=bearer())
            break
        except httpx.TransportError:
            assert time.monotonic() < deadline, "serve() did not start"
            time.sleep(0.05)
    assert response.status_code == 202
    with pytest.raises(SourceError, match=f"127.0.0.1:{port}"):
        serve(settings, MemoryBus(), threading.Event())
    stop.set()
    thread.join(10)
    assert not thread.is_alive() and len(bus.records(bus.topics.inbound)) == 1


def test_committed_openapi_document_matches_the_app(intake: Served) -> None:
    committed = json.loads(OPENAPI_PATH.read_text(encoding="utf-8"))
    assert create_app(HttpIntakeSettings(), MemoryBus()).openapi() == committed, (
        "ingest/http/openapi.json is stale: "
        "run `python -c 'from ingest.http.app import write_openapi; write_openapi()'`")
    assert intake.http.get("/openapi.json").json() == committed
    assert set(committed["paths"]) == {"/v1/messages", "/webhooks/telegram", "/webhooks/meta", "/healthz", "/readyz"}
