from __future__ import annotations

import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from dispatch.routing import Route, RoutingTable, parse_sla
from dispatch.routing_rules import fold
from frontdesk.errors import ConfigError
from frontdesk.messages import InboundMessage, Party, Triage, TriagedMessage

ROUTING_FILE = Path(__file__).resolve().parents[3] / "config" / "routing.yaml"
NOW = datetime(2026, 11, 22, 10, 30, tzinfo=UTC)


def triaged(
    category: str = "general", urgency: str = "normal", *, language: str = "az", needs_review: bool = False,
    sender: str | None = "aysel@mail.az", channel: str = "email", connector: str = "imap:support",
    subject: str = "", text: str = "salam",
) -> TriagedMessage:
    inbound = InboundMessage.create(
        connector=connector, external_id=f"<{category}.{urgency}.{subject}@mail.az>", channel=channel,
        sender=Party(address=sender, handle=None if sender else "aysel"), subject=subject, text=text,
        received_at=NOW,
    )
    triage = Triage(category=category, urgency=urgency, language=language, model_version="test",
                    needs_review=needs_review)
    return TriagedMessage(message=inbound, triage=triage, triaged_at=NOW)


@pytest.fixture(scope="module")
def table() -> RoutingTable:
    return RoutingTable.load(ROUTING_FILE)


@pytest.fixture(scope="module")
def vip_table() -> RoutingTable:
    text = ROUTING_FILE.read_text(encoding="utf-8")
    assert "vip_senders: []" in text
    return RoutingTable.from_yaml(text.replace("vip_senders: []", 'vip_senders: [Boss@Club.az, "@partner.az"]'))


DEFAULT_CASES = [
    # (message, rule, queue, priority, sla)
    (dict(category="security", urgency="critical"), "security", "fraud", 1, timedelta(minutes=15)),
    (dict(category="security", urgency="low", needs_review=True), "security", "fraud", 1, timedelta(minutes=15)),
    (dict(category="responsible_gambling", urgency="critical"), "responsible-gambling", "responsible-gambling", 1,
     timedelta(minutes=30)),
    (dict(category="payments", urgency="critical", needs_review=True), "review-urgent", "triage", 2,
     timedelta(hours=1)),
    (dict(category="bonuses", needs_review=True), "review", "triage", 3, timedelta(hours=4)),
    (dict(category="complaint", urgency="critical"), "complaint-critical", "disputes", 1, timedelta(hours=1)),
    (dict(category="complaint", urgency="high"), "complaint", "disputes", 2, timedelta(hours=4)),
    (dict(category="payments", urgency="high"), "payments-priority", "payments-priority", 2, timedelta(hours=1)),
    (dict(category="payments", urgency="critical"), "payments-priority", "payments-priority", 2, timedelta(hours=1)),
    (dict(category="payments", urgency="normal"), "payments", "payments", 3, timedelta(hours=4)),
    (dict(category="verification"), "verification", "kyc", 3, timedelta(hours=8)),
    (dict(category="account_access", urgency="high"), "account-access", "accounts", 3, timedelta(hours=4)),
    (dict(category="bonuses"), "bonuses", "promotions", 4, timedelta(days=1)),
    (dict(category="betting"), "betting", "betting-ops", 3, timedelta(hours=8)),
    (dict(category="technical"), "technical", "tech-support", 3, timedelta(hours=8)),
    (dict(category="spam", urgency="low"), "spam", "spam", 5, timedelta(days=7)),
    (dict(category="general", urgency="low"), "general", "general", 4, timedelta(days=1)),
    (dict(category="loyalty_club"), "default", "general", 4, timedelta(days=1)),
]


@pytest.mark.parametrize(("fields", "rule", "queue", "priority", "sla"), DEFAULT_CASES,
                         ids=[f"{c[1]}-{c[0]['category']}" for c in DEFAULT_CASES])
def test_default_rules(table: RoutingTable, fields: dict, rule: str, queue: str, priority: int,
                       sla: timedelta) -> None:
    assert table.route(triaged(**fields)) == Route(rule, queue, priority, sla)


def test_every_default_rule_is_exercised(table: RoutingTable) -> None:
    exercised = {case[1] for case in DEFAULT_CASES} | {"vip"}
    assert {rule.name for rule in table.rules} <= exercised


@pytest.mark.parametrize(("sender", "category", "rule"), [
    ("boss@club.az", "payments", "vip"),
    ("BOSS@club.AZ", "spam", "vip"),
    ("anyone@partner.az", "general", "vip"),
    ("boss@club.az", "security", "security"),
    ("boss@club.az", "responsible_gambling", "responsible-gambling"),
    ("other@club.az", "payments", "payments"),
    (None, "payments", "payments"),
])
def test_vip_senders(vip_table: RoutingTable, sender: str | None, category: str, rule: str) -> None:
    route = vip_table.route(triaged(category, sender=sender))
    assert route.rule == rule
    if rule == "vip":
        assert (route.queue, route.priority) == ("vip", 2)


def table_of(text: str, source: str = "test.yaml") -> RoutingTable:
    return RoutingTable.from_yaml(textwrap.dedent(text), source=source)


def test_first_match_wins() -> None:
    rules = table_of("""
        rules:
          - {name: broad, match: {category: [payments, bonuses]}, queue: money, priority: 3, sla: 4h}
          - {name: narrow, match: {category: payments, urgency: critical}, queue: urgent, priority: 1, sla: 15m}
        default: {queue: general, priority: 4, sla: 1d}
    """)
    assert rules.route(triaged("payments", "critical")).rule == "broad"
    assert rules.route(triaged("bonuses")).queue == "money"
    assert rules.route(triaged("general")).rule == "default"


def test_every_condition_must_hold_and_each_kind_of_condition() -> None:
    rules = table_of("""
        rules:
          - name: all
            match: {language: [RU], channel: chat, connector: "telegram:*", min_urgency: high, needs_review: false}
            action: {queue: ru-chat, priority: 2}
          - {name: domain, match: {sender_domain: ["@Partner.AZ"]}, queue: partners}
          - {name: words, match: {keywords: [Chargeback, "İade"], urgency: [low, normal]}, queue: disputes}
          - {name: not-vip, match: {vip: false, category: spam}, queue: spam, sla: 2d 4h}
        default: {queue: general, priority: 4, sla: 1d}
    """)
    chat = dict(language="ru", channel="chat", connector="telegram:bot", urgency="critical", sender=None)
    assert rules.route(triaged(**chat)) == Route("all", "ru-chat", 2, timedelta(days=1))
    assert rules.route(triaged(**{**chat, "urgency": "normal"})).rule == "default"
    assert rules.route(triaged(**{**chat, "connector": "whatsapp:x"})).rule == "default"
    assert rules.route(triaged(**{**chat, "needs_review": True})).rule == "default"
    assert rules.route(triaged(sender="ceo@partner.az")) == Route("domain", "partners", 4, timedelta(days=1))
    assert rules.route(triaged(sender="ceo@sub.partner.az")).rule == "default"
    assert rules.route(triaged(subject="CHARGEBACK request")).rule == "words"
    assert rules.route(triaged(text="paramın iade edilmesi")).rule == "words"
    assert rules.route(triaged(text="PARAMIN İADESİ")).rule == "words"
    assert rules.route(triaged(text="Chárgeback")).rule == "words"
    assert rules.route(triaged(text="chargeback", urgency="high")).rule == "default"
    assert rules.route(triaged("spam")).sla == timedelta(days=2, hours=4)


def test_keywords_cost_little_on_a_long_run_of_combining_marks() -> None:
    # NFKD sorts a run of combining marks by insertion: 100,000 of them held the dispatcher ~8 s
    rules = table_of("""
        rules:
          - {name: words, match: {keywords: [chargeback]}, queue: disputes}
        default: {queue: general, priority: 4, sla: 1d}
    """)
    hostile = triaged(text="a" + "\u0301\u0316" * 50_000 + " Chárgeback")
    started = time.thread_time()
    assert rules.route(hostile).rule == "words"
    assert time.thread_time() - started < 0.5
    assert fold("İADƏ Ödəniş ﬁle ＡＢ ı\u0301") == "iade odenis file ab i"


@pytest.mark.parametrize(("text", "expected"), [
    ("15m", timedelta(minutes=15)), ("1h", timedelta(hours=1)), ("4h", timedelta(hours=4)),
    ("1d", timedelta(days=1)), ("2d 4h", timedelta(days=2, hours=4)), ("1w", timedelta(weeks=1)),
    ("1h30m", timedelta(minutes=90)),
])
def test_parse_sla(text: str, expected: timedelta) -> None:
    assert parse_sla(text) == expected


@pytest.mark.parametrize("text", ["", "4", "4 hours", "0m", "-1h", "1.5h", "h"])
def test_parse_sla_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="sla"):
        parse_sla(text)


GOOD_DEFAULT = "default: {queue: general, priority: 4, sla: 1d}\n"
BAD_FILES = [
    # (name, yaml, the text on the line the error must name, words the message must contain)
    ("unknown-field", "rules:\n  - name: a\n    queue: q\n    colour: red\n", "colour", "unknown field 'colour'"),
    ("unknown-match-field", "rules:\n  - name: a\n    match:\n      categroy: payments\n    queue: q\n", "categroy",
     "unknown field 'categroy'"),
    ("unknown-category", "rules:\n  - name: a\n    match:\n      category: [payments, payment]\n    queue: q\n",
     "category:", "unknown category 'payment'"),
    ("unknown-urgency", "rules:\n  - name: a\n    match:\n      urgency: urgent\n    queue: q\n", "urgency:",
     "unknown urgency 'urgent'"),
    ("unknown-min-urgency", "rules:\n  - name: a\n    match: {min_urgency: hot}\n    queue: q\n", "min_urgency",
     "unknown urgency 'hot'"),
    ("unknown-channel", "rules:\n  - name: a\n    match: {channel: fax}\n    queue: q\n", "channel",
     "unknown channel 'fax'"),
    ("bad-sla", "rules:\n  - name: a\n    queue: q\n    sla: 4 hours\n", "sla:", "bad sla '4 hours'"),
    ("sla-number", "rules:\n  - name: a\n    queue: q\n    sla: 60\n", "sla:", "bad sla 60"),
    ("priority-range", "rules:\n  - name: a\n    queue: q\n    priority: 0\n", "priority", "priority must be"),
    ("priority-text", "rules:\n  - name: a\n    queue: q\n    priority: high\n", "priority", "priority must be"),
    ("missing-queue", "rules:\n  - name: ok\n    queue: q\n  - name: a\n    priority: 2\n", "name: a",
     "rule 'a': missing queue"),
    ("missing-queue-in-action", "rules:\n  - name: a\n    action:\n      priority: 2\n", "priority",
     "missing queue"),
    ("bad-queue-name", "rules:\n  - name: a\n    queue: \"two words\"\n", "queue", "bad queue name"),
    ("duplicate-name", "rules:\n  - {name: a, match: {vip: true}, queue: q}\n"
     "  - {name: b, match: {vip: false}, queue: q}\n"
     "  - {name: a, match: {vip: true}, queue: r}\n", "queue: r", "duplicate rule name 'a' (first at line 2)"),
    ("keywords-not-list", "rules:\n  - name: a\n    match:\n      keywords: chargeback\n    queue: q\n", "keywords",
     "keywords must be a non-empty list"),
    ("keywords-empty-entry", "rules:\n  - name: a\n    match: {keywords: [x, '']}\n    queue: q\n", "keywords",
     "non-empty string"),
    ("vip-not-bool", "rules:\n  - name: a\n    match:\n      vip: maybe\n    queue: q\n", "vip", "true or false"),
    ("action-and-flat", "rules:\n  - name: a\n    action: {queue: q}\n    priority: 2\n", "priority: 2",
     "inside action"),
    ("reserved-name", "rules:\n  - name: default\n    queue: q\n", "name: default", "reserved"),
    ("no-name", "rules:\n  - queue: q\n", "queue: q", "missing name"),
    ("rule-not-mapping", "rules:\n  - just a string\n", "rules:", "rule must be a mapping"),
    ("rules-not-list", "rules:\n  name: a\n", "rules:", "rules must be a list"),
    ("unreachable", "rules:\n  - {name: all, queue: q}\n  - name: later\n    queue: r\n", "name: later",
     "can never match"),
    ("unknown-top-field", "rule:\n  - name: a\n", "rule:", "unknown field 'rule'"),
    ("duplicate-key", "rules:\n  - name: a\n    queue: q\n    queue: r\n", "queue: r", "duplicate key 'queue'"),
    ("bad-yaml", "rules:\n  - name: a\n    queue: q: r\n", "queue: q: r", "not valid YAML"),
    ("vip-senders-not-list", "vip_senders: boss@club.az\n", "vip_senders", "vip_senders must be"),
]


@pytest.mark.parametrize(("text", "marker", "fragment"), [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES])
def test_bad_files_name_the_line(text: str, marker: str, fragment: str) -> None:
    source = text + GOOD_DEFAULT
    line = next(i for i, row in enumerate(source.splitlines(), 1) if marker in row)
    with pytest.raises(ConfigError) as caught:
        RoutingTable.from_yaml(source, source="rules.yaml")
    message = str(caught.value)
    assert message.startswith(f"rules.yaml:{line}: "), message
    assert fragment in message


@pytest.mark.parametrize(("text", "fragment"), [
    ("rules: []\n", "missing 'default'"),
    ("default: {queue: general, priority: 4}\n", "needs queue, priority and sla"),
    ("default: general\n", "default must be a mapping"),
    ("", "must be a mapping"),
])
def test_bad_default(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        RoutingTable.from_yaml(text, source="rules.yaml")


def test_load_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="nope.yaml"):
        RoutingTable.load(missing)
    bad = tmp_path / "routing.yaml"
    bad.write_text(GOOD_DEFAULT + "rules:\n  - name: a\n    queue: q\n    sla: soon\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"^{bad}:5: rule 'a': bad sla 'soon'"):
        RoutingTable.load(bad)


def test_replaced_taxonomy() -> None:
    text = "rules:\n  - {name: a, match: {category: casino}, queue: q}\n" + GOOD_DEFAULT
    with pytest.raises(ConfigError, match="unknown category 'casino'"):
        RoutingTable.from_yaml(text)
    assert RoutingTable.from_yaml(text, categories=["casino"]).route(triaged("casino")).rule == "a"
