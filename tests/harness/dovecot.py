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

Capabilities (Dovecot 2.3.19 defaults; the pre-login greeting lists only
IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ AUTH=PLAIN
AUTH=LOGIN, after login also UIDPLUS MOVE NAMESPACE CONDSTORE QRESYNC
SPECIAL-USE NOTIFY ESEARCH SORT THREAD ...); authentication is plain text
(``ssl = no``, ``disable_plaintext_auth = no``, no STARTTLS).  Drafts, Sent,
Trash and Junk carry SPECIAL-USE flags but are not auto-created.  The hierarchy
separator is ``/`` (``namespace inbox { separator = / }``), mailboxes are
Maildir++ under ``<home>/Maildir``.

IDLE: Dovecot watches the Maildir with inotify and pushes ``* N EXISTS`` about
0.5 s after another session's APPEND (measured ~0.5 s here).

mbsync (isync 1.4) works against it with ``SSLType None`` + ``AuthMechs
LOGIN`` -- isync refuses to send a password over an unencrypted connection
unless LOGIN is explicitly allowed.  :func:`mbsync_config` renders a
configuration of this shape::

    IMAPAccount test
    Host 127.0.0.1
    Port 40123
    User "alice"
    Pass "secret"
    SSLType None
    AuthMechs LOGIN
    Timeout 20

    IMAPStore test-remote
    Account test

    MaildirStore test-local
    Path /tmp/x/mail/
    Inbox /tmp/x/mail/INBOX
    SubFolders Verbatim

    Channel test
    Far :test-remote:
    Near :test-local:
    Patterns *
    Create Near
    Expunge None
    SyncState *

and ``mbsync -c FILE -a`` (or ``-V``) then syncs every folder into the local
Maildir.

Gotchas:

* The dovecot master keeps the stdout/stderr it was started with open (and
  forks children that inherit them): it is always started with stdin from
  /dev/null and stdout/stderr appended to ``<run_dir>/dovecot.out``, never a
  pipe -- a pipe would make ``subprocess.run(..., capture_output=True)`` or a
  pytest capture hang.
* Running as root: the master runs as root, imap-login as ``dovenull``, the
  internal services (auth, anvil, stats...) as ``dovecot`` (falling back to
  ``nobody``/``nogroup`` when those accounts are missing), and the mail
  processes as ``nobody:nogroup`` which owns the homes (Dovecot refuses mail
  access as uid 0).  All of them must be able to traverse to the run dir; when
  ``workdir`` is not traversable (pytest's ``tmp_path`` lives under 0700
  ``/tmp/pytest-of-root``) or too deep for Unix socket paths, a private
  ``/tmp/dovecot-*`` dir is used instead (see ``run_dir``), removed by
  ``close()``/``__exit__``.
* Not root: every service runs as the calling user; ``chroot =`` is set for
  imap-login and anvil (they chroot by default, which needs root).
* ``mail_max_userip_connections`` is raised to 100 (default 10 per user+IP is
  easy to hit with IDLE watchers plus workers).
* ``add_user`` after ``start()`` needs no reload, but Dovecot 2.3 re-reads a
  passwd-file only if its mtime *second* or size changed and checks at most
  once per second; a user added right after another login was rejected (with
  the 2 s auth-failure delay).  ``add_user`` therefore bumps the mtime and,
  while the server runs, sleeps into the next second (~0.5-1 s).  Add users
  before ``start()`` when you can.
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
* Waiting for the group to be gone scans /proc and ignores zombies: orphaned
  Dovecot children are re-parented to init, which on this VM reaps them only
  after ~1-2 s, so ``os.killpg(pgid, 0)`` keeps "succeeding".
"""

from __future__ import annotations

import atexit
import grp
import imaplib
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
import weakref
from pathlib import Path

__all__ = ["DovecotServer", "find_dovecot", "free_port", "mbsync_config"]

HOST = "127.0.0.1"
_BASE_DIR_BUDGET = 70  # longest socket under base_dir is ~25 chars; sun_path is 108


def free_port(host: str = HOST) -> int:
    """Return a TCP port that is currently free on ``host`` (racy, but fine for tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


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


def find_mbsync() -> tuple[Path | None, str]:
    """Locate isync's ``mbsync``: ``(path, version)`` or ``(None, reason)``."""
    which = shutil.which("mbsync")
    if not which:
        return None, "mbsync not found on PATH; apt-get install isync"
    out = subprocess.run([which, "--version"], capture_output=True, text=True, timeout=10).stdout
    return Path(which), out.strip()


def mbsync_config(
    host: str,
    port: int,
    user: str,
    password: str,
    local_dir: Path | str,
    *,
    name: str = "test",
    patterns: str = "*",
    create: str = "Near",
    expunge: str = "None",
    extra_channel_lines: tuple[str, ...] = (),
) -> str:
    """Render an isync 1.4 (``Far``/``Near``) config syncing ``user``'s mailbox
    into the Maildir ``local_dir`` (INBOX -> ``local_dir/INBOX``, sub-folders
    verbatim).  Write it to a file and run ``mbsync -c FILE -a``.

    ``SSLType None`` + ``AuthMechs LOGIN`` is what makes isync talk to the
    plain-text test server (it will not send a password in clear otherwise).
    ``SyncState *`` keeps isync's state inside the local Maildir folders.
    ``local_dir`` is created if missing (mbsync fails with "cannot open
    store" otherwise).  mbsync prints "*** IMAP Warning *** Password is being
    sent in the clear" on stderr; that is expected.
    """
    Path(local_dir).mkdir(parents=True, exist_ok=True)
    local = str(Path(local_dir).absolute()).rstrip("/")
    for v in (user, password):
        if '"' in v or "\n" in v:
            raise ValueError("user/password may not contain '\"' or newlines")
    lines = [
        f"IMAPAccount {name}",
        f"Host {host}",
        f"Port {port}",
        f'User "{user}"',
        f'Pass "{password}"',
        "SSLType None",
        "AuthMechs LOGIN",
        "Timeout 20",
        "",
        f"IMAPStore {name}-remote",
        f"Account {name}",
        "",
        f"MaildirStore {name}-local",
        f"Path {local}/",
        f"Inbox {local}/INBOX",
        "SubFolders Verbatim",
        "",
        f"Channel {name}",
        f"Far :{name}-remote:",
        f"Near :{name}-local:",
        f"Patterns {patterns}",
        f"Create {create}",
        f"Expunge {expunge}",
        "SyncState *",
        *extra_channel_lines,
        "",
    ]
    return "\n".join(lines)


def _account(names: tuple[str, ...], fallback: str = "nobody") -> pwd.struct_passwd:
    for n in (*names, fallback):
        try:
            return pwd.getpwnam(n)
        except KeyError:
            continue
    raise RuntimeError(f"none of the accounts {names + (fallback,)} exist")


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:  # pragma: no cover
        return str(gid)


def _traversable_by(path: Path, uid: int, gid: int) -> bool:
    """True if every existing directory from / down to ``path`` is searchable by uid/gid."""
    try:
        groups = set(os.getgrouplist(pwd.getpwuid(uid).pw_name, gid))
    except KeyError:  # pragma: no cover
        groups = {gid}
    path = path.resolve()
    for p in [*reversed(path.parents), path]:
        try:
            st = p.stat()
        except FileNotFoundError:
            break
        if uid == 0:
            continue
        if st.st_uid == uid:
            ok = st.st_mode & stat.S_IXUSR
        elif st.st_gid in groups:
            ok = st.st_mode & stat.S_IXGRP
        else:
            ok = st.st_mode & stat.S_IXOTH
        if not ok:
            return False
    return True


def _group_alive(pgid: int, exclude: int | None = None) -> bool:
    """True if a non-zombie process is left in process group ``pgid``.

    ``os.killpg(pgid, 0)`` is not enough: orphaned children that died are
    zombies until init reaps them, and this machine's init reaps lazily
    (seconds).  Linux: scan /proc; elsewhere fall back to killpg.
    """
    proc = Path("/proc")
    if not (proc / "self" / "stat").exists():  # pragma: no cover
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    for d in proc.iterdir():
        if not d.name.isdigit():
            continue
        try:
            raw = (d / "stat").read_bytes()
        except OSError:
            continue
        fields = raw[raw.rfind(b")") + 2:].split()
        if (
            len(fields) > 2
            and int(fields[2]) == pgid
            and fields[0] not in (b"Z", b"X")
            and int(d.name) != exclude
        ):
            return True
    return False


_LIVE: "weakref.WeakSet[DovecotServer]" = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:  # pragma: no cover - exit path
    for srv in list(_LIVE):
        try:
            srv.close()
        except Exception:
            pass


class DovecotServer:
    """A real Dovecot IMAP server (plain IMAP, no TLS) on 127.0.0.1:``port``.

    The port is chosen once and kept across ``restart()``.  Users live in a
    passwd-file; their mail in ``home(user)/Maildir``.
    """

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
        self.workdir = Path(workdir).absolute()
        self.host = HOST
        self._port = port
        self.binary = Path(binary) if binary else (find_dovecot()[0] or Path("/usr/sbin/dovecot"))
        self.startup_timeout = startup_timeout
        self.debug = debug
        self.separator = separator
        self.extra_config = extra_config
        self.users: dict[str, str] = {}
        self._proc: subprocess.Popen | None = None
        self._lock = threading.RLock()
        self._fallback_dir: Path | None = None
        self.run_dir: Path | None = None
        self._out_fh = None
        self.start_seconds: float | None = None

        self._root = os.geteuid() == 0
        if self._root:
            self._login = _account(("dovenull",))
            self._internal = _account(("dovecot",))
            self._mail = _account(("nobody",))
            self._login_user = self._login.pw_name
            self._internal_user = self._internal.pw_name
            self._internal_group = _group_name(self._internal.pw_gid)
            self.mail_uid, self.mail_gid = self._mail.pw_uid, self._mail.pw_gid
        else:
            me = pwd.getpwuid(os.geteuid())
            self._login_user = self._internal_user = me.pw_name
            self._internal_group = _group_name(os.getegid())
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
        self.workdir.mkdir(parents=True, exist_ok=True)
        run_dir = self.workdir
        ok = len(str(run_dir / "base")) <= _BASE_DIR_BUDGET and all(
            _traversable_by(run_dir.parent, u, g) for u, g in self._uids_needing_access()
        )
        if not ok:
            run_dir = Path(tempfile.mkdtemp(prefix="dovecot-", dir="/tmp"))
            self._fallback_dir = run_dir
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
        """Create (or re-password) an IMAP user; works while the server runs.

        While the server runs this blocks until the next wall-clock second
        (<= 1 s) so the change is visible to the very next login -- add
        users before ``start()`` when you can.
        """
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
        return f"""\
# generated by tests/harness/dovecot.py -- do not edit
protocols = imap
listen = {HOST}
base_dir = {run / "base"}
state_dir = {run / "state"}
log_path = {self.log_path}
info_log_path = {self.log_path}
debug_log_path = {self.log_path}
instance_name = dovecot-test-{self.port}
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_verbose = yes
auth_debug = {debug}
mail_debug = {debug}
verbose_proctitle = yes
mail_location = maildir:~/Maildir
mail_fsync = never
first_valid_uid = 1
first_valid_gid = 1
mail_max_userip_connections = 100
default_login_user = {self._login_user}
default_internal_user = {self._internal_user}
default_internal_group = {self._internal_group}
import_environment = TZ

passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {self.users_file}
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {self.users_file}
}}

namespace inbox {{
  inbox = yes
  prefix =
  separator = {self.separator}
  mailbox Drafts {{
    special_use = \\Drafts
  }}
  mailbox Sent {{
    special_use = \\Sent
  }}
  mailbox Trash {{
    special_use = \\Trash
  }}
  mailbox Junk {{
    special_use = \\Junk
  }}
}}

service imap-login {{
  chroot =
  inet_listener imap {{
    address = {HOST}
    port = {self.port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service anvil {{
  chroot =
}}
protocol imap {{
  mail_max_userip_connections = 100
}}
{self.extra_config}
"""

    # -------------------------------------------------------------- process
    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def master_pid_path(self) -> Path:
        return self.base_dir / "master.pid"

    def start(self) -> "DovecotServer":
        with self._lock:
            if self.running:
                return self
            t0 = time.monotonic()
            self._prepare_dirs()
            self._sync_users(wait=False)
            self.config_path.write_text(self.render_config())
            self._close_out()
            self._out_fh = open(self.out_path, "ab")
            env = {
                "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
                "TZ": os.environ.get("TZ", "UTC"),
                "LANG": "C",
            }
            self._proc = subprocess.Popen(
                [str(self.binary), "-F", "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL, stdout=self._out_fh, stderr=subprocess.STDOUT,
                start_new_session=True, env=env, cwd=str(self.run_dir),
            )
            _LIVE.add(self)
            try:
                self._wait_greeting(t0 + self.startup_timeout)
            except BaseException:
                self.kill()
                raise
            self.start_seconds = time.monotonic() - t0
            return self

    def _wait_greeting(self, deadline: float) -> None:
        last: object = None
        while True:
            if self._proc is None or self._proc.poll() is not None:
                raise RuntimeError(
                    f"dovecot exited with {self._proc.returncode if self._proc else '?'} "
                    f"during startup:\n{self.diagnostics()}"
                )
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
                        return
                    last = line
            except OSError as exc:
                last = exc
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"dovecot on {self.host}:{self.port} gave no IMAP greeting after "
                    f"{self.startup_timeout}s ({last!r}):\n{self.diagnostics()}"
                )
            time.sleep(0.03)

    def diagnostics(self, n: int = 30) -> str:
        out = []
        for p in (self.out_path, self.log_path):
            try:
                tail = "\n".join(p.read_text(errors="replace").splitlines()[-n:])
            except OSError:
                tail = "<missing>"
            out.append(f"--- {p}\n{tail}")
        return "\n".join(out)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def _close_out(self) -> None:
        if self._out_fh is not None:
            self._out_fh.close()
            self._out_fh = None

    def _wait_pidfile_gone(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.master_pid_path.exists():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def stop(self, timeout: float = 20.0) -> None:
        """Graceful shutdown: SIGTERM to the whole Dovecot process group.

        Waits for the master to exit, for ``master.pid`` to disappear and for
        every Dovecot process to be gone (SIGKILL after ``timeout``).

        SIGTERM to the master alone is slow: the master lingers ~1 s and
        logged-in imap processes only go away ~10 s later ("Server shutting
        down"), keeping client connections open; signalling the group takes
        ~20 ms and clients get a clean disconnect.
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
            if not self._wait_pidfile_gone(timeout):
                self.master_pid_path.unlink(missing_ok=True)
            if not self._wait_group_gone(proc.pid, timeout):
                self._killpg(proc)
                self._wait_group_gone(proc.pid, 10)
            self._proc = None
            self._close_out()

    def _wait_master_exit(self, proc: subprocess.Popen, timeout: float) -> None:
        # The master polls its children's status in 100 ms steps with a
        # whole-second deadline and, racing with the group SIGTERM, often sits
        # out that full ~1 s although every child is already gone.  Once no
        # other Dovecot process is left for 100 ms there is nothing left to
        # shut down gracefully: SIGKILL the master and drop its master.pid.
        deadline = time.monotonic() + timeout
        alone_since: float | None = None
        while proc.poll() is None:
            now = time.monotonic()
            if _group_alive(proc.pid, exclude=proc.pid):
                alone_since = None
            elif alone_since is None:
                alone_since = now
            if now > deadline or (alone_since is not None and now - alone_since > 0.1):
                self._killpg(proc)
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
            self._killpg(proc)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:  # pragma: no cover
                proc.kill()
                proc.wait(10)
            self._wait_group_gone(proc.pid)
            self.master_pid_path.unlink(missing_ok=True)
            self._proc = None
            self._close_out()

    @staticmethod
    def _killpg(proc: subprocess.Popen) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    @staticmethod
    def _wait_group_gone(pgid: int, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if not _group_alive(pgid):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)

    def restart(self, timeout: float = 20.0) -> "DovecotServer":
        """Stop (gracefully) if running, then start on the same port; mail is kept."""
        self.stop(timeout)
        return self.start()

    def close(self) -> None:
        """Stop and remove the private fallback run dir (``workdir`` is left alone)."""
        self.stop()
        _LIVE.discard(self)
        if self._fallback_dir is not None:
            shutil.rmtree(self._fallback_dir, ignore_errors=True)
            self._fallback_dir = None
            self.run_dir = None

    def __enter__(self) -> "DovecotServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

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
