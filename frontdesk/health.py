"""The operations endpoint of a long-running command: ``/metrics``, ``/healthz``, ``/readyz``.

* ``GET /metrics`` — the Prometheus registry (:mod:`frontdesk.metrics`), OpenMetrics on request.
* ``GET /healthz`` — 200 while every watched stage thread is alive; 503 (JSON ``reason``) once one
  has died. A restart is the remedy, so this is the liveness probe.
* ``GET /readyz`` — 200 when every readiness check answers (the bus; for dispatch the database; for
  a pulling connector, its source: :func:`connector_answers`); 503 with a JSON ``reason``
  otherwise. Checks run at request time in a helper thread, bounded by ``ready_timeout_s``; a
  check still hanging from an earlier probe counts as "not ready" instead of piling up threads.

The server (stdlib ``ThreadingHTTPServer``) runs in a daemon thread; it only reads state, so a
slow scraper never slows a stage. :func:`ops_endpoint` starts it for the duration of a command.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry

from frontdesk.bus.base import Bus
from frontdesk.errors import SourceError
from frontdesk.metrics import MetricsSettings, default_metrics, exposition

log = logging.getLogger(__name__)


class Probes:
    """What ``/healthz`` and ``/readyz`` check. Thread-safe; register before or while serving."""

    def __init__(self, timeout: float = 2.0) -> None:
        self.timeout = timeout
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._checks: dict[str, Callable[[], object]] = {}
        self._inflight: dict[str, threading.Thread] = {}

    def watch_thread(self, thread: threading.Thread) -> None:
        """``/healthz`` fails once ``thread`` has started and is no longer alive."""
        with self._lock:
            self._threads.append(thread)

    def add_readiness(self, name: str, check: Callable[[], object]) -> None:
        """``check()`` must return (any value) when the dependency answers and raise when it does not."""
        with self._lock:
            self._checks[name] = check

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        """(healthy, JSON body). A watched thread not yet started counts as alive."""
        with self._lock:
            threads = list(self._threads)
        state = {t.name: "alive" if t.is_alive() or t.ident is None else "dead" for t in threads}
        dead = sorted(name for name, s in state.items() if s == "dead")
        if dead:
            return False, {"status": "failing", "reason": f"stage thread(s) not running: {', '.join(dead)}",
                           "threads": state}
        return True, {"status": "ok", "threads": state}

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """(ready, JSON body): runs every check, each bounded by ``timeout`` seconds."""
        with self._lock:
            checks = dict(self._checks)
        results = {name: self._run(name, check) for name, check in checks.items()}
        failed = {name: problem for name, problem in results.items() if problem is not None}
        if failed:
            return False, {"status": "unavailable", "reason": "; ".join(f"{n}: {p}" for n, p in failed.items()),
                           "checks": {n: p or "ok" for n, p in results.items()}}
        return True, {"status": "ready", "checks": {n: "ok" for n in results}}

    def _run(self, name: str, check: Callable[[], object]) -> str | None:
        """None when ``check`` returned in time, else why not (one line, at most 300 characters)."""
        with self._lock:
            previous = self._inflight.get(name)
            if previous is not None and previous.is_alive():
                return "an earlier check is still waiting for an answer"
            outcome: list[BaseException | None] = []
            worker = threading.Thread(target=_call, args=(check, outcome), name=f"readyz-{name}", daemon=True)
            self._inflight[name] = worker
        worker.start()
        worker.join(self.timeout)
        if worker.is_alive():
            return f"no answer within {self.timeout:g}s"
        error = outcome[0] if outcome else None
        return None if error is None else f"{type(error).__name__}: {error}"[:300]


def _call(check: Callable[[], object], outcome: list[BaseException | None]) -> None:
    try:
        check()
        outcome.append(None)
    except BaseException as exc:  # noqa: BLE001 - any failure means "not ready"; it is reported
        outcome.append(exc)


def bus_answers(bus: Bus) -> Callable[[], object]:
    """A readiness check: the bus returns the end offsets of the inbound topic."""
    return lambda: bus.end_offsets(bus.topics.inbound)


def connector_answers(connector: Any) -> Callable[[], object]:
    """A readiness check of a pulling connector (an IMAP mailbox, the Telegram poller): fails, naming
    its last error, while its last connection attempt or pass failed (``health.consecutive_failures``),
    and passes again after its next success. Reads the connector's own state, never the network, so
    the probe stays cheap and never waits for the source."""
    def check() -> None:
        health = connector.health
        if health.consecutive_failures:
            raise SourceError(f"{health.consecutive_failures} failed attempt(s) since the last success: "
                              f"{health.last_error}")

    return check


def bus_probes(bus: Bus, settings: MetricsSettings) -> Probes:
    """Probes of a stage process: ready when ``bus`` answers (add threads and further checks)."""
    probes = Probes(settings.ready_timeout_s)
    probes.add_readiness("bus", bus_answers(bus))
    return probes


class OpsServer:
    """``/metrics``, ``/healthz``, ``/readyz`` on ``host:port``. ``start`` binds (raises OSError if it
    cannot) and serves in a daemon thread; ``close`` stops it. Idempotent close."""

    def __init__(self, host: str, port: int, probes: Probes, registry: CollectorRegistry | None = None) -> None:
        self.probes = probes
        self.registry = registry if registry is not None else default_metrics().registry
        self._httpd = ThreadingHTTPServer((host, port), _handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="ops-http", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> OpsServer:
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread.is_alive():
            self._httpd.shutdown()
        self._httpd.server_close()

    def answer(self, path: str, accept: str | None) -> tuple[int, str, bytes]:
        """(status, content type, body) for one GET."""
        if path == "/metrics":
            body, content_type = exposition(self.registry, accept)
            return 200, content_type, body
        if path in ("/healthz", "/readyz"):
            ok, doc = self.probes.liveness() if path == "/healthz" else self.probes.readiness()
            return (200 if ok else 503), "application/json", json.dumps(doc).encode()
        return 404, "application/json", b'{"detail": "not found: /metrics, /healthz, /readyz"}'


_ESCAPED_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}


def _handler(server: OpsServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's naming
            status, content_type, body = server.answer(self.path.split("?", 1)[0], self.headers.get("Accept"))
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
            if log.isEnabledFor(logging.DEBUG):  # the client writes the request line: escape its controls
                log.debug("ops endpoint: %s", (format % args).translate(_ESCAPED_CONTROLS))

    return Handler


@contextmanager
def ops_endpoint(settings: MetricsSettings, probes: Probes,
                 registry: CollectorRegistry | None = None) -> Iterator[OpsServer | None]:
    """Serve the endpoint while the block runs; None when disabled (``enabled: false`` or port 0).

    A port already in use is logged as an error and the command runs on without the endpoint:
    telemetry must not stop the pipeline. Give each process on one host its own port
    (``FRONTDESK_METRICS_PORT``).
    """
    if not settings.enabled or settings.port == 0:
        yield None
        return
    try:
        server = OpsServer(settings.host, settings.port, probes, registry).start()
    except OSError as exc:
        log.error("metrics endpoint disabled: cannot listen on %s:%d (%s); set FRONTDESK_METRICS_PORT to a "
                  "free port per process, or 0", settings.host, settings.port, exc)
        yield None
        return
    log.info("metrics and health on %s (/metrics, /healthz, /readyz)", server.url)
    try:
        yield server
    finally:
        server.close()
