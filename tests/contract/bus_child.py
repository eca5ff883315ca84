"""A child process for the bus tests: it publishes or consumes, then exits or is SIGKILLed.

Usage: python bus_child.py SPEC MODE TOPIC [ARGS...]
  SPEC = sqlite:/path/bus.sqlite3 | kafka:127.0.0.1:9092
         (embedded: the members' session timeout is $BUS_SESSION_TIMEOUT_S, default 30 s)
  MODE = publish N           publish N keyed records one by one, print "acked I" after each
       = consume GROUP K     consume, commit the first K records, print "committed [[partition, offset], ...]", then
                             poll more (uncommitted) and SIGKILL itself
       = member GROUP SECONDS BATCH PAUSE
                             a group member for SECONDS: poll up to BATCH records, print
                             "got TIME [[partition, offset], ...]" (TIME: when the poll returned), "process"
                             them for PAUSE seconds, commit; then leave the group and print "done"
       = stage GROUP HOURS SECONDS
                             (embedded) a stage as `frontdesk classify` opens it (open_bus, retention HOURS):
                             poll and commit for SECONDS, then close the bus
       = produce HOURS N     (embedded) a producer as `frontdesk ingest` opens it: publish N records, close
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

from frontdesk.bus import open_bus
from frontdesk.bus.base import Bus, Outgoing
from frontdesk.bus.kafka import KafkaBus
from frontdesk.bus.sqlite import SqliteBus
from frontdesk.settings import BusSettings, KafkaSettings, StorageSettings


def open_spec(spec: str) -> Bus:
    kind, _, where = spec.partition(":")
    if kind == "sqlite":
        return SqliteBus(Path(where), session_timeout=float(os.environ.get("BUS_SESSION_TIMEOUT_S", "30")))
    return KafkaBus(KafkaSettings(bootstrap_servers=where, linger_ms=0))


def open_configured(spec: str, hours: str) -> Bus:
    path = Path(spec.partition(":")[2])
    return open_bus(BusSettings(embedded_path=path, embedded_retention_h=float(hours)),
                    StorageSettings(data_dir=path.parent))


def publish(bus: Bus, topic: str, n: int) -> None:
    for i in range(n):
        bus.publish([Outgoing(topic, f"v{i}".encode(), f"k{i % 17}".encode())])
        print(f"acked {i}", flush=True)


def consume(bus: Bus, topic: str, group: str, k: int) -> None:
    consumer = bus.consumer(group, [topic])
    seen = []
    while len(seen) < k:
        seen.extend(consumer.poll(max_records=k - len(seen), timeout=1.0))
    consumer.commit(seen[:k])
    print("committed " + json.dumps([[r.partition, r.offset] for r in seen[:k]]), flush=True)
    consumer.poll(max_records=50, timeout=2.0)
    os.kill(os.getpid(), signal.SIGKILL)


def member(bus: Bus, topic: str, group: str, seconds: float, batch: int, pause: float) -> None:
    end = time.monotonic() + seconds
    with bus.consumer(group, [topic]) as consumer:
        while time.monotonic() < end:
            records = consumer.poll(max_records=batch, timeout=0.2)
            if records:
                print(f"got {time.time()!r} " + json.dumps([[r.partition, r.offset] for r in records]), flush=True)
                time.sleep(pause)
                consumer.commit(records)
    print("done", flush=True)


def stage(bus: Bus, topic: str, group: str, seconds: float) -> None:
    end = time.monotonic() + seconds
    with bus.consumer(group, [topic]) as consumer:
        while time.monotonic() < end:
            consumer.commit(consumer.poll(max_records=100, timeout=0.2))


if __name__ == "__main__":
    spec, mode, topic, *args = sys.argv[1:]
    if mode == "stage":
        with open_configured(spec, args[1]) as bus:
            stage(bus, topic, args[0], float(args[2]))
    elif mode == "produce":
        with open_configured(spec, args[0]) as bus:
            bus.publish([Outgoing(topic, f"new{i}".encode(), f"k{i}".encode()) for i in range(int(args[1]))])
    elif mode == "publish":
        publish(open_spec(spec), topic, int(args[0]))
    elif mode == "member":
        member(open_spec(spec), topic, args[0], float(args[1]), int(args[2]), float(args[3]))
    else:
        consume(open_spec(spec), topic, args[0], int(args[1]))
