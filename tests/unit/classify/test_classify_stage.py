from __future__ import annotations

from datetime import UTC, datetime

from classify.base import KeywordClassifier
from classify.evaluate import evaluate, expected_calibration_error, macro_f1, render
from classify.data import Example
from classify.stage import ClassifyProcessor
from frontdesk.bus.base import Outgoing
from frontdesk.bus.memory import MemoryBus
from frontdesk.codec import decode, encode
from frontdesk.errors import DecodeError
from frontdesk.messages import DeadLetter, InboundMessage, Party, TriagedMessage
from frontdesk.stage import StageRunner

NOW = datetime(2026, 11, 22, tzinfo=UTC)


def inbound(i: int, text: str) -> InboundMessage:
    return InboundMessage.create(connector="chat:web", external_id=str(i), channel="chat",
                                 sender=Party(handle=f"u{i}"), text=text, received_at=NOW)


def test_stage_triages_inbound_and_dead_letters_garbage() -> None:
    bus = MemoryBus()
    msgs = [inbound(1, "my account was hacked"), inbound(2, "withdrawal pending"), inbound(3, "thanks!")]
    bus.publish([Outgoing(bus.topics.inbound, encode(m), m.id.encode()) for m in msgs])
    bus.publish([Outgoing(bus.topics.inbound, b"garbage", b"x")])
    runner = StageRunner("classify", bus, bus.consumer("g", [bus.topics.inbound]),
                         ClassifyProcessor(KeywordClassifier(), bus.topics, clock=lambda: NOW), poll_timeout=0.01)
    for _ in range(5):
        runner.run_once()
    out = {decode(r.value, TriagedMessage).id: decode(r.value, TriagedMessage) for r in bus.records(bus.topics.triaged)}
    assert {k: (v.triage.category, v.triage.urgency) for k, v in out.items()} == {
        msgs[0].id: ("security", "critical"), msgs[1].id: ("payments", "high"), msgs[2].id: ("general", "low")}
    assert all(r.key == decode(r.value, TriagedMessage).id.encode() for r in bus.records(bus.topics.triaged))
    [letter] = [decode(r.value, DeadLetter) for r in bus.records(bus.topics.deadletter)]
    assert letter.stage == "classify" and letter.error_type == "DecodeError"


def test_the_processor_hands_over_undecodable_records_first_then_each_classifier_chunk() -> None:
    bus = MemoryBus()
    msgs = [inbound(i, text) for i, text in enumerate(["hacked!", "withdrawal", "bonus", "bet", "hi"])]
    bus.publish([Outgoing(bus.topics.inbound, encode(m), m.id.encode()) for m in msgs[:2]])
    bus.publish([Outgoing(bus.topics.inbound, b"garbage", b"x")])
    bus.publish([Outgoing(bus.topics.inbound, encode(m), m.id.encode()) for m in msgs[2:]])
    with bus.consumer("g", [bus.topics.inbound]) as consumer:
        records = consumer.poll(10, timeout=0.01)
    processor = ClassifyProcessor(KeywordClassifier(chunk=2), bus.topics, clock=lambda: NOW, min_chunk=1)
    chunks = list(processor.process_stream(records))
    assert [len(c) for c in chunks] == [1, 2, 2, 1]
    assert chunks[0][0].record.value == b"garbage" and isinstance(chunks[0][0].error, DecodeError)
    streamed = [decode(oc.outputs[0].value, TriagedMessage) for c in chunks[1:] for oc in c]
    assert [t.id for t in streamed] == [r.key.decode() for r in records if r.value != b"garbage"]  # in poll order
    assert {t.id for t in streamed} == {m.id for m in msgs}
    assert [oc.outputs for oc in processor.process(records)] == [oc.outputs for c in chunks for oc in c]
    coalescing = ClassifyProcessor(KeywordClassifier(chunk=2), bus.topics, clock=lambda: NOW, min_chunk=3)
    assert [len(c) for c in coalescing.process_stream(records)] == [1, 4, 1]  # classifier chunks joined to >= 3


def test_evaluate_reports_the_contract_fields() -> None:
    examples = [
        Example("my account was hacked", "", "chat", "security", "critical", "en"),
        Example("withdrawal pending", "", "chat", "payments", "high", "en"),
        Example("Вывод не пришел", "", "chat", "payments", "high", "ru"),
    ]
    report = evaluate(examples, KeywordClassifier(), None)
    assert report["n"] == 3 and report["category_macro_f1"] == 1.0 and report["language_accuracy"] == 1.0
    assert set(report["per_language"]) == {"en", "ru"} and report["per_language"]["ru"]["n"] == 1
    assert report["messages_per_second"] > 0
    text = render(report)
    assert "urgency macro-F1 without rules: same (no rule fired)" in text
    assert "category confusion" in text and "urgency confusion" in text
    critical_row = next(line for line in text.splitlines() if line.startswith("critical "))
    assert critical_row.split()[1:] == ["1", "0", "0", "0"]  # gold critical, predicted critical


def test_metrics() -> None:
    assert macro_f1(["a", "b"], ["a", "a"]) == round((2 / 3 + 0) / 2, 4)
    assert expected_calibration_error([0.9, 0.9], [True, False]) == 0.4
