"""Benchmark of the HTTP intake on real Kafka: ``python -m bench.http [--requests 5000] [--clients 50]``.

One command, everything on this machine (loopback only):

* a real single-node Kafka broker (``tests.harness.kafka``, cached Maven jars) in a temporary
  directory; the topics are created under a prefix of their own (``benchhttp<hex>.``);
* the intake as in production, a subprocess ``python -m frontdesk ingest http`` configured only by
  environment (``FRONTDESK_BUS_KIND=kafka``, bootstrap servers, topic prefix, port, one bearer
  token), default log level (INFO: one access-log line and one "published" line per message, to a
  file); the load starts once ``/readyz`` answers 200;
* ``--clients`` concurrent clients (asyncio + one ``httpx.AsyncClient``, one connection per client)
  post ``--requests`` messages to ``POST /v1/messages``: distinct external ids, the dev-split texts
  (az/ru/en/tr, chat and social), a bearer token. The load phase stops after ``--max-seconds``
  (default 120) whatever happens: requests still in flight then are cancelled and counted as such;
* then the inbound topic is read from the beginning by a fresh consumer group until it holds as
  many records as its end offsets say (or ``--read-timeout`` passes). Every 202 says "durable on the
  bus under id": lost = accepted ids missing from the topic; duplicates = records beyond the first
  with the same key; extra = ids on the topic that never got a 202 (e.g. cancelled at the deadline).

Prints a table: throughput, latency percentiles of answered requests, status counts, the check.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from frontdesk.bus.base import Topics
from frontdesk.bus.kafka import KafkaBus
from frontdesk.codec import DecodeError, decode
from frontdesk.messages import InboundMessage
from frontdesk.settings import KafkaSettings
from tests.harness.kafka import KafkaBroker, find_kafka_libs, free_port

DEV_FILE = Path(__file__).resolve().parent.parent / "classify" / "data" / "dev.jsonl"
HOST = "127.0.0.1"


def bodies(n: int, run: str) -> list[dict]:
    """N request bodies: dev texts cycled, distinct external ids, a few hundred distinct authors."""
    examples = [json.loads(line) for line in DEV_FILE.read_text(encoding="utf-8").splitlines() if line.strip()]
    out = []
    for i in range(n):
        ex = examples[i % len(examples)]
        social = ex.get("channel") == "social"
        text = (ex.get("subject") + "\n\n" if ex.get("subject") else "") + ex["text"]
        out.append({
            "channel": "social" if social else "chat",
            "platform": "twitter" if social else "webchat",
            "external_id": f"{run}-{i:07d}",
            "author": {"id": f"user-{i % 397}", "handle": f"@cust{i % 397}", "name": f"Customer {i % 397}"},
            "text": text,
            "conversation_id": f"conv-{run}-{i % 997}",
        })
    return out


@dataclass
class Load:
    latencies: list[float] = field(default_factory=list)  # seconds, answered requests only
    statuses: Counter = field(default_factory=Counter)    # HTTP status or exception name
    accepted: dict[str, str] = field(default_factory=dict)  # external_id -> message id of the 202
    started: int = 0
    cancelled: int = 0
    elapsed: float = 0.0


async def drive(url: str, token: str, payloads: list[dict], clients: int, max_seconds: float,
                timeout: float) -> Load:
    load = Load()
    queue = iter(range(len(payloads)))
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    encoded = [json.dumps(p, ensure_ascii=False).encode() for p in payloads]
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    in_flight: set[int] = set()

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout, trust_env=False) as client:
        async def worker() -> None:
            for i in queue:
                load.started += 1
                in_flight.add(i)
                t0 = time.perf_counter()
                try:
                    resp = await client.post("/v1/messages", content=encoded[i], headers=headers)
                except httpx.HTTPError as exc:
                    load.statuses[type(exc).__name__] += 1
                    in_flight.discard(i)
                    continue
                load.latencies.append(time.perf_counter() - t0)
                load.statuses[resp.status_code] += 1
                if resp.status_code == 202:
                    load.accepted[payloads[i]["external_id"]] = resp.json()["id"]
                in_flight.discard(i)

        started = time.perf_counter()
        tasks = [asyncio.create_task(worker()) for _ in range(clients)]
        done, pending = await asyncio.wait(tasks, timeout=max_seconds)
        load.elapsed = time.perf_counter() - started
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for t in done:
            if t.exception() is not None:
                raise t.exception()
        load.cancelled = len(in_flight)
    return load


def wait_ready(url: str, proc: subprocess.Popen, log_path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the intake exited with {proc.returncode}; log:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=5, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the intake was not ready within {timeout:.0f} s; log:\n{log_path.read_text()[-3000:]}")


def read_topic(bus: KafkaBus, timeout: float) -> tuple[int, Counter, dict[bytes, str], int, float]:
    """All records of the inbound topic: (records, count per key, key -> external_id, undecodable, seconds)."""
    topic = bus.topics.inbound
    total = sum(bus.end_offsets(topic).values())
    per_key: Counter = Counter()
    external: dict[bytes, str] = {}
    bad = got = 0
    t0 = time.perf_counter()
    consumer = bus.consumer(f"bench-http-check-{uuid.uuid4().hex}", [topic])
    try:
        deadline = time.monotonic() + timeout
        while got < total and time.monotonic() < deadline:
            for r in consumer.poll(2000, timeout=0.5):
                got += 1
                per_key[r.key] += 1
                try:
                    external[r.key] = decode(r.value, InboundMessage).external_id
                except DecodeError:
                    bad += 1
    finally:
        consumer.close()
    return got, per_key, external, bad, time.perf_counter() - t0


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--max-seconds", type=float, default=120.0, help="the load phase stops after this")
    parser.add_argument("--request-timeout", type=float, default=30.0, help="per request (httpx)")
    parser.add_argument("--read-timeout", type=float, default=60.0, help="reading the topic back")
    parser.add_argument("--log-level", default="INFO", help="of the intake process")
    args = parser.parse_args()

    libs, reason = find_kafka_libs()
    if libs is None:
        raise SystemExit(f"no Kafka broker available: {reason}")
    run = uuid.uuid4().hex[:8]
    token = secrets.token_urlsafe(24)
    payloads = bodies(args.requests, run)

    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp_name:
        tmp = Path(tmp_name)
        broker = KafkaBroker(libs, tmp / "kafka")
        print("starting Kafka ...", file=sys.stderr)
        broker.start()
        proc: subprocess.Popen | None = None
        bus: KafkaBus | None = None
        try:
            prefix = f"benchhttp{run}."
            bus = KafkaBus(KafkaSettings(bootstrap_servers=broker.bootstrap), Topics(prefix=prefix))
            bus.ensure_topics()
            port = free_port()
            env = {k: v for k, v in os.environ.items() if not k.startswith("FRONTDESK_")}
            env.update({
                "FRONTDESK_BUS_KIND": "kafka",
                "FRONTDESK_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
                "FRONTDESK_BUS_TOPIC_PREFIX": prefix,
                "FRONTDESK_HTTP_HOST": HOST,
                "FRONTDESK_HTTP_PORT": str(port),
                "FRONTDESK_HTTP_API_TOKENS": json.dumps([token]),
                "FRONTDESK_LOG_LEVEL": args.log_level,
                "FRONTDESK_STORAGE_DATA_DIR": str(tmp / "var"),
            })
            log_path = tmp / "intake.log"
            with open(log_path, "wb") as log:
                proc = subprocess.Popen([sys.executable, "-m", "frontdesk", "ingest", "http"], env=env,
                                        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        cwd=Path(__file__).resolve().parent.parent)
            url = f"http://{HOST}:{port}"
            print(f"starting the intake on {url} ...", file=sys.stderr)
            wait_ready(url, proc, log_path)

            print(f"posting {args.requests} messages with {args.clients} clients ...", file=sys.stderr)
            cpu0 = os.times()
            load = asyncio.run(drive(url, token, payloads, args.clients, args.max_seconds, args.request_timeout))
            cpu1 = os.times()
            client_cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)

            print("reading the inbound topic back ...", file=sys.stderr)
            records, per_key, external, bad, read_s = read_topic(bus, args.read_timeout)
        finally:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
            if bus is not None:
                bus.close()
            broker.stop()
        intake_errors = [line for line in log_path.read_text(errors="replace").splitlines()
                         if " ERROR " in line or " WARNING " in line]

    answered = len(load.latencies)
    accepted_ids = set(load.accepted.values())
    topic_ids = {k.decode() for k in per_key if k is not None}
    lost = len(accepted_ids - topic_ids)
    duplicates = sum(c - 1 for c in per_key.values() if c > 1)
    extra = len(topic_ids - accepted_ids)
    id_mismatch = sum(1 for ext, mid in load.accepted.items()
                      if mid in topic_ids and external.get(mid.encode()) != ext)
    statuses = ", ".join(f"{k}: {v}" for k, v in sorted(load.statuses.items(), key=lambda kv: str(kv[0])))
    ms = [x * 1000 for x in load.latencies]

    print(f"\nHTTP intake benchmark: POST /v1/messages -> real Kafka (one broker, {bus.default_partitions} "
          f"partitions, acks=all), {args.requests} requests, {args.clients} clients, intake log level {args.log_level}")
    rows = [
        ("requests sent / answered", f"{load.started} / {answered}"),
        ("cancelled at deadline", f"{load.cancelled}" + (f"  (load phase cut at {args.max_seconds:.0f} s)"
                                                         if load.cancelled else "")),
        ("load phase wall time", f"{load.elapsed:.2f} s"),
        ("throughput (answered)", f"{answered / load.elapsed:.1f} req/s"),
        ("throughput (202 only)", f"{len(load.accepted) / load.elapsed:.1f} msg/s"),
        ("latency p50 / p95 / p99", f"{pct(ms, 50):.1f} / {pct(ms, 95):.1f} / {pct(ms, 99):.1f} ms"),
        ("latency mean / max", (f"{sum(ms) / len(ms):.1f} / {max(ms):.1f} ms" if ms else "-")),
        ("status counts", statuses or "-"),
        ("client CPU (bench process)", f"{client_cpu:.1f} s"),
        ("records on inbound topic", f"{records} (read back in {read_s:.1f} s; undecodable {bad})"),
        ("distinct ids on topic", f"{len(topic_ids)}"),
        ("accepted (202), distinct ids", f"{len(accepted_ids)}"),
        ("lost (202 but not on topic)", f"{lost}"),
        ("duplicates on topic", f"{duplicates}"),
        ("on topic without a 202", f"{extra}"),
        ("202 id / external_id mismatch", f"{id_mismatch}"),
        ("intake WARNING/ERROR lines", f"{len(intake_errors)}"),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    ok = lost == 0 and duplicates == 0 and id_mismatch == 0 and len(load.accepted) == args.requests
    print("check: " + ("OK - every request accepted, each exactly once on the topic" if ok else "MISMATCH"))
    for line in intake_errors[:5]:
        print(f"  intake: {line}")


if __name__ == "__main__":
    main()
