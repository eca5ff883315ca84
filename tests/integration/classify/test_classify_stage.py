"""The shipped model through its command-line contract and as a real stage process on Kafka."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from classify.data import DEV_FILE, read_examples
from frontdesk.bus.base import Outgoing, Topics
from frontdesk.bus.kafka import KafkaBus
from frontdesk.codec import decode, encode
from frontdesk.messages import InboundMessage, Party, TriagedMessage
from frontdesk.settings import KafkaSettings

pytest.importorskip("torch", reason="the model extra is not installed")
FRONTDESK = [sys.executable, "-m", "frontdesk"]


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FRONTDESK, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})


def test_eval_json_contract(tmp_path: Path) -> None:
    sample = tmp_path / "sample.jsonl"
    rows = [json.loads(line) for line in DEV_FILE.read_text(encoding="utf-8").splitlines()[::4]]
    sample.write_text("\n".join(json.dumps({**r, "extra": 1}, ensure_ascii=False) for r in rows), encoding="utf-8")
    result = run_cli("eval", str(sample), "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    for key in ("n", "category_macro_f1", "urgency_macro_f1", "language_accuracy", "per_language", "baseline",
                "messages_per_second"):
        assert key in report
    assert report["n"] == len(rows)
    assert set(report["per_language"]) == {"az", "ru", "en", "tr"}
    assert {"category_macro_f1", "urgency_macro_f1", "n"} <= set(report["per_language"]["az"])
    assert {"category_macro_f1", "urgency_macro_f1"} <= set(report["baseline"])
    assert report["category_macro_f1"] > 0.7 and report["language_accuracy"] > 0.9


@pytest.mark.parametrize(
    ("text", "category", "language"),
    [
        ("Hesabım oğurlanıb, kimsə mənim adımdan 800 AZN çıxarıb!", "security", "az"),
        ("Һесабымдан пул чыхара билмирәм, 3 ҝүндүр ҝөзләјирәм", "payments", "az"),
        ("Прошу заблокировать мой аккаунт на полгода, не могу остановиться играть", "responsible_gambling", "ru"),
    ],
)
def test_classify_text(text: str, category: str, language: str) -> None:
    result = run_cli("classify-text", text, "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    triage = json.loads(result.stdout)
    assert (triage["category"], triage["language"]) == (category, language)
    assert 0 < triage["confidence"]["category"] <= 1 and triage["model_version"]


@pytest.mark.kafka
def test_classify_stage_process_on_kafka(kafka_broker) -> None:  # type: ignore[no-untyped-def]
    prefix = f"cls{uuid.uuid4().hex[:6]}."
    bus = KafkaBus(KafkaSettings(bootstrap_servers=kafka_broker.bootstrap), Topics(prefix))
    bus.ensure_topics()
    examples = read_examples(DEV_FILE)[:40]
    now = datetime.now(UTC)
    msgs = [InboundMessage.create(connector="test", external_id=str(i), channel=e.channel,
                                  sender=Party(handle=f"u{i}"), subject=e.subject, text=e.text, received_at=now)
            for i, e in enumerate(examples)]
    bus.publish([Outgoing(bus.topics.inbound, encode(m), m.id.encode()) for m in msgs])
    bus.publish([Outgoing(bus.topics.inbound, b"not a message", b"poison")])
    env = {"FRONTDESK_BUS_KIND": "kafka", "FRONTDESK_BUS_TOPIC_PREFIX": prefix,
           "FRONTDESK_KAFKA_BOOTSTRAP_SERVERS": kafka_broker.bootstrap, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([*FRONTDESK, "classify"], env={**os.environ, **env}, stderr=subprocess.PIPE, text=True)
    try:
        triaged = _collect(bus, bus.topics.triaged, len(msgs), timeout=240)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert {t.id for t in triaged} == {m.id for m in msgs}
    correct = sum(t.triage.category == e.category for t, e in zip(sorted(triaged, key=lambda t: int(t.message.external_id)), examples))
    assert correct >= 30
    assert len(_collect(bus, bus.topics.deadletter, 1, timeout=30)) == 1
    bus.close()


def _collect(bus: KafkaBus, topic: str, want: int, timeout: float) -> list:  # type: ignore[type-arg]
    out = []
    deadline = time.monotonic() + timeout
    with bus.consumer(f"check-{uuid.uuid4().hex}", [topic]) as consumer:
        while len(out) < want and time.monotonic() < deadline:
            for r in consumer.poll(500, 1.0):
                out.append(decode(r.value, TriagedMessage) if topic.endswith("triaged") else r)
    return out
