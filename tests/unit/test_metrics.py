"""Metrics of the stage loop, dispatch, relay, connectors and HTTP intake; /healthz and /readyz."""

from __future__ import annotations

import gc
import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from classify.base import Classifier, TextItem
from classify.stage import ClassifyProcessor
from dispatch.base import MemoryReplier
from dispatch.cases import Context
from dispatch.cli import database_answers
from dispatch.relay import OutboxRelay
from dispatch.routing import RoutingTable
from dispatch.settings import DispatchSettings
from dispatch.stage import DispatchProcessor
from dispatch.store.sql import SqlCaseStore
from frontdesk.bus.base import Outgoing, Record
from frontdesk.bus.memory import MemoryBus
from frontdesk.codec import encode
from frontdesk.errors import BusUnavailable, RecordTooLarge, StoreUnavailable, TransientError
from frontdesk.health import OpsServer, Probes, bus_answers, ops_endpoint
from frontdesk.messages import Flags, InboundMessage, Party, ThreadHints, Triage, TriagedMessage
from frontdesk.metrics import Metrics, MetricsSettings, default_metrics
from frontdesk.stage import Backoff, Outcome, StageRunner
from ingest.http import HttpIntakeSettings
from ingest.http.app import create_app
from ingest.imap import Health as ImapHealth
from ingest.telegram import Health as TelegramHealth

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)


class Echo:
    """Copies records to 'out'; b'poison…' raises ValueError; ``down`` > 0 raises StoreUnavailable."""

    def __init__(self) -> None:
        self.down = 0

    def process(self, records: Sequence[Record]) -> list[Outcome]:
        if self.down:
            self.down -= 1
            raise StoreUnavailable("database down")
        if any(r.value.startswith(b"poison") for r in records):
            raise ValueError("cannot handle poison")
        return [Outcome(r, (Outgoing("out", r.value, r.key),)) for r in records]


def runner(bus: MemoryBus, proc: object, metrics: Metrics, **kw: object) -> StageRunner:
    options: dict[str, object] = {"max_records": 10, "poll_timeout": 0.01, "lag_interval": 0.0,
                                  "backoff": Backoff(initial=0.01, maximum=0.01), "sleep": lambda s: None, **kw}
    return StageRunner("echo", bus, bus.consumer("g", ["in"]), proc, metrics=metrics, **options)  # type: ignore[arg-type]


def value(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def publish(bus: MemoryBus, values: list[bytes], key: bytes | None = b"k") -> None:
    bus.publish([Outgoing("in", v, key) for v in values])


@pytest.fixture()
def m() -> Metrics:
    return Metrics(CollectorRegistry())


def test_stage_counters_follow_what_was_committed(m: Metrics) -> None:
    bus = MemoryBus()
    publish(bus, [b"a", b"b", b"c"])
    r = runner(bus, Echo(), m)
    for _ in range(3):
        r.run_once()
    assert value(m, "frontdesk_stage_consumed_total", stage="echo") == 3
    assert value(m, "frontdesk_stage_published_total", stage="echo", topic="out") == 3
    assert value(m, "frontdesk_stage_processing_seconds_count", stage="echo") == 1
    assert value(m, "frontdesk_stage_dead_lettered_total", stage="echo") is None


def test_poison_goes_to_dead_letter_counter_with_error_kind_and_type(m: Metrics) -> None:
    bus = MemoryBus()
    publish(bus, [b"a", b"poison-1", b"b"])
    r = runner(bus, Echo(), m)
    r.run_once()
    assert value(m, "frontdesk_stage_dead_lettered_total", stage="echo") == 1
    assert value(m, "frontdesk_stage_errors_total", stage="echo", kind="poison", error="ValueError") == 1
    assert value(m, "frontdesk_stage_published_total", stage="echo", topic="deadletter") == 1
    assert value(m, "frontdesk_stage_published_total", stage="echo", topic="out") == 2
    assert r.stats.dead_lettered == 1


def test_transient_failures_are_counted_and_never_dead_lettered(m: Metrics) -> None:
    bus, proc = MemoryBus(), Echo()
    publish(bus, [b"a"])
    proc.down = 2
    r = runner(bus, proc, m)
    for _ in range(4):
        r.run_once()
    assert value(m, "frontdesk_stage_errors_total", stage="echo", kind="transient", error="StoreUnavailable") == 2
    assert value(m, "frontdesk_stage_dead_lettered_total", stage="echo") is None
    assert value(m, "frontdesk_stage_consumed_total", stage="echo") == 1


def test_consumer_lag_is_end_offset_minus_committed_per_partition(m: Metrics) -> None:
    bus = MemoryBus()
    publish(bus, [b"%d" % i for i in range(5)])  # one key: one partition
    [partition] = [p for p, end in bus.end_offsets("in").items() if end]
    r = runner(bus, Echo(), m, max_records=2)
    r.run_once()
    assert value(m, "frontdesk_consumer_lag", stage="echo", topic="in", partition=str(partition)) == 3
    others = [p for p in bus.end_offsets("in") if p != partition]
    assert all(value(m, "frontdesk_consumer_lag", stage="echo", topic="in", partition=str(p)) == 0 for p in others)
    for _ in range(3):
        r.run_once()
    assert value(m, "frontdesk_consumer_lag", stage="echo", topic="in", partition=str(partition)) == 0


def test_lag_is_refreshed_at_most_every_lag_interval(m: Metrics) -> None:
    bus = MemoryBus()
    publish(bus, [b"a", b"b"])
    r = runner(bus, Echo(), m, lag_interval=3600.0)
    r.run_once()  # the first cycle refreshes
    publish(bus, [b"c", b"d", b"e"])
    r.run_once()
    assert sum(lag.lag for lag in r.lag_snapshot) == 0, "refreshed again before the interval"


def test_oldest_unprocessed_age_grows_while_stuck_and_drops_after_commit(m: Metrics) -> None:
    bus, proc = MemoryBus(), Echo()
    publish(bus, [b"a"])
    proc.down = 1
    r = runner(bus, proc, m)
    r.run_once()  # polled, failed transiently: the record is still in flight
    time.sleep(0.05)
    age = value(m, "frontdesk_stage_oldest_unprocessed_age_seconds", stage="echo")
    assert age is not None and 0.04 <= age < 10
    r.run_once()
    assert value(m, "frontdesk_stage_oldest_unprocessed_age_seconds", stage="echo") == 0


class FixedClassifier(Classifier):
    model_version = "t"

    def classify(self, items: Sequence[TextItem]) -> list[Triage]:
        time.sleep(0.01)
        return [Triage(category="payments", urgency="normal", language="en", model_version="t") for _ in items]


def inbound(n: int, *, sender: str = "aysel@mail.az", flags: Flags | None = None, channel: str = "email",
            platform: str = "email", external: str | None = None) -> InboundMessage:
    party = Party(address=sender) if channel == "email" else Party(platform_id=sender, handle=f"u{sender}")
    return InboundMessage.create(connector=f"{platform}:test", external_id=external or f"<m{n}@mail.az>",
                                 channel=channel, platform=platform, sender=party, subject="Pul", text=f"message {n}",
                                 received_at=NOW, flags=flags or Flags(),
                                 thread=ThreadHints(conversation_id=f"c{n}" if channel != "email" else None))


def test_classification_latency_per_batch_and_per_message(m: Metrics) -> None:
    bus = MemoryBus()
    records = [Record("in", 0, i, encode(inbound(i))) for i in range(4)] + [Record("in", 0, 4, b"not json")]
    outcomes = ClassifyProcessor(FixedClassifier(), bus.topics, metrics=m).process(records)
    assert sum(1 for o in outcomes if o.error is None) == 4
    assert value(m, "frontdesk_classify_batch_seconds_count") == 1
    assert value(m, "frontdesk_classify_message_seconds_count") == 4
    batch = value(m, "frontdesk_classify_batch_seconds_sum") or 0
    assert batch >= 0.01 and value(m, "frontdesk_classify_message_seconds_sum") == pytest.approx(batch)


def triaged(msg: InboundMessage, category: str = "payments") -> Record:
    tm = TriagedMessage(message=msg, triaged_at=NOW,
                        triage=Triage(category=category, urgency="high", language="az", model_version="t"))  # type: ignore[arg-type]
    return Record("triaged", 0, 0, encode(tm), msg.id.encode())


@pytest.fixture()
def store() -> Iterator[SqlCaseStore]:
    settings = DispatchSettings(our_addresses=("@bet.example",), from_address="support@bet.example",
                                message_id_domain="bet.example")
    s = SqlCaseStore("sqlite://", Context(settings, RoutingTable.load(settings.routing_file)), clock=lambda: NOW)
    yield s
    s.close()


def test_dispatch_counts_results_and_suppression_reasons_once(m: Metrics, store: SqlCaseStore) -> None:
    records = [triaged(inbound(1)), triaged(inbound(2, sender="b@mail.az", flags=Flags(bounce=True))),
               triaged(inbound(3, sender="noreply@shop.az")), triaged(inbound(4, sender="c@mail.az"), "spam"),
               triaged(inbound(5, sender="d@mail.az", flags=Flags(auto_submitted=True))),
               triaged(inbound(6, sender="42", channel="chat", platform="telegram"))]
    proc = DispatchProcessor(store, metrics=m)
    proc.process(records)
    proc.process(records[:2])  # redelivery: duplicates, nothing counted twice
    assert value(m, "frontdesk_dispatch_messages_total", result="created") == 6
    assert value(m, "frontdesk_dispatch_messages_total", result="duplicate") == 2
    assert value(m, "frontdesk_acks_queued_total") == 2  # the first email and the Telegram chat
    suppressed = {s.labels["reason"]: s.value for f in m.registry.collect() if f.name == "frontdesk_acks_suppressed"
                  for s in f.samples if s.name.endswith("_total")}
    assert suppressed == {"bounce": 1, "noreply_sender": 1, "spam": 1, "auto_submitted": 1}


def test_relay_stats_are_read_at_scrape_time(m: Metrics, store: SqlCaseStore) -> None:
    DispatchProcessor(store, metrics=m).process(
        [triaged(inbound(1)), triaged(inbound(2, sender="42", channel="chat", platform="telegram"))])
    relay = OutboxRelay(store, MemoryBus(), {"email": MemoryReplier()})  # no Telegram replier: that one fails
    m.watch_relay(relay)
    assert value(m, "frontdesk_acks_sent_total") == 0
    relay.run_once()
    assert value(m, "frontdesk_acks_sent_total") == 1
    assert value(m, "frontdesk_acks_failed_total") == 1
    assert value(m, "frontdesk_case_events_published_total") == 2


class RefusesCaseEvents(MemoryBus):
    def publish(self, records: Sequence[Outgoing]) -> None:
        if any(r.topic == self.topics.cases for r in records):
            raise RecordTooLarge("a record for frontdesk.cases is over the bus's limit")
        super().publish(records)


def test_an_ack_given_up_and_an_event_dead_lettered_count_once_when_marking_them_failed_first(m: Metrics) -> None:
    now = [NOW]
    settings = DispatchSettings(from_address="support@bet.example", message_id_domain="bet.example")
    store = SqlCaseStore("sqlite://", Context(settings, RoutingTable.load(settings.routing_file)), clock=lambda: now[0])
    DispatchProcessor(store, metrics=m).process([triaged(inbound(1, sender="42", channel="chat", platform="telegram"))])
    bus = RefusesCaseEvents()
    relay = OutboxRelay(store, bus, {}, metrics=m, lease_seconds=60)  # no Telegram replier: the ack is given up
    m.watch_relay(relay)
    mark, failed_once = store.mark_retry, set()

    def mark_fails_once_per_row(item_id: int, error: str, delay: float, permanent: bool = False) -> None:
        if permanent and item_id not in failed_once:
            failed_once.add(item_id)
            raise StoreUnavailable("database unavailable: connection reset")
        mark(item_id, error, delay, permanent)

    store.mark_retry = mark_fails_once_per_row  # type: ignore[method-assign]
    for _ in range(4):  # each failed mark leaves its row leased; it comes back once the lease is over
        try:
            relay.run_once()
        except TransientError:
            pass
        now[0] += timedelta(seconds=120)
    assert len(failed_once) == 2, "both rows met a failed mark"
    assert value(m, "frontdesk_acks_failed_total") == 1
    assert value(m, "frontdesk_case_events_dead_lettered_total") == 1
    assert value(m, "frontdesk_stage_dead_lettered_total", stage="relay") == 1
    assert value(m, "frontdesk_stage_errors_total", stage="relay", kind="poison", error="RecordTooLarge") == 1
    store.close()


class Connector:
    def __init__(self, name: str, health: object) -> None:
        self.connector, self.health = name, health


def test_connector_health_exported_and_forgotten_with_the_connector(m: Metrics) -> None:
    imap = Connector("imap:support", ImapHealth(last_success=NOW, consecutive_failures=2, auth_failures=3,
                                                 published=10, dead_lettered=1))
    tg = Connector("telegram", TelegramHealth(published=4, skipped=2))
    m.watch_connector(imap)
    m.watch_connector(tg)
    assert value(m, "frontdesk_connector_auth_failures_total", connector="imap:support") == 3
    assert value(m, "frontdesk_connector_consecutive_failures", connector="imap:support") == 2
    assert value(m, "frontdesk_connector_published_total", connector="imap:support") == 10
    assert value(m, "frontdesk_connector_dead_lettered_total", connector="imap:support") == 1
    assert value(m, "frontdesk_connector_last_success_timestamp_seconds", connector="imap:support") == NOW.timestamp()
    assert value(m, "frontdesk_connector_skipped_total", connector="telegram") == 2
    assert value(m, "frontdesk_connector_auth_failures_total", connector="telegram") is None  # no such field
    imap.health.auth_failures += 1  # read live, not copied
    assert value(m, "frontdesk_connector_auth_failures_total", connector="imap:support") == 4
    del imap
    gc.collect()
    assert value(m, "frontdesk_connector_published_total", connector="imap:support") is None


@dataclass
class MailboxHealth:
    """The field a mailbox connector's Health sets when it finds mail it has not imported yet."""

    oldest_unprocessed_at: datetime | None = None


def test_mailbox_oldest_unprocessed_age(m: Metrics) -> None:
    conn = Connector("imap:support", MailboxHealth(datetime.now(UTC) - timedelta(minutes=5)))
    tg = Connector("telegram", TelegramHealth())
    m.watch_connector(conn)
    m.watch_connector(tg)
    age = value(m, "frontdesk_connector_oldest_unprocessed_age_seconds", connector="imap:support")
    assert age is not None and 299 < age < 330
    conn.health.oldest_unprocessed_at = None  # caught up
    assert value(m, "frontdesk_connector_oldest_unprocessed_age_seconds", connector="imap:support") == 0
    assert value(m, "frontdesk_connector_oldest_unprocessed_age_seconds", connector="telegram") is None


def scrape(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def test_http_intake_serves_metrics_and_counts_requests_by_route() -> None:
    app = create_app(HttpIntakeSettings(api_tokens=("a-t0ken-for-the-tests",)), MemoryBus())
    key = ("frontdesk_http_requests_total", (("endpoint", "/v1/messages"), ("method", "POST"), ("status", "401")))
    unmatched = ("frontdesk_http_requests_total", (("endpoint", "unmatched"), ("method", "GET"), ("status", "404")))
    with TestClient(app) as client:
        before = scrape(client.get("/metrics").text)
        assert client.post("/v1/messages", content=b"{}", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/no/such/path/12345").status_code == 404
        response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    after = scrape(response.text)
    assert after[key] - before.get(key, 0) == 1 and after[unmatched] - before.get(unmatched, 0) == 1
    assert not any("12345" in dict(labels).get("endpoint", "") for _, labels in after)
    assert "/metrics" not in app.openapi()["paths"]


TELEGRAM_UPDATE = {"update_id": 5, "message": {"message_id": 1, "date": 1700000000, "text": "Pul gəlmədi",
                                                "chat": {"id": 42, "type": "private"},
                                                "from": {"id": 42, "is_bot": False, "first_name": "Aysel"}}}


class BusDownFor(MemoryBus):
    """Refuses ``down`` publish calls as unavailable, then publishes."""

    down = 0

    def publish(self, records: Sequence[Outgoing]) -> None:
        if self.down:
            self.down -= 1
            raise BusUnavailable("broker 127.0.0.1:9 unreachable")
        super().publish(records)


def test_http_intake_counts_messages_and_dead_letters_per_configured_connector(m: Metrics) -> None:
    bus = BusDownFor()
    settings = HttpIntakeSettings(api_tokens=("a-t0ken-for-the-tests",),  # type: ignore[arg-type]
                                  telegram_secret_token="s3cret-token", telegram_connector="tg-bot")
    app = create_app(settings, bus, metrics=m)
    telegram = {"X-Telegram-Bot-Api-Secret-Token": "s3cret-token"}
    api = {"Authorization": "Bearer a-t0ken-for-the-tests"}

    def message(platform: str) -> dict[str, object]:
        return {"channel": "chat", "platform": platform, "external_id": f"{platform}-1", "author": {"id": "7"},
                "text": "salam"}

    with TestClient(app) as client:
        assert client.post("/webhooks/telegram", json=TELEGRAM_UPDATE, headers=telegram).json()["published"] == 1
        bad = client.post("/webhooks/telegram", json={"update_id": 6, "message": {"chat": 5}}, headers=telegram)
        assert bad.json() == {"published": 0, "ids": [], "dead_lettered": 1}
        for platform in ("webchat", "x-customer-chosen-name", "webchat"):
            assert client.post("/v1/messages", json=message(platform), headers=api).status_code == 202
        bus.down = 1  # refused with 503: nothing is on the bus, nothing is counted
        assert client.post("/webhooks/telegram", json=TELEGRAM_UPDATE, headers=telegram).status_code == 503
    assert value(m, "frontdesk_connector_published_total", connector="tg-bot") == 1
    assert value(m, "frontdesk_connector_dead_lettered_total", connector="tg-bot") == 1
    assert value(m, "frontdesk_connector_published_total", connector="http") == 3
    assert value(m, "frontdesk_connector_published_total", connector="whatsapp") == 0  # configured, nothing yet
    connectors = {s.labels["connector"] for f in m.registry.collect() if f.name.startswith("frontdesk_connector_")
                  for s in f.samples}
    assert connectors == {"http", "tg-bot", "whatsapp", "facebook", "instagram"}, "no label taken from a body"
    assert not [f.name for f in m.registry.collect() if f.name == "frontdesk_connector_consecutive_failures"
                and f.samples], "a webhook does not poll: no failure streak to report"


class DownBus(MemoryBus):
    def end_offsets(self, topic: str) -> dict[int, int]:
        raise BusUnavailable("broker 127.0.0.1:9 unreachable")


class DownStore:
    def read(self, fn: object) -> object:
        raise StoreUnavailable("database unavailable: connection refused")


def get(url: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture()
def serve() -> Iterator[object]:
    servers: list[OpsServer] = []

    def start(probes: Probes, registry: CollectorRegistry | None = None) -> str:
        servers.append(OpsServer("127.0.0.1", 0, probes, registry).start())
        return servers[-1].url

    yield start
    for s in servers:
        s.close()


def test_healthz_is_200_while_stage_threads_live_and_503_once_one_died(serve) -> None:  # type: ignore[no-untyped-def]
    probes, release = Probes(), threading.Event()
    alive = threading.Thread(target=release.wait, name="classify", daemon=True)
    dying = threading.Thread(target=lambda: None, name="dispatch")
    probes.watch_thread(alive)
    probes.watch_thread(dying)
    url = serve(probes)
    assert get(url + "/healthz") == (200, {"status": "ok", "threads": {"classify": "alive", "dispatch": "alive"}})
    alive.start()
    dying.start()
    dying.join()
    status, body = get(url + "/healthz")
    assert status == 503 and body["threads"] == {"classify": "alive", "dispatch": "dead"}
    assert "dispatch" in body["reason"]
    release.set()


def test_readyz_answers_200_when_bus_and_database_answer(serve, store: SqlCaseStore) -> None:  # type: ignore[no-untyped-def]
    probes = Probes()
    probes.add_readiness("bus", bus_answers(MemoryBus()))
    probes.add_readiness("database", database_answers(store))
    assert get(serve(probes) + "/readyz") == (200, {"status": "ready", "checks": {"bus": "ok", "database": "ok"}})


@pytest.mark.parametrize("down", ["bus", "database"])
def test_readyz_is_503_with_the_reason_when_bus_or_database_is_down(serve, store: SqlCaseStore,  # type: ignore[no-untyped-def]
                                                                     down: str) -> None:
    probes = Probes()
    probes.add_readiness("bus", bus_answers(DownBus() if down == "bus" else MemoryBus()))
    probes.add_readiness("database", database_answers(DownStore() if down == "database" else store))  # type: ignore[arg-type]
    status, body = get(serve(probes) + "/readyz")
    error = "BusUnavailable" if down == "bus" else "StoreUnavailable"
    assert status == 503 and body["status"] == "unavailable"
    assert body["reason"].startswith(f"{down}: {error}") and body["checks"][down].startswith(error)
    assert [v for k, v in body["checks"].items() if k != down] == ["ok"]


def test_readyz_hanging_check_times_out_and_does_not_pile_up(serve) -> None:  # type: ignore[no-untyped-def]
    release = threading.Event()
    probes = Probes(timeout=0.2)
    probes.add_readiness("bus", release.wait)
    url = serve(probes)
    assert get(url + "/readyz")[1]["reason"] == "bus: no answer within 0.2s"
    assert get(url + "/readyz")[1]["reason"] == "bus: an earlier check is still waiting for an answer"
    release.set()
    time.sleep(0.05)
    assert get(url + "/readyz")[0] == 200


def test_ops_server_serves_the_registry(serve, m: Metrics) -> None:  # type: ignore[no-untyped-def]
    m.acks_suppressed.labels("spam").inc(2)
    with urllib.request.urlopen(serve(Probes(), m.registry) + "/metrics", timeout=10) as response:
        samples = scrape(response.read().decode())
    assert samples[("frontdesk_acks_suppressed_total", (("reason", "spam"),))] == 2
    assert get(serve(Probes(), m.registry) + "/other")[0] == 404


def test_ops_server_logs_a_hostile_request_line_escaped(serve, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    # whoever reaches the port writes the request line: raw, it would put terminal commands into the log
    url = serve(Probes())
    host, port = url.removeprefix("http://").split(":")
    with caplog.at_level(logging.DEBUG, "frontdesk.health"), socket.create_connection((host, int(port))) as s:
        s.sendall(b"GET /x\x1b]0;owned\x07\x1b[2J\x85 HTTP/1.1\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.0 404")
        deadline = time.monotonic() + 5
        while not any("/x" in r.getMessage() for r in caplog.records) and time.monotonic() < deadline:
            time.sleep(0.01)
    logged = [r.getMessage() for r in caplog.records if "/x" in r.getMessage()]
    assert logged and not any(set(line) & {"\x1b", "\x07", "\x85"} for line in logged)
    assert "\\x1b]0;owned\\x07\\x1b[2J\\x85" in logged[0]


def test_ops_endpoint_disabled_or_port_taken_runs_on_without_it(caplog: pytest.LogCaptureFixture) -> None:
    with ops_endpoint(MetricsSettings(port=0), Probes()) as ops:
        assert ops is None
    with ops_endpoint(MetricsSettings(enabled=False), Probes()) as ops:
        assert ops is None
    busy = OpsServer("127.0.0.1", 0, Probes()).start()
    try:
        port = int(busy.url.rsplit(":", 1)[1])
        with caplog.at_level(logging.ERROR, "frontdesk.health"), ops_endpoint(MetricsSettings(port=port),
                                                                              Probes()) as ops:
            assert ops is None
        assert f"cannot listen on 127.0.0.1:{port}" in caplog.text and "FRONTDESK_METRICS_PORT" in caplog.text
    finally:
        busy.close()


def test_metrics_settings_env_and_docs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRONTDESK_METRICS_PORT", "9470")
    assert MetricsSettings.load().port == 9470 and MetricsSettings().port == 9464
    assert MetricsSettings.load(ROOT / "config" / "frontdesk.yaml").enabled
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    row = next((line for line in readme.splitlines() if line.startswith("| `metrics` |")), "")
    # Either the generated reference (one row per `metrics.<field>`) or one row for the section.
    assert [f for f in MetricsSettings.model_fields if f"`metrics.{f}`" not in readme and f"`{f}`" not in row] == []
    assert "metrics:" in (ROOT / "config" / "frontdesk.yaml").read_text(encoding="utf-8")


def test_readme_lists_every_frontdesk_metric() -> None:
    names = {f.name for f in default_metrics().registry.collect() if f.name.startswith("frontdesk_")}
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    exposed = {n + ("_total" if f.type == "counter" else "_info" if f.type == "info" else "")
               for f in default_metrics().registry.collect() for n in [f.name] if n in names}
    assert [n for n in sorted(exposed) if f"`{n}" not in readme] == []
