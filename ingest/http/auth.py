"""Who may post to the HTTP intake: API bearer tokens, HMAC signatures (ours and Meta's), and shared
secrets (Telegram's secret token, Meta's verify token). Every comparison is constant-time; a missing
header or an unset secret is a refusal, never a pass.
"""

from __future__ import annotations

import hashlib
import hmac

from pydantic import SecretStr


def secret_ok(given: str | None, secret: SecretStr | None) -> bool:
    """Constant-time comparison; False when either side is missing."""
    if not given or secret is None:
        return False
    return hmac.compare_digest(given.encode(), secret.get_secret_value().encode())


def bearer_ok(header: str | None, tokens: tuple[SecretStr, ...]) -> bool:
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return False
    return any([secret_ok(token.strip(), t) for t in tokens])  # a list: compare with every token


def signature_ok(header: str | None, body: bytes, secret: SecretStr | None) -> bool:
    """``sha256=<hex>`` is the HMAC-SHA256 of ``body`` keyed with ``secret`` (constant-time)."""
    scheme, _, given = (header or "").strip().partition("=")
    if secret is None or scheme.lower() != "sha256" or not given:
        return False
    expected = hmac.new(secret.get_secret_value().encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), given.strip().lower().encode())
