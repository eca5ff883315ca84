"""The whole pipeline end to end: every source to routed cases, case events and acknowledgements.

The docker-compose services run as local processes (:class:`frontdesk.topology.Topology`) on real
Kafka, PostgreSQL, Dovecot and the recording SMTP server: ingest-imap (IDLE on a fresh folder),
ingest-http, ingest-telegram (getUpdates long polling), one classify replica with the shipped
model, and dispatch with its relay. A recording HTTP server stands in for api.telegram.org and
graph.facebook.com (``sendMessage``, WhatsApp ``messages``) and for the signed outbound webhook.

Inputs (``far_side.py``), in four languages: a Russian withdrawal complaint, an Azerbaijani
Cyrillic deposit question and an out-of-office auto-reply (``Auto-Submitted: auto-replied``)
appended to Dovecot, a hacked-account message in Azerbaijani as a signed WhatsApp webhook, a
Turkish bonus question served by getUpdates, an English verification question on
``POST /v1/messages``; once acknowledged, a follow-up replying to the Russian mail's
acknowledgement (threaded by In-Reply-To only: its subject does not carry the case reference).

Checked: every input is a case in PostgreSQL with the expected category and language and the queue
``config/routing.yaml`` gives it; one ``created`` event per case and one ``updated`` (the follow-up)
on the cases topic; exactly one acknowledgement per case on its channel, in the customer's language,
to the customer — none for the auto-reply, none for the follow-up; nothing dead-lettered.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from imapclient import IMAPClient
from sqlalchemy import Engine, create_engine, func, select

from classify.settings import ClassifierSettings
from dispatch.routing import RoutingTable
from dispatch.settings import CONFIG_DIR
from dispatch.store.models import Case, HistoryEntry, Message, OutboxRow
from frontdesk.bus.base import Topics
from frontdesk.bus.kafka import KafkaBus
from frontdesk.codec import decode
from frontdesk.messages import DeadLetter, Triage, TriagedMessage
from frontdesk.settings import KafkaSettings
from frontdesk.topology import Topology
from tests.conftest import DOVECOT_PASSWORD, SMTP_USERS
from tests.harness.bot_api import BotApiStandIn
from tests.harness.recorder import Recorder, Seen
from tests.harness.topics import read_topic
from tests.integration.pipeline.far_side import (
    TG_CHAT,
    TG_MESSAGE,
    VISITOR,
    WA_ID,
    WA_PHONE_ID,
    Inputs,
    address,
    closing_line,
)

pytest.importorskip("torch", reason="the model extra is not installed")
pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.dovecot, pytest.mark.smtp, pytest.mark.slow]

COMPOSE = Path(__file__).resolve().parents[3] / "docker-compose.yml"
SERVICES = ["ingest-imap", "ingest-http", "ingest-telegram", "classify", "dispatch"]
IMAP_USER, PARTITIONS = "harness", 6
API_TOKEN, APP_SECRET, HOOK_SECRET = "e2e-pipeline-token-0123456789", "e2e-app-secret", "e2e-hook-secret"
BOT_TOKEN, WA_TOKEN = "777000222:AAE2E-pipeline_bot_token", "EAAG-e2e-pipeline"
TG_PATH, WA_PATH, HOOK_PATH = f"/bot{BOT_TOKEN}/sendMessage", f"/v21.0/{WA_PHONE_ID}/messages", "/hooks/frontdesk"


@pytest.fixture()
def far() -> Iterator[Recorder]:
    server = Recorder()
    yield server
    server.close()


@pytest.fixture()
def bot_api() -> Iterator[BotApiStandIn]:
    server = BotApiStandIn(BOT_TOKEN)
    yield server
    server.close()


def topology(run: str, tmp_path: Path, kafka: Any, database_url: str, dovecot: Any, smtp: Any, far: Recorder,
             bot_api: BotApiStandIn, folder: str) -> Topology:
    user, password = next(iter(SMTP_USERS.items()))
    mailbox = {"name": "support", "host": dovecot.host, "port": dovecot.port, "security": "none",
               "username": IMAP_USER, "password": DOVECOT_PASSWORD, "folders": [folder], "poll_interval_s": 1.0}
    return Topology.from_compose(
        COMPOSE, {"kafka": kafka.bootstrap, "postgres": database_url, "smtp": (smtp.host, smtp.port)},
        services=SERVICES, replicas={"classify": 1}, log_dir=tmp_path / "logs", state_dir=tmp_path / "state",
        volumes={"model-cache": ClassifierSettings().cache_dir}, backoff=(1.0, 10.0),
        env_extra={"FRONTDESK_BUS_TOPIC_PREFIX": f"e2e{run}.", "FRONTDESK_CLASSIFIER_GROUP": f"e2e-{run}-classify",
                   "FRONTDESK_DISPATCH_GROUP": f"e2e-{run}-dispatch", "FRONTDESK_CLASSIFIER_THREADS": "1",
                   "FRONTDESK_DISPATCH_RELAY_INTERVAL_S": "0.2", "HF_HUB_OFFLINE": "1",
                   "FRONTDESK_IMAP_MAILBOXES": json.dumps([mailbox]),
                   "FRONTDESK_HTTP_API_TOKENS": json.dumps([API_TOKEN]), "FRONTDESK_HTTP_META_APP_SECRET": APP_SECRET,
                   "FRONTDESK_TELEGRAM_BOT_TOKEN": BOT_TOKEN, "FRONTDESK_TELEGRAM_API_BASE": bot_api.base,
                   "FRONTDESK_TELEGRAM_POLL_TIMEOUT_S": "2",
                   "FRONTDESK_REPLIES_TELEGRAM_API_BASE": far.base, "FRONTDESK_REPLIES_TELEGRAM_BOT_TOKEN": BOT_TOKEN,
                   "FRONTDESK_REPLIES_WHATSAPP_API_BASE": far.base, "FRONTDESK_REPLIES_WHATSAPP_ACCESS_TOKEN": WA_TOKEN,
                   "FRONTDESK_REPLIES_WHATSAPP_PHONE_NUMBER_ID": WA_PHONE_ID,
                   "FRONTDESK_REPLIES_WEBHOOK_URL": f"{far.base}{HOOK_PATH}",
                   "FRONTDESK_REPLIES_WEBHOOK_SECRET": HOOK_SECRET,
                   "FRONTDESK_SMTP_SECURITY": "starttls", "FRONTDESK_SMTP_USERNAME": user,
                   "FRONTDESK_SMTP_PASSWORD": password, "FRONTDESK_SMTP_CA_FILE": str(smtp.ca_pem_path)})


def wait_until(what: str, done: Callable[[], bool], timeout: float, topo: Topology, bus: KafkaBus) -> None:
    """Poll ``done``; on timeout fail with the dead letters and every process's log tail."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            letters = [decode(r.value, DeadLetter) for r in read_topic(bus, bus.topics.deadletter)]
            dead = "\n".join(f"{d.stage} {d.message_id}: {d.reason}" for d in letters) or "(none)"
            tails = "\n".join(f"--- {p.name} ---\n{p.log_tail(15)}" for ps in topo.processes.values() for p in ps)
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\ndead letters:\n{dead}\n{tails}")
        time.sleep(0.5)


def post_inputs(http: httpx.Client, inputs: Inputs) -> None:
    """The WhatsApp webhook signed with the app secret, and the chat on the messages API."""
    raw = json.dumps(inputs.whatsapp, ensure_ascii=False).encode()
    signature = "sha256=" + hmac.new(APP_SECRET.encode(), raw, hashlib.sha256).hexdigest()
    answer = http.post("/webhooks/meta", content=raw,
                       headers={"X-Hub-Signature-256": signature, "Content-Type": "application/json"})
    assert answer.status_code == 200 and answer.json()["published"] == 1, answer.text
    answer = http.post("/v1/messages", json=inputs.chat, headers={"Authorization": f"Bearer {API_TOKEN}"})
    assert answer.status_code == 202, answer.text


def scalar(engine: Engine, query: Any) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(query) or 0)


def stored(engine: Engine) -> tuple[dict[str, Any], list[Any]]:
    """External id -> its message's case row; (case reference, detail) of every suppressed acknowledgement."""
    with engine.connect() as conn:
        rows = conn.execute(select(Message.external_id, Message.connector, Case.reference, Case.category, Case.language,
                                   Case.urgency, Case.queue, Case.routing_rule, Case.acknowledged, Case.message_count)
                            .join(Case, Case.id == Message.case_id)).all()
        suppressed = conn.execute(select(Case.reference, HistoryEntry.detail).join(Case, Case.id == HistoryEntry.case_id)
                                  .where(HistoryEntry.event == "ack_suppressed")).all()
    return {r.external_id: r for r in rows}, list(suppressed)


def check_cases(inputs: Inputs, follow_up_id: str, cases: dict[str, Any], suppressed: list[Any],
                bus: KafkaBus) -> None:
    """Six cases as expected, the follow-up in the Russian one, routed as config/routing.yaml says."""
    expected = inputs.expected()
    assert set(cases) == {*expected, follow_up_id}, sorted(cases)
    assert len({r.reference for r in cases.values()}) == 6, "six inputs, six cases: the follow-up joined its case"
    ru_case = cases[inputs.ru["Message-ID"]]
    assert cases[follow_up_id].reference == ru_case.reference and ru_case.message_count == 2
    for external_id, (connector, categories, language, acknowledged) in expected.items():
        row = cases[external_id]
        assert (row.connector, row.acknowledged) == (connector, acknowledged), row
        if categories:
            assert row.category in categories and row.language == language, row
    assert [(ref, d["reason"]) for ref, d in suppressed] == [(cases[inputs.auto["Message-ID"]].reference,
                                                               "auto_submitted")]
    # The queue of each case: the first matching rule for its first message at the case's urgency.
    routing = RoutingTable.load(CONFIG_DIR / "routing.yaml")
    triaged = [decode(r.value, TriagedMessage) for r in read_topic(bus, bus.topics.triaged)]
    assert sorted(t.message.external_id for t in triaged) == sorted(cases), "each message triaged once"
    for tm in triaged:
        row = cases[tm.message.external_id]
        if tm.message.external_id in expected:
            as_case = tm.model_copy(update={"triage": Triage(**{**tm.triage.model_dump(), "urgency": row.urgency})})
            route = routing.route(as_case)
            assert (row.queue, row.routing_rule) == (route.queue, route.rule), (row, tm.triage)


def check_events(cases: dict[str, Any], ru_reference: str, bus: KafkaBus) -> None:
    """One ``created`` per case and one ``updated`` (the follow-up) on the cases topic; no dead letter."""
    events = [json.loads(r.value) for r in read_topic(bus, bus.topics.cases)]
    assert len({e["event_id"] for e in events}) == len(events) == 7, events
    created = Counter(e["case"]["reference"] for e in events if e["type"] == "created")
    assert created == {r.reference: 1 for r in cases.values()}
    [updated] = [e for e in events if e["type"] == "updated"]
    assert (updated["case"]["reference"], updated["case"]["message_count"]) == (ru_reference, 2)
    assert "message_added" in updated["changes"]
    assert read_topic(bus, bus.topics.deadletter) == []


def check_email_acks(inputs: Inputs, cases: dict[str, Any], acks: list[Any]) -> None:
    """One acknowledgement per acknowledgeable mail, to its sender, in the sender's language, threaded."""
    assert sorted(r for m in acks for r in m.rcpt_tos) == sorted([address(inputs.ru), address(inputs.az_cyrl)]), \
        "exactly one each; none for the auto-reply or the follow-up"
    for original, language in ((inputs.ru, "ru"), (inputs.az_cyrl, "az")):
        [ack] = [m for m in acks if address(original) in m.rcpt_tos]
        assert ack.message["To"] == address(original) and ack.tls
        assert (ack.message["In-Reply-To"], ack.message["Auto-Submitted"]) == (original["Message-ID"], "auto-replied")
        body = str(ack.message.get_body(("plain",)).get_content())
        assert cases[original["Message-ID"]].reference in body and closing_line(language) in body, body


def check_platform_acks(inputs: Inputs, cases: dict[str, Any], seen: list[Seen]) -> None:
    """Telegram sendMessage to the chat, WhatsApp messages to the wa_id, the signed webhook for the chat API."""
    paths: dict[str, list[Seen]] = {}
    for request in seen:
        paths.setdefault(request.path, []).append(request)
    assert sorted(paths) == sorted([TG_PATH, WA_PATH, HOOK_PATH]), list(paths)
    [tg] = paths[TG_PATH]
    assert tg.json["chat_id"] == TG_CHAT and tg.json["reply_parameters"]["message_id"] == TG_MESSAGE
    assert cases[f"{TG_CHAT}:{TG_MESSAGE}"].reference in tg.json["text"] and closing_line("tr") in tg.json["text"]
    [wa] = paths[WA_PATH]
    assert wa.json["to"] == WA_ID and wa.headers["authorization"] == f"Bearer {WA_TOKEN}"
    wa_text = wa.json["text"]["body"]
    assert cases[f"wamid.E2E{inputs.run}"].reference in wa_text and closing_line("az") in wa_text
    [hook] = paths[HOOK_PATH]
    signature = hmac.new(HOOK_SECRET.encode(), hook.raw, hashlib.sha256).hexdigest()
    assert hook.headers["x-frontdesk-signature"] == f"sha256={signature}"
    assert (hook.json["platform"], hook.json["recipient"], hook.json["mode"]) == ("webchat", VISITOR, "chat")
    assert cases[inputs.chat["external_id"]].reference in hook.json["body"]
    assert closing_line("en") in hook.json["body"]


def test_every_source_becomes_a_routed_acknowledged_case(  # type: ignore[no-untyped-def]
        kafka_broker, postgres_server, dovecot_server, smtp_server, far: Recorder, bot_api: BotApiStandIn,
        tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:8]
    inputs, folder = Inputs(run), f"e2e{run}"
    database_url = postgres_server.create_database(f"e2e_{run}")
    bus = KafkaBus(KafkaSettings(bootstrap_servers=kafka_broker.bootstrap), Topics(f"e2e{run}."), partitions=PARTITIONS)
    bus.ensure_topics()
    with IMAPClient(dovecot_server.host, dovecot_server.port, ssl=False, timeout=30) as imap:
        imap.login(IMAP_USER, DOVECOT_PASSWORD)
        imap.create_folder(folder)  # fresh: other tests' mail in this account stays out of the run
    topo = topology(run, tmp_path, kafka_broker, database_url, dovecot_server, smtp_server, far, bot_api, folder)
    engine = create_engine(database_url)
    customers = {address(m) for m in inputs.mails}

    def our_acks() -> list[Any]:
        return [m for m in smtp_server.messages if set(m.rcpt_tos) & customers]

    t0 = time.monotonic()
    with topo:
        topo.wait_ready(600)
        for msg in inputs.mails:
            dovecot_server.append(IMAP_USER, msg.as_bytes(), folder, create=False)
        with httpx.Client(base_url=f"http://127.0.0.1:{topo.processes['ingest-http'][0].env['FRONTDESK_HTTP_PORT']}",
                          timeout=30) as http:
            post_inputs(http, inputs)
        bot_api.add(inputs.telegram)
        wait_until("6 cases", lambda: scalar(engine, select(func.count()).select_from(Case)) >= 6, 600, topo, bus)
        wait_until("2 email and 3 platform acknowledgements",
                   lambda: len(our_acks()) >= 2 and len(far.seen()) >= 3, 300, topo, bus)
        first_wave = time.monotonic() - t0
        [ru_ack] = [m for m in our_acks() if address(inputs.ru) in m.rcpt_tos]
        follow_up = inputs.follow_up(ru_ack.message["Message-ID"])
        dovecot_server.append(IMAP_USER, follow_up.as_bytes(), folder, create=False)
        wait_until("the follow-up stored", lambda: scalar(engine, select(func.count()).select_from(Message)) >= 7,
                   300, topo, bus)
        wait_until("an empty outbox", lambda: scalar(engine, select(func.count()).select_from(OutboxRow).where(
            OutboxRow.status == "pending")) == 0, 120, topo, bus)
        time.sleep(5)  # anything beyond the expected counts would show up now
    exit_codes = topo.stop()

    cases, suppressed = stored(engine)
    check_cases(inputs, follow_up["Message-ID"], cases, suppressed, bus)
    check_events(cases, cases[inputs.ru["Message-ID"]].reference, bus)
    check_email_acks(inputs, cases, our_acks())
    check_platform_acks(inputs, cases, far.seen())
    assert inputs.telegram["update_id"] + 1 in bot_api.offsets(), "the update was confirmed to the Bot API"
    assert all(p.starts == 1 for ps in topo.processes.values() for p in ps), "no process crashed"
    assert exit_codes == {name: 0 for name in exit_codes}, f"not a clean stop: {exit_codes}"
    print(f"\nend to end: 6 cases and 5 acknowledgements {first_wave:.0f}s after start (model load included), "
          f"follow-up threaded, total {time.monotonic() - t0:.0f}s")
    engine.dispose()
    bus.close()
