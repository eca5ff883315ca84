"""Benchmark of the classify stage: ``python -m bench.classify [--n 1000] [--repeat 3] [--kafka HOST:PORT]``.

Measures, for fp32 and int8 (each variant in a process of its own, so RSS is that variant's own):
* the bare encoder's throughput on the dev texts, fed the same batches the stage gets (``--batch``
  records per cycle), so that both sides get the same length bucketing;
* the stage end to end, topic to topic: N inbound messages pre-published, then the classify stage
  (decode → classify → publish → commit) drains them; throughput = N / wall time;
* CPU seconds (user + system, all threads) per 1,000 messages for both — on a shared machine
  wall-clock throughput depends on the neighbours, CPU time much less;
* RSS after loading the model, after the runs, and the peak (``ru_maxrss``).
With ``--repeat N`` encoder and stage runs alternate N times: msg/s is the best run, CPU the median.
The stage/encoder ratio is given two ways: best stage run over best encoder run, and the median of
each stage run over the encoder run just before it (``paired``): this VM's speed drifts by several
per cent within a minute, and a ratio of two maxima taken minutes apart measures that drift too.
Goals: stage ≥ 100 msg/s and ≥ 0.9× the bare encoder, peak RSS < 1.5 GB.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from classify.data import DEV_FILE, read_examples
from classify.model import TriageModel
from classify.settings import ClassifierSettings
from classify.stage import ClassifyProcessor
from classify.text import model_input
from frontdesk.bus.base import Bus, Outgoing
from frontdesk.codec import encode
from frontdesk.messages import InboundMessage, Party
from frontdesk.stage import StageRunner

VARIANTS = {"none": "fp32", "int8": "int8"}


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


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_mb() -> float:
    """Current resident set (VmRSS) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def measured(run: Callable[[], int]) -> tuple[float, float]:
    """(messages per second, CPU seconds per 1,000 messages) of one call of ``run``."""
    cpu, started = cpu_seconds(), time.perf_counter()
    n = run()
    return n / (time.perf_counter() - started), (cpu_seconds() - cpu) * 1000 / n


def bench_encoder(model: TriageModel, msgs: list[InboundMessage], batch: int) -> int:
    """Encode the texts in ``batch``-sized slices, as the stage's polls deliver them."""
    texts = [model_input(m.subject, m.text) for m in msgs]
    for start in range(0, len(texts), batch):
        model.encoder.encode(texts[start:start + batch])
    return len(texts)


def drain(runner: StageRunner, n: int) -> int:
    """Run stage cycles until ``n`` records have been consumed (and their output published)."""
    while runner.stats.consumed < n:
        runner.run_once()
    return n


def run_variant(args: argparse.Namespace) -> None:
    """One variant in this process; prints one JSON row (last line of stdout)."""
    msgs = messages(args.n)
    with tempfile.TemporaryDirectory() as tmp:
        bus = open_bus(args.kafka, Path(tmp))
        model = TriageModel(ClassifierSettings(quantize=args.variant))
        loaded = rss_mb()
        model.encoder.encode([model_input(m.subject, m.text) for m in msgs[:64]])
        enc, stage = [], []
        for _ in range(args.repeat):
            enc.append(measured(lambda: bench_encoder(model, msgs, args.batch)))
            stage.append(bench_stage(model, msgs, bus, args.batch, args.profile))
        bus.close()
    row: dict[str, Any] = {
        "variant": args.variant, "model_version": model.model_version,
        "encoder": max(r for r, _ in enc), "encoder_cpu": statistics.median(c for _, c in enc),
        "stage": max(r for r, _ in stage), "stage_cpu": statistics.median(c for _, c in stage),
        "paired": [round(s / e, 4) for (e, _), (s, _) in zip(enc, stage, strict=True)],
        "rss_loaded": loaded, "rss_after": rss_mb(),
        "rss_peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    print(json.dumps(row))


def bench_stage(model: TriageModel, msgs: list[InboundMessage], bus: Bus, batch: int,
                profile: bool = False) -> tuple[float, float]:
    """Publish ``msgs`` to a fresh inbound topic and join a new group (untimed), then time the
    classify stage draining them."""
    run = f"{time.time_ns()}"
    bus.topics = replace(bus.topics, prefix=f"bench{run}.")
    bus.ensure_topics()
    bus.publish([Outgoing(bus.topics.inbound, encode(m), m.id.encode()) for m in msgs])
    runner = StageRunner("classify", bus, bus.consumer(f"bench-{run}", [bus.topics.inbound]),
                         ClassifyProcessor(model, bus.topics), max_records=batch, poll_timeout=0.2)
    try:
        if profile:
            import cProfile
            import pstats

            with cProfile.Profile() as prof:
                result = measured(lambda: drain(runner, len(msgs)))
            pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(25)
        else:
            result = measured(lambda: drain(runner, len(msgs)))
    finally:
        runner.consumer.close()
    assert sum(bus.end_offsets(bus.topics.triaged).values()) >= len(msgs)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=256, help="records per stage cycle")
    parser.add_argument("--repeat", type=int, default=1, help="alternating encoder/stage runs per variant")
    parser.add_argument("--variants", default="none,int8", help="comma-separated: none (fp32), int8")
    parser.add_argument("--kafka", default=None, help="bootstrap servers; default: the embedded bus")
    parser.add_argument("--profile", action="store_true", help="cProfile of each stage run, to stderr")
    parser.add_argument("--variant", choices=tuple(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        run_variant(args)
        return
    rows = []
    for variant in args.variants.split(","):
        cmd = [sys.executable, "-m", "bench.classify", "--variant", variant, "--n", str(args.n),
               "--batch", str(args.batch), "--repeat", str(args.repeat)]
        cmd += ["--kafka", args.kafka] if args.kafka else []
        cmd += ["--profile"] if args.profile else []
        out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None if args.profile else subprocess.PIPE,
                             text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    print_table(args, rows)


def print_table(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    best = "best of %d, CPU median" % args.repeat if args.repeat > 1 else "one run"
    print(f"\nclassify benchmark: {args.n} messages (dev texts), bus={'kafka' if args.kafka else 'embedded'}, "
          f"{args.batch} records per stage cycle; the encoder gets the same {args.batch}-text batches ({best})")
    print(f"{'variant':8} {'encoder msg/s':>13} {'stage msg/s':>11} {'stage/enc':>9} {'paired (range)':>17} "
          f"{'enc CPU s/1k':>12} {'stage CPU s/1k':>14} {'RSS loaded':>10} {'RSS after':>9} {'peak RSS MB':>11}")
    for r in rows:
        paired = f"{statistics.median(r['paired']):.2f} ({min(r['paired']):.2f}-{max(r['paired']):.2f})"
        print(f"{VARIANTS[r['variant']]:8} {r['encoder']:>13.1f} {r['stage']:>11.1f} {r['stage'] / r['encoder']:>9.2f} "
              f"{paired:>17} {r['encoder_cpu']:>12.2f} {r['stage_cpu']:>14.2f} {r['rss_loaded']:>10.0f} "
              f"{r['rss_after']:>9.0f} {r['rss_peak']:>11.0f}")
    print("goals: stage >= 100 msg/s, stage >= 0.9x encoder, peak RSS < 1500 MB")


if __name__ == "__main__":
    main()
