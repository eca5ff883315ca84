"""The Bus contract, run against every implementation: memory, embedded SQLite, real Kafka."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from frontdesk.bus.base import Bus, Consumer, Outgoing, Record, record_size
from frontdesk.bus.kafka import KafkaBus
from frontdesk.bus.memory import MemoryBus
from frontdesk.bus.sqlite import SqliteBus
from frontdesk.codec import decode, encode
from frontdesk.deadletter import TRUNCATED_HEADER
from frontdesk.errors import RecordTooLarge
from frontdesk.messages import DeadLetter, InboundMessage, Party
from frontdesk.settings import KafkaSettings
from frontdesk.stage import Outcome, StageRunner

CHILD = Path(__file__).with_name("bus_child.py")
IMPLS = ["memory", "sqlite", pytest.param("kafka", marks=pytest.mark.kafka)]


class BusUnderTest:
    def __init__(self, kind: str, bus: Bus, spec: str | None) -> None:
        self.kind, self.bus, self.spec = kind, bus, spec

    def topic(self) -> str:
        name = f"t-{uuid.uuid4().hex[:10]}"
        self.bus.ensure_topics([name])
        return name


@pytest.fixture(params=IMPLS)
def under_test(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BusUnderTest]:
    kind = request.param
    if kind == "memory":
        bus: Bus = MemoryBus()
        spec = None
    elif kind == "sqlite":
        path = tmp_path / "bus.sqlite3"
        bus, spec = SqliteBus(path), f"sqlite:{path}"
    else:
        broker = request.getfixturevalue("kafka_broker")
        bus = KafkaBus(KafkaSettings(bootstrap_servers=broker.bootstrap, session_timeout_ms=6000, linger_ms=2))
        spec = f"kafka:{broker.bootstrap}"
    bus.ensure_topics()
    yield BusUnderTest(kind, bus, spec)
    bus.close()


def drain(consumer: Consumer, want: int, timeout: float = 60.0, commit: bool = True) -> list[Record]:
    got: list[Record] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        batch = consumer.poll(max_records=1000, timeout=0.5)
        got.extend(batch)
        if commit and batch:
            consumer.commit(batch)
    return got


def wait_assigned(consumers: list[Consumer], partitions: int, timeout: float = 45.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for c in consumers:
            c.poll(max_records=1, timeout=0.2)
            c.rewind()
        owned = [c.assignment() for c in consumers]
        if all(owned) and sum(len(o) for o in owned) == partitions and not set.intersection(*owned):
            return
    raise AssertionError(f"group never settled: {[c.assignment() for c in consumers]}")


def test_roundtrip_keeps_key_value_headers(under_test: BusUnderTest) -> None:
    topic = under_test.topic()
    under_test.bus.publish([Outgoing(topic, b"\x00payload\xff", b"key-1", (("h", b"v"), ("x", b"")))])
    with under_test.bus.consumer("g-roundtrip", [topic]) as consumer:
        [rec] = drain(consumer, 1)
    assert (rec.topic, rec.value, rec.key) == (topic, b"\x00payload\xff", b"key-1")
    assert rec.header("h") == b"v" and rec.header("x") == b""


def test_connect_is_idempotent_and_publishing_works_after_it(under_test: BusUnderTest) -> None:
    under_test.bus.connect()
    under_test.bus.connect()
    topic = under_test.topic()
    under_test.bus.publish([Outgoing(topic, b"after connect", b"k")])
    assert sum(under_test.bus.end_offsets(topic).values()) == 1


def test_first_join_after_ensure_topics_is_assigned_every_partition(under_test: BusUnderTest) -> None:
    """ensure_topics returns only once the topics are consumable: the first assignment is complete.

    (Kafka: a group joined before the brokers' metadata caches held a new topic was assigned none of its
    partitions — "No partition metadata for topic" — and stayed idle; seen once in CI.)
    """
    topics = [f"t-{uuid.uuid4().hex[:10]}" for _ in range(12)]
    under_test.bus.ensure_topics(topics)
    expected = {(t, p) for t in topics for p in under_test.bus.end_offsets(t)}
    assert {t for t, _ in expected} == set(topics)
    with under_test.bus.consumer(f"g-first-{uuid.uuid4().hex[:6]}", topics) as consumer:
        deadline = time.monotonic() + 30
        while not consumer.assignment() and time.monotonic() < deadline:
            consumer.poll(max_records=1, timeout=0.2)
            consumer.rewind()
        assert consumer.assignment() == expected


def test_sent_records_are_durable_once_their_delivery_is_waited_for(under_test: BusUnderTest) -> None:
    """``send`` may return before the records are durable (Kafka); ``wait`` returns once they all are,
    and several sends in flight together keep each key's order."""
    topic = under_test.topic()
    deliveries = [under_test.bus.send([Outgoing(topic, f"{n}:{i}".encode(), f"k{i % 3}".encode()) for i in range(50)])
                  for n in range(4)]
    for d in deliveries:
        d.wait()
        d.wait()  # idempotent
    assert sum(under_test.bus.end_offsets(topic).values()) == 200
    with under_test.bus.consumer("g-send", [topic]) as consumer:
        got = drain(consumer, 200)
    for key in (b"k0", b"k1", b"k2"):
        values = [r.value.decode() for r in got if r.key == key]
        assert values == sorted(values, key=lambda v: tuple(map(int, v.split(":"))))
    with pytest.raises(RecordTooLarge):
        under_test.bus.send([Outgoing(topic, b"x" * (under_test.bus.max_record_bytes + 1), b"k")])


def test_same_key_same_partition_in_order(under_test: BusUnderTest) -> None:
    topic = under_test.topic()
    under_test.bus.publish([Outgoing(topic, f"{k}:{i}".encode(), k.encode()) for i in range(30) for k in "abcde"])
    with under_test.bus.consumer("g-order", [topic]) as consumer:
        records = drain(consumer, 150)
    by_key: dict[bytes, list[Record]] = {}
    for r in records:
        by_key.setdefault(r.key, []).append(r)
    for key, recs in by_key.items():
        assert len({r.partition for r in recs}) == 1, key
        assert [int(r.value.split(b":")[1]) for r in sorted(recs, key=lambda r: r.offset)] == list(range(30))


def test_ten_thousand_keyed_messages(under_test: BusUnderTest) -> None:
    topic = under_test.topic()
    sent = {f"m{i}".encode() for i in range(10_000)}
    for start in range(0, 10_000, 1000):
        under_test.bus.publish([Outgoing(topic, f"m{i}".encode(), f"cust-{i % 97}".encode()) for i in range(start, start + 1000)])
    assert sum(under_test.bus.end_offsets(topic).values()) == 10_000
    with under_test.bus.consumer("g-10k", [topic]) as consumer:
        records = drain(consumer, 10_000, timeout=120)
    values = [r.value for r in records]
    assert len(values) == 10_000 and set(values) == sent


def test_uncommitted_records_are_redelivered_after_rewind(under_test: BusUnderTest) -> None:
    topic = under_test.topic()
    under_test.bus.publish([Outgoing(topic, f"r{i}".encode(), b"one-key") for i in range(10)])
    with under_test.bus.consumer("g-rewind", [topic]) as consumer:
        first = drain(consumer, 10, commit=False)
        consumer.commit(first[:4])
        consumer.rewind()
        again = drain(consumer, 6, commit=False)
    assert [r.value for r in again] == [f"r{i}".encode() for i in range(4, 10)]


def test_consumer_killed_after_partial_commit_resumes_at_committed_offset(under_test: BusUnderTest) -> None:
    if under_test.spec is None:
        pytest.skip("the in-memory bus does not outlive its process")
    topic = under_test.topic()
    under_test.bus.publish([Outgoing(topic, f"p{i}".encode(), f"k{i % 11}".encode()) for i in range(400)])
    child = subprocess.run(
        [sys.executable, str(CHILD), under_test.spec, "consume", topic, "g-kill", "150"],
        capture_output=True, text=True, timeout=120,
    )
    assert child.returncode == -9, child.stderr
    committed = {tuple(x) for x in json.loads(child.stdout.split("committed ", 1)[1])}
    assert len(committed) == 150
    with under_test.bus.consumer("g-kill", [topic]) as consumer:
        rest = drain(consumer, 250, timeout=90)
    rest_ids = {(r.partition, r.offset) for r in rest}
    assert not committed & rest_ids, "committed records were delivered again"
    assert len(rest) == 250 and len(committed | rest_ids) == 400, "records missing after the kill"


def test_acknowledged_publish_survives_process_kill(under_test: BusUnderTest) -> None:
    if under_test.spec is None:
        pytest.skip("the in-memory bus does not outlive its process")
    topic = under_test.topic()
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), under_test.spec, "publish", topic, "100000"],
        stdout=subprocess.PIPE, text=True,
    )
    acked = -1
    assert proc.stdout is not None
    for line in proc.stdout:
        acked = int(line.split()[1])
        if acked >= 200:
            break
    proc.kill()
    proc.wait()
    with under_test.bus.consumer("g-durable", [topic]) as consumer:
        values = {r.value for r in drain(consumer, acked + 1, timeout=60)}
    assert {f"v{i}".encode() for i in range(acked + 1)} <= values


def test_two_consumers_in_one_group_split_partitions(under_test: BusUnderTest) -> None:
    topic = under_test.topic()
    partitions = len(under_test.bus.end_offsets(topic))
    under_test.bus.publish([Outgoing(topic, f"s{i}".encode(), f"k{i}".encode()) for i in range(200)])
    a = under_test.bus.consumer("g-split", [topic])
    b = under_test.bus.consumer("g-split", [topic])
    try:
        wait_assigned([a, b], partitions)
        got_a, got_b = drain(a, 1, timeout=5), []
        got_a += drain(a, 200, timeout=5)
        got_b = drain(b, 200 - len(got_a), timeout=30)
    finally:
        a.close()
        b.close()
    assert got_a and got_b
    assert {r.partition for r in got_a}.isdisjoint({r.partition for r in got_b})
    assert sorted(r.value for r in got_a + got_b) == sorted(f"s{i}".encode() for i in range(200))


class _UppercaseStage:
    """Decodes inbound messages and republishes their subject upper-cased (poison → raises)."""

    def __init__(self, out_topic: str) -> None:
        self.out_topic = out_topic

    def process(self, records: list[Record]) -> list[Outcome]:
        outcomes = []
        for r in records:
            msg = decode(r.value, InboundMessage)
            outcomes.append(Outcome(r, (Outgoing(self.out_topic, msg.subject.upper().encode(), r.key),)))
        return outcomes


def _inbound(i: int) -> bytes:
    msg = InboundMessage.create(
        connector="test", external_id=f"x{i}", channel="chat", sender=Party(handle=f"u{i}"),
        subject=f"hello {i}", received_at=datetime.now(UTC),
    )
    return encode(msg)


def test_poison_record_goes_to_dead_letter_and_stage_keeps_going(under_test: BusUnderTest) -> None:
    src, out = under_test.topic(), under_test.topic()
    dl = under_test.bus.topics.deadletter
    dl_before = sum(under_test.bus.end_offsets(dl).values())
    poison = b'{"kind": "inbound", "version": 1, "id": 5}'
    values = [_inbound(0), _inbound(1), poison, b"\xff\xfe not json", _inbound(2)]
    under_test.bus.publish([Outgoing(src, v, b"same") for v in values])
    runner = StageRunner("upper", under_test.bus, under_test.bus.consumer("g-stage", [src]), _UppercaseStage(out))
    deadline = time.monotonic() + 60
    while runner.stats.consumed < 5 and time.monotonic() < deadline:
        runner.run_once()
    runner.consumer.close()
    assert runner.stats.dead_lettered == 2
    with under_test.bus.consumer("g-check", [out]) as c:
        assert sorted(r.value for r in drain(c, 3)) == [b"HELLO 0", b"HELLO 1", b"HELLO 2"]
    with under_test.bus.consumer("g-check", [dl]) as c:
        letters = [decode(r.value, DeadLetter) for r in drain(c, dl_before + 2)][dl_before:]
    assert [d.stage for d in letters] == ["upper", "upper"]
    assert {d.error_type for d in letters} == {"DecodeError"}
    raw = {__import__("base64").b64decode(d.value_b64) for d in letters}
    assert raw == {poison, b"\xff\xfe not json"}
    assert all(d.source_topic == src and d.reason for d in letters)


def test_a_record_at_the_limit_is_accepted_and_a_call_with_one_over_it_writes_nothing(under_test: BusUnderTest) -> None:
    bus, topic = under_test.bus, under_test.topic()
    limit = bus.max_record_bytes
    headers = (("h", b"v"),)
    at_limit = Outgoing(topic, b"v" * (limit - 3 - 2), b"key", headers)  # value + key + header name and value
    bus.publish([Outgoing(topic, b"small", b"a"), at_limit])
    with pytest.raises(RecordTooLarge, match=f"{limit + 1:,} bytes"):
        bus.publish([Outgoing(topic, b"small 2", b"b"), replace(at_limit, value=at_limit.value + b"v")])
    assert sum(bus.end_offsets(topic).values()) == 2
    with bus.consumer("g-limit", [topic]) as consumer:
        assert sorted(len(r.value) for r in drain(consumer, 2)) == [5, limit - 5]


class _BloatingStage:
    """Republishes every record with its value repeated ``times`` times."""

    def __init__(self, out_topic: str, times: int) -> None:
        self.out_topic, self.times = out_topic, times

    def process(self, records: list[Record]) -> list[Outcome]:
        return [Outcome(r, (Outgoing(self.out_topic, r.value * self.times, r.key),)) for r in records]


def test_an_output_over_the_limit_is_dead_lettered_cut_to_fit_and_the_stage_keeps_going(  # type: ignore[no-untyped-def]
        under_test: BusUnderTest) -> None:
    bus = under_test.bus
    src, out, dl = under_test.topic(), under_test.topic(), bus.topics.deadletter
    dl_before = sum(bus.end_offsets(dl).values())
    big = bytes(range(256)) * (bus.max_record_bytes * 9 // 10 // 256)  # fits; its base64 does not
    bus.publish([Outgoing(src, b"tiny", b"k1"), Outgoing(src, big, b"k2"), Outgoing(src, b"small", b"k3")])
    runner = StageRunner("bloat", bus, bus.consumer("g-bloat", [src]), _BloatingStage(out, 3))
    deadline = time.monotonic() + 60
    while runner.stats.consumed < 3 and time.monotonic() < deadline:
        runner.run_once()
    runner.consumer.close()
    assert runner.stats.dead_lettered == 1
    with bus.consumer("g-check", [out]) as c:
        assert sorted(r.value for r in drain(c, 2)) == [b"smallsmallsmall", b"tinytinytiny"]
    with bus.consumer("g-check", [dl]) as c:  # the topic is shared: earlier tests' letters are there too
        [record] = [r for r in drain(c, dl_before + 1) if decode(r.value, DeadLetter).source_topic == src]
    letter = decode(record.value, DeadLetter)
    kept = base64.b64decode(letter.value_b64)
    assert letter.error_type == "RecordTooLarge" and "record limit" in letter.reason
    assert f"original {len(big):,} bytes" in letter.reason and big.startswith(kept) and len(kept) > len(big) // 2
    assert record.header(TRUNCATED_HEADER) == str(len(big)).encode()
    assert record_size(Outgoing(dl, record.value, record.key, record.headers)) <= bus.max_record_bytes


def wait_assigned_alone(consumer: Consumer, partitions: int, timeout: float = 45.0) -> None:
    deadline = time.monotonic() + timeout
    while len(consumer.assignment()) < partitions and time.monotonic() < deadline:
        consumer.poll(max_records=1, timeout=0.2)
        consumer.rewind()
    assert len(consumer.assignment()) == partitions


def test_lag_is_what_the_group_has_not_committed(under_test: BusUnderTest) -> None:
    topic, bus = under_test.topic(), under_test.bus
    bus.publish([Outgoing(topic, f"v{i}".encode(), f"k{i}".encode()) for i in range(6)])
    with bus.consumer(f"g-lag-{uuid.uuid4().hex[:6]}", [topic]) as consumer:
        wait_assigned_alone(consumer, len(bus.end_offsets(topic)))
        assert sum(lag.lag for lag in consumer.lag()) == 6
        assert len(drain(consumer, 6)) == 6
        assert sum(lag.lag for lag in consumer.lag()) == 0


@pytest.mark.kafka
def test_kafka_lag_of_a_new_group_starts_where_retention_left_the_topic(kafka_broker) -> None:  # type: ignore[no-untyped-def]
    """A group without a commit starts at the oldest record still kept (auto_offset_reset earliest):
    records already deleted are no lag of it."""
    from kafka import TopicPartition
    from kafka.admin import KafkaAdminClient

    bus = KafkaBus(KafkaSettings(bootstrap_servers=kafka_broker.bootstrap, session_timeout_ms=6000, linger_ms=2),
                   partitions=1)
    topic = f"t-{uuid.uuid4().hex[:10]}"
    try:
        bus.ensure_topics([topic])
        bus.publish([Outgoing(topic, f"v{i}".encode(), b"k") for i in range(6)])
        admin = KafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap)
        try:
            admin.delete_records({TopicPartition(topic, 0): 4})  # what retention does to old segments
        finally:
            admin.close()
        with bus.consumer(f"g-new-{uuid.uuid4().hex[:6]}", [topic]) as consumer:
            wait_assigned_alone(consumer, 1)
            assert [(lag.committed, lag.end, lag.lag) for lag in consumer.lag()] == [(4, 6, 2)]
            assert [r.value for r in drain(consumer, 2)] == [b"v4", b"v5"]
    finally:
        bus.close()
