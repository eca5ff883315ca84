"""Reading a whole topic back in a test, on any bus."""

from __future__ import annotations

import time
import uuid

from frontdesk.bus.base import Bus, Record


def read_topic(bus: Bus, topic: str, deadline_s: float = 60.0) -> list[Record]:
    """Every record of ``topic``, read by a new consumer group until it has as many as the topic's end
    offsets promise (blocking, at most ``deadline_s``; fails the test if the count is not reached).

    An empty poll proves nothing on Kafka: a new group may not have been assigned its partitions yet,
    or a connection may be re-established in between. Records written while reading may be included.
    """
    want = sum(bus.end_offsets(topic).values())
    out: list[Record] = []
    deadline = time.monotonic() + deadline_s
    with bus.consumer(f"check-{uuid.uuid4().hex}", [topic]) as consumer:
        while len(out) < want and time.monotonic() < deadline:
            out.extend(consumer.poll(1000, timeout=0.3))
    assert len(out) >= want, f"{topic}: read {len(out)} of the {want} records written"
    return out
