"""Throw-away PostgreSQL server for tests.

Starts a real ``postgres`` postmaster on a free 127.0.0.1 port with its cluster
in a temporary directory, and stops it again.  Standard library + psycopg only.

Usage::

    bin_dir, why = find_postgres()
    if bin_dir is None:
        pytest.skip(why)
    with PostgresServer(bin_dir, tmp_path / "pg") as pg:   # initdb + start ... close
        url = pg.create_database("app")      # postgresql+psycopg://postgres@127.0.0.1:PORT/app
        with psycopg.connect(pg.dsn) as conn: ...            # libpq URL, db "postgres"
        with psycopg.connect(pg.dsn_for("app")) as conn: ...
        pg.restart(); pg.kill(); pg.start()                   # same port, same data

Notes / gotchas:

* PostgreSQL refuses to run as root.  When the harness runs with euid 0, initdb
  and the postmaster run as the Debian ``postgres`` account (or ``nobody``)
  and the cluster directory is chowned to it.  That account must be able to
  traverse every parent of the cluster directory; pytest's ``tmp_path`` lives
  under ``/tmp/pytest-of-root`` (mode 0700), so in that case the cluster is put
  in a private ``/tmp/pgharness-*`` directory instead (see ``run_dir``), which
  ``close()`` / ``__exit__`` / interpreter exit removes.
* The Unix socket directory (``-k``) must be a short path (sun_path is 107
  bytes); a short fallback directory is used when ``workdir`` is too deep.
  Clients always connect over TCP anyway.
* Durability is switched off (``fsync``/``synchronous_commit``/
  ``full_page_writes`` = off): data survives ``stop()``/``restart()``; after
  ``kill()`` crash recovery replays the WAL, but with ``synchronous_commit=off``
  the last few hundred ms of commits were never written and are lost.  Pass
  ``extra_conf={"synchronous_commit": "on"}`` for crash-durability tests.
* ``kill()`` SIGKILLs the postmaster *and* its children (the whole process
  group).  ``kill(children=False)`` kills only the postmaster: idle backends
  notice and exit within ms, but a backend busy in a query keeps the
  shared-memory segment and ``start()`` then fails with "pre-existing shared
  memory block ... is still in use" (measured) until it finishes.
* Waiting for the killed process group scans /proc and ignores zombies
  (init on this VM reaps orphans lazily, so ``os.killpg(pgid, 0)`` lies).
* The postmaster runs in its own session so a Ctrl-C in the test runner does
  not reach it; servers still running at interpreter exit are stopped by an
  ``atexit`` hook (a SIGKILLed test runner leaks them, of course).
"""

from __future__ import annotations

import atexit
import os
import pwd
import re
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
from urllib.parse import quote

import psycopg
from psycopg import sql

__all__ = ["PostgresServer", "find_postgres", "free_port"]

HOST = "127.0.0.1"
_SOCKET_PATH_BUDGET = 90  # sun_path is 108 bytes incl. "/.s.PGSQL.65535" + NUL


def free_port(host: str = HOST) -> int:
    """Return a TCP port that is currently free on ``host`` (racy, but fine for tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _version_key(path: Path) -> tuple:
    return tuple(int(p) if p.isdigit() else 0 for p in re.split(r"[.\-]", path.parent.name))


def find_postgres() -> tuple[Path | None, str]:
    """Locate a PostgreSQL server bin dir (with ``initdb`` and ``postgres``).

    Looks in ``/usr/lib/postgresql/*/bin`` (newest major first), then on ``PATH``.
    Returns ``(bin_dir, description)`` or ``(None, reason)``.
    """
    candidates: list[Path] = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True
    )
    for exe in ("postgres", "initdb", "pg_ctl"):
        found = shutil.which(exe)
        if found:
            candidates.append(Path(found).resolve().parent)
    seen: set[Path] = set()
    for d in candidates:
        if d in seen:
            continue
        seen.add(d)
        if all(os.access(d / exe, os.X_OK) for exe in ("postgres", "initdb")):
            try:
                out = subprocess.run(
                    [str(d / "postgres"), "--version"],
                    capture_output=True, text=True, timeout=10,
                ).stdout.strip()
            except (OSError, subprocess.SubprocessError) as exc:  # pragma: no cover
                out = f"version unknown ({exc})"
            return d, out
    return None, (
        "PostgreSQL server binaries (initdb, postgres) not found in "
        "/usr/lib/postgresql/*/bin or on PATH"
    )


def _service_account() -> tuple[str, int, int] | None:
    """Account to run the server as when we are root (None when not root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            continue
        return pw.pw_name, pw.pw_uid, pw.pw_gid
    raise RuntimeError("running as root but neither a 'postgres' nor a 'nobody' user exists")


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
            break  # will be created by us (and chowned)
        if st.st_uid == uid:
            ok = st.st_mode & stat.S_IXUSR
        elif st.st_gid in groups:
            ok = st.st_mode & stat.S_IXGRP
        else:
            ok = st.st_mode & stat.S_IXOTH
        if not ok:
            return False
    return True


def _group_alive(pgid: int) -> bool:
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
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False


_LIVE: "weakref.WeakSet[PostgresServer]" = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:  # pragma: no cover - exit path
    for srv in list(_LIVE):
        try:
            srv.close()
        except Exception:
            pass


class PostgresServer:
    """A real PostgreSQL server in a temp dir, listening on 127.0.0.1:``port``.

    ``workdir`` holds the cluster (``data/``), the server log (``postgres.log``)
    and the socket dir -- unless it is not usable by the unprivileged account
    (see module docstring), then ``run_dir`` is a private dir under /tmp.
    The port is chosen once and kept across ``restart()``.
    """

    def __init__(
        self,
        bin_dir: Path | str,
        workdir: Path | str,
        port: int | None = None,
        *,
        user: str = "postgres",
        startup_timeout: float = 60.0,
        extra_conf: dict[str, str] | None = None,
    ) -> None:
        self.bin_dir = Path(bin_dir)
        self.workdir = Path(workdir).absolute()
        self.host = HOST
        self.port = port
        self.user = user  # database superuser name (trust auth, no password)
        self.startup_timeout = startup_timeout
        # extra GUCs, passed as "-c k=v" on every start (so they can be changed
        # between restarts), e.g. {"synchronous_commit": "on"} -- see kill().
        self.extra_conf = dict(extra_conf or {})
        self._account = _service_account()
        self._proc: subprocess.Popen | None = None
        self._lock = threading.RLock()
        self._fallback_dirs: list[Path] = []
        self.run_dir: Path | None = None
        self.sock_dir: Path | None = None
        self._log_fh = None
        self.start_seconds: float | None = None  # duration of the last start()

    # ------------------------------------------------------------------ paths
    @property
    def datadir(self) -> Path:
        self._prepare_dirs()
        assert self.run_dir is not None
        return self.run_dir / "data"

    @property
    def log_path(self) -> Path:
        self._prepare_dirs()
        assert self.run_dir is not None
        return self.run_dir / "postgres.log"

    def _mkdtemp(self, prefix: str) -> Path:
        d = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
        self._fallback_dirs.append(d)
        self._chown(d)
        return d

    def _chown(self, path: Path) -> None:
        if self._account is not None:
            _, uid, gid = self._account
            os.chown(path, uid, gid)

    def _prepare_dirs(self) -> None:
        if self.run_dir is not None:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        run_dir = self.workdir
        if self._account is not None:
            _, uid, gid = self._account
            if not _traversable_by(self.workdir.parent, uid, gid):
                run_dir = self._mkdtemp("pgharness-")
            else:
                self._chown(self.workdir)
        self.run_dir = run_dir
        sock = run_dir / "sock"
        if len(str(sock)) > _SOCKET_PATH_BUDGET:
            sock = self._mkdtemp("pgs-")
        else:
            sock.mkdir(exist_ok=True)
            self._chown(sock)
        self.sock_dir = sock

    # --------------------------------------------------------------- process
    def _popen_kwargs(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C", TZ=env.get("TZ", "UTC"))
        kw: dict = dict(env=env, stdin=subprocess.DEVNULL, cwd=str(self.run_dir))
        if self._account is not None:
            name, uid, gid = self._account
            env.update(HOME=str(self.run_dir), USER=name, LOGNAME=name)
            kw.update(user=uid, group=gid, extra_groups=[])
        return kw

    def _run(self, argv: list[str]) -> None:
        res = subprocess.run(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            timeout=300, **self._popen_kwargs(),
        )
        if res.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed ({res.returncode}):\n{res.stdout}")

    @property
    def initialized(self) -> bool:
        return (self.datadir / "PG_VERSION").exists()

    def initdb(self) -> None:
        """Create the cluster (no-op if it already exists)."""
        if self.initialized:
            return
        data = self.datadir
        data.mkdir(mode=0o700, exist_ok=True)
        self._chown(data)
        self._run([
            str(self.bin_dir / "initdb"), "-D", str(data), "-U", self.user,
            "-E", "UTF8", "--locale=C", "--auth=trust", "--no-sync",
        ])
        conf = {
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "listen_addresses": f"'{HOST}'",
            "max_connections": "100",
            "shared_buffers": "32MB",
            "log_min_messages": "warning",
            "log_line_prefix": "'%m [%p] %q%u@%d '",
            "timezone": "'UTC'",
        }
        with open(data / "postgresql.conf", "a") as fh:
            fh.write("\n# --- test harness ---\n")
            for k, v in conf.items():
                fh.write(f"{k} = {v}\n")

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> "PostgresServer":
        with self._lock:
            if self.running:
                return self
            t0 = time.monotonic()
            self._prepare_dirs()
            self.initdb()
            if self.port is None:
                self.port = free_port()
            self._close_log()
            self._log_fh = open(self.log_path, "ab")
            if self._account is not None:
                os.chown(self.log_path, self._account[1], self._account[2])
            self._proc = subprocess.Popen(
                [
                    str(self.bin_dir / "postgres"), "-D", str(self.datadir),
                    "-p", str(self.port), "-k", str(self.sock_dir),
                    "-c", f"listen_addresses={HOST}",
                    *[a for k, v in self.extra_conf.items() for a in ("-c", f"{k}={v}")],
                ],
                stdout=self._log_fh, stderr=subprocess.STDOUT,
                start_new_session=True, **self._popen_kwargs(),
            )
            _LIVE.add(self)
            try:
                self._wait_ready(t0 + self.startup_timeout)
            except BaseException:
                self.kill()
                raise
            self.start_seconds = time.monotonic() - t0
            return self

    def _wait_ready(self, deadline: float) -> None:
        last: Exception | None = None
        while True:
            if self._proc is None or self._proc.poll() is not None:
                raise RuntimeError(
                    f"postgres exited with {self._proc.returncode if self._proc else '?'}"
                    f" during startup; log tail:\n{self.log_tail()}"
                )
            try:
                with psycopg.connect(self.dsn, connect_timeout=2, autocommit=True) as c:
                    c.execute("SELECT 1")
                return
            except psycopg.OperationalError as exc:
                last = exc
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"postgres on port {self.port} not ready after {self.startup_timeout}s: "
                    f"{last}\nlog tail:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "<no log>"

    def _close_log(self) -> None:
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT): roll back open transactions, disconnect clients."""
        with self._lock:
            proc = self._proc
            if proc is None:
                return
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.send_signal(signal.SIGQUIT)  # immediate shutdown
                    try:
                        proc.wait(10)
                    except subprocess.TimeoutExpired:
                        self._killpg(proc)
                        proc.wait(10)
            self._proc = None
            self._close_log()

    def kill(self, children: bool = True) -> None:
        """Crash the server: SIGKILL the postmaster (and, by default, all its backends).

        With the default ``synchronous_commit=off`` the commits of the last
        ~0.2-0.6 s live only in shared WAL buffers and are LOST by a kill
        (measured: 5 of 5 quick inserts gone).  Fault tests that assert
        "committed data survives a crash" need
        ``extra_conf={"synchronous_commit": "on"}`` (cheap, since fsync=off).

        With ``children=False`` only the postmaster is killed; the orphaned
        backends exit on their own when they notice (connected clients get
        errors), and ``start()`` may fail until they are gone.
        """
        with self._lock:
            proc = self._proc
            if proc is None:
                return
            if proc.poll() is None:
                if children:
                    self._killpg(proc)
                else:
                    proc.kill()
                proc.wait(10)
            if children:
                self._killpg(proc)  # stragglers
                self._wait_group_gone(proc.pid)
            self._proc = None
            self._close_log()

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

    def restart(self, timeout: float = 30.0) -> "PostgresServer":
        """Stop (fast) if running, then start again on the same port with the same data."""
        self.stop(timeout)
        return self.start()

    def close(self) -> None:
        """Stop the server and remove private fallback dirs (``workdir`` is left alone)."""
        self.stop()
        _LIVE.discard(self)
        for d in self._fallback_dirs:
            shutil.rmtree(d, ignore_errors=True)
        self._fallback_dirs.clear()
        self.run_dir = None
        self.sock_dir = None

    def __enter__(self) -> "PostgresServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<PostgresServer {self.host}:{self.port} {state} {self.run_dir}>"

    # ------------------------------------------------------------ databases
    def dsn_for(self, dbname: str = "postgres") -> str:
        """libpq URL usable with psycopg.connect()."""
        if self.port is None:
            raise RuntimeError("port not assigned yet; call start() first")
        return f"postgresql://{quote(self.user, safe='')}@{self.host}:{self.port}/{quote(dbname, safe='')}"

    @property
    def dsn(self) -> str:
        """libpq URL of the ``postgres`` maintenance database (for psycopg.connect)."""
        return self.dsn_for("postgres")

    def url(self, dbname: str = "postgres") -> str:
        """SQLAlchemy URL (psycopg 3 driver) for ``dbname``."""
        if self.port is None:
            raise RuntimeError("port not assigned yet; call start() first")
        return (
            f"postgresql+psycopg://{quote(self.user, safe='')}@{self.host}:{self.port}"
            f"/{quote(dbname, safe='')}"
        )

    def create_database(self, name: str, *, replace: bool = False) -> str:
        """CREATE DATABASE ``name`` (UTF8, from template0); return its SQLAlchemy URL.

        With ``replace=True`` an existing database of that name is dropped first
        (``WITH (FORCE)``, disconnecting its clients).
        """
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            if replace:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8'").format(
                    sql.Identifier(name)
                )
            )
        return self.url(name)

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
