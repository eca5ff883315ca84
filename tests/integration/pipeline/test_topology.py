"""The docker-compose topology as local processes (frontdesk.topology) on real Kafka, PostgreSQL and SMTP.

Two classify replicas in one consumer group, the dispatcher and the HTTP intake run as separate
processes, derived from docker-compose.yml. Email messages go onto the inbound topic, chat
messages through the HTTP intake; one classify replica is SIGKILLed mid-run and must be restarted
by the supervisor. Counted at the end: every message is a case, every email case was acknowledged
exactly once over SMTP, every case has exactly one event on the cases topic, nothing dead-lettered.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from kafka import KafkaAdminClient
from sqlalchemy import create_engine, select

from classify.data import DEV_FILE, read_examples
from classify.settings import ClassifierSettings
from dispatch.store.models import Case
from frontdesk.bus.base import Outgoing, Topics
from frontdesk.bus.kafka import KafkaBus
from frontdesk.codec import encode
from frontdesk.messages import InboundMessage, Party
from frontdesk.settings import KafkaSettings
from frontdesk.topology import Topology
from tests.conftest import SMTP_USERS
from tests.harness.topics import read_topic

pytest.importorskip("torch", reason="the model extra is not installed")
pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.smtp, pytest.mark.slow]

COMPOSE = Path(__file__).resolve().parents[3] / "docker-compose.yml"
EMAILS, CHATS, PARTITIONS = 50, 5, 6
TOKEN = "topology-test-token-0123456789"


def emails() -> list[InboundMessage]:
    examples = [e for e in read_examples(DEV_FILE) if e.channel == "email" and e.category != "spam"][:EMAILS]
    now = datetime.now(UTC)
    return [InboundMessage.create(connector="imap:support", external_id=f"<topo-{i}-{uuid.uuid4().hex}@mail.example>",
                                  channel="email", platform="email", subject=e.subject or "Question", text=e.text,
                                  sender=Party(address=f"customer{i}@mail.example", name=f"Customer {i}"),
                                  received_at=now) for i, e in enumerate(examples)]


def chat_body(i: int) -> dict[str, Any]:
    return {"channel": "chat", "platform": "webchat", "external_id": f"topo-chat-{i}-{uuid.uuid4().hex[:8]}",
            "author": {"id": f"visitor-{i}", "name": f"Visitor {i}"}, "conversation_id": f"topo-conv-{i}",
            "text": "Salam, depozitim 2 saatdır balansda görünmür"}


def wait_until(what: str, done: Callable[[], bool], timeout: float, topo: Topology) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {p.name} ---\n{p.log_tail(15)}" for ps in topo.processes.values() for p in ps)
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n{tails}")
        time.sleep(1.0)


def group_assignment(bootstrap: str, group: str) -> dict[str, list[int]]:
    """client id -> partitions of the inbound topic, as the group coordinator has them now."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        description = admin.describe_groups([group])[group]
    finally:
        admin.close()
    out: dict[str, list[int]] = {}
    for member in description.get("members", []):
        assignment = member.get("member_assignment") or {}
        partitions = [p for topic in assignment.get("assigned_partitions", []) for p in topic.get("partitions", [])]
        out[member["client_id"]] = sorted(partitions)
    return out


def test_compose_topology_as_processes_loses_nothing_when_a_replica_is_killed(
        kafka_broker, postgres_server, smtp_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run = uuid.uuid4().hex[:8]
    prefix, classify_group = f"topo{run}.", f"topo-{run}-classify"
    database_url = postgres_server.create_database(f"topology_{run}")
    bus = KafkaBus(KafkaSettings(bootstrap_servers=kafka_broker.bootstrap), Topics(prefix), partitions=PARTITIONS)
    bus.ensure_topics()
    smtp_server.clear()
    user, password = next(iter(SMTP_USERS.items()))
    topo = Topology.from_compose(
        COMPOSE, {"kafka": kafka_broker.bootstrap, "postgres": database_url, "smtp": (smtp_server.host, smtp_server.port)},
        services=["ingest-http", "classify", "dispatch"], replicas={"classify": 2}, log_dir=tmp_path / "logs",
        state_dir=tmp_path / "state", volumes={"model-cache": ClassifierSettings().cache_dir}, backoff=(1.0, 10.0),
        env_extra={"FRONTDESK_BUS_TOPIC_PREFIX": prefix, "FRONTDESK_CLASSIFIER_GROUP": classify_group,
                   "FRONTDESK_DISPATCH_GROUP": f"topo-{run}-dispatch", "FRONTDESK_CLASSIFIER_THREADS": "1",
                   "FRONTDESK_DISPATCH_RELAY_INTERVAL_S": "0.2", "FRONTDESK_HTTP_API_TOKENS": json.dumps([TOKEN]),
                   "FRONTDESK_SMTP_SECURITY": "starttls", "FRONTDESK_SMTP_USERNAME": user,
                   "FRONTDESK_SMTP_PASSWORD": password, "FRONTDESK_SMTP_CA_FILE": str(smtp_server.ca_pem_path),
                   "HF_HUB_OFFLINE": "1"})
    engine = create_engine(database_url)
    mails = emails()
    assert len(mails) == EMAILS

    def cases() -> list[Any]:
        with engine.connect() as conn:
            return list(conn.execute(select(Case.reference, Case.channel, Case.connector, Case.category,
                                            Case.acknowledged)))

    t0 = time.monotonic()
    with topo:
        topo.wait_ready(600)
        ready = time.monotonic() - t0
        http = topo.processes["ingest-http"][0].env["FRONTDESK_HTTP_PORT"]
        half = EMAILS // 2
        bus.publish([Outgoing(bus.topics.inbound, encode(m), m.id.encode()) for m in mails[:half]])
        with httpx.Client(base_url=f"http://127.0.0.1:{http}", timeout=30) as client:
            for i in range(CHATS):
                response = client.post("/v1/messages", json=chat_body(i), headers={"Authorization": f"Bearer {TOKEN}"})
                assert response.status_code == 202, response.text
        wait_until(f"{half + CHATS} cases", lambda: len(cases()) >= half + CHATS, 900, topo)

        clients = [f"frontdesk-classify-{i}" for i in range(2)]
        wait_until("both classify replicas holding partitions",
                   lambda: all(group_assignment(kafka_broker.bootstrap, classify_group).get(c) for c in clients),
                   300, topo)
        assignment = group_assignment(kafka_broker.bootstrap, classify_group)
        assert sorted(p for c in clients for p in assignment[c]) == list(range(PARTITIONS)), assignment

        victim = topo.processes["classify"][0]
        bus.publish([Outgoing(bus.topics.inbound, encode(m), m.id.encode()) for m in mails[half:]])
        killed, t_kill = topo.kill("classify", 0), time.monotonic()
        wait_until("the supervisor to restart classify-0", lambda: victim.alive and victim.pid != killed, 120, topo)
        restarted = time.monotonic() - t_kill
        wait_until(f"{EMAILS + CHATS} cases", lambda: len(cases()) >= EMAILS + CHATS, 900, topo)
        wait_until(f"{EMAILS} acknowledgements", lambda: len(smtp_server.messages) >= EMAILS, 300, topo)
        done = time.monotonic() - t0
        wait_until("the restarted replica back in the group",
                   lambda: all(group_assignment(kafka_broker.bootstrap, classify_group).get(c) for c in clients),
                   300, topo)
        time.sleep(3)  # anything beyond the expected counts would show up now
    exit_codes = topo.stop()

    rows = cases()
    assert len(rows) == EMAILS + CHATS and len({r.reference for r in rows}) == EMAILS + CHATS
    email_cases = [r for r in rows if r.channel == "email"]
    assert len(email_cases) == EMAILS and all(r.acknowledged for r in email_cases)
    assert Counter(r.connector for r in rows if r.channel == "chat") == {"http:webchat": CHATS}
    assert not [r for r in rows if r.category == "spam"], "non-spam examples triaged as spam get no acknowledgement"

    received = smtp_server.messages
    per_id = Counter(m.message["Message-ID"] for m in received)
    assert len(received) == EMAILS and len(per_id) == EMAILS, f"duplicate acknowledgements: {per_id.most_common(3)}"
    assert sorted(r for m in received for r in m.rcpt_tos) == sorted(m.sender.address for m in mails)

    events = [json.loads(r.value) for r in read_topic(bus, bus.topics.cases)]
    assert len({e["event_id"] for e in events}) == EMAILS + CHATS
    assert Counter(e["type"] for e in events) == {"created": EMAILS + CHATS}, "one created event per case, no more"
    triaged = {r.key for r in read_topic(bus, bus.topics.triaged)}
    assert {m.id.encode() for m in mails} <= triaged and len(triaged) == EMAILS + CHATS, "a message was not triaged"
    assert read_topic(bus, bus.topics.deadletter) == []

    assert victim.starts == 2 and "killed by SIGKILL" in victim.log_path.read_text()
    assert all(p.starts == 1 for name, ps in topo.processes.items() for p in ps if p is not victim)
    assert exit_codes == {name: 0 for name in exit_codes}, f"not a clean stop: {exit_codes}"
    print(f"\ntopology: ready {ready:.0f}s, all {EMAILS + CHATS} cases and {EMAILS} acks at {done:.0f}s, classify-0 "
          f"restarted {restarted:.1f}s after SIGKILL; inbound partitions before the kill: {assignment}")
    engine.dispose()
    bus.close()


def test_command_line_runs_until_interrupted_and_stops_cleanly(kafka_broker, postgres_server,  # type: ignore[no-untyped-def]
                                                                tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:8]
    database_url = postgres_server.create_database(f"topology_cli_{run}")
    proc = subprocess.Popen(
        [sys.executable, "-m", "frontdesk.topology", "--compose", str(COMPOSE), "--kafka", kafka_broker.bootstrap,
         "--services", "dispatch", "--state-dir", str(tmp_path),
         "--env", f"FRONTDESK_BUS_TOPIC_PREFIX=topocli{run}.", "--env", f"FRONTDESK_DISPATCH_GROUP=topocli-{run}"],
        env={**os.environ, "FRONTDESK_TOPOLOGY_DATABASE_URL": database_url},  # not on the command line
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "all processes ready" in line:
                break
        log = tmp_path / "logs" / "dispatch-0.log"
        assert "start #1" in log.read_text(), "".join(lines)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    output = "".join(lines) + out
    assert proc.returncode == 0, output
    assert "dispatch: 1 process(es)" in output and "stopping" in output
    assert "dispatch-0: stopped (exit code 0)" in log.read_text()
