"""Opening an IMAP session: TCP, TLS (implicit or STARTTLS), login with a password or XOAUTH2;
waiting in it for new mail (IDLE).

TLS certificates are always verified (hostname included): against the CAs in the mailbox's
``ca_file`` if set, else the system's. There is no switch to turn verification off. With
``security="starttls"`` a server that refuses STARTTLS is an error, never a plain-text login.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError, LoginError

from frontdesk.errors import SourceAuthError, SourceError
from ingest.imap_settings import MailboxSettings


def connect(box: MailboxSettings, name: str) -> IMAPClient:
    """A logged-in client whose INTERNALDATEs are timezone-aware (blocking, up to ``box.timeout_s``
    per network step). Raises SourceAuthError when the credentials are refused or the XOAUTH2 token
    cannot be had, SourceError for anything else (refused, timed out, certificate not trusted);
    nothing is left open on failure. ``name`` prefixes the messages."""
    context = _tls_context(box, name) if box.security != "none" else None
    try:
        client = IMAPClient(box.host, box.port, ssl=box.security == "ssl", ssl_context=context, timeout=box.timeout_s)
    except ssl.SSLCertVerificationError as exc:
        raise _untrusted(box, name, exc) from exc
    except (IMAPClientError, OSError) as exc:
        raise SourceError(f"{name}: cannot connect to {box.host}:{box.port}: {exc}") from exc
    try:
        if box.security == "starttls":
            client.starttls(context)
        client.normalise_times = False
        _login(client, box, name)
    except BaseException as exc:
        close(client)
        if isinstance(exc, ssl.SSLCertVerificationError):
            raise _untrusted(box, name, exc) from exc
        if isinstance(exc, (IMAPClientError, OSError)):
            raise SourceError(f"{name}: {box.host}:{box.port}: {exc}") from exc
        raise
    return client


def _tls_context(box: MailboxSettings, name: str) -> ssl.SSLContext:
    try:
        return ssl.create_default_context(cafile=str(box.ca_file) if box.ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise SourceError(f"{name}: cannot load ca_file {box.ca_file}: {exc}") from exc


def _untrusted(box: MailboxSettings, name: str, exc: ssl.SSLCertVerificationError) -> SourceError:
    trusted = f"the CAs in ca_file {box.ca_file}" if box.ca_file else "the system's CAs (set ca_file for a private CA)"
    return SourceError(f"{name}: the TLS certificate of {box.host}:{box.port} is not trusted by {trusted}: "
                       f"{exc.verify_message or exc}")


def _login(client: IMAPClient, box: MailboxSettings, name: str) -> None:
    token = box.oauth2_token()
    try:
        if token is not None:
            client.oauth2_login(box.username, token)
        else:
            client.login(box.username, box.password.get_secret_value() if box.password else "")
    except LoginError as exc:
        how = "XOAUTH2 token" if token is not None else "login"
        raise SourceAuthError(f"{name}: {how} rejected by {box.host}:{box.port}: {exc}") from exc


def logout(client: IMAPClient) -> None:
    """Say goodbye politely; a connection that is already gone is fine."""
    try:
        client.logout()
    except (IMAPClientError, OSError, socket.timeout):
        pass


def close(client: IMAPClient) -> None:
    """Drop the connection without a LOGOUT (after a failed login or STARTTLS)."""
    try:
        client.shutdown()
    except (IMAPClientError, OSError, socket.timeout):
        pass


def take_announced_mail(client: IMAPClient) -> bool:
    """Whether the server announced new mail (untagged EXISTS or RECENT) in its replies since the
    last call or SELECT; forgets those announcements.

    A server announces a new message once. If that happens inside the reply to a FETCH or STORE of
    a pass, an IDLE entered afterwards never reports it, and the mail would wait for the IDLE
    renewal. imapclient does not surface such untagged replies; imaplib keeps them in
    ``untagged_responses`` until they are taken.
    """
    pending = client._imap.untagged_responses
    exists, recent = pending.pop("EXISTS", None), pending.pop("RECENT", None)
    return bool(exists) or bool(recent)


def idle_until_news(client: IMAPClient, stop: threading.Event, renew_s: float, name: str) -> None:
    """Wait for new mail with IDLE (blocking): returns on news, on ``stop``, or after ``renew_s``
    (before the server's 29-minute limit). Raises SourceError if IDLE fails."""
    renew_at = time.monotonic() + renew_s
    try:
        client.idle()
        while not stop.is_set() and time.monotonic() < renew_at:
            if any(r[1] in (b"EXISTS", b"RECENT") for r in client.idle_check(timeout=1.0) if len(r) > 1):
                break
    except (IMAPClientError, OSError, socket.timeout) as exc:
        raise SourceError(f"{name}: IDLE failed: {exc}") from exc
    finally:
        try:
            client.idle_done()
        except (IMAPClientError, OSError):
            pass
