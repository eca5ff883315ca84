"""Opening an IMAP session: TCP, TLS (implicit or STARTTLS), login with a password or XOAUTH2;
waiting in it for new mail (IDLE); a mailbox's session loop, reconnected with backoff; what is done
to imported mail (Seen, move, delete).

TLS certificates are always verified (hostname included): against the CAs in the mailbox's
``ca_file`` if set, else the system's. There is no switch to turn verification off. With
``security="starttls"`` a server that refuses STARTTLS is an error, never a plain-text login.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError, LoginError

from frontdesk.errors import SourceAuthError, SourceError, TransientError
from ingest.imap_settings import MailboxSettings
from ingest.imap_state import Health

log = logging.getLogger(__name__)


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


def after_import(client: IMAPClient, box: MailboxSettings, uids: list[int]) -> None:
    """Mark imported mail Seen, move it to ``box.move_to`` or delete it (``box.after_import``)."""
    if not uids:
        return
    if box.after_import == "seen":
        client.add_flags(uids, [b"\\Seen"], silent=True)
    elif box.after_import == "move":
        client.move(uids, box.move_to)
    else:
        client.delete_messages(uids, silent=True)
        client.uid_expunge(uids) if client.has_capability("UIDPLUS") else client.expunge()


def watch(client: IMAPClient, box: MailboxSettings, one_pass: Callable[[IMAPClient], None], stop: threading.Event,
          name: str) -> None:
    """One session (blocking until ``stop``): a pass, then wait for news (IDLE, or poll), again.
    Logs out at the end; a dropped connection is raised as SourceError."""
    try:
        # IDLE watches the selected folder only; several folders are polled.
        idle = box.idle and client.has_capability("IDLE") and len(box.folders) == 1
        while not stop.is_set():
            one_pass(client)
            if idle and take_announced_mail(client):
                continue  # mail arrived during the pass: IDLE would not report it
            if idle:
                idle_until_news(client, stop, box.idle_renew_s, name)
            else:
                stop.wait(box.poll_interval_s)
                client.noop()
    except (IMAPClientError, OSError) as exc:  # the connection dropped between passes
        raise SourceError(f"{name}: {exc}") from exc
    finally:
        logout(client)


def serve(session: Callable[[threading.Event], None], stop: threading.Event, health: Health,
          reconnect: tuple[float, float], name: str) -> None:
    """Run ``session`` until ``stop``; after any failure (in ``health``), again after a delay that
    doubles from ``reconnect[0]`` up to ``reconnect[1]`` and starts over once a session served."""
    delay = reconnect[0]
    while not stop.is_set():
        try:
            session(stop)
            delay = reconnect[0]
        except Exception as exc:  # whatever failed, the mailbox keeps trying (visible in Health), never dies
            if health.consecutive_failures == 0:
                delay = reconnect[0]  # the session had served a pass: a new outage starts over
            health.consecutive_failures += 1
            known = isinstance(exc, (SourceError, TransientError))
            health.last_error = str(exc) if known else f"{type(exc).__name__}: {exc}"
            if known:
                log.warning("%s: %s; reconnecting in %.1fs", name, exc, delay)
            else:
                log.exception("%s: unexpected %s; reconnecting in %.1fs", name, type(exc).__name__, delay)
            stop.wait(delay)
            delay = min(reconnect[1], delay * 2)
