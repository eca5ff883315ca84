"""The classify stage's loop in a real process on the embedded bus, SIGKILLed between publish and commit.

The claim (``frontdesk/stage.py``, README "Classify: publish triaged, then commit"): a kill after the
triaged records are durable and before the input is committed (``crashpoint("classify.after_publish")``)
loses nothing; the restarted stage triages that batch again under the same message ids (a no-op for
the dispatcher) and nothing else twice. The keyword classifier stands in for the model (same stage code).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from frontdesk.bus.base import Outgoing
from frontdesk.bus.sqlite import SqliteBus
from frontdesk.codec import decode, encode
from frontdesk.messages import InboundMessage, Party, TriagedMessage

ROOT = Path(__file__).resolve().parents[3]
CHILD = """
import sys
from pathlib import Path
from classify.base import KeywordClassifier
from classify.stage import ClassifyProcessor
from frontdesk import faults
from frontdesk.bus.sqlite import SqliteBus
from frontdesk.stage import StageRunner

path, crash, chunk = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else None
if crash:
    faults.arm(crash)
bus = SqliteBus(path)
runner = StageRunner("classify", bus, bus.consumer("frontdesk-classify", [bus.topics.inbound]),
                     ClassifyProcessor(KeywordClassifier(chunk), bus.topics, min_chunk=1), max_records=4, poll_timeout=0.3)
while runner.run_once():
    pass
runner.consumer.close()
print("consumed", runner.stats.consumed)
"""


def triaged_ids(path: Path) -> list[str]:
    bus = SqliteBus(path)
    try:
        with bus.consumer(f"check-{time.monotonic_ns()}", [bus.topics.triaged]) as consumer:
            return [decode(r.value, TriagedMessage).id for r in consumer.poll(100, timeout=0.5)]
    finally:
        bus.close()


def setup(tmp_path: Path) -> tuple[Path, list[InboundMessage], Callable[..., subprocess.CompletedProcess[str]]]:
    path = tmp_path / "bus.sqlite3"
    bus = SqliteBus(path, partitions=1)  # one partition: the batches are messages 0-3, 4-7, 8-9
    bus.ensure_topics()
    msgs = [InboundMessage.create(connector="chat:web", external_id=f"c{i}", channel="chat", sender=Party(handle=f"u{i}"),
                                  text="withdrawal pending" if i % 2 else "my account was hacked",
                                  received_at=datetime.now(UTC)) for i in range(10)]
    bus.publish([Outgoing(bus.topics.inbound, encode(m), m.id.encode()) for m in msgs])
    bus.close()
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def child(crash: str, *chunk: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(script), str(path), crash, *chunk], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=120)

    return path, msgs, child


def test_a_kill_between_publish_and_commit_triages_that_batch_again_under_the_same_ids(tmp_path: Path) -> None:
    path, msgs, child = setup(tmp_path)
    crashed = child("classify.after_publish:2")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    assert triaged_ids(path) == [m.id for m in msgs[:8]]  # batch 2 is on the bus, its input uncommitted
    done = child("")
    assert done.returncode == 0 and "consumed 6" in done.stdout, done.stderr[-2000:]  # batch 2 again, then 8-9
    ids = triaged_ids(path)
    assert set(ids) == {m.id for m in msgs}  # nothing lost
    assert {i: n for i, n in Counter(ids).items() if n > 1} == {m.id: 2 for m in msgs[4:8]}  # only batch 2, same ids


def test_a_kill_between_two_chunks_of_a_batch_triages_that_batch_again_under_the_same_ids(tmp_path: Path) -> None:
    """The stage publishes a batch chunk by chunk (``crashpoint("classify.mid_batch")`` after each):
    killed after the first chunk of batch 2, only that chunk was published; the restart triages the
    whole batch under the same ids, nothing lost, nothing else twice."""
    path, msgs, child = setup(tmp_path)
    crashed = child("classify.mid_batch:3", "2")  # batch 1 = 2 chunks of 2, then batch 2's first chunk
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    assert triaged_ids(path) == [m.id for m in msgs[:6]]
    done = child("", "2")
    assert done.returncode == 0 and "consumed 6" in done.stdout, done.stderr[-2000:]
    ids = triaged_ids(path)
    assert set(ids) == {m.id for m in msgs}
    assert {i: n for i, n in Counter(ids).items() if n > 1} == {m.id: 2 for m in msgs[4:6]}
