"""``frontdesk ingest http`` as a real process on the embedded bus, SIGKILLed on either side of its answer.

The claim (``ingest/http/app.py``, README "What happens after a crash"): a 2xx is sent only once the bus
has the message, so a kill right after a 202 loses nothing; a kill after the publish and before the
answer (``crashpoint("http.after_publish")``) leaves the sender without a 2xx, and its retry is
answered under the same id: the bus then holds one message id twice, a no-op downstream.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from frontdesk.bus.sqlite import SqliteBus
from frontdesk.codec import decode
from frontdesk.messages import InboundMessage, message_id
from tests.harness.process import free_port

ROOT = Path(__file__).resolve().parents[3]
TOKEN = "crash-test-token-0123456789"


def body(n: int) -> dict[str, Any]:
    return {"channel": "chat", "platform": "webchat", "external_id": f"chat-{n}", "author": {"id": "visitor-1"},
            "text": f"Salam, sual {n}"}


class Intake:
    """One ``frontdesk ingest http`` process on ``data``/bus.sqlite3, ready to answer."""

    def __init__(self, data: Path, crash: str = "") -> None:
        port = free_port()
        env = {**os.environ, "PYTHONPATH": str(ROOT), "FRONTDESK_STORAGE_DATA_DIR": str(data),
               "FRONTDESK_HTTP_PORT": str(port), "FRONTDESK_HTTP_API_TOKENS": json.dumps([TOKEN]),
               "FRONTDESK_LOG_LEVEL": "WARNING", "FRONTDESK_CRASH_AT": crash}
        self.log = (data / f"intake-{port}.log").open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "frontdesk", "ingest", "http"], env=env, cwd=ROOT,
                                     stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
        deadline = time.monotonic() + 60
        while not self._up():
            assert self.proc.poll() is None and time.monotonic() < deadline, "the intake did not start"
            time.sleep(0.1)

    def _up(self) -> bool:
        try:
            return self.http.get("/healthz").status_code == 200
        except httpx.TransportError:
            return False

    def post(self, n: int) -> httpx.Response:
        return self.http.post("/v1/messages", json=body(n), headers={"Authorization": f"Bearer {TOKEN}"})

    def close(self) -> None:
        self.http.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
        self.log.close()


@pytest.fixture()
def started(tmp_path: Path) -> Iterator[list[Intake]]:
    intakes: list[Intake] = []
    yield intakes
    for intake in intakes:
        intake.close()


def inbound_ids(data: Path) -> list[str]:
    bus = SqliteBus(data / "bus.sqlite3")
    try:
        with bus.consumer(f"check-{time.monotonic_ns()}", [bus.topics.inbound]) as consumer:
            return sorted(decode(r.value, InboundMessage).id for r in consumer.poll(100, timeout=0.5))
    finally:
        bus.close()


def test_a_kill_before_the_answer_is_retried_under_the_same_id_and_a_202_survives_a_kill(
        tmp_path: Path, started: list[Intake]) -> None:
    first, second = message_id("http:webchat", "chat-1"), message_id("http:webchat", "chat-2")
    crashing = Intake(tmp_path, crash="http.after_publish")
    started.append(crashing)
    with pytest.raises(httpx.TransportError):  # killed after the publish: no answer at all, so no 2xx
        crashing.post(1)
    assert crashing.proc.wait(30) == -signal.SIGKILL
    assert inbound_ids(tmp_path) == [first]  # published before the answer it never sent
    restarted = Intake(tmp_path)
    started.append(restarted)
    retried = restarted.post(1)  # the sender retries what got no 2xx
    assert retried.status_code == 202 and retried.json()["id"] == first
    assert inbound_ids(tmp_path) == [first, first]  # one id twice: a no-op downstream
    accepted = restarted.post(2)
    restarted.proc.send_signal(signal.SIGKILL)  # at once after the 202
    assert accepted.status_code == 202 and restarted.proc.wait(30) == -signal.SIGKILL
    assert inbound_ids(tmp_path) == sorted([first, first, second])
