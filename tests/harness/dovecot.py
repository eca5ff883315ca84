"""Throw-away Dovecot IMAP server for tests.

Starts the real ``/usr/sbin/dovecot`` (foreground master, ``-F``) with its own
configuration, base_dir, state_dir, logs, passwd-file and Maildir homes in a
temporary directory, listening on free 127.0.0.1 ports: plain IMAP, and with
``tls=`` also implicit TLS (``imaps_port``) and STARTTLS; with ``oauth2=`` it
checks XOAUTH2 tokens at an introspection URL.  The system Dovecot service and
/etc/dovecot are never touched.  Standard library only (imapclient is used by
the tests, not here).  The configuration (and what it enables) is in
``dovecot_config.py``.

Usage::

    imap = DovecotServer(tmp_path / "imap")
    imap.add_user("alice", "secret")      # before start(): instant (after: ~1 s)
    with imap:                            # start() ... close()
        imap.append("alice", raw_bytes, folder="Support/Inbound")
        c = imapclient.IMAPClient(imap.host, imap.port, ssl=False)
        c.login("alice", "secret")
        ...
    # imap.maildir("alice") is the user's Maildir on disk (root: owned by nobody)

IDLE: Dovecot watches the Maildir with inotify and pushes ``* N EXISTS`` about
0.5 s after another session's APPEND (measured on a quiet machine; seconds
under heavy load).  mbsync works against it: see ``mbsync.py``.

Gotchas:

* The master's stdout/stderr, which its children inherit and keep open, go
  to ``<run_dir>/dovecot.out``, never a pipe (a pipe would make a capturing
  ``subprocess.run`` or pytest hang).
* As root, the services run as other users (``dovecot_config.service_accounts``).
  When not all of them can traverse to ``workdir`` (pytest's ``tmp_path`` is
  under 0700 ``/tmp/pytest-of-root``) or it is too deep for Unix socket paths,
  a private ``/tmp/dovecot-*`` dir is used (``run_dir``), removed by ``close()``.
* ``add_user`` after ``start()`` needs no reload but blocks up to 1 s
  (``dovecot_config.write_users``): add users before ``start()`` when you can.
* Stopping and crashing signal the whole process group: see ``stop``/``kill``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from .accounts import usable_dir
from .dovecot_client import append_message, probe_greeting
from .dovecot_config import DovecotOAuth2, DovecotTls, find_dovecot, render_config, service_accounts, write_users
from .mbsync import find_mbsync, mbsync_config  # noqa: F401 - re-exported
from .process import (
    HOST, ServerProcess, free_port, group_alive, kill_group, read_tail, signal_group,
    wait_group_gone, wait_until,
)

__all__ = ["DovecotOAuth2", "DovecotServer", "DovecotTls", "find_dovecot", "free_port", "mbsync_config"]

_BASE_DIR_BUDGET = 70  # longest socket under base_dir is ~25 chars; sun_path is 108


class DovecotServer(ServerProcess):
    """A real Dovecot IMAP server on 127.0.0.1:``port`` (plain IMAP; with ``tls``
    also STARTTLS there and implicit TLS on ``imaps_port``; with ``oauth2`` XOAUTH2).

    The ports are chosen once and kept across ``restart()``.  Users live in a
    passwd-file; their mail in ``home(user)/Maildir``.
    """

    _poll_interval = 0.03  # between probes for the IMAP greeting

    def __init__(
        self,
        workdir: Path | str,
        port: int | None = None,
        *,
        binary: Path | str | None = None,
        startup_timeout: float = 30.0,
        debug: bool = False,
        separator: str = "/",
        extra_config: str = "",
        tls: DovecotTls | None = None,
        oauth2: DovecotOAuth2 | None = None,
    ) -> None:
        super().__init__()
        self.workdir = Path(workdir).absolute()
        self.host = HOST
        self._port = port
        self.binary = Path(binary) if binary else (find_dovecot()[0] or Path("/usr/sbin/dovecot"))
        self.startup_timeout = startup_timeout
        self.debug = debug
        self.separator = separator
        self.extra_config = extra_config
        self.tls, self.oauth2 = tls, oauth2
        self._imaps_port: int | None = None
        self.users: dict[str, str] = {}
        self.run_dir: Path | None = None

        self._root = os.geteuid() == 0
        self.accounts = service_accounts()
        self.mail_uid, self.mail_gid = self.accounts.mail_uid, self.accounts.mail_gid

    # ---------------------------------------------------------------- paths
    @property
    def port(self) -> int:
        if self._port is None:
            self._port = free_port()
        return self._port

    @property
    def imaps_port(self) -> int:
        """The implicit-TLS port (only listening with ``tls``)."""
        if self._imaps_port is None:
            self._imaps_port = free_port()
        return self._imaps_port

    def _prepare_dirs(self) -> Path:
        if self.run_dir is not None:
            return self.run_dir
        run_dir = self.workdir
        usable = usable_dir(run_dir, self.accounts.needing_access)
        if len(str(run_dir / "base")) > _BASE_DIR_BUDGET or not usable:
            run_dir = self._private_dir("dovecot-")
        if self._root:
            os.chmod(run_dir, 0o755)
        for sub in ("base", "state", "home"):
            (run_dir / sub).mkdir(exist_ok=True)
        os.chmod(run_dir / "home", 0o755)
        self.run_dir = run_dir
        if not self.users_file.exists():
            self.users_file.touch()
        os.chmod(self.users_file, 0o644)
        return run_dir

    @property
    def config_path(self) -> Path:
        return self._prepare_dirs() / "dovecot.conf"

    @property
    def users_file(self) -> Path:
        return self._prepare_dirs() / "users"

    @property
    def base_dir(self) -> Path:
        return self._prepare_dirs() / "base"

    @property
    def log_path(self) -> Path:
        return self._prepare_dirs() / "dovecot.log"

    @property
    def out_path(self) -> Path:
        """stdout/stderr of the master (startup errors land here)."""
        return self._prepare_dirs() / "dovecot.out"

    def home(self, user: str) -> Path:
        return self._prepare_dirs() / "home" / user

    def maildir(self, user: str) -> Path:
        return self.home(user) / "Maildir"

    # ---------------------------------------------------------------- users
    def add_user(self, name: str, password: str) -> None:
        """Create (or re-password) an IMAP user; while the server runs this
        blocks until the next wall-clock second (see ``_sync_users``)."""
        for v in (name, password):
            if not v or any(c in v for c in ":\n\r\0"):
                raise ValueError(f"invalid user name/password {v!r} (no ':' or newlines)")
        if "/" in name or name in (".", ".."):
            raise ValueError(f"invalid user name {name!r}")
        with self._lock:
            self.users[name] = password
            self._sync_users(wait=self.running)

    def _sync_users(self, wait: bool) -> None:
        """Create missing homes and (re)write the passwd-file from ``self.users``."""
        for u in self.users:
            home = self.home(u)
            if not home.exists():
                home.mkdir()
                if self._root:
                    os.chown(home, self.mail_uid, self.mail_gid)
        write_users(self.users_file, self.users, self.mail_uid, self.mail_gid,
                    {u: self.home(u) for u in self.users}, wait=wait)

    # --------------------------------------------------------------- config
    def render_config(self) -> str:
        return render_config(
            run_dir=self._prepare_dirs(), log_path=self.log_path, users_file=self.users_file, host=HOST,
            port=self.port, imaps_port=self.imaps_port, debug=self.debug, accounts=self.accounts,
            separator=self.separator, tls=self.tls, oauth2=self.oauth2, extra_config=self.extra_config,
        )

    # -------------------------------------------------------------- process
    @property
    def master_pid_path(self) -> Path:
        return self.base_dir / "master.pid"

    def _launch(self) -> None:
        self._prepare_dirs()
        self._sync_users(wait=False)
        self.config_path.write_text(self.render_config())
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "TZ": os.environ.get("TZ", "UTC"),
            "LANG": "C",
        }
        self._spawn(
            [str(self.binary), "-F", "-c", str(self.config_path)], self.out_path,
            env=env, cwd=str(self.run_dir),
        )

    def _probe(self) -> object:
        """None once the IMAP greeting arrives, else what came instead."""
        return probe_greeting(self.host, self.port)

    _exited = "dovecot exited with {returncode} during startup:\n{log}"
    _not_ready = (
        "dovecot on {host}:{port} gave no IMAP greeting after {timeout}s ({last!r}):\n{log}"
    )

    def diagnostics(self, n: int = 30) -> str:
        return "\n".join(
            f"--- {p}\n{read_tail(p, n, '<missing>')}" for p in (self.out_path, self.log_path)
        )

    _startup_log = diagnostics

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 20.0) -> None:
        """Graceful shutdown (~20 ms): SIGTERM to the whole Dovecot process group.

        SIGTERM to the master alone takes ~1 s, and a logged-in imap process
        then lingers ~10 s more holding the client connection open.  Waits for
        the master to exit, for ``master.pid`` to disappear and for every
        Dovecot process to be gone (SIGKILL after ``timeout``).  The group
        shutdown logs harmless "Killed with signal 15" warnings.
        """
        with self._lock:
            proc = self._proc
            if proc is None:
                return
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except (ProcessLookupError, PermissionError):
                    proc.terminate()
                self._wait_master_exit(proc, timeout)
            if not wait_until(lambda: not self.master_pid_path.exists(), timeout, 0.02):
                self.master_pid_path.unlink(missing_ok=True)
            if not wait_group_gone(proc.pid, timeout):
                signal_group(proc.pid, signal.SIGKILL)
                wait_group_gone(proc.pid, 10)
            self._forget_proc()

    def _wait_master_exit(self, proc: subprocess.Popen, timeout: float) -> None:
        # The master often idles ~1 s in its child-status poll loop (whole-second
        # deadline) after its children are gone: once alone for 100 ms, SIGKILL it.
        deadline = time.monotonic() + timeout
        alone_since: float | None = None
        while proc.poll() is None:
            now = time.monotonic()
            if group_alive(proc.pid, exclude=proc.pid):
                alone_since = None
            elif alone_since is None:
                alone_since = now
            if now > deadline or (alone_since is not None and now - alone_since > 0.1):
                signal_group(proc.pid, signal.SIGKILL)
                proc.wait(10)
                self.master_pid_path.unlink(missing_ok=True)
                break
            time.sleep(0.01)

    def kill(self) -> None:
        """Crash: SIGKILL master + all Dovecot processes (the process group), so
        the port is free at once and clients see EOF; the stale master.pid is
        removed so ``start()`` works.  Waiting for the group ignores zombies
        (``process.group_alive``): init reaps orphans only after ~1-2 s here."""
        with self._lock:
            proc = self._proc
            if proc is None:
                return
            kill_group(proc)
            self.master_pid_path.unlink(missing_ok=True)
            self._forget_proc()

    def restart(self, timeout: float = 20.0) -> "DovecotServer":
        """Stop (gracefully) if running, then start on the same port; mail is kept."""
        self.stop(timeout)
        return self.start()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<DovecotServer {self.host}:{self._port} {state} {self.run_dir}>"

    # -------------------------------------------------------------- helpers
    def append(
        self,
        user: str,
        message: bytes | str,
        folder: str = "INBOX",
        flags: str = "",
        *,
        create: bool = True,
    ) -> None:
        """APPEND a raw RFC 5322 message to ``user``'s ``folder`` (stdlib imaplib; over
        STARTTLS, trusting the test CA, when the server has TLS)."""
        append_message(self.host, self.port, user, self.users[user], message, folder, flags, create=create,
                       ca=self.tls.ca if self.tls is not None else None)

    def mbsync_config(self, user: str, local_dir: Path | str, **kw) -> str:
        """:func:`mbsync_config` for ``user`` of this server."""
        return mbsync_config(self.host, self.port, user, self.users[user], local_dir, **kw)
