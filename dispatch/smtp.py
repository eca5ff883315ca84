"""Acknowledgements by email: an SMTP ``Replier`` (STARTTLS or implicit TLS, AUTH).

smtplib's exceptions are translated here: 4xx answers and connection problems become
ReplyUnavailable (the relay retries with backoff), 5xx answers ReplyError (permanent).
"""

from __future__ import annotations

import smtplib
import socket
import ssl

from dispatch.base import OutboundReply, Replier
from dispatch.settings import SmtpSettings
from frontdesk.errors import ReplyError, ReplyUnavailable


class SmtpReplier(Replier):
    """One connection per send (simple and robust); blocking."""

    def __init__(self, settings: SmtpSettings, envelope_from: str) -> None:
        self.settings = settings
        self.envelope_from = envelope_from

    def _context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.settings.ca_file) if self.settings.ca_file else None)

    def _connect(self) -> smtplib.SMTP:
        s = self.settings
        if s.security == "ssl":
            return smtplib.SMTP_SSL(s.host, s.port, timeout=s.timeout_s, context=self._context())
        client = smtplib.SMTP(s.host, s.port, timeout=s.timeout_s)
        if s.security == "starttls":
            client.starttls(context=self._context())
        return client

    def send(self, reply: OutboundReply) -> None:
        if reply.raw is None:
            raise ReplyError(f"email reply for {reply.case_reference} has no MIME body")
        try:
            with self._connect() as client:
                if self.settings.username:
                    password = self.settings.password.get_secret_value() if self.settings.password else ""
                    client.login(self.settings.username, password)
                client.sendmail(self.envelope_from, [reply.recipient], reply.raw)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            if all(400 <= c < 500 for c in codes):
                raise ReplyUnavailable(f"recipient temporarily refused: {exc.recipients}") from exc
            raise ReplyError(f"recipient refused: {exc.recipients}") from exc
        except smtplib.SMTPResponseException as exc:
            detail = f"SMTP {exc.smtp_code}: {exc.smtp_error!r}"
            if 400 <= exc.smtp_code < 500 or isinstance(exc, smtplib.SMTPAuthenticationError):
                raise ReplyUnavailable(detail) from exc
            raise ReplyError(detail) from exc
        except (smtplib.SMTPException, OSError, socket.timeout, ssl.SSLError) as exc:
            raise ReplyUnavailable(f"SMTP server unavailable: {exc!r}") from exc
