"""Acknowledgements on chat platforms: Telegram Bot API, WhatsApp Cloud API, and a signed generic webhook
(Messenger and Instagram, with replies to mentions: :mod:`dispatch.meta_replier`).

Every replier here keeps the :class:`~dispatch.base.Replier` contract over HTTP (httpx):

* ``send`` returns once the platform accepted the reply (2xx, and Telegram's ``ok: true``);
* 429 and 5xx (and 408/425, connection errors, timeouts) are retried inside ``send`` with exponential
  backoff, honouring ``Retry-After`` (or Telegram's ``parameters.retry_after``) when it is at most
  ``max_retry_after_s``; after ``max_attempts``, or when the platform asks for a longer wait, it raises
  :class:`ReplyUnavailable` (``.retry_after`` set when known) and the relay retries later, not before
  ``retry_after`` (an early request prolongs a Telegram flood wait);
* any other 4xx raises :class:`ReplyError` (bad recipient, blocked bot, bad token: retrying will
  not help). WhatsApp reports throttling as HTTP 400 with a Graph error code; those are retryable;
* library exceptions never leave ``send``; tokens never appear in errors (httpx's request log line
  is redacted for Telegram URLs, WhatsApp's token travels in a header).

Telegram and WhatsApp have no idempotency key, so the relay's one crash window (after the platform
accepted, before the outbox row is marked) can repeat a message there; the generic webhook sends
``Idempotency-Key: <message_id>`` so the receiver can drop the repeat.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import random
import re
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from datetime import UTC, datetime
from typing import Any, ClassVar

import httpx
from pydantic import Field, SecretStr, model_validator

from dispatch.base import OutboundReply, Replier
from frontdesk.errors import ReplyError, ReplyUnavailable
from frontdesk.settings import ComponentSettings

_RETRYABLE = {408, 425, 429}
# Graph API error codes meaning "throttled / temporarily failing" (sent with HTTP 400 or 429).
_GRAPH_TRANSIENT = {1, 2, 4, 17, 32, 613, 80007, 130429, 131000, 131016, 131056}
_TG_TOKEN_IN_TEXT = re.compile(r"bot[0-9]{1,20}:[A-Za-z0-9_-]+")
_TG_MESSAGE_REF = re.compile(r"^(?:-?\d+:)?(\d+)(?:#.*)?$")


class _HttpReplier(Replier):
    """POST with bounded in-process retries and the status → error translation of this module."""

    platform: ClassVar[str] = "http"

    def __init__(self, *, timeout_s: float = 10.0, max_attempts: int = 3, max_retry_after_s: float = 5.0,
                 backoff_s: float = 0.5, transport: httpx.BaseTransport | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.max_attempts, self.max_retry_after_s, self.backoff_s = max(1, max_attempts), max_retry_after_s, backoff_s
        self.sleep = sleep
        self._client = httpx.Client(transport=transport, timeout=timeout_s, follow_redirects=False)

    def close(self) -> None:
        self._client.close()

    def _post(self, url: str, reply: OutboundReply, *, headers: dict[str, str],
              json_body: Any = None, content: bytes | None = None) -> dict[str, Any]:
        """POST until accepted; returns the JSON answer ({} if none). Raises ReplyUnavailable / ReplyError."""
        what = f"{self.platform} reply for {reply.case_reference}"
        problem, retry_after = "no attempt made", None
        for attempt in range(self.max_attempts):
            if attempt:
                wait = retry_after if retry_after is not None else self.backoff_s * 2 ** (attempt - 1)
                self.sleep(wait * (1 if retry_after is not None else random.uniform(0.8, 1.2)))
            try:
                response = self._client.post(url, headers=headers, json=json_body, content=content)
            except httpx.HTTPError as exc:
                problem, retry_after = f"{type(exc).__name__}: {_redact(str(exc))}", None
                continue
            data = _json(response)
            status = response.status_code
            if 200 <= status < 300 and data.get("ok", True) is not False:
                return data
            problem = f"HTTP {status}: {self._describe(data)}"
            if not self._retryable(status, data):
                raise ReplyError(f"{what}: {problem}")
            retry_after = _retry_after(response, data)
            if retry_after is not None and retry_after > self.max_retry_after_s:
                raise _unavailable(f"{what}: {problem} (asked to wait {retry_after:.0f}s)", retry_after)
        raise _unavailable(f"{what}: {problem} (after {self.max_attempts} attempts)", retry_after)

    def _retryable(self, status: int, data: dict[str, Any]) -> bool:
        return status >= 500 or status in _RETRYABLE

    def _describe(self, data: dict[str, Any]) -> str:
        return _redact(str(data.get("description") or data.get("error") or data.get("detail") or ""))[:300]


class TelegramReplier(_HttpReplier):
    """``sendMessage`` to ``reply.recipient`` (a chat id, ``@channel``, or ``<chat id>:<topic id>``).

    ``reply.thread_id`` (a message id, or the ``<chat>:<message>`` external id of the inbound message)
    makes it a reply to that message; a message that no longer exists does not fail the send.
    """

    platform = "telegram"

    def __init__(self, api_base: str, bot_token: SecretStr | str, **options: Any) -> None:
        super().__init__(**options)
        token = bot_token.get_secret_value() if isinstance(bot_token, SecretStr) else bot_token
        self._url = f"{api_base.rstrip('/')}/bot{token}/sendMessage"

    def send(self, reply: OutboundReply) -> None:
        chat_id, _, topic = reply.recipient.partition(":") if not reply.recipient.startswith("@") else (
            reply.recipient, "", "")
        body: dict[str, Any] = {"chat_id": _int_or_str(chat_id), "text": reply.body}
        if topic.isdigit():
            body["message_thread_id"] = int(topic)
        if reply.thread_id and (ref := _TG_MESSAGE_REF.match(reply.thread_id)):
            body["reply_parameters"] = {"message_id": int(ref.group(1)), "allow_sending_without_reply": True}
        self._post(self._url, reply, headers={}, json_body=body)

    def _retryable(self, status: int, data: dict[str, Any]) -> bool:
        return super()._retryable(status, data) or data.get("error_code") == 429


class GraphReplier(_HttpReplier):
    """A Meta Graph API client: errors come as ``{"error": {"code", "message", "is_transient"}}``, and
    throttling is reported with HTTP 400 and a Graph error code (retried)."""

    def _retryable(self, status: int, data: dict[str, Any]) -> bool:
        error = data.get("error") if isinstance(data.get("error"), dict) else {}
        return (super()._retryable(status, data) or error.get("is_transient") is True
                or error.get("code") in _GRAPH_TRANSIENT)

    def _describe(self, data: dict[str, Any]) -> str:
        error = data.get("error") if isinstance(data.get("error"), dict) else {}
        return f"{error.get('code', '?')} {str(error.get('message', ''))[:300]}"


class WhatsAppReplier(GraphReplier):
    """A text message through the WhatsApp Cloud API to ``reply.recipient`` (the customer's wa_id).

    ``reply.thread_id`` (the inbound ``wamid``) is sent as the ``context`` the reply quotes.
    """

    platform = "whatsapp"

    def __init__(self, api_base: str, phone_number_id: str, access_token: SecretStr | str,
                 api_version: str = "v21.0", **options: Any) -> None:
        super().__init__(**options)
        self._token = access_token if isinstance(access_token, SecretStr) else SecretStr(access_token)
        self._url = f"{api_base.rstrip('/')}/{api_version}/{phone_number_id}/messages"

    def send(self, reply: OutboundReply) -> None:
        body: dict[str, Any] = {"messaging_product": "whatsapp", "recipient_type": "individual",
                                "to": reply.recipient, "type": "text", "text": {"body": reply.body}}
        if reply.thread_id:
            body["context"] = {"message_id": reply.thread_id}
        headers = {"Authorization": f"Bearer {self._token.get_secret_value()}"}
        self._post(self._url, reply, headers=headers, json_body=body)


class WebhookReplier(_HttpReplier):
    """POSTs the reply as JSON to ``url``, signed: ``X-Frontdesk-Signature: sha256=<HMAC-SHA256(secret, raw body)>``.

    For platforms without a Replier here (mentions and chats forwarded to ``/v1/messages``): the
    receiver posts it. Body: ``channel``, ``platform``, ``connector``, ``mode`` (``chat`` |
    ``public_reply`` | ``dm``), ``recipient`` (chat: the chat or user; public_reply: the message to
    answer under; dm: the author's id), ``target`` (``external_id``, ``permalink``,
    ``conversation_id``, ``author_id``, ``author_handle`` when known), ``in_reply_to``, ``body``,
    ``message_id``, ``case_reference``. A public reply's body never contains the case reference.
    ``Idempotency-Key`` is the reply's deterministic ``message_id``: a repeat after a crash carries the same key.
    """

    platform = "webhook"

    def __init__(self, url: str, secret: SecretStr | str, **options: Any) -> None:
        super().__init__(**options)
        self.url = url
        self._secret = (secret.get_secret_value() if isinstance(secret, SecretStr) else secret).encode()

    def payload(self, reply: OutboundReply) -> bytes:
        """The exact bytes sent (and signed)."""
        target = {k: v for k, v in reply.extra.items() if k not in ("mode", "platform")}
        return json.dumps({"channel": reply.channel, "platform": reply.extra.get("platform") or None,
                           "connector": reply.connector, "mode": reply.extra.get("mode", "chat"),
                           "recipient": reply.recipient, "target": target, "in_reply_to": reply.thread_id,
                           "body": reply.body, "message_id": reply.message_id, "case_reference": reply.case_reference},
                          ensure_ascii=False, separators=(",", ":")).encode()

    def send(self, reply: OutboundReply) -> None:
        raw = self.payload(reply)
        signature = hmac.new(self._secret, raw, hashlib.sha256).hexdigest()
        headers = {"Content-Type": "application/json", "X-Frontdesk-Signature": f"sha256={signature}",
                   "Idempotency-Key": reply.message_id}
        self._post(self.url, reply, headers=headers, content=raw)


class ChatReplySettings(ComponentSettings):
    """Chat / webhook acknowledgements. A platform whose credentials are unset gets no replier."""

    section: ClassVar[str] = "replies"
    telegram_api_base: str = "https://api.telegram.org"
    telegram_bot_token: SecretStr | None = None
    whatsapp_api_base: str = "https://graph.facebook.com"
    whatsapp_api_version: str = Field("v21.0", pattern=r"^v\d+\.\d+$")
    whatsapp_phone_number_id: str | None = Field(None, pattern=r"^\d{1,30}$")
    whatsapp_access_token: SecretStr | None = None
    meta_api_base: str = "https://graph.facebook.com"
    meta_api_version: str = Field("v21.0", pattern=r"^v\d+\.\d+$")
    meta_page_id: str = Field("me", pattern=r"^(me|\d{1,30})$", description="Page that sends ('me': the token's)")
    meta_page_access_token: SecretStr | None = Field(None, description="Page token: Messenger, Instagram, mentions")
    webhook_url: str | None = Field(None, description="Generic signed outbound webhook (https in production)")
    webhook_secret: SecretStr | None = Field(None, description="HMAC key of X-Frontdesk-Signature")
    timeout_s: float = Field(10.0, gt=0)
    max_attempts: int = Field(3, ge=1, le=10, description="Attempts inside one send (429/5xx)")
    max_retry_after_s: float = Field(5.0, ge=0, le=60, description="Longest Retry-After waited out in-process")

    @model_validator(mode="after")
    def _complete_pairs(self) -> ChatReplySettings:
        if (self.whatsapp_phone_number_id is None) != (self.whatsapp_access_token is None):
            raise ValueError("whatsapp_phone_number_id and whatsapp_access_token go together")
        if self.webhook_url is not None and not self.webhook_url.startswith(("https://", "http://")):
            raise ValueError("webhook_url must be an http(s) URL")
        if self.webhook_url is not None and not (self.webhook_secret and self.webhook_secret.get_secret_value()):
            raise ValueError("webhook_url needs webhook_secret (outbound webhooks are always signed)")
        return self


def build_repliers(settings: ChatReplySettings, *, transport: httpx.BaseTransport | None = None
                   ) -> dict[str, Replier]:
    """The configured repliers keyed by platform: ``telegram``, ``whatsapp``, ``facebook`` and ``instagram``
    (one :class:`~dispatch.meta_replier.MetaReplier`), ``webhook`` (absent if unset)."""
    from dispatch.meta_replier import MetaReplier  # it builds on GraphReplier from this module

    options: dict[str, Any] = {"timeout_s": settings.timeout_s, "max_attempts": settings.max_attempts,
                               "max_retry_after_s": settings.max_retry_after_s, "transport": transport}
    repliers: dict[str, Replier] = {}
    if settings.telegram_bot_token is not None:
        repliers["telegram"] = TelegramReplier(settings.telegram_api_base, settings.telegram_bot_token, **options)
    if settings.whatsapp_phone_number_id and settings.whatsapp_access_token:
        repliers["whatsapp"] = WhatsAppReplier(settings.whatsapp_api_base, settings.whatsapp_phone_number_id,
                                               settings.whatsapp_access_token, settings.whatsapp_api_version,
                                               **options)
    if settings.meta_page_access_token is not None:
        meta = MetaReplier(settings.meta_api_base, settings.meta_page_access_token, settings.meta_api_version,
                           settings.meta_page_id, **options)
        repliers.update(facebook=meta, instagram=meta)
    if settings.webhook_url and settings.webhook_secret:
        repliers["webhook"] = WebhookReplier(settings.webhook_url, settings.webhook_secret, **options)
    return repliers


def _unavailable(message: str, retry_after: float | None) -> ReplyUnavailable:
    exc = ReplyUnavailable(message)
    exc.retry_after = retry_after  # type: ignore[attr-defined]
    return exc


def _retry_after(response: httpx.Response, data: dict[str, Any]) -> float | None:
    """Seconds to wait: the Retry-After header (seconds or HTTP date), else Telegram's body field."""
    header = response.headers.get("retry-after")
    if header:
        try:
            return _seconds(float(header))
        except ValueError:
            try:
                return _seconds((parsedate_to_datetime(header) - datetime.now(UTC)).total_seconds())
            except (TypeError, ValueError):
                return None
    params = data.get("parameters")
    if isinstance(params, dict) and isinstance(params.get("retry_after"), (int, float)):
        return _seconds(float(params["retry_after"]))
    return None


def _seconds(value: float) -> float | None:
    """A wait in seconds (negative: none); None for "inf" / "nan", which say nothing usable."""
    return max(0.0, value) if math.isfinite(value) else None


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _int_or_str(value: str) -> int | str:
    return int(value) if re.fullmatch(r"-?\d+", value) else value


def _redact(text: str) -> str:
    return _TG_TOKEN_IN_TEXT.sub("bot<redacted>", text)


class _RedactTelegramUrls(logging.Filter):
    """httpx logs each request URL at INFO; a Telegram URL carries the bot token."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_redact(str(a)) if _TG_TOKEN_IN_TEXT.search(str(a)) else a for a in record.args)
        return True


if not any(type(f).__name__ in ("_RedactTelegramUrls", "RedactBotTokens") for f in logging.getLogger("httpx").filters):
    logging.getLogger("httpx").addFilter(_RedactTelegramUrls())
