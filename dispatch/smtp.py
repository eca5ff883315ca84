"""Acknowledgements by email: an SMTP ``Replier`` (STARTTLS or implicit TLS, AUTH).

smtplib's exceptions are translated here: 4xx answers and connection problems become
ReplyUnavailable (the relay retries with backoff), 5xx answers ReplyError (permanent).
"""

from __future__ import annotations

import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Callable

from dispatch.base import OutboundReply, Replier
from dispatch.settings import SmtpSettings
from frontdesk.errors import ReplyError, ReplyUnavailable


class SmtpReplier(Replier):
    """Blocking; thread-safe (sends are serialised). A connection (TLS handshake and AUTH done) is
    kept for ``REUSE_S`` after a send and reused, checked by a NOOP first, so a relay batch of
    acknowledgements costs one handshake; any error drops it, and the next send connects anew.
    A send that fails after the connection was checked is never repeated here (the relay retries
    it later), so reuse adds no duplicate window."""

    REUSE_S = 30.0  # well under the 5-minute idle timeout RFC 5321 asks servers to allow

    def __init__(self, settings: SmtpSettings, envelope_from: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.envelope_from = envelope_from
        self._clock = clock
        self._lock = threading.Lock()
        self._client: smtplib.SMTP | None = None
        self._last_used = 0.0
        self.connections = 0  # opened so far (tests, metrics)

    def _context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.settings.ca_file) if self.settings.ca_file else None)

    def _connect(self) -> smtplib.SMTP:
        s = self.settings
        if s.security == "ssl":
            client: smtplib.SMTP = smtplib.SMTP_SSL(s.host, s.port, timeout=s.timeout_s, context=self._context())
        else:
            client = smtplib.SMTP(s.host, s.port, timeout=s.timeout_s)
        try:
            if s.security == "starttls":
                client.starttls(context=self._context())
            if s.username:
                client.login(s.username, s.password.get_secret_value() if s.password else "")
        except BaseException:
            _quietly_close(client)
            raise
        self.connections += 1
        return client

    def _session(self) -> smtplib.SMTP:
        """The kept connection if it is fresh and answers NOOP with 250, else a new one."""
        client, self._client = self._client, None
        if client is not None and self._clock() - self._last_used < self.REUSE_S:
            try:
                if client.noop()[0] == 250:
                    return client
            except (smtplib.SMTPException, OSError):
                pass
        if client is not None:
            _quietly_close(client)
        return self._connect()

    def close(self) -> None:
        """QUIT the kept connection, if any. Idempotent."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            _quietly_close(client)

    def send(self, reply: OutboundReply) -> None:
        if reply.raw is None:
            raise ReplyError(f"email reply for {reply.case_reference} has no MIME body")
        with self._lock:
            self._send(reply.recipient, reply.raw)

    def _send(self, recipient: str, raw: bytes) -> None:
        client: smtplib.SMTP | None = None
        try:
            client = self._session()
            client.sendmail(self.envelope_from, [recipient], raw)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            if all(400 <= c < 500 for c in codes):
                raise ReplyUnavailable(f"recipient temporarily refused: {exc.recipients}") from exc
            raise ReplyError(f"recipient refused: {exc.recipients}") from exc
        except smtplib.SMTPResponseException as exc:
            client = _drop(client)
            detail = f"SMTP {exc.smtp_code}: {exc.smtp_error!r}"
            if 400 <= exc.smtp_code < 500 or isinstance(exc, smtplib.SMTPAuthenticationError):
                raise ReplyUnavailable(detail) from exc
            raise ReplyError(detail) from exc
        except (smtplib.SMTPException, OSError, socket.timeout, ssl.SSLError) as exc:
            client = _drop(client)
            raise ReplyUnavailable(f"SMTP server unavailable: {exc!r}") from exc
        finally:
            if client is not None:  # a refused recipient leaves the session usable
                self._client, self._last_used = client, self._clock()


def _drop(client: smtplib.SMTP | None) -> None:
    if client is not None:
        _quietly_close(client)
    return None


def _quietly_close(client: smtplib.SMTP) -> None:
    """QUIT, or just close the socket when the server is gone."""
    try:
        client.quit()
    except (smtplib.SMTPException, OSError):
        client.close()
