"""Chat repliers against a local recording stand-in for the Telegram, WhatsApp and webhook endpoints (real HTTP)."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from dispatch.base import OutboundReply
from dispatch.chat_repliers import (ChatReplySettings, TelegramReplier, WebhookReplier, WhatsAppReplier,
                                    build_repliers)
from frontdesk.errors import ReplyError, ReplyUnavailable

BOT_TOKEN = "123456789:AAH-reply_token"
WA_TOKEN = "EAAG-whatsapp-access-token"
SECRET = "webhook-signing-secret"


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    raw: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.raw)


@dataclass
class Answer:
    status: int = 200
    body: Any = field(default_factory=lambda: {"ok": True, "result": {"message_id": 1}})
    headers: dict[str, str] = field(default_factory=dict)


class Recorder:
    """Answers POSTs with scripted answers (then 200), recording every request."""

    def __init__(self) -> None:
        self.requests: list[Seen] = []
        self.script: list[Answer] = []
        self.lock = threading.Lock()
        rec = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with rec.lock:
                    rec.requests.append(Seen("POST", self.path, {k.lower(): v for k, v in self.headers.items()}, raw))
                    answer = rec.script.pop(0) if rec.script else Answer()
                data = json.dumps(answer.body).encode()
                self.send_response(answer.status)
                for name, value in {"Content-Type": "application/json", **answer.headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


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
    assert seen.json == {"channel": "chat", "connector": "telegram", "recipient": "5123456789",
                         "body": "Salam! Müraciətiniz qeydə alındı: FD-000123", "message_id": "ack.abc123@frontdesk",
                         "case_reference": "FD-000123"}


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
