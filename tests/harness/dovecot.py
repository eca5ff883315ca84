"""Throw-away Dovecot IMAP server for tests.

Starts the real ``/usr/sbin/dovecot`` (foreground master, ``-F``) with its own
configuration, base_dir, state_dir, logs, passwd-file and Maildir homes in a
temporary directory, listening for plain IMAP on a free 127.0.0.1 port.  The
system Dovecot service and /etc/dovecot are never touched.  Standard library
only (imapclient is used by the tests, not here).

Usage::

    imap = DovecotServer(tmp_path / "imap")
    imap.add_user("alice", "secret")      # before start(): instant (after: ~1 s)
    with imap:                            # start() ... close()
        imap.append("alice", raw_bytes, folder="Support/Inbound")
        c = imapclient.IMAPClient(imap.host, imap.port, ssl=False)
        c.login("alice", "secret")
        ...
    # imap.maildir("alice") is the user's Maildir on disk (root: owned by nobody)

The configuration is ``dovecot.conf.in``.  Capabilities are Dovecot 2.3.19's
defaults (pre-login only IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE
LITERAL+ AUTH=PLAIN AUTH=LOGIN; after login also UIDPLUS MOVE NAMESPACE
CONDSTORE QRESYNC SPECIAL-USE NOTIFY ESEARCH SORT THREAD ...); plain-text
authentication, no STARTTLS.  Drafts, Sent, Trash and Junk carry SPECIAL-USE
flags but are not auto-created.  Mailboxes are Maildir++ under ``<home>/Maildir``.

IDLE: Dovecot watches the Maildir with inotify and pushes ``* N EXISTS`` about
0.5 s after another session's APPEND (measured).

mbsync works against it: see ``mbsync.py`` (:func:`mbsync_config` and
:func:`find_mbsync` are re-exported here).

Gotchas:

* The master's stdout/stderr, which its children inherit and keep open, go
  to ``<run_dir>/dovecot.out``, never a pipe -- a pipe would make
  ``subprocess.run(..., capture_output=True)`` or a pytest capture hang.
* Running as root: the master runs as root, imap-login as ``dovenull``, the
  internal services as ``dovecot`` and the mail processes as ``nobody`` (which
  owns the homes; Dovecot refuses mail access as uid 0), each falling back to
  ``nobody``.  When not all of them can traverse to ``workdir`` (pytest's
  ``tmp_path`` is under 0700 ``/tmp/pytest-of-root``) or it is too deep for
  Unix socket paths, a private ``/tmp/dovecot-*`` dir is used instead (see
  ``run_dir``), removed by ``close()``/``__exit__``.  Not root: every service
  runs as the calling user (``chroot =`` for imap-login and anvil).
* ``mail_max_userip_connections`` is raised to 100 (default 10 per user+IP is
  easy to hit with IDLE watchers plus workers).
* ``add_user`` after ``start()`` needs no reload but blocks up to 1 s (see
  ``_sync_users``): add users before ``start()`` when you can.
* ``stop()`` sends SIGTERM to the whole process group (~20 ms).  SIGTERM to
  the master alone takes ~1 s and a logged-in imap process then lingers ~10 s
  more ("Server shutting down"), holding the client connection open.  Even
  with the group signalled, the master itself then often idles ~1 s in its
  child-status poll loop (whole-second deadline) after all children are gone;
  ``stop()`` SIGKILLs it once it has been alone for 100 ms.  The group
  shutdown logs harmless "Killed with signal 15" warnings to ``dovecot.log``.
* ``kill()`` SIGKILLs the whole process group (master, login, auth, imap
  processes) so the port is released immediately and clients see the
  connection drop (EOF); the stale master.pid is removed so ``start()`` works.
  Waiting for the group to be gone ignores zombies (``process.group_alive``):
  orphaned Dovecot children are reaped by init only after ~1-2 s here.
"""

from __future__ import annotations

import imaplib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from string import Template

from .accounts import account, group_name, usable_dir
from .mbsync import find_mbsync, mbsync_config  # noqa: F401 - re-exported
from .process import (
    HOST, ServerProcess, free_port, group_alive, kill_group, read_tail, signal_group,
    wait_group_gone, wait_until,
)

__all__ = ["DovecotServer", "find_dovecot", "free_port", "mbsync_config"]

# dovecot.conf for the test instance, with ${...} fields filled by render_config()
_CONFIG = Template((Path(__file__).parent / "dovecot.conf.in").read_text())
_BASE_DIR_BUDGET = 70  # longest socket under base_dir is ~25 chars; sun_path is 108


def find_dovecot() -> tuple[Path | None, str]:
    """Locate the dovecot master binary: ``(path, version)`` or ``(None, reason)``."""
    candidates = [Path("/usr/sbin/dovecot")]
    which = shutil.which("dovecot")
    if which:
        candidates.append(Path(which))
    for c in candidates:
        if os.access(c, os.X_OK):
            try:
                out = subprocess.run(
                    [str(c), "--version"], capture_output=True, text=True, timeout=10,
                    stdin=subprocess.DEVNULL,
                ).stdout.strip()
            except (OSError, subprocess.SubprocessError) as exc:  # pragma: no cover
                return None, f"{c} --version failed: {exc}"
            return c, f"dovecot {out}"
    return None, "dovecot binary not found (/usr/sbin/dovecot or PATH); apt-get install dovecot-imapd"


class DovecotServer(ServerProcess):
    """A real Dovecot IMAP server (plain IMAP, no TLS) on 127.0.0.1:``port``.

    The port is chosen once and kept across ``restart()``.  Users live in a
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
        self.users: dict[str, str] = {}
        self.run_dir: Path | None = None

        self._root = os.geteuid() == 0
        if self._root:
            self._login = account(("dovenull",))
            self._internal = account(("dovecot",))
            self._mail = account(("nobody",))
            self._login_user = self._login.pw_name
            self._internal_user = self._internal.pw_name
            self._internal_group = group_name(self._internal.pw_gid)
            self.mail_uid, self.mail_gid = self._mail.pw_uid, self._mail.pw_gid
        else:
            me = pwd.getpwuid(os.geteuid())
            self._login_user = self._internal_user = me.pw_name
            self._internal_group = group_name(os.getegid())
            self.mail_uid, self.mail_gid = os.geteuid(), os.getegid()

    # ---------------------------------------------------------------- paths
    @property
    def port(self) -> int:
        if self._port is None:
            self._port = free_port()
        return self._port

    def _uids_needing_access(self) -> list[tuple[int, int]]:
        if not self._root:
            return []
        return [
            (self._login.pw_uid, self._login.pw_gid),
            (self._internal.pw_uid, self._internal.pw_gid),
            (self.mail_uid, self.mail_gid),
        ]

    def _prepare_dirs(self) -> Path:
        if self.run_dir is not None:
            return self.run_dir
        run_dir = self.workdir
        usable = usable_dir(run_dir, self._uids_needing_access())
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
        text = "".join(
            f"{u}:{{PLAIN}}{p}:{self.mail_uid}:{self.mail_gid}::{self.home(u)}::\n"
            for u, p in self.users.items()
        )
        try:
            if self.users_file.read_text() == text:
                return
        except FileNotFoundError:
            pass
        tmp = self.users_file.with_suffix(".tmp")
        tmp.write_text(text)
        os.chmod(tmp, 0o644)
        # Dovecot 2.3 reloads a passwd-file only when its st_mtime (whole
        # seconds) or size changed, and stat()s it at most once per second
        # (last_sync_time == ioloop_time).  So: force a strictly newer mtime,
        # and if the server runs, let the clock tick into the next second so
        # the next lookup is guaranteed to re-read the file.
        try:
            prev = int(self.users_file.stat().st_mtime)
        except FileNotFoundError:
            prev = -1
        now = time.time()
        mtime = max(int(now), prev + 1)
        os.utime(tmp, (mtime, mtime))
        os.replace(tmp, self.users_file)
        if wait:
            time.sleep(max(0.0, int(now) + 1 - time.time()) + 0.01)

    # --------------------------------------------------------------- config
    def render_config(self) -> str:
        run = self._prepare_dirs()
        debug = "yes" if self.debug else "no"
        return _CONFIG.substitute(
            base_dir=run / "base", state_dir=run / "state", log_path=self.log_path,
            port=self.port, debug=debug, login_user=self._login_user,
            internal_user=self._internal_user, internal_group=self._internal_group,
            users_file=self.users_file, separator=self.separator,
            extra_config=self.extra_config, host=HOST,
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
        try:
            with socket.create_connection((self.host, self.port), timeout=2) as s:
                line = b""
                while b"\n" not in line and len(line) < 4096:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    line += chunk
                if line.startswith(b"* OK"):
                    try:
                        s.sendall(b"z LOGOUT\r\n")
                    except OSError:
                        pass
                    return None
                return line
        except OSError as exc:
            return exc

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
        """Graceful shutdown: SIGTERM to the whole Dovecot process group (see module docstring).

        Waits for the master to exit, for ``master.pid`` to disappear and for
        every Dovecot process to be gone (SIGKILL after ``timeout``).
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
        # The master often idles ~1 s after its children are gone (module
        # docstring): once it has been alone for 100 ms, SIGKILL it.
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
        """Crash: SIGKILL master + all Dovecot processes (the process group)."""
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
        """APPEND a raw RFC 5322 message to ``user``'s ``folder`` (stdlib imaplib)."""
        if isinstance(message, str):
            message = message.encode()
        m = imaplib.IMAP4(self.host, self.port, timeout=30)
        try:
            m.login(user, self.users[user])
            if create and folder.upper() != "INBOX":
                m.create(_quote(folder))
            typ, data = m.append(_quote(folder), flags or None, None, message)
            if typ != "OK":
                raise RuntimeError(f"APPEND failed: {typ} {data}")
        finally:
            try:
                m.logout()
            except Exception:
                pass

    def mbsync_config(self, user: str, local_dir: Path | str, **kw) -> str:
        """:func:`mbsync_config` for ``user`` of this server."""
        return mbsync_config(self.host, self.port, user, self.users[user], local_dir, **kw)


def _quote(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
