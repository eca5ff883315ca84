"""Poison records on the inbound and triaged topics: dead-lettered with stage and reason, the stage goes on.

The real processors (classify with the keyword classifier, dispatch with the SQLite case store)
under the real StageRunner, on the memory bus: poison interleaved with good records, in one batch.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

from classify.base import KeywordClassifier
from classify.stage import ClassifyProcessor
from dispatch.cases import Context
from dispatch.routing import RoutingTable
from dispatch.settings import DispatchSettings
from dispatch.stage import DispatchProcessor
from dispatch.store.sql import SqlCaseStore
from frontdesk.bus.base import Outgoing
from frontdesk.bus.memory import MemoryBus
from frontdesk.codec import decode, encode
from frontdesk.messages import DeadLetter, TriagedMessage
from frontdesk.stage import Processor, StageRunner
from tests.fixtures.hostile.payloads import NOW, Poison, inbound, poison_records, triaged

SETTINGS = DispatchSettings(our_addresses=("@bet.example",), from_address="support@bet.example",
                            message_id_domain="bet.example")


def run(stage: str, topic: str, processor: Processor, good: Sequence[bytes], bus: MemoryBus) -> list[DeadLetter]:
    """Publish good and poison records interleaved, run the stage until idle; the dead letters, in order."""
    name = getattr(bus.topics, topic)
    records: list[Outgoing] = []
    for index, item in enumerate(poison_records(topic)):
        records.append(Outgoing(name, item.value, f"poison-{index}".encode()))
        if index < len(good):
            records.append(Outgoing(name, good[index], f"good-{index}".encode()))
    bus.publish(records)
    runner = StageRunner(stage, bus, bus.consumer(f"{stage}-group", [name]), processor, max_records=64,
                         poll_timeout=0.01)
    for _ in range(10):
        runner.run_once()
    assert runner.stats.consumed == len(records) and runner.stats.transient_failures == 0
    return [decode(r.value, DeadLetter) for r in bus.records(bus.topics.deadletter)]


def check(letters: list[DeadLetter], poison: list[Poison], stage: str, topic: str) -> None:
    assert len(letters) == len(poison)
    by_key = {base64.b64decode(letter.key_b64 or ""): letter for letter in letters}
    for index, item in enumerate(poison):
        letter = by_key[f"poison-{index}".encode()]
        assert (letter.stage, letter.error_type, letter.source_topic) == (stage, "DecodeError", topic), item.name
        assert item.reason in letter.reason, (item.name, letter.reason)
        assert base64.b64decode(letter.value_b64) == item.value, "the exact original bytes are kept"


def test_classify_dead_letters_poison_and_triages_the_rest() -> None:
    bus = MemoryBus()
    good = [inbound(i, text="my withdrawal is pending") for i in range(5)]
    processor = ClassifyProcessor(KeywordClassifier(), bus.topics, clock=lambda: NOW)
    letters = run("classify", "inbound", processor, [encode(m) for m in good], bus)
    check(letters, poison_records("inbound"), "classify", bus.topics.inbound)
    out = [decode(r.value, TriagedMessage) for r in bus.records(bus.topics.triaged)]
    assert sorted(t.id for t in out) == sorted(m.id for m in good)


def test_dispatch_dead_letters_poison_and_opens_cases_for_the_rest() -> None:
    bus = MemoryBus()
    store = SqlCaseStore("sqlite://", Context(SETTINGS, RoutingTable.load(SETTINGS.routing_file)))
    good = [triaged(inbound(i)) for i in range(5)]
    letters = run("dispatch", "triaged", DispatchProcessor(store), [encode(t) for t in good], bus)
    check(letters, poison_records("triaged"), "dispatch", bus.topics.triaged)
    assert sum(store.apply(t).duplicate for t in good) == len(good), "every good message made its case"
    store.close()
