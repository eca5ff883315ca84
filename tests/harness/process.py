"""Process plumbing shared by the harness servers that run as child processes.

* :func:`free_port` -- a free TCP port on 127.0.0.1.
* :func:`spawn` -- start a server in its own session, so its process group id
  is its pid and a Ctrl-C in the test runner does not reach it; stdin from
  /dev/null, stdout/stderr appended to a log file (never a pipe, which the
  server's children would inherit and keep open).
* :func:`signal_group`, :func:`escalate`, :func:`kill_group`,
  :func:`wait_group_gone` -- signal and reap a server and all its children.
  Waiting for a process group scans /proc and ignores zombies: orphaned
  children are re-parented to init, which on this VM reaps them only after
  seconds, so ``os.killpg(pgid, 0)`` keeps "succeeding".
* :func:`cleanup_at_exit` -- servers still running at interpreter exit are
  stopped by an ``atexit`` hook (a SIGKILLed test runner leaks them).
* :class:`ServerProcess` -- the start/close skeleton of ``PostgresServer`` and
  ``DovecotServer``.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Self

HOST = "127.0.0.1"


def free_port(host: str = HOST) -> int:
    """Return a TCP port that is currently free on ``host`` (racy, but fine for tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def spawn(argv: list[str], log: IO[bytes], **popen_kw: Any) -> subprocess.Popen:
    """Popen ``argv`` as the leader of a new session, output appended to ``log``."""
    return subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True, **popen_kw,
    )


def read_tail(path: Path, n: int, missing: str) -> str:
    """The last ``n`` lines of the text file ``path`` (``missing`` if unreadable)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return missing


def signal_group(pgid: int, sig: int) -> None:
    """``os.killpg``, ignoring a group that is already gone."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def group_alive(pgid: int, exclude: int | None = None) -> bool:
    """True if a non-zombie process (other than pid ``exclude``) is left in group ``pgid``.

    Linux: scans /proc; elsewhere falls back to ``os.killpg(pgid, 0)``.
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
        fields = raw[raw.rfind(b")") + 2:].split()  # after "pid (comm) ": state ppid pgrp
        if (
            len(fields) > 2
            and int(fields[2]) == pgid
            and fields[0] not in (b"Z", b"X")
            and int(d.name) != exclude
        ):
            return True
    return False


def wait_until(done: Callable[[], bool], timeout: float, interval: float) -> bool:
    """Poll ``done()`` every ``interval`` s until it is true; False after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def wait_group_gone(pgid: int, timeout: float = 10.0) -> bool:
    """Wait until no live process is left in group ``pgid``; False on timeout."""
    return wait_until(lambda: not group_alive(pgid), timeout, 0.01)


def kill_group(proc: subprocess.Popen, timeout: float = 10.0) -> bool:
    """SIGKILL ``proc`` and its whole process group, reap it, and wait for the group to be gone."""
    if proc.poll() is None:
        signal_group(proc.pid, signal.SIGKILL)
        proc.wait(10)
    signal_group(proc.pid, signal.SIGKILL)  # stragglers
    return wait_group_gone(proc.pid, timeout)


def escalate(proc: subprocess.Popen, *steps: tuple[int, bool, float]) -> None:
    """Stop ``proc`` with ``(signal, whole_group, wait_seconds)`` steps, each tried
    only if the one before did not end it in time.  If the last step's wait
    times out, ``subprocess.TimeoutExpired`` propagates.
    """
    for i, (sig, group, timeout) in enumerate(steps):
        if proc.poll() is not None:
            return
        if group:
            signal_group(proc.pid, sig)
        else:
            proc.send_signal(sig)
        try:
            proc.wait(timeout)
            return
        except subprocess.TimeoutExpired:
            if i == len(steps) - 1:
                raise


def cleanup_at_exit(method: str) -> "weakref.WeakSet[Any]":
    """A set of live servers; at interpreter exit ``method`` is called on each one left in it."""
    live: weakref.WeakSet[Any] = weakref.WeakSet()

    def cleanup() -> None:  # pragma: no cover - exit path
        for obj in list(live):
            try:
                getattr(obj, method)()
            except Exception:  # noqa: BLE001
                pass

    atexit.register(cleanup)
    return live


_LIVE = cleanup_at_exit("close")


class ServerProcess:
    """A server run by :func:`spawn`, with its log, lock and private temp dirs.

    ``start()`` runs ``_launch()`` (prepare and :meth:`_spawn`), then polls
    ``_probe()`` (None when ready, else why not) until ``startup_timeout``,
    killing the server if that fails.  Subclasses also set ``port``,
    ``run_dir``, the ``_exited``/``_not_ready`` messages (``str.format``
    fields: returncode, host, port, timeout, last, log) and implement
    ``_startup_log()``, ``stop()`` and ``kill()``; ``_lock`` serialises them.
    """

    _poll_interval = 0.05  # seconds between readiness probes
    _exited: str
    _not_ready: str
    startup_timeout: float
    run_dir: Path | None

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._lock = threading.RLock()
        self._log_fh: IO[bytes] | None = None
        self._private_dirs: list[Path] = []
        self.start_seconds: float | None = None  # duration of the last start()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> Self:
        with self._lock:
            if self.running:
                return self
            t0 = time.monotonic()
            self._launch()
            _LIVE.add(self)
            try:
                self._wait_ready(t0 + self.startup_timeout)
            except BaseException:
                self.kill()
                raise
            self.start_seconds = time.monotonic() - t0
            return self

    def _spawn(self, argv: list[str], log_path: Path, **popen_kw: Any) -> None:
        self._close_log()
        self._log_fh = open(log_path, "ab")
        self._proc = spawn(argv, self._log_fh, **popen_kw)

    def _wait_ready(self, deadline: float) -> None:
        proc = self._proc
        assert proc is not None
        while True:
            if proc.poll() is not None:
                raise RuntimeError(self._startup_error(self._exited, proc.returncode, None))
            last = self._probe()
            if last is None:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(self._startup_error(self._not_ready, None, last))
            time.sleep(self._poll_interval)

    def _startup_error(self, template: str, returncode: int | None, last: object) -> str:
        port = self.port  # type: ignore[attr-defined]
        return template.format(
            returncode=returncode, host=HOST, port=port, timeout=self.startup_timeout,
            last=last, log=self._startup_log(),
        )

    def _close_log(self) -> None:
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None

    def _forget_proc(self) -> None:
        self._proc = None
        self._close_log()

    def _private_dir(self, prefix: str) -> Path:
        """A new private dir under /tmp, removed by close()."""
        d = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
        self._private_dirs.append(d)
        return d

    def close(self) -> None:
        """Stop and remove the private fallback dirs (``workdir`` is left alone)."""
        self.stop()
        _LIVE.discard(self)
        if self._private_dirs:
            for d in self._private_dirs:
                shutil.rmtree(d, ignore_errors=True)
            self._private_dirs.clear()
            self.run_dir = None

    # -- hooks
    def _launch(self) -> None:
        raise NotImplementedError

    def _probe(self) -> object:
        raise NotImplementedError

    def _startup_log(self) -> str:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def kill(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
