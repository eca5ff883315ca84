"""Recording SMTP server for tests (aiosmtpd ``Controller`` in a thread).

Accepts mail on a free 127.0.0.1 port, offers STARTTLS with a throw-away
``trustme`` CA, AUTH PLAIN/LOGIN against an in-memory user table, and records
every accepted message.  It can be told to answer ``451`` to DATA for fault
tests.

Usage::

    with RecordingSMTPServer(require_auth=True, users={"bot": "pw"}) as smtp:
        with smtplib.SMTP(smtp.host, smtp.port, timeout=10) as c:
            c.starttls(context=smtp.client_ssl_context())
            c.login("bot", "pw")
            c.send_message(msg)
        [rec] = smtp.wait_for(1, timeout=5)
        assert rec.message["Subject"] == "hi"

Gotchas (aiosmtpd 1.4.x):

* A failing authenticator must return ``AuthResult(success=False,
  handled=False)``; with the default ``handled=True`` aiosmtpd sends *no*
  reply and the client hangs until its timeout.
* ``Session.login_data is deprecated`` is emitted on every successful AUTH --
  in 1.4.6 via ``logging`` (logger ``mail.log``), not ``warnings``.  This
  module installs a filter on that logger (and a ``warnings`` filter, for
  versions that use ``DeprecationWarning``).
* "AUTH required" is enforced here in ``handle_MAIL`` (530) instead of with
  aiosmtpd's ``auth_required=True``, which emits a ``UserWarning`` ("Requiring
  AUTH while not requiring TLS ...") when STARTTLS is off.
* With ``starttls=True`` AUTH is only offered after STARTTLS
  (``auth_require_tls=True``); with ``starttls=False`` AUTH works over plain
  text (``auth_require_tls=False``) -- for tests only.
* The greeting hostname is fixed ("localhost"): aiosmtpd's default,
  ``socket.getfqdn()``, can block for seconds on a machine without DNS.
* A ``Controller`` cannot be restarted (its event loop is closed on stop), so
  every ``start()`` builds a new one; the port is kept across restarts.
"""

from __future__ import annotations

import email.policy
import functools
import logging
import shutil
import socket
import ssl
import tempfile
import threading
import time
import warnings
import weakref
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from .process import HOST, free_port

__all__ = ["RecordingSMTPServer", "Received", "free_port"]

# --- silence aiosmtpd's login_data deprecation noise -----------------------
warnings.filterwarnings(
    "ignore", message=r".*Session\.login_data.*", category=DeprecationWarning
)


class _LoginDataDeprecationFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # pragma: no cover
            return True
        return "login_data is deprecated" not in msg


_MAIL_LOG = logging.getLogger("mail.log")
if not any(isinstance(f, _LoginDataDeprecationFilter) for f in _MAIL_LOG.filters):
    _MAIL_LOG.addFilter(_LoginDataDeprecationFilter())


@dataclass(frozen=True)
class Received:
    """One accepted message."""

    mail_from: str
    rcpt_tos: list[str]
    raw: bytes  # DATA exactly as received (dot-unstuffed, CRLF line ends)
    received_at: float  # time.time() when DATA completed
    peer: Any = None  # (host, port) of the client
    helo: str | None = None
    login: str | None = None  # AUTH user, or None
    tls: bool = False  # True if the session used STARTTLS
    mail_options: list[str] = field(default_factory=list)
    rcpt_options: list[str] = field(default_factory=list)

    @functools.cached_property
    def message(self) -> EmailMessage:
        """``raw`` parsed with email.policy.default, on first use: parsing every message as it
        arrives cost benchmarks that share the CPU with the pipeline ~1 ms a message."""
        return BytesParser(policy=email.policy.default).parsebytes(self.raw)  # type: ignore[return-value]

    @property
    def subject(self) -> str | None:
        return self.message["Subject"]


class _Handler:
    def __init__(self, owner: "RecordingSMTPServer") -> None:
        self.owner = owner

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list
    ) -> str:
        if self.owner.require_auth and not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        owner = self.owner
        if owner.refusing:
            with owner._cond:
                owner.refused_count += 1
            return "451 4.3.0 Temporary failure, please try again later (test harness)"
        raw = envelope.original_content
        if raw is None:  # pragma: no cover
            raw = envelope.content if isinstance(envelope.content, bytes) else b""
        rec = Received(
            mail_from=envelope.mail_from or "",
            rcpt_tos=list(envelope.rcpt_tos),
            raw=bytes(raw),
            received_at=time.time(),
            peer=session.peer,
            helo=session.host_name,
            login=session.auth_data if session.authenticated else None,
            tls=session.ssl is not None,
            mail_options=list(envelope.mail_options),
            rcpt_options=list(envelope.rcpt_options),
        )
        with owner._cond:
            owner._messages.append(rec)
            n = len(owner._messages)
            owner._cond.notify_all()
        return f"250 2.0.0 OK queued as test-{n}"


class RecordingSMTPServer:
    """aiosmtpd-based SMTP sink on 127.0.0.1:``port`` that records messages.

    ``users`` maps user name -> password for AUTH PLAIN/LOGIN.  With
    ``require_auth`` MAIL FROM is refused with 530 until the client
    authenticated.  With ``starttls`` (default) STARTTLS is offered using a
    certificate for ``localhost``/``127.0.0.1`` issued by a per-server
    ``trustme`` CA, and AUTH is only offered after STARTTLS.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        require_auth: bool = False,
        users: dict[str, str] | None = None,
        starttls: bool = True,
        host: str = HOST,
        server_hostname: str = "localhost",
        data_size_limit: int | None = None,
        ready_timeout: float = 10.0,
    ) -> None:
        if require_auth and not users:
            raise ValueError("require_auth=True needs a users={name: password} table")
        self.host = host
        self._port = port
        self.require_auth = require_auth
        self.users: dict[str, str] = dict(users or {})
        self.starttls = starttls
        self.server_hostname = server_hostname
        self.data_size_limit = data_size_limit
        self.ready_timeout = ready_timeout

        self._cond = threading.Condition()
        self._messages: list[Received] = []
        self.refused_count = 0
        self.auth_failures = 0
        self._refuse_forever = False
        self._refuse_until = 0.0
        self._controller: Controller | None = None
        self._tmpdir: Path | None = None
        self.ca: trustme.CA | None = None
        self._server_ctx: ssl.SSLContext | None = None
        self.ca_pem_path: Path | None = None
        if starttls:
            self._setup_tls()

    # -------------------------------------------------------------- TLS
    def _setup_tls(self) -> None:
        self.ca = trustme.CA()
        cert = self.ca.issue_cert("localhost", HOST, self.server_hostname)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(ctx)
        self._server_ctx = ctx
        # CA certificate as a file, for clients that want a path (cafile=...).
        # Removed by close() or when this object is garbage-collected.
        self._tmpdir = Path(tempfile.mkdtemp(prefix="smtp-ca-"))
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(self._tmpdir), True)
        self.ca_pem_path = self._tmpdir / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_pem_path))

    def client_ssl_context(self) -> ssl.SSLContext:
        """A client context trusting this server's CA (hostname checking on)."""
        if self.ca is None:
            raise RuntimeError("server was created with starttls=False")
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        self.ca.configure_trust(ctx)
        return ctx

    # -------------------------------------------------------------- auth
    def _authenticator(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if isinstance(auth_data, LoginPassword):
            login = auth_data.login.decode("utf-8", "replace")
            password = auth_data.password.decode("utf-8", "replace")
            expected = self.users.get(login)
            if expected is not None and expected == password:
                return AuthResult(success=True, auth_data=login)
        with self._cond:
            self.auth_failures += 1
        # handled=False: let aiosmtpd send "535 5.7.8"; handled=True would make
        # it send nothing at all and the client would hang.
        return AuthResult(success=False, handled=False)

    # -------------------------------------------------------------- faults
    def refuse(self, on: bool = True) -> None:
        """Answer DATA with 451 (temporary failure) until ``refuse(False)``."""
        with self._cond:
            self._refuse_forever = bool(on)
            if not on:
                self._refuse_until = 0.0

    def refuse_for(self, seconds: float) -> None:
        """Answer DATA with 451 for the next ``seconds`` seconds."""
        with self._cond:
            self._refuse_until = time.monotonic() + seconds

    @property
    def refusing(self) -> bool:
        with self._cond:
            return self._refuse_forever or time.monotonic() < self._refuse_until

    # -------------------------------------------------------------- records
    @property
    def messages(self) -> list[Received]:
        """Snapshot (copy) of the accepted messages, oldest first."""
        with self._cond:
            return list(self._messages)

    def __len__(self) -> int:
        with self._cond:
            return len(self._messages)

    def wait_for(self, n: int = 1, timeout: float = 10.0) -> list[Received]:
        """Block until at least ``n`` messages were accepted; return all of them.

        Raises ``TimeoutError`` (with the count so far) after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._messages) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"expected >= {n} message(s) within {timeout}s, got "
                        f"{len(self._messages)} (refused DATA: {self.refused_count})"
                    )
                self._cond.wait(left)
            return list(self._messages)

    def clear(self) -> None:
        """Forget recorded messages and counters."""
        with self._cond:
            self._messages.clear()
            self.refused_count = 0
            self.auth_failures = 0

    # -------------------------------------------------------------- lifecycle
    @property
    def port(self) -> int:
        if self._port is None:
            self._port = free_port(self.host)
        return self._port

    @property
    def running(self) -> bool:
        return self._controller is not None

    def start(self) -> "RecordingSMTPServer":
        if self._controller is not None:
            return self
        kwargs: dict[str, Any] = dict(
            hostname=self.host,
            port=self.port,
            server_hostname=self.server_hostname,
            ready_timeout=self.ready_timeout,
            authenticator=self._authenticator,
            auth_require_tls=self.starttls,
            decode_data=False,
            enable_SMTPUTF8=True,
        )
        if self.data_size_limit is not None:
            kwargs["data_size_limit"] = self.data_size_limit
        if self.starttls:
            kwargs["tls_context"] = self._server_ctx
            kwargs["require_starttls"] = False
        # aiosmtpd only notices a failed bind after the whole ready_timeout
        # (the ready event is never set), so probe the port first.
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((self.host, self.port))
        controller = Controller(_Handler(self), **kwargs)
        try:
            controller.start()
        except BaseException:
            try:
                controller.stop(no_assert=True)
            except Exception:
                pass
            raise
        self._controller = controller
        return self

    def stop(self) -> None:
        if self._controller is None:
            return
        controller, self._controller = self._controller, None
        controller.stop()

    def restart(self) -> "RecordingSMTPServer":
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop and delete the CA temp dir."""
        self.stop()
        if self._tmpdir is not None:
            self._finalizer()
            self._tmpdir = None

    def __enter__(self) -> "RecordingSMTPServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        # stop() only: the object stays usable (start() again, ca_pem_path kept)
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<RecordingSMTPServer {self.host}:{self._port} {state} msgs={len(self)}>"
