"""A real ``frontdesk dispatch`` process on real Kafka and PostgreSQL, scraped over HTTP.

The numbers on ``/metrics`` must be the ones the test caused: records consumed, one poison record
dead-lettered, acknowledgements queued, suppressed by reason and sent, lag back to 0 on every
partition. Then the database is dropped under the running process: ``/readyz`` turns 503 naming
the database, and a new record shows up as transient errors and a growing oldest-record age.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from frontdesk.bus.base import Outgoing, Topics
from frontdesk.bus.kafka import KafkaBus
from frontdesk.codec import encode
from frontdesk.messages import Flags, InboundMessage, Party, Triage, TriagedMessage
from frontdesk.settings import KafkaSettings
from tests.harness.process import free_port

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def triaged(n: int, *, flags: Flags | None = None, category: str = "payments") -> TriagedMessage:
    msg = InboundMessage.create(connector="imap:support", external_id=f"<metrics{n}@mail.az>", channel="email",
                                platform="email", sender=Party(address=f"customer{n}@mail.az"), subject=f"Pul {n}",
                                text="Pul çıxarışı gəlmədi", received_at=datetime.now(UTC), flags=flags or Flags())
    return TriagedMessage(message=msg, triaged_at=datetime.now(UTC),
                          triage=Triage(category=category, urgency="high", language="az", model_version="t"))  # type: ignore[arg-type]


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=15) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return 0, str(exc)


def scrape(base: str) -> Samples:
    status, text = get(base + "/metrics")
    assert status == 200, text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def wait_for(what: str, check: Callable[[], bool], proc: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"dispatch exited ({proc.returncode}) while waiting for {what}"
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_dispatch_process_metrics_health_and_readiness(tmp_path: Path, kafka_broker, postgres_server) -> None:  # type: ignore[no-untyped-def]
    prefix = f"m{uuid.uuid4().hex[:8]}."
    dbname = f"metrics_{uuid.uuid4().hex[:8]}"
    database_url = postgres_server.create_database(dbname)
    bus = KafkaBus(KafkaSettings(bootstrap_servers=kafka_broker.bootstrap), Topics(prefix))
    bus.ensure_topics()
    normal = [triaged(i) for i in range(8)]
    suppressed = [triaged(10, flags=Flags(bounce=True)), triaged(11, flags=Flags(bounce=True)),
                  triaged(12, category="spam")]
    records = [Outgoing(bus.topics.triaged, encode(t), t.id.encode()) for t in normal + suppressed]
    bus.publish([*records, Outgoing(bus.topics.triaged, b"\x00not a triaged message", b"poison")])
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "FRONTDESK_BUS_KIND": "kafka", "FRONTDESK_BUS_TOPIC_PREFIX": prefix,
           "FRONTDESK_KAFKA_BOOTSTRAP_SERVERS": kafka_broker.bootstrap, "FRONTDESK_DISPATCH_DATABASE_URL": database_url,
           "FRONTDESK_STORAGE_DATA_DIR": str(tmp_path), "FRONTDESK_DISPATCH_RELAY_INTERVAL_S": "0.1",
           "FRONTDESK_METRICS_PORT": str(port), "FRONTDESK_METRICS_READY_TIMEOUT_S": "10",
           "FRONTDESK_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen([sys.executable, "-m", "frontdesk", "dispatch"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        wait_for("/readyz", lambda: get(base + "/readyz")[0] == 200, proc)
        assert json.loads(get(base + "/readyz")[1]) == {"status": "ready", "checks": {"bus": "ok", "database": "ok"}}
        health = get(base + "/healthz")
        assert health[0] == 200 and json.loads(health[1])["threads"] == {"relay": "alive"}

        def settled() -> bool:
            s = scrape(base)
            lags = [v for (name, _), v in s.items() if name == "frontdesk_consumer_lag"]
            return (s.get(("frontdesk_stage_consumed_total", (("stage", "dispatch"),))) == 12
                    and s.get(("frontdesk_acks_sent_total", ())) == 8 and len(lags) == 4 and sum(lags) == 0)

        wait_for("all 12 records consumed, 8 acknowledgements sent, lag 0", settled, proc)
        s = scrape(base)
        assert s[("frontdesk_stage_dead_lettered_total", (("stage", "dispatch"),))] == 1
        assert s[("frontdesk_stage_errors_total", (("error", "DecodeError"), ("kind", "poison"), ("stage", "dispatch")))] == 1
        assert s[("frontdesk_stage_published_total", (("stage", "dispatch"), ("topic", "deadletter")))] == 1
        assert s[("frontdesk_dispatch_messages_total", (("result", "created"),))] == 11
        assert s[("frontdesk_acks_queued_total", ())] == 8
        assert s[("frontdesk_acks_suppressed_total", (("reason", "bounce"),))] == 2
        assert s[("frontdesk_acks_suppressed_total", (("reason", "spam"),))] == 1
        assert s[("frontdesk_acks_failed_total", ())] == 0
        assert s[("frontdesk_case_events_published_total", ())] == 11
        assert s[("frontdesk_stage_processing_seconds_count", (("stage", "dispatch"),))] >= 1
        assert {dict(labels)["partition"] for (name, labels) in s if name == "frontdesk_consumer_lag"} == {"0", "1", "2", "3"}
        assert len(list((tmp_path / "outgoing").glob("*.eml"))) == 8
        assert s[("frontdesk_stage_oldest_unprocessed_age_seconds", (("stage", "dispatch"),))] == 0

        postgres_server.drop_database(dbname)  # the database disappears under the running dispatcher
        wait_for("/readyz 503", lambda: get(base + "/readyz")[0] == 503, proc)
        body = json.loads(get(base + "/readyz")[1])
        assert body["status"] == "unavailable" and body["checks"]["bus"] == "ok"
        assert body["reason"].startswith("database: StoreUnavailable: database unavailable")
        late = triaged(99)
        bus.publish([Outgoing(bus.topics.triaged, encode(late), late.id.encode())])
        transient = ("frontdesk_stage_errors_total", (("error", "StoreUnavailable"), ("kind", "transient"),
                                                      ("stage", "dispatch")))
        wait_for("transient errors counted", lambda: scrape(base).get(transient, 0) >= 2, proc)
        s = scrape(base)
        assert s[("frontdesk_stage_oldest_unprocessed_age_seconds", (("stage", "dispatch"),))] > 0
        assert s[("frontdesk_stage_dead_lettered_total", (("stage", "dispatch"),))] == 1, "an outage is not poison"
        assert get(base + "/healthz")[0] == 200, "an outage is not a reason to restart"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=90)
        bus.close()
    assert proc.returncode == 0, err[-2000:]
    assert get(base + "/metrics")[0] == 0, "the endpoint outlived the process"
