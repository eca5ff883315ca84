"""Benchmark of the classify stage: ``python -m bench.classify [--n 1000] [--kafka HOST:PORT]``.

Measures in one run, for fp32 and dynamic int8:
* the bare encoder's batch throughput on the dev texts (length-bucketed batches);
* the stage end to end, topic to topic: N inbound messages pre-published, then the classify
  stage (decode → classify → publish → commit) drains them; throughput = N / wall time;
* peak RSS of the process (each variant runs in a process of its own).
Prints a table; goals: stage ≥ 100 msg/s and ≥ 0.9× the bare encoder, RSS < 1.5 GB.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from classify.data import DEV_FILE, read_examples
from classify.model import TriageModel
from classify.settings import ClassifierSettings
from classify.stage import ClassifyProcessor
from classify.text import model_input
from frontdesk.bus.base import Bus, Outgoing
from frontdesk.codec import encode
from frontdesk.messages import InboundMessage, Party
from frontdesk.stage import StageRunner


def messages(n: int) -> list[InboundMessage]:
    examples = read_examples(DEV_FILE)
    now = datetime.now(UTC)
    return [
        InboundMessage.create(connector="bench", external_id=f"{i}", channel="chat", sender=Party(handle=f"u{i}"),
                              subject=examples[i % len(examples)].subject, text=examples[i % len(examples)].text,
                              received_at=now)
        for i in range(n)
    ]


def open_bus(kafka: str | None, tmp: Path) -> Bus:
    if kafka:
        from frontdesk.bus.kafka import KafkaBus
        from frontdesk.settings import KafkaSettings

        return KafkaBus(KafkaSettings(bootstrap_servers=kafka))
    from frontdesk.bus.sqlite import SqliteBus

    return SqliteBus(tmp / "bus.sqlite3")


def bench_encoder(model: TriageModel, msgs: list[InboundMessage]) -> float:
    texts = [model_input(m.subject, m.text) for m in msgs]
    model.encoder.encode(texts[:64])
    started = time.perf_counter()
    model.encoder.encode(texts)
    return len(texts) / (time.perf_counter() - started)


def bench_stage(model: TriageModel, msgs: list[InboundMessage], bus: Bus, batch: int) -> float:
    run = f"{time.time_ns()}"
    bus.topics = replace(bus.topics, prefix=f"bench{run}.")
    bus.ensure_topics()
    bus.publish([Outgoing(bus.topics.inbound, encode(m), m.id.encode()) for m in msgs])
    runner = StageRunner("classify", bus, bus.consumer(f"bench-{run}", [bus.topics.inbound]),
                         ClassifyProcessor(model, bus.topics), max_records=batch, poll_timeout=0.2)
    started = time.perf_counter()
    while runner.stats.consumed < len(msgs):
        runner.run_once()
    elapsed = time.perf_counter() - started
    runner.consumer.close()
    assert sum(bus.end_offsets(bus.topics.triaged).values()) >= len(msgs)
    return len(msgs) / elapsed


def run_variant(args: argparse.Namespace) -> None:
    """One variant in this process (so peak RSS is that variant's own); prints a JSON row."""
    msgs = messages(args.n)
    with tempfile.TemporaryDirectory() as tmp:
        bus = open_bus(args.kafka, Path(tmp))
        model = TriageModel(ClassifierSettings(quantize=args.variant))
        enc = bench_encoder(model, msgs)
        stage = bench_stage(model, msgs, bus, args.batch)
        bus.close()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"variant": args.variant, "encoder": enc, "stage": stage, "rss": rss}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=256, help="records per stage cycle")
    parser.add_argument("--kafka", default=None, help="bootstrap servers; default: the embedded bus")
    parser.add_argument("--variant", choices=("none", "int8"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        run_variant(args)
        return
    rows = []
    for variant in ("none", "int8"):
        cmd = [sys.executable, "-m", "bench.classify", "--variant", variant, "--n", str(args.n), "--batch", str(args.batch)]
        if args.kafka:
            cmd += ["--kafka", args.kafka]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        row = json.loads(out.strip().splitlines()[-1])
        rows.append((variant, row["encoder"], row["stage"], row["stage"] / row["encoder"], row["rss"]))
    print(f"\nclassify benchmark: {args.n} messages (dev texts), bus={'kafka' if args.kafka else 'embedded'}, "
          f"batch={args.batch}")
    print(f"{'variant':8} {'encoder msg/s':>14} {'stage msg/s':>12} {'stage/encoder':>14} {'peak RSS MB':>12}")
    for q, enc, stage, ratio, rss in rows:
        print(f"{'fp32' if q == 'none' else q:8} {enc:>14.1f} {stage:>12.1f} {ratio:>14.2f} {rss:>12.0f}")
    print("goals: stage >= 100 msg/s, stage >= 0.9x encoder, RSS < 1500 MB")


if __name__ == "__main__":
    main()
