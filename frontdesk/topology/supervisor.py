"""Supervised local processes: the docker-compose topology without Docker.

:class:`Topology` runs each frontdesk service of ``docker-compose.yml`` as ``replicas`` OS processes
(see :mod:`frontdesk.topology.localise` for how a service becomes a process). A supervisor thread
restarts a process that dies, with exponential backoff (reset after a minute of uptime), except
after exit code 2 (invalid settings: restarting cannot help). ``stop`` sends SIGTERM to every
process (like ``docker stop``), waits, then SIGKILLs every process group, also those whose leader
has exited (its children may not have). When a process exits, the supervisor SIGKILLs what is left
of its group at once, before any restart. Each
process's output is appended to ``<log_dir>/<service>-<index>.log``, with a ``=== topology``
line for every start, exit and signal.
"""

from __future__ import annotations

import atexit
import os
import shlex
import signal
import subprocess
import threading
import time
import urllib.request
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from frontdesk.errors import TopologyError
from frontdesk.topology.compose import load_compose, replicas_of
from frontdesk.topology.localise import LISTEN_PORTS, LocalServices

CONFIG_ERROR_EXIT = 2  # the CLI's exit code for invalid settings / usage
STABLE_S = 60.0  # a process up this long has its restart backoff reset
_LIVE: weakref.WeakSet[Topology] = weakref.WeakSet()


@atexit.register
def _stop_leftovers() -> None:  # pragma: no cover - interpreter exit
    # A caller that never reached stop() must not leave stage processes (1.3 GB each) behind.
    for topo in list(_LIVE):
        topo.stop(timeout=10.0)


@dataclass
class StageProcess:
    """One replica of a service. ``popen`` is replaced on every restart; ``pid`` follows it."""

    service: str
    index: int
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    cwd: Path
    ready_port: int | None = None
    popen: subprocess.Popen[bytes] | None = None
    starts: int = 0
    failures: int = 0
    started_at: float = 0.0
    next_start: float | None = None
    failed: str | None = None  # why the supervisor gave up on it
    _log: IO[bytes] | None = field(default=None, repr=False)
    _group_done: bool = field(default=False, repr=False)  # SIGKILLed or found empty since the last spawn

    @property
    def name(self) -> str:
        return f"{self.service}-{self.index}"

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    @property
    def returncode(self) -> int | None:
        return self.popen.poll() if self.popen else None

    def poll(self) -> int | None:
        return self.returncode

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def note(self, text: str) -> None:
        """Append a ``=== topology`` line to the process's log (opened on first use, kept open)."""
        if self._log is None:
            self._log = open(self.log_path, "ab")  # noqa: SIM115 (kept open across restarts)
        self._log.write(f"=== topology {time.strftime('%H:%M:%S')}: {self.name}: {text} ===\n".encode())
        self._log.flush()

    def spawn(self) -> None:
        """Start (again) in a new session, so a terminal's Ctrl-C reaches the runner only. Raises OSError."""
        self.starts += 1
        self.note(f"start #{self.starts}: {shlex.join(self.argv)}")
        self.popen = subprocess.Popen(self.argv, env=self.env, cwd=self.cwd, stdin=subprocess.DEVNULL,
                                      stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self.started_at, self.next_start, self._group_done = time.monotonic(), None, False

    def signal(self, sig: int, group: bool = False) -> None:
        """Signal the process, or (``group``) its whole process group, if one was started.

        The group is signalled even when its leader is gone: members that outlived it (workers,
        helpers) are still in it. After a SIGKILL to it, or once it is found empty, it is not
        signalled again until the next spawn: its id may then be reused by an unrelated group.
        A signal to the leader alone does nothing once the leader has exited.
        """
        if self.popen is None:
            return
        try:
            if not group:
                if self.alive:
                    self.popen.send_signal(sig)
            elif not self._group_done:
                os.killpg(self.popen.pid, sig)  # the session's group id is its first process's pid
                self._group_done = sig == signal.SIGKILL
        except ProcessLookupError:
            self._group_done = group
        except PermissionError:
            pass

    def close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class Topology:
    """Supervised local processes of the compose services. Use as a context manager or start/stop."""

    def __init__(self, processes: Sequence[StageProcess], *, restart: bool = True,
                 backoff: tuple[float, float] = (1.0, 30.0), stop_timeout: float = 60.0) -> None:
        self._procs = list(processes)
        self.restart, self.backoff, self.stop_timeout = restart, backoff, stop_timeout
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._stopped = False
        self._thread: threading.Thread | None = None

    @classmethod
    def from_compose(cls, path: Path, endpoints: Mapping[str, Any], *, env_extra: Mapping[str, str] | None = None,
                     log_dir: Path | None = None, services: Iterable[str] | None = None,
                     replicas: Mapping[str, int] | None = None, volumes: Mapping[str, Path] | None = None,
                     state_dir: Path | None = None, metrics: bool = True, environ: Mapping[str, str] | None = None,
                     **options: Any) -> Topology:
        """Processes for ``services`` (default: every frontdesk service without a compose profile).

        ``endpoints``: ``kafka`` "host:port", ``postgres`` a SQLAlchemy URL, ``smtp`` (host, port);
        without ``smtp`` acknowledgements are written as files under the data directory.
        Named volumes live in ``state_dir/volumes/<name>`` unless ``volumes`` maps them elsewhere;
        ``env_extra`` is applied last; ``metrics=False`` serves no metrics endpoint
        (``FRONTDESK_METRICS_ENABLED=false``).
        Raises ConfigError for an unknown service or a missing endpoint.
        """
        environ = dict(os.environ if environ is None else environ)
        compose = load_compose(path, environ)
        state = Path(state_dir or Path(path).resolve().parent / "var" / "topology").resolve()
        logs = Path(log_dir or state / "logs")
        logs.mkdir(parents=True, exist_ok=True)
        local = LocalServices(compose, Path(path).resolve().parent, state, endpoints, volumes=volumes,
                              metrics=metrics, environ=environ)
        procs = []
        for name in local.select(services):
            for index in range((replicas or {}).get(name, replicas_of(compose["services"][name]))):
                env = {**local.env(name, index), **(env_extra or {})}
                procs.append(StageProcess(name, index, local.argv(name), env, logs / f"{name}-{index}.log", state,
                                          ready_port=_ready_port(env)))
        return cls(procs, **options)

    @property
    def processes(self) -> dict[str, list[StageProcess]]:
        out: dict[str, list[StageProcess]] = {}
        for p in self._procs:
            out.setdefault(p.service, []).append(p)
        return out

    def start(self) -> Topology:
        """Spawn every process and the supervisor. Non-blocking; see :meth:`wait_ready`."""
        with self._lock:
            for p in self._procs:
                p.spawn()
        _LIVE.add(self)
        self._thread = threading.Thread(target=self._supervise, name="topology-supervisor", daemon=True)
        self._thread.start()
        return self

    def kill(self, service: str, index: int = 0, sig: int = signal.SIGKILL) -> int:
        """Send ``sig`` to one process (SIGKILL: its whole group, like ``docker kill``); returns its pid."""
        proc = self.processes[service][index]
        with self._lock:
            pid = proc.pid
            proc.note(f"sending signal {signal.Signals(sig).name}")
            proc.signal(sig, group=sig == signal.SIGKILL)
        return pid or 0

    def wait_ready(self, timeout: float = 300.0) -> None:
        """Block until every process runs and its /readyz (metrics or HTTP port) answers 200.

        Raises TopologyError naming the processes that are not ready (with their log tails) after
        ``timeout`` seconds, or at once when the supervisor gave up on a process.
        """
        deadline = time.monotonic() + timeout
        while True:
            given_up = [p for p in self._procs if p.failed]
            if given_up:
                raise TopologyError(_report("gave up on", given_up))
            pending = [p for p in self._procs if not _is_ready(p)]
            if not pending:
                return
            if time.monotonic() > deadline:
                raise TopologyError(_report(f"not ready after {timeout:.0f}s:", pending))
            time.sleep(0.5)

    def stop(self, timeout: float | None = None) -> dict[str, int | None]:
        """SIGTERM every process, wait, SIGKILL what is left; returns exit codes by process name.

        Blocks until every process is gone (at most ``timeout`` s plus the SIGKILL); idempotent.
        """
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
        wait = self.stop_timeout if timeout is None else timeout
        with self._lock:
            if self._stopped:
                return {p.name: p.returncode for p in self._procs}
            self._stopped = True
            for p in self._procs:
                p.signal(signal.SIGTERM)
            deadline = time.monotonic() + wait
            while any(p.alive for p in self._procs) and time.monotonic() < deadline:
                time.sleep(0.1)
            for p in self._procs:
                if p.alive:
                    p.note(f"still running {wait:.0f}s after SIGTERM: SIGKILL")
                p.signal(signal.SIGKILL, group=True)
                if p.popen is not None:
                    p.popen.wait()
                    p.note(f"stopped (exit code {p.popen.returncode})")
                p.close_log()
        _LIVE.discard(self)
        return {p.name: p.returncode for p in self._procs}

    def __enter__(self) -> Topology:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _supervise(self) -> None:
        while not self._stopping.wait(0.2):
            with self._lock:
                if self._stopping.is_set():
                    return
                for p in self._procs:
                    self._check(p)

    def _check(self, p: StageProcess) -> None:
        now = time.monotonic()
        if p.failed or p.alive:
            if p.alive and now - p.started_at > STABLE_S:
                p.failures = 0
            return
        if p.next_start is None:
            # Whatever the dead process left in its group must not run on beside a successor, or at all.
            p.signal(signal.SIGKILL, group=True)
            code = p.returncode
            if not self.restart or code == CONFIG_ERROR_EXIT:
                p.failed = _exit_text(code) + (" (configuration error)" if code == CONFIG_ERROR_EXIT else "")
                p.note(f"{p.failed}; not restarting")
                return
            p.next_start = now + self._delay(p)
            p.note(f"{_exit_text(code)}; restarting in {p.next_start - now:.1f}s")
        elif now >= p.next_start:
            try:
                p.spawn()
            except OSError as exc:  # e.g. too many processes: try again later, keep supervising
                p.next_start = now + self._delay(p)
                p.note(f"cannot start ({exc}); retrying in {p.next_start - now:.1f}s")

    def _delay(self, p: StageProcess) -> float:
        p.failures += 1
        return min(self.backoff[1], self.backoff[0] * 2 ** (p.failures - 1))


def _exit_text(code: int | None) -> str:
    if code is not None and code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


def _ready_port(env: Mapping[str, str]) -> int | None:
    return next((int(env[k]) for k in LISTEN_PORTS if k in env), None)


def _is_ready(p: StageProcess) -> bool:
    if not p.alive or time.monotonic() - p.started_at < 1.0:
        return False
    if p.ready_port is None:
        return True
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{p.ready_port}/readyz", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def _report(what: str, procs: Sequence[StageProcess]) -> str:
    parts = [f"{p.name} (pid {p.pid}, log {p.log_path}):\n{p.log_tail()}" for p in procs]
    return f"{what} {', '.join(p.name for p in procs)}\n" + "\n\n".join(parts)
