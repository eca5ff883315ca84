"""``frontdesk replay`` through the real CLI, on the embedded bus and on real Kafka.

A real ``frontdesk dispatch`` process dead-letters a message the case database refuses (a faulty
constraint, installed as a trigger); the constraint is fixed; ``replay`` re-drives the message, the
still-running dispatcher turns it into a case, and a second ``replay`` re-drives nothing.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from frontdesk.bus import open_bus
from frontdesk.bus.base import Bus, Outgoing
from frontdesk.codec import encode
from frontdesk.messages import InboundMessage, Party, Triage, TriagedMessage
from frontdesk.settings import BusSettings, KafkaSettings, StorageSettings

FRONTDESK = str(Path(sys.executable).parent / "frontdesk")
FAULTY_CONSTRAINT = """CREATE TRIGGER refuse_sender BEFORE INSERT ON messages WHEN NEW.sender = 'poison@mail.example'
BEGIN SELECT RAISE(ABORT, 'sender refused by a faulty constraint'); END"""


@pytest.fixture(params=["embedded", pytest.param("kafka", marks=pytest.mark.kafka)])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    data = tmp_path / "var"
    env = {**os.environ, "FRONTDESK_STORAGE_DATA_DIR": str(data), "FRONTDESK_LOG_LEVEL": "WARNING"}
    if request.param == "kafka":
        broker = request.getfixturevalue("kafka_broker")
        env |= {"FRONTDESK_BUS_KIND": "kafka", "FRONTDESK_BUS_TOPIC_PREFIX": f"rp{uuid.uuid4().hex[:6]}.",
                "FRONTDESK_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap}
    yield env


def open_test_bus(env: dict[str, str]) -> Bus:
    bus = BusSettings(kind=env.get("FRONTDESK_BUS_KIND", "embedded"),  # type: ignore[arg-type]
                      topic_prefix=env.get("FRONTDESK_BUS_TOPIC_PREFIX", "frontdesk."))
    kafka = KafkaSettings(bootstrap_servers=env.get("FRONTDESK_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"))
    return open_bus(bus, StorageSettings(data_dir=Path(env["FRONTDESK_STORAGE_DATA_DIR"])), kafka)


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([FRONTDESK, *args], env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-1500:] + result.stderr[-1500:]
    return result


def cases(env: dict[str, str]) -> list[dict[str, Any]]:
    return json.loads(cli(env, "cases", "list", "--json").stdout)  # type: ignore[no-any-return]


def triaged(n: int, sender: str) -> Outgoing:
    msg = InboundMessage.create(connector="imap:support", external_id=f"<r{n}@mail.example>", channel="email",
                                platform="email", sender=Party(address=sender), subject=f"Withdrawal {n}",
                                text="My withdrawal has not arrived", received_at=datetime.now(UTC))
    tm = TriagedMessage(message=msg, triaged_at=datetime.now(UTC),
                        triage=Triage(category="payments", urgency="high", language="en", model_version="test"))
    return Outgoing("", encode(tm), msg.id.encode())


def wait_for(what: str, check: Callable[[], bool], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def count(bus: Bus, topic: str) -> int:
    return sum(bus.end_offsets(topic).values())


def test_dead_lettered_by_dispatch_fixed_then_replayed_once(env: dict[str, str]) -> None:
    assert cases(env) == []  # creates and migrates the case database
    database = Path(env["FRONTDESK_STORAGE_DATA_DIR"]) / "cases.sqlite3"
    with sqlite3.connect(database) as db:
        db.execute(FAULTY_CONSTRAINT)
    bus = open_test_bus(env)
    t = bus.topics
    good, poison = triaged(1, "customer@mail.example"), triaged(2, "poison@mail.example")
    bus.publish([Outgoing(t.triaged, o.value, o.key) for o in (good, poison)])
    dispatch = subprocess.Popen([FRONTDESK, "dispatch"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
    try:
        wait_for("the dead letter", lambda: count(bus, t.deadletter) == 1 and len(cases(env)) == 1)
        dry = json.loads(cli(env, "replay", "--from", "deadletter", "--stage", "dispatch", "--dry-run", "--json").stdout)
        assert dry["replayed_total"] == 1 and dry["dry_run"]
        [record] = dry["records"]
        assert record["error_type"] == "StoreError" and "faulty constraint" in record["reason"]
        assert record["message_id"] == poison.key.decode() and record["topic"] == t.triaged  # type: ignore[union-attr]
        assert count(bus, t.triaged) == 2

        with sqlite3.connect(database) as db:
            db.execute("DROP TRIGGER refuse_sender")  # the fix
        first = cli(env, "replay", "--from", "deadletter", "--stage", "dispatch").stdout
        assert "replayed 1 dead letter(s)" in first and f"dispatch -> {t.triaged}: 1" in first
        wait_for("the replayed case", lambda: len(cases(env)) == 2)
        second = json.loads(cli(env, "replay", "--from", "deadletter", "--json").stdout)
        assert second["replayed_total"] == 0 and not second["malformed"]
    finally:
        dispatch.send_signal(signal.SIGINT)
        output, _ = dispatch.communicate(timeout=60)
    assert dispatch.returncode == 0, output[-2000:]
    customers = sorted(c["customer"]["identities"][0] for c in cases(env))
    assert customers == ["email:customer@mail.example", "email:poison@mail.example"]
    assert count(bus, t.deadletter) == 1 and count(bus, t.triaged) == 3
    bus.close()
