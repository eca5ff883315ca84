"""frontdesk.replay on the MemoryBus: dead letters made by a real StageRunner, re-driven after a fix."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from frontdesk.bus.base import Outgoing, Record, record_size
from frontdesk.bus.memory import MemoryBus, MemoryConsumer
from frontdesk.codec import decode, encode
from frontdesk.deadletter import TRUNCATED_HEADER, build_dead_letter
from frontdesk.errors import BusUnavailable, RecordError, StoreError
from frontdesk.messages import DeadLetter
from frontdesk.replay import (
    BEFORE_SINCE,
    HELD,
    NOT_A_TOPIC,
    REPLAY_HEADER,
    TRUNCATED,
    Replayer,
    ReplayOptions,
    cell_group,
    parse_since,
)
from frontdesk.stage import Outcome, StageRunner

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


class Picky:
    """A stage that copies records to ``out_topic`` and refuses values containing a key of ``refused``
    (raising the error class it maps to)."""

    def __init__(self, out_topic: str, refused: dict[bytes, type[Exception]] | None = None) -> None:
        self.out_topic = out_topic
        self.refused = {b"poison": RecordError} if refused is None else refused

    def process(self, records: Sequence[Record]) -> list[Outcome]:
        return [self._one(r) for r in records]

    def _one(self, record: Record) -> Outcome:
        for marker, error in self.refused.items():
            if marker in record.value:
                return Outcome(record, error=error(f"refused {record.key!r}"))
        return Outcome(record, (Outgoing(self.out_topic, record.value, record.key),))


def drain(bus: MemoryBus, stage: str, source: str, processor: Picky) -> None:
    """Run the stage (its own group) until it has consumed everything on ``source``."""
    runner = StageRunner(stage, bus, bus.consumer(f"stage-{stage}", [source]), processor, poll_timeout=0.01)
    while runner.run_once():
        pass
    runner.consumer.close()


def send(bus: MemoryBus, topic: str, *values: bytes) -> None:
    bus.publish([Outgoing(topic, v, v.split(b":")[0]) for v in values])


def values(bus: MemoryBus, topic: str) -> list[bytes]:
    return sorted(r.value for r in bus.records(topic))


@pytest.fixture()
def bus() -> MemoryBus:
    """Two stages have dead-lettered: dispatch (2 × StoreError, 1 × RecordError) and classify (1)."""
    bus = MemoryBus()
    t = bus.topics
    send(bus, t.triaged, b"t1:ok", b"t2:poison-store", b"t3:poison-store", b"t4:poison-other")
    drain(bus, "dispatch", t.triaged, Picky(t.cases, {b"poison-store": StoreError, b"poison-other": RecordError}))
    send(bus, t.inbound, b"i1:ok", b"i2:poison")
    drain(bus, "classify", t.inbound, Picky(t.triaged))
    assert len(bus.records(t.deadletter)) == 4
    return bus


def replay(bus: MemoryBus, **options: object) -> object:
    return Replayer(bus, ReplayOptions(**options)).run()  # type: ignore[arg-type]


def test_replay_re_drives_the_original_bytes_and_the_fixed_stage_processes_them(bus: MemoryBus) -> None:
    t = bus.topics
    before = values(bus, t.triaged)
    summary = replay(bus, stage="dispatch")
    assert summary.replayed == {("dispatch", t.triaged): 3} and not summary.skipped and not summary.malformed
    again = [r for r in bus.records(t.triaged) if r.header(REPLAY_HEADER)]
    assert sorted(r.value for r in again) == [b"t2:poison-store", b"t3:poison-store", b"t4:poison-other"]
    assert all(r.key == r.value.split(b":")[0] for r in again)
    assert all(r.header(REPLAY_HEADER).decode().startswith(f"{t.deadletter}/") for r in again)  # type: ignore[union-attr]
    assert len(values(bus, t.triaged)) == len(before) + 3
    drain(bus, "dispatch", t.triaged, Picky(t.cases, refused={}))  # the fix
    assert values(bus, t.cases) == [b"i1:ok", b"t1:ok", b"t2:poison-store", b"t3:poison-store", b"t4:poison-other"]


def test_stage_filter_and_a_later_unfiltered_run_never_drive_a_record_twice(bus: MemoryBus) -> None:
    t = bus.topics
    first = replay(bus, stage="classify")
    assert first.replayed == {("classify", t.inbound): 1}
    assert [r.value for r in bus.records(t.inbound) if r.header(REPLAY_HEADER)] == [b"i2:poison"]
    assert not [r for r in bus.records(t.triaged) if r.header(REPLAY_HEADER)]
    second = replay(bus)
    assert second.replayed == {("dispatch", t.triaged): 3}
    assert len([r for r in bus.records(t.inbound) if r.header(REPLAY_HEADER)]) == 1


def test_error_type_filter_keeps_the_other_cells_for_later(bus: MemoryBus) -> None:
    t = bus.topics
    assert replay(bus, stage="dispatch", error_type="StoreError").total == 2
    assert replay(bus, stage="dispatch", error_type="StoreError").total == 0
    rest = replay(bus, stage="dispatch")
    assert rest.total == 1 and [d["error_type"] for d in rest.records] == ["RecordError"]
    assert sorted(r.value for r in bus.records(t.triaged) if r.header(REPLAY_HEADER)) == [
        b"t2:poison-store", b"t3:poison-store", b"t4:poison-other"]


def test_dry_run_lists_and_changes_nothing(bus: MemoryBus) -> None:
    t = bus.topics
    ends = {topic: bus.end_offsets(topic) for topic in t.all()}
    dry = replay(bus, dry_run=True)
    assert dry.dry_run and dry.total == 4
    assert {(d["stage"], d["error_type"], d["topic"]) for d in dry.records} == {
        ("dispatch", "StoreError", t.triaged), ("dispatch", "RecordError", t.triaged),
        ("classify", "RecordError", t.inbound)}
    assert any("would replay 4 dead letter(s)" in line for line in dry.lines())
    assert {topic: bus.end_offsets(topic) for topic in t.all()} == ends
    assert replay(bus).total == 4  # nothing was committed by the dry run


def test_second_replay_replays_nothing_and_a_third_only_new_dead_letters(bus: MemoryBus) -> None:
    t = bus.topics
    assert replay(bus).total == 4
    end = sum(bus.end_offsets(t.triaged).values())
    assert replay(bus).total == 0 and sum(bus.end_offsets(t.triaged).values()) == end
    send(bus, t.triaged, b"t9:poison-store")
    drain(bus, "dispatch", t.triaged, Picky(t.cases, {b"poison": StoreError}))  # also re-fails t2..t4
    third = replay(bus, stage="dispatch")
    assert third.total == 4 and sorted(d["message_id"] for d in third.records) == ["t2", "t3", "t4", "t9"]


def test_a_record_failing_again_is_dead_lettered_again_not_looped(bus: MemoryBus) -> None:
    t = bus.topics
    assert replay(bus, stage="classify").total == 1
    drain(bus, "classify", t.inbound, Picky(t.triaged))  # not fixed: fails again, with a new reason
    letters = [decode(r.value, DeadLetter) for r in bus.records(t.deadletter)]
    assert [d.message_id for d in letters if d.stage == "classify"] == ["i2", "i2"]
    assert replay(bus, stage="classify").total == 1  # only the new dead letter
    assert replay(bus, stage="classify").total == 0


def test_limit_stops_early_and_passes_over_nothing(bus: MemoryBus) -> None:
    assert replay(bus, stage="dispatch", limit=2).total == 2
    assert replay(bus, stage="dispatch", limit=2).total == 1
    assert replay(bus, stage="dispatch").total == 0


def test_since_passes_over_older_dead_letters(bus: MemoryBus) -> None:
    t = bus.topics
    old = DeadLetter(stage="dispatch", reason="old", error_type="StoreError", source_topic=t.triaged,
                     value_b64=base64.b64encode(b"t0:old").decode(), key_b64=base64.b64encode(b"t0").decode(),
                     message_id="t0", failed_at=datetime.now(UTC) - timedelta(days=3))
    bus.publish([Outgoing(t.deadletter, encode(old), b"t0")])
    summary = replay(bus, stage="dispatch", since=datetime.now(UTC) - timedelta(hours=1))
    assert summary.total == 3 and summary.skipped == {BEFORE_SINCE: 1}
    assert b"t0:old" not in values(bus, t.triaged)
    assert replay(bus, stage="dispatch").total == 0


def test_malformed_dead_letter_records_are_reported_not_crashing(bus: MemoryBus) -> None:
    t = bus.topics
    good = decode(bus.records(t.deadletter)[0].value, DeadLetter)
    bad_b64 = good.model_copy(update={"value_b64": "***not base64***"})
    bus.publish([Outgoing(t.deadletter, b"\xff garbage", b"x"),
                 Outgoing(t.deadletter, encode(good).replace(b'"version":1', b'"version":9'), b"y"),
                 Outgoing(t.deadletter, encode(bad_b64), b"z")])
    summary = replay(bus)
    assert summary.total == 4
    reasons = sorted(summary.malformed.values())
    assert len(reasons) == 3 and any("not valid JSON" in r for r in reasons)
    assert any("version 9" in r for r in reasons) and any("base64" in r for r in reasons)
    assert all(at.startswith(f"{t.deadletter}/") for at in summary.malformed)
    assert any("3 malformed dead-letter record(s)" in line for line in summary.lines())
    targeted = replay(bus, stage="dispatch", error_type="NoSuchError")  # no scan: the cell pass reports them
    assert targeted.total == 0 and len(targeted.malformed) == 3


def test_connector_dead_letters_are_skipped_unless_a_topic_is_given() -> None:
    bus = MemoryBus()
    letter = DeadLetter(stage="ingest", reason="over the size limit", error_type="MailRejected",
                        source_topic="imap:support/uid:7", value_b64=base64.b64encode(b"From: a\r\n\r\nx").decode(),
                        failed_at=NOW)
    bus.publish([Outgoing(bus.topics.deadletter, encode(letter), b"imap:support:7")])
    dry = replay(bus, dry_run=True)
    assert dry.total == 0 and dry.skipped == {NOT_A_TOPIC: 1}
    assert replay(bus, stage="ingest", to_topic="quarantine").replayed == {("ingest", "quarantine"): 1}
    assert [r.value for r in bus.records("quarantine")] == [b"From: a\r\n\r\nx"]


def test_connector_dead_letters_stay_for_a_to_topic_run_after_an_ordinary_one() -> None:
    """The skip reason says "use --to-topic": an unfiltered run must not pass them over for good."""
    bus = MemoryBus()
    letter = DeadLetter(stage="ingest", reason="bad update", error_type="PayloadError",
                        source_topic="telegram/update:7", value_b64=base64.b64encode(b'{"update_id": 7}').decode(),
                        failed_at=NOW)
    bus.publish([Outgoing(bus.topics.deadletter, encode(letter), b"telegram:update:7")])
    send(bus, bus.topics.inbound, b"i1:poison")
    drain(bus, "classify", bus.topics.inbound, Picky(bus.topics.triaged))
    first = replay(bus)
    assert first.total == 1 and first.skipped == {NOT_A_TOPIC: 1}
    again = replay(bus)
    assert again.total == 0 and again.skipped == {NOT_A_TOPIC: 1}  # still there, still reported
    moved = replay(bus, stage="ingest", to_topic="quarantine")
    assert moved.replayed == {("ingest", "quarantine"): 1}
    assert [r.value for r in bus.records("quarantine")] == [b'{"update_id": 7}']
    last = replay(bus, to_topic="quarantine")
    assert last.total == 0 and last.skipped == {}


def test_a_dead_letter_waiting_for_to_topic_holds_back_its_partition_of_the_cell_not_others() -> None:
    """Commits are positions: what follows a held dead letter in its cell and partition waits with it,
    reported, and is replayed once (never twice) by the run that moves the held one."""
    bus = MemoryBus(partitions=1)
    t = bus.topics

    def letter(source: str, value: bytes) -> Outgoing:
        dead = DeadLetter(stage="dispatch", reason="x", error_type="StoreError", source_topic=source,
                          value_b64=base64.b64encode(value).decode(), key_b64=base64.b64encode(b"k").decode(),
                          failed_at=NOW)
        return Outgoing(t.deadletter, encode(dead), b"k")

    bus.publish([letter(t.triaged, b"before"), letter("old.triaged", b"renamed"), letter(t.triaged, b"after")])
    first = replay(bus)
    assert values(bus, t.triaged) == [b"before"]
    assert first.skipped == {NOT_A_TOPIC: 1, HELD: 1}
    assert replay(bus).total == 0 and values(bus, t.triaged) == [b"before"]
    moved = replay(bus, to_topic="quarantine")
    assert sorted(r.value for r in bus.records("quarantine")) == [b"after", b"renamed"] and moved.total == 2
    assert replay(bus).total == 0 and replay(bus).skipped == {}


def test_a_dead_letter_cut_to_fit_is_passed_over_even_with_a_topic() -> None:
    bus = MemoryBus()
    bus.max_record_bytes = 100_000
    send(bus, bus.topics.inbound, b"i1:" + b"poison" * 15_000)  # 90 KB: its base64 is over 100 KB
    drain(bus, "classify", bus.topics.inbound, Picky(bus.topics.triaged))
    [record] = bus.records(bus.topics.deadletter)
    letter = decode(record.value, DeadLetter)
    assert len(record.value) <= 100_000 and record.header(TRUNCATED_HEADER) == b"90003"
    assert "original 90,003 bytes, the first" in letter.reason and letter.reason.startswith("refused b'i1'")
    assert replay(bus, dry_run=True).skipped == {TRUNCATED: 1}
    assert replay(bus, to_topic="quarantine").skipped == {TRUNCATED: 1} and not bus.records("quarantine")


def test_dead_letters_fit_the_limit_whatever_the_original_and_keep_it_whole_when_they_can() -> None:
    for size in (0, 1, 1000, 74_000, 75_000, 99_999, 100_000, 5_000_000):
        raw = bytes(i % 251 for i in range(size))
        out = build_dead_letter("dl", b"key", raw, stage="s", reason="r" * 3000, error_type="E",
                                max_bytes=100_000, headers=(("frontdesk-stage", b"s"),))
        letter = decode(out.value, DeadLetter)
        kept = base64.b64decode(letter.value_b64)
        assert record_size(out) <= 100_000 and raw.startswith(kept)
        assert (kept == raw) == (dict(out.headers).get(TRUNCATED_HEADER) is None), size
        assert len(kept) >= min(size, 70_000)  # all that fits, less a small margin
        assert letter.reason.startswith("r" * 2000 + "…") and len(letter.reason) < 2100


class CrashingCommit(MemoryBus):
    """The first ``commit`` of a replay group dies (as a SIGKILL between publish and commit would)."""

    crashes = 1

    def consumer(self, group: str, topics: Sequence[str]) -> MemoryConsumer:
        member = super().consumer(group, topics)
        if group.startswith("frontdesk-replay.") and self.crashes:
            self.crashes -= 1

            def die(records: object) -> None:
                raise KeyboardInterrupt("killed")

            member.commit = die  # type: ignore[method-assign]
        return member


def test_a_crash_between_publish_and_commit_republishes_at_most_the_batch() -> None:
    bus = CrashingCommit()
    t = bus.topics
    send(bus, t.inbound, *[f"i{n}:poison".encode() for n in range(5)])
    drain(bus, "classify", t.inbound, Picky(t.triaged))
    with pytest.raises(KeyboardInterrupt):
        replay(bus, batch=2)
    replayed = [r for r in bus.records(t.inbound) if r.header(REPLAY_HEADER)]
    assert 1 <= len(replayed) <= 2
    assert replay(bus).total == 5  # the uncommitted batch again, plus the rest
    assert replay(bus).total == 0
    assert len([r for r in bus.records(t.inbound) if r.header(REPLAY_HEADER)]) == 5 + len(replayed)


def test_a_cell_held_by_another_replay_times_out_clearly(bus: MemoryBus) -> None:
    other = bus.consumer(cell_group("frontdesk-replay", ("classify", "RecordError")), [bus.topics.deadletter])
    other.poll(1, 0)
    with pytest.raises(BusUnavailable, match="another replay running"):
        replay(bus, stage="classify", error_type="RecordError", assign_timeout_s=0.3)


def test_parse_since() -> None:
    assert parse_since("90m", NOW) == NOW - timedelta(minutes=90)
    assert parse_since("7d", NOW) == NOW - timedelta(days=7)
    assert parse_since("2026-11-01", NOW) == datetime(2026, 11, 1, tzinfo=UTC)
    assert parse_since("2026-11-01T10:00:00+04:00", NOW).utcoffset() == timedelta(hours=4)
    with pytest.raises(ValueError):
        parse_since("yesterday", NOW)
