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
* Process-group handling, the zombie-aware wait and the ``atexit`` cleanup of
  servers still running at interpreter exit are in ``process.py``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path
from urllib.parse import quote

import psycopg
from psycopg import sql

from .accounts import account, usable_dir
from .process import HOST, ServerProcess, escalate, free_port, kill_group, read_tail

__all__ = ["PostgresServer", "find_postgres", "free_port"]

# ``extra_conf`` for a server as durable as in production (the harness default is not: see above).
DURABLE = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}
_SOCKET_PATH_BUDGET = 90  # sun_path is 108 bytes incl. "/.s.PGSQL.65535" + NUL


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


class PostgresServer(ServerProcess):
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
        super().__init__()
        self.bin_dir = Path(bin_dir)
        self.workdir = Path(workdir).absolute()
        self.host = HOST
        self.port = port
        self.user = user  # database superuser name (trust auth, no password)
        self.startup_timeout = startup_timeout
        # extra GUCs, passed as "-c k=v" on every start (so they can be changed
        # between restarts), e.g. {"synchronous_commit": "on"} -- see kill().
        self.extra_conf = dict(extra_conf or {})
        # PostgreSQL refuses to run as root: then it runs as this account
        self._account = account(("postgres",)) if os.geteuid() == 0 else None
        self.run_dir: Path | None = None
        self.sock_dir: Path | None = None

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
        d = self._private_dir(prefix)
        self._chown(d)
        return d

    def _chown(self, path: Path) -> None:
        if self._account is not None:
            os.chown(path, self._account.pw_uid, self._account.pw_gid)

    def _prepare_dirs(self) -> None:
        if self.run_dir is not None:
            return
        acct = self._account
        ids = [(acct.pw_uid, acct.pw_gid)] if acct is not None else []
        if usable_dir(self.workdir, ids):
            run_dir = self.workdir
            self._chown(run_dir)
        else:
            run_dir = self._mkdtemp("pgharness-")
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
        kw: dict = dict(env=env, cwd=str(self.run_dir))
        if self._account is not None:
            name = self._account.pw_name
            env.update(HOME=str(self.run_dir), USER=name, LOGNAME=name)
            kw.update(user=self._account.pw_uid, group=self._account.pw_gid, extra_groups=[])
        return kw

    def _run(self, argv: list[str]) -> None:
        res = subprocess.run(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, timeout=300, **self._popen_kwargs(),
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

    def _launch(self) -> None:
        self._prepare_dirs()
        self.initdb()
        if self.port is None:
            self.port = free_port()
        self._spawn(
            [
                str(self.bin_dir / "postgres"), "-D", str(self.datadir),
                "-p", str(self.port), "-k", str(self.sock_dir),
                "-c", f"listen_addresses={HOST}",
                *[a for k, v in self.extra_conf.items() for a in ("-c", f"{k}={v}")],
            ],
            self.log_path, **self._popen_kwargs(),
        )
        self._chown(self.log_path)

    def _probe(self) -> Exception | None:
        try:
            with psycopg.connect(self.dsn, connect_timeout=2, autocommit=True) as c:
                c.execute("SELECT 1")
        except psycopg.OperationalError as exc:
            return exc
        return None

    _exited = "postgres exited with {returncode} during startup; log tail:\n{log}"
    _not_ready = "postgres on port {port} not ready after {timeout}s: {last}\nlog tail:\n{log}"

    def log_tail(self, n: int = 40) -> str:
        return read_tail(self.log_path, n, "<no log>")

    _startup_log = log_tail

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT): roll back open transactions, disconnect clients.

        Escalates to SIGQUIT (immediate shutdown) after ``timeout`` and to
        SIGKILL of the process group 10 s later.
        """
        with self._lock:
            proc = self._proc
            if proc is None:
                return
            escalate(proc, (signal.SIGINT, False, timeout), (signal.SIGQUIT, False, 10),
                     (signal.SIGKILL, True, 10))
            self._forget_proc()

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
            if children:
                kill_group(proc)
            elif proc.poll() is None:
                proc.kill()
                proc.wait(10)
            self._forget_proc()

    def restart(self, timeout: float = 30.0) -> "PostgresServer":
        """Stop (fast) if running, then start again on the same port with the same data."""
        self.stop(timeout)
        return self.start()

    def close(self) -> None:
        """Stop the server and remove private fallback dirs (``workdir`` is left alone)."""
        super().close()
        self.run_dir = None
        self.sock_dir = None

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
