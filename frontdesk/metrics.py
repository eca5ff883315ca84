"""Prometheus metrics of every stage (names ``frontdesk_*``), and their settings (section ``metrics``).

:class:`Metrics` owns every metric family on one registry. Processes use :func:`default_metrics`
(prometheus_client's global registry, so ``process_*`` and ``python_*`` come along); tests build
``Metrics(CollectorRegistry())`` and hand it to the components they check.

Two kinds of sources:

* code on the hot path increments counters directly (the stage loop, classify, dispatch, the
  HTTP middleware);
* long-lived objects that already keep their own counters are *watched* and read at scrape time:
  stage runners (consumer lag, age of the oldest record in flight), connectors (their ``Health``;
  the HTTP intake's per-connector tallies, :mod:`ingest.http.tally`), the outbox relay (its
  ``stats``). Watching keeps a weak reference, so it never keeps an object alive, and reading never
  calls into the object's thread-unsafe parts (the stage thread itself refreshes the lag snapshot
  it publishes).

Served by :mod:`frontdesk.health` (``/metrics``, ``/healthz``, ``/readyz``) and, on its own port,
by the HTTP intake (:func:`instrument_app`).
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime
from typing import Any, ClassVar

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pydantic import Field

from frontdesk.settings import ComponentSettings

BATCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
MESSAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# Fields of a connector's ``Health`` exported as counters / gauges (a missing field is skipped).
_HEALTH_COUNTERS = {"published": "Records published to the bus (messages)",
                    "dead_lettered": "Source items sent to the dead-letter topic (unparseable, too large)",
                    "skipped": "Source items that are not customer messages (Telegram)",
                    "auth_failures": "Logins the source rejected (IMAP)"}
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_RELAY_COUNTERS = {"acks_sent": ("frontdesk_acks_sent", "Acknowledgements the far side accepted"),
                   "acks_failed": ("frontdesk_acks_failed",
                                   "Acknowledgements given up (permanent error, no replier, or max attempts)"),
                   "retries": ("frontdesk_relay_retries", "Outbox deliveries retried after a transient failure"),
                   "events_published": ("frontdesk_case_events_published", "Case events published by the relay"),
                   "events_dead_lettered": ("frontdesk_case_events_dead_lettered",
                                            "Case events the bus refused for good, sent to the dead-letter topic")}


class MetricsSettings(ComponentSettings):
    """The metrics and health endpoint of a long-running command (``/metrics``, ``/healthz``, ``/readyz``)."""

    section: ClassVar[str] = "metrics"
    enabled: bool = Field(True, description="Serve /metrics, /healthz and /readyz")
    host: str = Field("127.0.0.1", description="Listen address (0.0.0.0 for a scraper on another host)")
    port: int = Field(9464, ge=0, le=65535, description="Listen port; 0 disables. One per process on one host")
    ready_timeout_s: float = Field(2.0, gt=0, description="How long /readyz waits for the bus / database")


class Metrics:
    """Every Frontdesk metric family on ``registry``. Thread-safe (prometheus_client's metrics are)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        from frontdesk import __version__

        self.registry = r = registry if registry is not None else CollectorRegistry()
        self.consumed = Counter("frontdesk_stage_consumed", "Records a stage processed and committed",
                                ["stage"], registry=r)
        self.published = Counter("frontdesk_stage_published", "Records a stage published, per logical topic",
                                 ["stage", "topic"], registry=r)
        self.errors = Counter("frontdesk_stage_errors", "Failures: transient (retried) or poison (dead-lettered)",
                              ["stage", "kind", "error"], registry=r)
        self.dead_lettered = Counter("frontdesk_stage_dead_lettered", "Records a stage sent to the dead-letter topic",
                                     ["stage"], registry=r)
        self.processing = Histogram("frontdesk_stage_processing_seconds",
                                    "One batch: process, publish (durable) and commit", ["stage"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.classify_batch = Histogram("frontdesk_classify_batch_seconds", "Classifier time per batch",
                                        buckets=BATCH_BUCKETS, registry=r)
        self.classify_message = Histogram("frontdesk_classify_message_seconds",
                                          "Classifier time per message (its batch's time / batch size)",
                                          buckets=MESSAGE_BUCKETS, registry=r)
        self.dispatched = Counter("frontdesk_dispatch_messages", "Triaged messages applied to the case store",
                                  ["result"], registry=r)
        self.acks_queued = Counter("frontdesk_acks_queued", "Acknowledgements written to the outbox", registry=r)
        self.acks_suppressed = Counter("frontdesk_acks_suppressed", "Acknowledgements not sent, by reason",
                                       ["reason"], registry=r)
        self.http_requests = Counter("frontdesk_http_requests", "HTTP intake requests by route and status",
                                     ["endpoint", "method", "status"], registry=r)
        self.http_seconds = Histogram("frontdesk_http_request_seconds", "HTTP intake request duration",
                                      ["endpoint"], buckets=BATCH_BUCKETS, registry=r)
        Info("frontdesk_build", "Frontdesk version", registry=r).info({"version": __version__})
        self._watched = _Watched()
        r.register(_WatchedCollector(self._watched))

    def watch_stage(self, runner: Any) -> None:
        """Export ``runner.lag_snapshot`` (logical topic names) and ``runner.oldest_pending_ms`` of a
        StageRunner at scrape time."""
        self._watched.add("stages", runner)

    def watch_connector(self, connector: Any) -> None:
        """Export ``connector.health`` (IMAP mailbox, Telegram poller, HTTP intake tally) under
        ``connector.connector``."""
        self._watched.add("connectors", connector)

    def watch_relay(self, relay: Any) -> None:
        """Export ``relay.stats`` (the outbox relay's acknowledgement and event counters)."""
        self._watched.add("relays", relay)


_DEFAULT: Metrics | None = None
_DEFAULT_LOCK = threading.Lock()


def default_metrics() -> Metrics:
    """The process-wide metrics on prometheus_client's global registry (created on first use)."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = Metrics(REGISTRY)
        return _DEFAULT


class _Watched:
    """Weak references to the objects read at scrape time, by kind."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sets: dict[str, weakref.WeakSet[Any]] = defaultdict(weakref.WeakSet)

    def add(self, kind: str, obj: Any) -> None:
        with self._lock:
            self._sets[kind].add(obj)

    def get(self, kind: str) -> list[Any]:
        with self._lock:
            return list(self._sets[kind])


class _WatchedCollector(Collector):
    """Builds the scrape-time families; equal label sets from several objects are summed (max for ages)."""

    def __init__(self, watched: _Watched) -> None:
        self.watched = watched

    def describe(self) -> list[Metric]:
        return list(self._families({}, {}, {}, {}))

    def collect(self) -> Iterator[Metric]:
        lag: dict[tuple[str, ...], float] = defaultdict(float)
        age: dict[tuple[str, ...], float] = defaultdict(float)
        now_ms = time.time() * 1000
        for runner in self.watched.get("stages"):
            for item in list(runner.lag_snapshot):
                lag[(runner.name, runner.bus.topics.logical(item.topic), str(item.partition))] += item.lag
            oldest = runner.oldest_pending_ms
            age[(runner.name,)] = max(age[(runner.name,)], (now_ms - oldest) / 1000 if oldest else 0.0)
        health: dict[str, dict[tuple[str, ...], float]] = defaultdict(lambda: defaultdict(float))
        for conn in self.watched.get("connectors"):
            self._read_health(conn.connector, conn.health, health)
        relay: dict[str, float] = defaultdict(float)
        for r in self.watched.get("relays"):
            for field in _RELAY_COUNTERS:
                relay[field] += getattr(r.stats, field, 0)
        yield from self._families(lag, age, health, relay)

    @staticmethod
    def _read_health(name: str, h: Any, out: dict[str, dict[tuple[str, ...], float]]) -> None:
        for field in _HEALTH_COUNTERS:
            if hasattr(h, field):
                out[field][(name,)] += getattr(h, field)
        if hasattr(h, "consecutive_failures"):  # a pulling connector (the HTTP intake's tallies have none)
            out["consecutive_failures"][(name,)] += h.consecutive_failures
        last = getattr(h, "last_success", None)
        if isinstance(last, datetime):
            out["last_success"][(name,)] = max(out["last_success"][(name,)], last.timestamp())
        if hasattr(h, "oldest_unprocessed_at"):  # IMAP: INTERNALDATE of the oldest mail not yet imported
            oldest = h.oldest_unprocessed_at
            age = max(0.0, time.time() - oldest.timestamp()) if isinstance(oldest, datetime) else 0.0
            out["oldest_age"][(name,)] = max(out["oldest_age"][(name,)], age)

    @staticmethod
    def _families(lag: dict[tuple[str, ...], float], age: dict[tuple[str, ...], float],
                  health: dict[str, dict[tuple[str, ...], float]], relay: dict[str, float]) -> Iterator[Metric]:
        def fill(family: Any, values: dict[tuple[str, ...], float]) -> Metric:
            for labels, value in sorted(values.items()):
                family.add_metric(list(labels), value)
            return family

        yield fill(GaugeMetricFamily("frontdesk_consumer_lag", "Records published but not committed by the group "
                                     "(end offset - committed), on the partitions this process owns",
                                     labels=["stage", "topic", "partition"]), lag)
        yield fill(GaugeMetricFamily("frontdesk_stage_oldest_unprocessed_age_seconds",
                                     "Age of the oldest record polled but not yet committed (0: none in flight)",
                                     labels=["stage"]), age)
        for field, doc in _HEALTH_COUNTERS.items():
            yield fill(CounterMetricFamily(f"frontdesk_connector_{field}", doc, labels=["connector"]),
                       health.get(field, {}))
        yield fill(GaugeMetricFamily("frontdesk_connector_consecutive_failures",
                                     "Failed connection attempts or passes since the last success",
                                     labels=["connector"]), health.get("consecutive_failures", {}))
        yield fill(GaugeMetricFamily("frontdesk_connector_last_success_timestamp_seconds",
                                     "Unix time of the last successful pass or poll", labels=["connector"]),
                   health.get("last_success", {}))
        yield fill(GaugeMetricFamily("frontdesk_connector_oldest_unprocessed_age_seconds",
                                     "Age of the oldest mail on the server not yet imported (0: caught up)",
                                     labels=["connector"]), health.get("oldest_age", {}))
        for field, (name, doc) in _RELAY_COUNTERS.items():
            family = CounterMetricFamily(name, doc)
            if field in relay:
                family.add_metric([], relay[field])
            yield family


def instrument_app(app: Any, metrics: Metrics | None = None) -> None:
    """Add ``GET /metrics`` (the same registry) and per-request counters to a FastAPI app."""
    from starlette.requests import Request
    from starlette.responses import Response

    m = metrics or default_metrics()

    async def scrape(request: Request) -> Response:
        body, content_type = exposition(m.registry, request.headers.get("accept"))
        return Response(body, media_type=content_type)

    # A plain Starlette route: the endpoint gets the request as is, and stays out of the OpenAPI document.
    app.add_route("/metrics", scrape, methods=["GET"], include_in_schema=False)
    app.add_middleware(RequestMetrics, metrics=m)


def exposition(registry: CollectorRegistry, accept: str | None) -> tuple[bytes, str]:
    """The scrape body and its content type (OpenMetrics when the scraper asks for it)."""
    from prometheus_client.exposition import choose_encoder

    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type


class RequestMetrics:
    """Pure ASGI middleware: counts requests by route template (never the raw path), method and status."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status, start = 500, time.perf_counter()

        async def send_and_note(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            # The router stores the matched route in the scope; unmatched paths share one label.
            endpoint = getattr(scope.get("route"), "path", "unmatched")
            method = scope["method"] if scope["method"] in _METHODS else "other"
            self.metrics.http_requests.labels(endpoint, method, str(status)).inc()
            self.metrics.http_seconds.labels(endpoint).observe(time.perf_counter() - start)
