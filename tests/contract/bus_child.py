"""A child process for the bus crash tests: it publishes or consumes, then is SIGKILLed.

Usage: python bus_child.py SPEC MODE TOPIC [ARGS...]
  SPEC = sqlite:/path/bus.sqlite3 | kafka:127.0.0.1:9092
  MODE = publish N           publish N keyed records one by one, print "acked I" after each
       = consume GROUP K     consume, commit the first K records, print "committed [[partition, offset], ...]", then
                             poll more (uncommitted) and SIGKILL itself
"""

from __future__ import annotations

import json
import os
import signal
import sys

from frontdesk.bus.base import Bus, Outgoing
from frontdesk.bus.kafka import KafkaBus
from frontdesk.bus.sqlite import SqliteBus
from frontdesk.settings import KafkaSettings


def open_spec(spec: str) -> Bus:
    kind, _, where = spec.partition(":")
    if kind == "sqlite":
        return SqliteBus(where)
    return KafkaBus(KafkaSettings(bootstrap_servers=where, linger_ms=0))


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


if __name__ == "__main__":
    spec, mode, topic, *args = sys.argv[1:]
    bus = open_spec(spec)
    if mode == "publish":
        publish(bus, topic, int(args[0]))
    else:
        consume(bus, topic, args[0], int(args[1]))
