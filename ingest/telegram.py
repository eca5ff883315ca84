"""The Telegram connector: Bot API ``getUpdates`` long polling, each update on the bus exactly once.

One call (:meth:`TelegramPoller.poll`):

1. ``getUpdates`` with ``offset`` = the stored offset (omitted on first start: Telegram then hands out
   everything not yet confirmed), ``timeout`` (long polling), ``limit`` and ``allowed_updates``;
2. every update is normalised with :func:`ingest.http.telegram_update.telegram_normalised` — the webhook's
   own normaliser, so polling and the webhook give the same message ids for the same message. Updates
   that are not customer messages give nothing and are skipped; an update with the wrong shape
   becomes a dead-letter record (stage ``ingest``, :mod:`ingest.http.deadletter`, as the webhook
   does) so it cannot block the connector;
3. the batch is published and the bus has it (``publish`` returns only when durable);
4. only then ``last update_id + 1`` is written to ``<offset_dir>/<connector>.offset`` (atomic
   replace, fsynced) and used as ``offset`` on the next call, which is what confirms the updates to
   Telegram. Skipped updates advance the offset too.

Crash between 3 and 4 (``crashpoint("telegram.after_publish")``): the next call still sends the old
offset, Telegram hands out the same updates, and they are published again with the same ids — a
no-op downstream. Nothing is confirmed to Telegram before it is durable on the bus, so nothing is lost.

Errors: connection problems, 5xx, 409 (another poller or an active webhook) and 429 (honouring
``retry_after``) raise :class:`SourceError`; :meth:`run` retries them with exponential backoff. 401
and 404 (the token is wrong: Telegram answers 404 for a malformed one) raise :class:`SourceAuthError`,
which :meth:`run` does not retry. The bot token is a SecretStr and never appears in errors or logs
(httpx's request log line is redacted too).
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import httpx
from pydantic import Field, SecretStr, field_validator

from frontdesk.bus.base import Bus, Outgoing
from frontdesk.codec import encode
from frontdesk.errors import ConfigError, SourceAuthError, SourceError, TransientError
from frontdesk.faults import crashpoint
from frontdesk.settings import ComponentSettings
from ingest.http.deadletter import dead_letter_record
from ingest.http.telegram_update import telegram_normalised
from ingest.http.settings import CONNECTOR_PATTERN

log = logging.getLogger(__name__)

BOT_TOKEN = re.compile(r"^[0-9]{1,20}:[A-Za-z0-9_-]{1,256}$")
_TOKEN_IN_TEXT = re.compile(r"bot[0-9]{1,20}:[A-Za-z0-9_-]+")
MESSAGE_UPDATES = ("message", "edited_message", "channel_post", "edited_channel_post")


class TelegramSettings(ComponentSettings):
    """``frontdesk ingest telegram``: long polling of the Bot API (use it or the webhook, not both)."""

    section: ClassVar[str] = "telegram"
    bot_token: SecretStr | None = Field(None, description="Bot token from @BotFather ('123456:ABC...')")
    api_base: str = Field("https://api.telegram.org", description="Bot API server (or a local Bot API server)")
    connector: str = Field("telegram", pattern=CONNECTOR_PATTERN,
                           description="Connector name; keep it equal to http.telegram_connector (same ids)")
    poll_timeout_s: int = Field(25, ge=0, le=50, description="getUpdates long-polling timeout")
    offset_dir: Path | None = Field(None, description="Where the offset file lives; default <data_dir>/telegram")
    allowed_updates: tuple[str, ...] = Field(MESSAGE_UPDATES, description="Update types to receive")
    limit: int = Field(100, ge=1, le=100, description="Updates per getUpdates call")
    max_text_chars: int = Field(20_000, ge=100, le=1_000_000, description="Longer texts are cut")
    request_timeout_s: float = Field(10.0, gt=0, description="Added to poll_timeout_s for the HTTP timeout")
    backoff_initial_s: float = Field(1.0, gt=0)
    backoff_max_s: float = Field(300.0, gt=0)

    @field_validator("bot_token")
    @classmethod
    def _token_shape(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not BOT_TOKEN.match(value.get_secret_value()):
            raise ValueError("expected '<bot id>:<secret>' (digits, ':', then A-Z, a-z, 0-9, _ or -)")
        return value

    @field_validator("api_base")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL")
        return value.rstrip("/")


class RateLimited(SourceError):
    """Telegram answered 429; ``retry_after`` is the wait it asked for, in seconds."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class Health:
    """Connector state for metrics and the status line."""

    last_success: datetime | None = None
    consecutive_failures: int = 0
    published: int = 0
    skipped: int = 0
    dead_lettered: int = 0
    last_error: str | None = None


class OffsetStore:
    """The next ``getUpdates`` offset of one connector: a small file, replaced atomically and fsynced."""

    def __init__(self, directory: Path, connector: str) -> None:
        self.path = Path(directory) / f"{connector}.offset"

    def load(self) -> int | None:
        """The stored offset; None before the first batch. A corrupt file raises SourceError."""
        try:
            return int(json.loads(self.path.read_text())["offset"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SourceError(f"unreadable Telegram offset file {self.path}: {exc}") from exc

    def save(self, offset: int) -> None:
        """Durably replace the offset (write temp, fsync, rename, fsync the directory)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as fh:
            json.dump({"offset": offset}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


class TelegramPoller:
    """Imports one bot's updates. ``run_once`` is one non-blocking call; ``run`` long-polls until stopped."""

    def __init__(self, settings: TelegramSettings, bus: Bus, offset_dir: Path, *,
                 clock: Callable[[], datetime] | None = None, transport: httpx.BaseTransport | None = None) -> None:
        if settings.bot_token is None:
            raise ConfigError("telegram.bot_token is not set (env FRONTDESK_TELEGRAM_BOT_TOKEN)")
        self.settings, self.bus = settings, bus
        self.connector = settings.connector
        self.offsets = OffsetStore(offset_dir, settings.connector)
        self.clock = clock or (lambda: datetime.now(UTC))
        self.health = Health()
        token = settings.bot_token.get_secret_value()
        self._url = f"{settings.api_base}/bot{token}/getUpdates"
        self._client = httpx.Client(transport=transport, follow_redirects=False)

    def close(self) -> None:
        self._client.close()

    def run_once(self) -> int:
        """One ``getUpdates`` call with timeout 0; returns how many records were published."""
        return self.poll(0)

    def run(self, stop: threading.Event) -> None:
        """Long-poll until ``stop`` (noticed at the end of the current call, ≤ ``poll_timeout_s``).

        Source errors back off exponentially (429: at least Telegram's ``retry_after``);
        :class:`SourceAuthError` is re-raised at once: retrying a rejected token cannot help.
        """
        delay = self.settings.backoff_initial_s
        while not stop.is_set():
            try:
                self.poll(self.settings.poll_timeout_s)
                delay = self.settings.backoff_initial_s
            except SourceAuthError as exc:
                self.health.last_error = str(exc)
                log.error("%s: %s; stopping", self.connector, exc)
                raise
            except (SourceError, TransientError) as exc:
                self.health.consecutive_failures += 1
                self.health.last_error = str(exc)
                wait = max(delay, exc.retry_after) if isinstance(exc, RateLimited) else delay
                log.warning("%s: %s; retrying in %.1fs", self.connector, exc, wait)
                stop.wait(wait)
                delay = min(self.settings.backoff_max_s, delay * 2)

    def poll(self, timeout: int) -> int:
        """One call: fetch, publish (durable), then advance the offset. Returns records published."""
        offset = self.offsets.load()
        updates = self._get_updates(offset, timeout)
        if not updates:
            self._succeeded()
            return 0
        records = [r for u in updates for r in self._records(u)]
        if records:
            self.bus.publish(records)
            crashpoint("telegram.after_publish")
        dead = sum(1 for r in records if r.topic == self.bus.topics.deadletter)
        self.health.published += len(records) - dead
        self.health.dead_lettered += dead
        self.health.skipped += len(updates) - len(records)
        last = max(int(u["update_id"]) for u in updates)
        self.offsets.save(max(last + 1, offset or 0))
        self._succeeded()
        return len(records)

    def _succeeded(self) -> None:
        self.health.last_success = datetime.now(UTC)
        self.health.consecutive_failures = 0

    def _get_updates(self, offset: int | None, timeout: int) -> list[dict[str, Any]]:
        s = self.settings
        body: dict[str, Any] = {"timeout": timeout, "limit": s.limit, "allowed_updates": list(s.allowed_updates)}
        if offset is not None:
            body["offset"] = offset
        try:
            response = self._client.post(self._url, json=body, timeout=timeout + s.request_timeout_s)
        except httpx.HTTPError as exc:
            raise SourceError(f"{self.connector}: getUpdates failed: {_redact(repr(exc))}") from exc
        data = _json(response)
        if response.status_code != 200 or data.get("ok") is not True:
            self._raise_for(response.status_code, data)
        result = data.get("result")
        if not isinstance(result, list) or not all(
                isinstance(u, dict) and isinstance(u.get("update_id"), int) and not isinstance(u["update_id"], bool)
                for u in result):
            raise SourceError(f"{self.connector}: getUpdates answered an unexpected shape")
        return sorted(result, key=lambda u: u["update_id"])

    def _raise_for(self, status: int, data: dict[str, Any]) -> None:
        what = f"{self.connector}: getUpdates HTTP {status}: {_redact(str(data.get('description', '')))[:300]}"
        if status in (401, 404):
            raise SourceAuthError(f"{what} (check telegram.bot_token and telegram.api_base)")
        if status == 429:
            params = data.get("parameters") if isinstance(data.get("parameters"), dict) else {}
            retry_after = params.get("retry_after") if isinstance(params.get("retry_after"), int) else 5
            raise RateLimited(what, float(retry_after))
        if status == 409:
            raise SourceError(f"{what} (another getUpdates poller, or a webhook is set: deleteWebhook first)")
        raise SourceError(what)

    def _records(self, update: dict[str, Any]) -> list[Outgoing]:
        """The inbound record of the update's message, or its dead-letter record; none for other updates."""
        found = telegram_normalised(update, connector=self.connector, received_at=self.clock(),
                                    max_text=self.settings.max_text_chars)
        found.fit(self.bus.max_record_bytes)
        headers = (("frontdesk-telegram-update-id", str(update["update_id"]).encode()),)
        return ([Outgoing(self.bus.topics.inbound, encode(m), m.id.encode(),
                          (("frontdesk-connector", self.connector.encode()), *headers)) for m in found.messages]
                + [dead_letter_record(self.bus.topics.deadletter, r, self.bus.max_record_bytes, headers)
                   for r in found.rejected])


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        return {"description": f"non-JSON answer ({response.headers.get('content-type', '?')})"}
    return data if isinstance(data, dict) else {"description": "non-object JSON answer"}


def _redact(text: str) -> str:
    """``text`` with every ``bot<id>:<secret>`` replaced (URLs in library messages carry the token)."""
    return _TOKEN_IN_TEXT.sub("bot<redacted>", text)


class RedactBotTokens(logging.Filter):
    """Removes bot tokens from log records (httpx logs every request URL at INFO)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_redact(str(a)) if _TOKEN_IN_TEXT.search(str(a)) else a for a in record.args)
        if isinstance(record.msg, str) and _TOKEN_IN_TEXT.search(record.msg):
            record.msg = _redact(record.msg)
        return True


if not any(isinstance(f, RedactBotTokens) for f in logging.getLogger("httpx").filters):
    logging.getLogger("httpx").addFilter(RedactBotTokens())
