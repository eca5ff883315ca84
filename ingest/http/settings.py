"""Settings of the HTTP intake (section ``http``): listen address, credentials, connector names, limits.

Every credential is a SecretStr: it is never printed, logged or put into an error message. An
endpoint whose credential is unset is disabled (it answers 404), so a half-configured service
never accepts unauthenticated input.
"""

from __future__ import annotations

import re
from typing import ClassVar

from pydantic import Field, SecretStr, field_validator

from frontdesk.settings import ComponentSettings

CONNECTOR_PATTERN = r"^[A-Za-z0-9._:-]{1,64}$"
_TELEGRAM_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,256}$")


class HttpIntakeSettings(ComponentSettings):
    """``frontdesk ingest http``: the messages API and the Telegram / Meta webhooks."""

    section: ClassVar[str] = "http"
    host: str = Field("127.0.0.1", description="Listen address (put a TLS-terminating proxy in front)")
    port: int = Field(8080, ge=1, le=65535)
    api_tokens: tuple[SecretStr, ...] = Field((), description="Bearer tokens accepted by POST /v1/messages")
    hmac_secret: SecretStr | None = Field(
        None, description="Key of 'X-Frontdesk-Signature: sha256=<hex>' (HMAC-SHA256 of the raw body) on /v1/messages"
    )
    telegram_secret_token: SecretStr | None = Field(
        None, description="setWebhook secret_token, checked against X-Telegram-Bot-Api-Secret-Token"
    )
    telegram_connector: str = Field("telegram", pattern=CONNECTOR_PATTERN)
    meta_app_secret: SecretStr | None = Field(None, description="App secret: key of X-Hub-Signature-256")
    meta_verify_token: SecretStr | None = Field(None, description="Verify token of the GET subscription handshake")
    whatsapp_connector: str = Field("whatsapp", pattern=CONNECTOR_PATTERN)
    facebook_connector: str = Field("facebook", pattern=CONNECTOR_PATTERN)
    instagram_connector: str = Field("instagram", pattern=CONNECTOR_PATTERN)
    max_body_bytes: int = Field(1024 * 1024, ge=1024, le=64 * 1024 * 1024, description="Larger bodies get 413")
    meta_max_body_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, le=64 * 1024 * 1024,
        description="Larger Meta webhook bodies get 413 (Meta batches many changes into one delivery, up to 3 MB)",
    )
    max_text_chars: int = Field(20_000, ge=100, le=1_000_000, description="Longer webhook texts are cut")
    retry_after_s: int = Field(5, ge=1, le=3600, description="Retry-After of a 503 when the bus is down")
    ready_timeout_s: float = Field(5.0, gt=0, description="How long /readyz waits for the bus")

    @field_validator("telegram_secret_token")
    @classmethod
    def _telegram_token_charset(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not _TELEGRAM_TOKEN.match(value.get_secret_value()):
            raise ValueError("Telegram allows 1-256 characters A-Z, a-z, 0-9, _ and -")
        return value

    @field_validator("api_tokens")
    @classmethod
    def _no_empty_tokens(cls, value: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        if any(len(token.get_secret_value()) < 16 for token in value):
            raise ValueError("every API token needs at least 16 characters")
        return value

    @field_validator("hmac_secret", "meta_app_secret", "meta_verify_token")
    @classmethod
    def _not_blank(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("must not be blank (leave it unset to disable the endpoint)")
        return value
