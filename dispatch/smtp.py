"""Acknowledgements by email: an SMTP ``Replier`` (STARTTLS or implicit TLS, AUTH).

smtplib's exceptions are translated here. Only a 5xx about this message is permanent
(ReplyError): a refused recipient (RCPT) or a refused message (DATA). Everything else is
ReplyUnavailable and retried by the relay with backoff: 4xx answers, connection and TLS problems,
and 5xx answers about the session (greeting, HELO/EHLO, STARTTLS, AUTH, MAIL FROM: "530
authentication required", a refused sender), which say the server or our credentials are wrong,
not the acknowledgement.

One send (connect, TLS, AUTH, MAIL/RCPT/DATA, or NOOP on a kept connection) has one deadline,
``smtp.timeout_s``: smtplib's timeout bounds each socket operation, so a slow server could stretch
a send to a multiple of it; a watchdog shuts the socket down when the deadline passes. The relay
relies on the bound (``Replier.max_send_s``) to end a send before its lease on the row does.
"""

from __future__ import annotations

import heapq
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence

from dispatch.base import OutboundReply, Replier
from dispatch.settings import SmtpSettings
from frontdesk.errors import ReplyError, ReplyUnavailable


class _Deadlines:
    """One daemon thread that fires every watchdog whose deadline has passed (a thread per send
    cost ~0.2 ms of CPU, as much as the send itself to a local server)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, _Watchdog]] = []
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def add(self, deadline: float, dog: _Watchdog) -> None:
        with self._wake:
            heapq.heappush(self._heap, (deadline, id(dog), dog))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="smtp-deadlines", daemon=True)
                self._thread.start()
            elif self._heap[0][2] is dog:
                self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    self._wake.wait(self._heap[0][0] - time.monotonic() if self._heap else None)
                _, _, dog = heapq.heappop(self._heap)
            dog._fire()


_DEADLINES = _Deadlines()


class _Watchdog:
    """Shuts down the socket of the session it watches when ``seconds`` have passed, unless
    cancelled first; after :meth:`cancel` returns it never touches the session again (a kept
    connection stays intact)."""

    def __init__(self, seconds: float) -> None:
        self.fired = False
        self._cancelled = False
        self._client: _Watched | None = None
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()
        _DEADLINES.add(time.monotonic() + seconds, self)

    def watch(self, client: smtplib.SMTP, sock: socket.socket | None = None) -> None:
        with self._lock:
            self._client, self._socket = client, sock
            if self.fired:
                self._abort()

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            self._client = self._socket = None

    def _fire(self) -> None:
        with self._lock:
            if self._cancelled:
                return
            self.fired = True
            self._abort()

    def _abort(self) -> None:
        # STARTTLS replaces client.sock (the plain socket is detached): shut down whichever is live.
        # socket.socket.shutdown, not SSLSocket's: that one also drops the TLS state under the reader.
        for sock in (getattr(self._client, "sock", None), self._socket):
            if sock is not None:
                try:
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)
                except OSError:
                    pass


class _Watched(smtplib.SMTP):
    """An SMTP session that hands its socket to a watchdog as soon as it is connected (the
    greeting is read inside the constructor)."""

    def __init__(self, *args: object, watchdog: _Watchdog, **kwargs: object) -> None:
        self._watchdog = watchdog
        self.mail_answered = False  # whether this send's MAIL FROM got a reply: after it, never resend here
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def mail(self, sender: str, options: Sequence[str] = ()) -> tuple[int, bytes]:
        answer = super().mail(sender, options)
        self.mail_answered = True
        return answer

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock = super()._get_socket(host, port, timeout)  # type: ignore[misc]
        self._watchdog.watch(self, sock)
        return sock


class _WatchedSmtpSsl(_Watched, smtplib.SMTP_SSL):
    pass


class SmtpReplier(Replier):
    """Blocking; thread-safe (sends are serialised). A connection (TLS handshake and AUTH done) is
    kept for ``REUSE_S`` after a send and reused, so a relay batch of acknowledgements costs one
    handshake; any error drops it, and the next send connects anew. A connection idle for more
    than ``UNCHECKED_S`` is checked by a NOOP first; one used just before is not (a round trip per
    acknowledgement), and if it turns out dead before its MAIL FROM got an answer (nothing of this
    message was accepted), the send is made once more on a new connection. A send that fails
    later is never repeated here (the relay retries it later), so reuse adds no duplicate window.
    Each send ends within ``settings.timeout_s`` (:attr:`max_send_s`), or raises ReplyUnavailable."""

    REUSE_S = 30.0  # well under the 5-minute idle timeout RFC 5321 asks servers to allow
    UNCHECKED_S = 2.0

    def __init__(self, settings: SmtpSettings, envelope_from: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.envelope_from = envelope_from
        self._clock = clock
        self._lock = threading.Lock()
        self._client: _Watched | None = None
        self._last_used = 0.0
        self.connections = 0  # opened so far (tests, metrics)

    @property
    def max_send_s(self) -> float:
        return self.settings.timeout_s

    def _context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.settings.ca_file) if self.settings.ca_file else None)

    def _connect(self, watchdog: _Watchdog) -> _Watched:
        s = self.settings
        if s.security == "ssl":
            client: _Watched = _WatchedSmtpSsl(s.host, s.port, timeout=s.timeout_s, context=self._context(),
                                                   watchdog=watchdog)
        else:
            client = _Watched(s.host, s.port, timeout=s.timeout_s, watchdog=watchdog)
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

    def _session(self, watchdog: _Watchdog) -> tuple[_Watched, bool]:
        """The kept connection if it is fresh (checked by NOOP unless used in the last
        ``UNCHECKED_S``), else a new one; and whether it is the kept one, unchecked."""
        client, self._client = self._client, None
        idle = self._clock() - self._last_used
        if client is not None and idle < self.REUSE_S:
            watchdog.watch(client)
            if idle < self.UNCHECKED_S:
                return client, True
            try:
                if client.noop()[0] == 250:
                    return client, False
            except (smtplib.SMTPException, OSError):
                pass
        if client is not None:
            _quietly_close(client)
        return self._connect(watchdog), False

    def close(self) -> None:
        """QUIT the kept connection, if any. Idempotent."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            _quietly_close(client)

    def send(self, reply: OutboundReply) -> None:
        """Blocking, at most ``settings.timeout_s`` (plus waiting for a concurrent send). Raises
        ReplyError for a refused recipient or message, ReplyUnavailable for anything else."""
        if reply.raw is None:
            raise ReplyError(f"email reply for {reply.case_reference} has no MIME body")
        with self._lock:
            self._send(reply.recipient, reply.raw)

    def _send(self, recipient: str, raw: bytes) -> None:
        client: _Watched | None = None
        watchdog = _Watchdog(self.settings.timeout_s)
        try:
            client, unchecked = self._session(watchdog)
            try:
                _transaction(client, self.envelope_from, recipient, raw)
            except (smtplib.SMTPServerDisconnected, OSError):
                if not unchecked or client.mail_answered or watchdog.fired:
                    raise
                client = _drop(client)  # it died while idle; nothing of this message reached the server
                client = self._connect(watchdog)
                _transaction(client, self.envelope_from, recipient, raw)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            if all(400 <= c < 500 for c in codes):
                raise ReplyUnavailable(f"recipient temporarily refused: {exc.recipients}") from exc
            raise ReplyError(f"recipient refused: {exc.recipients}") from exc
        except smtplib.SMTPDataError as exc:
            client = _drop(client)
            detail = f"SMTP {exc.smtp_code}: {exc.smtp_error!r}"
            if 500 <= exc.smtp_code < 600:
                raise ReplyError(f"message refused: {detail}") from exc
            raise ReplyUnavailable(detail) from exc
        except smtplib.SMTPResponseException as exc:
            client = _drop(client)
            raise ReplyUnavailable(_session_refused(exc)) from exc
        except (smtplib.SMTPException, OSError, socket.timeout, ssl.SSLError) as exc:
            client = _drop(client)
            if watchdog.fired:
                raise ReplyUnavailable(f"SMTP send exceeded its deadline of {self.settings.timeout_s:g}s") from exc
            raise ReplyUnavailable(f"SMTP server unavailable: {exc!r}") from exc
        finally:
            watchdog.cancel()
            if client is not None and watchdog.fired:  # its socket may be shut down
                client = _drop(client)
            if client is not None:  # a refused recipient leaves the session usable
                self._client, self._last_used = client, self._clock()


def _transaction(client: _Watched, sender: str, recipient: str, raw: bytes) -> None:
    client.mail_answered = False
    client.sendmail(sender, [recipient], raw)


def _session_refused(exc: smtplib.SMTPResponseException) -> str:
    """Why the server refused the session (not this message): 4xx, or a 5xx to HELO, STARTTLS,
    AUTH or MAIL FROM, which retrying after the server or our settings are fixed will cure."""
    detail = f"SMTP {exc.smtp_code}: {exc.smtp_error!r}"
    return detail if 400 <= exc.smtp_code < 500 else f"{detail} (server refused the session; check smtp settings)"


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
