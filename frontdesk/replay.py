"""``frontdesk replay --from deadletter``: re-drive dead-lettered records after a fix.

A run reads the dead-letter topic, selects records (stage, error type, age, count) and publishes
each one's original bytes and key to its original source topic (or ``to_topic``), so the stage
that failed processes them again. A record that fails again is dead-lettered again with the new
reason, and a later run offers it again.

Contract:

* **At most once per dead letter, resumable.** Progress lives in consumer groups on the
  dead-letter topic, one per *cell* (stage, error type): ``<group>.<stage>.<error type>``. A cell
  commits a batch only after the batch was published (durably), so a crash re-publishes at most
  that batch: harmless, the bytes carry the stable message id and every stage treats a known id as
  a no-op. A second run of the same selection finds nothing new. Each record belongs to exactly one
  cell, so ``--stage dispatch`` today and an unfiltered run tomorrow never drive a record twice,
  and unselected cells keep their records for a later run after their own fix.
* **Bounded.** A run reads up to the end offsets seen at its start: records that fail again during
  the run wait for the next run instead of looping.
* ``since`` passes over older dead letters of the selected cells for good (committed, counted as
  skipped): positions in a log are offsets, so keeping old records for later would hold back all
  newer ones. ``limit`` stops early and passes over nothing. ``dry_run`` reads the same records and
  publishes and commits nothing.
* Not replayable without ``to_topic``, reported and left in place (not committed, so a later run
  with ``to_topic`` re-drives them; ``since`` passes them over): records dead-lettered by a
  connector (their source is a mailbox or a platform, not a topic: re-deliver them at the source)
  and records naming a topic that is not a pipeline topic of this bus. A position holds everything
  before it, so the later dead letters of the same cell and partition wait with such a record
  (reported as held) and go with it to ``to_topic``. Not replayable at all, reported and passed
  over: records whose original bytes were cut to fit the bus's record limit
  (:mod:`frontdesk.deadletter`). Malformed dead-letter records are reported with their position
  and the decode error; they belong to no cell.
* Every consumer group of the source topic sees a replayed record again, not only the one that
  failed; Frontdesk's stages are idempotent per message id, so for them this is a no-op.
* Blocking, one thread. Raises BusUnavailable when the bus is down or a cell's partitions stay
  unassigned for ``assign_timeout_s`` (e.g. another replay of the same cell is running).
"""

from __future__ import annotations

import base64
import binascii
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from frontdesk.bus.base import Bus, Consumer, Outgoing, Record
from frontdesk.codec import decode
from frontdesk.deadletter import TRUNCATED_HEADER
from frontdesk.errors import BusUnavailable, DecodeError
from frontdesk.messages import DeadLetter

DEFAULT_GROUP = "frontdesk-replay"
REPLAY_HEADER = "frontdesk-replay-of"
BEFORE_SINCE = "failed before --since (passed over)"
NOT_A_TOPIC = "source is not a pipeline topic (connector input: re-deliver at the source, or use --to-topic)"
TRUNCATED = "original cut to fit the bus's record limit (not the record any more: re-deliver at the source)"
HELD = "behind a dead letter of its cell and partition that needs --to-topic (replayed with it)"
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_AGO = re.compile(r"^(\d+)\s*([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}

Cell = tuple[str, str]  # (stage, error type)


@dataclass(frozen=True, slots=True)
class ReplayOptions:
    """What to replay and how. ``None`` filters select everything."""

    stage: str | None = None
    error_type: str | None = None
    since: datetime | None = None
    limit: int | None = None
    dry_run: bool = False
    to_topic: str | None = None
    group: str = DEFAULT_GROUP
    assign_timeout_s: float = 60.0
    batch: int = 200


@dataclass
class ReplaySummary:
    """What a run did (or, dry, would do): replayed per (stage, topic), skipped per reason, malformed.

    ``records`` lists every replayed dead letter (position, stage, error, message id, target)."""

    dry_run: bool = False
    replayed: Counter[tuple[str, str]] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    malformed: dict[str, str] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.replayed.values())

    def as_dict(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "replayed_total": self.total,
                "replayed": [{"stage": s, "topic": t, "count": n} for (s, t), n in sorted(self.replayed.items())],
                "skipped": dict(sorted(self.skipped.items())),
                "malformed": [{"at": at, "reason": why} for at, why in sorted(self.malformed.items())],
                "records": self.records}

    def lines(self) -> list[str]:
        out = [f"{r['failed_at'][:19].replace('T', ' ')} {r['stage']:10} {r['error_type']:18} {r['message_id'] or '-':36} "
               f"-> {r['topic']}  {r['reason'][:60]}" for r in self.records] if self.dry_run else []
        verb = "would replay" if self.dry_run else "replayed"
        out.append(f"{verb} {self.total} dead letter(s)" + (" (dry run: nothing published)" if self.dry_run else ""))
        out += [f"  {stage} -> {topic}: {n}" for (stage, topic), n in sorted(self.replayed.items())]
        out.append(f"skipped {sum(self.skipped.values())}")
        out += [f"  {reason}: {n}" for reason, n in sorted(self.skipped.items())]
        if self.malformed:
            out.append(f"{len(self.malformed)} malformed dead-letter record(s), not replayable:")
            out += [f"  {at}: {why}" for at, why in sorted(self.malformed.items())]
        return out


def parse_since(text: str, now: datetime) -> datetime:
    """'30m', '2h', '7d' (ago) or an ISO 8601 date/time (naive: UTC). Raises ValueError."""
    if match := _AGO.match(text.strip()):
        return now - timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    moment = datetime.fromisoformat(text.strip())
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def cell_group(prefix: str, cell: Cell) -> str:
    """The consumer group that tracks one cell's progress."""
    return f"{prefix}.{_UNSAFE.sub('_', cell[0])}.{_UNSAFE.sub('_', cell[1])}"


def parse_letter(record: Record) -> tuple[DeadLetter, bytes, bytes | None]:
    """The dead letter in ``record`` with its original value and key. Raises DecodeError."""
    letter = decode(record.value, DeadLetter)
    try:
        value = base64.b64decode(letter.value_b64, validate=True)
        key = base64.b64decode(letter.key_b64, validate=True) if letter.key_b64 is not None else None
    except (binascii.Error, ValueError) as exc:
        raise DecodeError(f"dead letter holds invalid base64: {exc}", record.value) from exc
    return letter, value, key


def read_until(consumer: Consumer, ends: dict[int, int], timeout: float, batch: int) -> Iterator[list[Record]]:
    """Batches of one topic's records below ``ends`` (end offsets per partition), until all are read.

    A partition this member owns that yields nothing for ``timeout`` seconds counts as read (its
    records expired by retention). Raises BusUnavailable if partitions stay unassigned that long
    (owned by another member of the group, or the bus unreachable).
    """
    reached = dict.fromkeys(ends, 0)
    deadline = time.monotonic() + timeout
    consumer.assignment()  # joins the group where that is possible without a poll
    idle = True
    while True:
        if idle:  # a partition committed past its end yields nothing: its committed offset says it is done
            for lag in consumer.lag():
                reached[lag.partition] = max(reached.get(lag.partition, 0), lag.committed)
        pending = {p for p, end in ends.items() if reached[p] < end}
        if not pending:
            return
        if idle and time.monotonic() > deadline:
            if pending <= {p for _, p in consumer.assignment()}:
                return  # ours, yet nothing to read: the records expired (retention) before we got to them
            raise BusUnavailable(f"replay: partitions {sorted(pending)} of the dead-letter topic not assigned "
                                 f"within {timeout:.0f}s (another replay running, or the bus unreachable)")
        records = consumer.poll(batch, timeout=0.5)
        for r in records:
            reached[r.partition] = max(reached.get(r.partition, 0), r.offset + 1)
        inside = [r for r in records if r.offset < ends.get(r.partition, 0)]
        idle = not records
        if inside:
            deadline = time.monotonic() + timeout
            yield inside


class Replayer:
    """One replay run over ``bus`` (see the module docstring for the contract)."""

    def __init__(self, bus: Bus, options: ReplayOptions, *, group_suffix: Callable[[], str] = lambda: uuid.uuid4().hex
                 ) -> None:
        self.bus, self.options = bus, options
        self.topic = bus.topics.deadletter
        self.targets = set(bus.topics.all()) - {self.topic}
        self._suffix = group_suffix

    def run(self) -> ReplaySummary:
        """Replay the selection; returns what was replayed, skipped and found malformed."""
        summary = ReplaySummary(dry_run=self.options.dry_run)
        ends = self.bus.end_offsets(self.topic)
        if self.options.to_topic and not self.options.dry_run:
            self.bus.ensure_topics([self.options.to_topic])
        for cell in self._cells(ends, summary):
            if self._limit_reached(summary):
                break
            self._replay_cell(cell, ends, summary)
        return summary

    def _cells(self, ends: dict[int, int], summary: ReplaySummary) -> list[Cell]:
        o = self.options
        if o.stage is not None and o.error_type is not None:
            return [(o.stage, o.error_type)]
        found: set[Cell] = set()
        # A throwaway group: the scan only learns which cells exist; it commits nothing.
        with self.bus.consumer(f"{o.group}-scan-{self._suffix()}", [self.topic]) as consumer:
            for batch in read_until(consumer, ends, o.assign_timeout_s, o.batch):
                for record in batch:
                    if (parsed := self._parse(record, summary)) is not None:
                        found.add((parsed[0].stage, parsed[0].error_type))
        return sorted(c for c in found if o.stage in (None, c[0]) and o.error_type in (None, c[1]))

    def _replay_cell(self, cell: Cell, ends: dict[int, int], summary: ReplaySummary) -> None:
        o = self.options
        held: set[int] = set()  # partitions whose position stays at a dead letter that needs to_topic
        with self.bus.consumer(cell_group(o.group, cell), [self.topic]) as consumer:
            for batch in read_until(consumer, ends, o.assign_timeout_s, o.batch):
                handled, out, stop = self._plan(batch, cell, summary, held)
                if not o.dry_run:
                    self.bus.publish(out)
                    consumer.commit(handled)
                if stop:
                    return

    def _plan(self, batch: list[Record], cell: Cell, summary: ReplaySummary, held: set[int]
              ) -> tuple[list[Record], list[Outgoing], bool]:
        """Records handled (to commit), records to publish, and whether the limit stopped the batch.
        Adds to ``held`` the partitions of records left for a run with ``to_topic``: nothing after
        them there is handled (committing it would commit them too)."""
        handled: list[Record] = []
        out: list[Outgoing] = []
        for record in batch:
            if self._limit_reached(summary):
                return handled, out, True
            parsed = self._parse(record, summary)
            ours = parsed is not None and (parsed[0].stage, parsed[0].error_type) == cell
            if record.partition in held:
                if ours:
                    summary.skipped[HELD] += 1
                continue
            if parsed is None or not ours:
                handled.append(record)
                continue
            letter, value, key = parsed
            target, skip = self._target(letter) if record.header(TRUNCATED_HEADER) is None else (None, TRUNCATED)
            if skip == NOT_A_TOPIC:
                held.add(record.partition)
            else:
                handled.append(record)
            if target is None:
                summary.skipped[skip] += 1
                continue
            where = f"{record.topic}/{record.partition}@{record.offset}"
            out.append(Outgoing(target, value, key, ((REPLAY_HEADER, where.encode()),)))
            summary.replayed[(letter.stage, target)] += 1
            summary.records.append(_describe(letter, target, where))
        return handled, out, self._limit_reached(summary)

    def _target(self, letter: DeadLetter) -> tuple[str | None, str]:
        """Where the letter's original goes, or (None, why it is skipped)."""
        if self.options.since is not None and letter.failed_at < self.options.since:
            return None, BEFORE_SINCE
        if self.options.to_topic:
            return self.options.to_topic, ""
        if letter.source_topic in self.targets:
            return letter.source_topic, ""
        return None, NOT_A_TOPIC

    def _parse(self, record: Record, summary: ReplaySummary) -> tuple[DeadLetter, bytes, bytes | None] | None:
        try:
            return parse_letter(record)
        except DecodeError as exc:
            summary.malformed.setdefault(f"{record.topic}/{record.partition}@{record.offset}", exc.reason)
            return None

    def _limit_reached(self, summary: ReplaySummary) -> bool:
        return self.options.limit is not None and summary.total >= self.options.limit


def _describe(letter: DeadLetter, target: str, where: str) -> dict[str, Any]:
    return {"at": where, "stage": letter.stage, "error_type": letter.error_type, "message_id": letter.message_id,
            "failed_at": letter.failed_at.isoformat(), "reason": letter.reason, "topic": target}
