"""Chat and social acknowledgements end to end, over real servers and real HTTP.

Platform payloads are POSTed (signed) to the real HTTP intake on uvicorn → the embedded SQLite bus (and,
for one mode, real Kafka) →
a triage step → the real dispatch stage and outbox relay (``run_dispatch``, SQLite case store) → the
real Telegram / WhatsApp / Meta / webhook repliers → a recording HTTP server standing in for
api.telegram.org, graph.facebook.com and the social team's webhook receiver.

The triage step is the StageRunner with a fixed verdict per connector instead of the classifier:
the classifier is not under test here (it has its own tests), and a fixed language makes the
expected reply language certain.

Checked for each ``dispatch.public_mentions`` mode: exactly one reply per case, to the right chat id
/ recipient / comment id, in the customer's language; public mentions get nothing under ``none``, a
public reply without the case reference under ``reply``, the full acknowledgement privately under
``dm``; follow-ups in the same conversation join the case without a second acknowledgement; replayed
webhooks make neither a second case nor a second reply.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import func, select

from dispatch.cases import Context
from dispatch.chat_repliers import ChatReplySettings, build_repliers
from dispatch.commands import list_cases, run_dispatch, show_case
from dispatch.routing import RoutingTable
from dispatch.settings import DispatchSettings
from dispatch.store.models import OutboxRow
from dispatch.store.sql import SqlCaseStore
from frontdesk.bus.base import Bus, Outgoing, Record, Topics
from frontdesk.bus.kafka import KafkaBus
from frontdesk.bus.sqlite import SqliteBus
from frontdesk.codec import decode, encode
from frontdesk.messages import InboundMessage, Triage, TriagedMessage
from frontdesk.settings import KafkaSettings
from frontdesk.stage import Outcome, StageRunner
from ingest.http.server import make_server
from ingest.http.settings import HttpIntakeSettings
from tests.harness.process import free_port
from tests.harness.recorder import Recorder, Seen

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "webhooks"
API_TOKEN, TG_SECRET, APP_SECRET, HOOK_SECRET = "e2e-api-token-0123456789", "tg-e2e_secret", "app-e2e", "hook-e2e"
BOT_TOKEN, WA_TOKEN, PAGE_TOKEN = "777000111:AAE2E-bot_token", "EAAG-wa-e2e", "EAAB-page-e2e"
IG_ACCOUNT, IG_MEDIA, IG_COMMENT = "17841405726653026", "17918195224117851", "17894227972186120"
FB_POST, FB_COMMENT = "100089001122334_733012345678901", "733012345678901_1120334455667788"
LANGUAGE = {"telegram": "az", "whatsapp": "ru", "http:webchat": "tr", "instagram": "en", "http:twitter": "ru",
            "facebook": "az"}


class FixedTriage:
    """The triage step: one fixed verdict per connector (stands in for the classify stage)."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.seen: dict[str, InboundMessage] = {}

    def process(self, records: Sequence[Record]) -> list[Outcome]:
        outcomes = []
        for record in records:
            msg = decode(record.value, InboundMessage)
            self.seen[msg.external_id] = msg
            triage = Triage(category="payments", urgency="normal", language=LANGUAGE[msg.connector],
                            model_version="fixed-for-this-test")
            triaged = TriagedMessage(message=msg, triage=triage, triaged_at=datetime.now(UTC))
            outcomes.append(Outcome(record, (Outgoing(self.topic, encode(triaged), record.key),)))
        return outcomes


class Rig:
    """Intake, triage and dispatch running in threads; an HTTP client posting like the platforms do."""

    def __init__(self, tmp: Path, mode: str, far: Recorder, bus: Bus) -> None:
        self.far, self.stop, self.bus = far, threading.Event(), bus
        self.bus.ensure_topics()
        settings = DispatchSettings(public_mentions=mode, relay_interval_s=0.1,  # type: ignore[arg-type]
                                    database_url=f"sqlite:///{tmp / 'cases.sqlite3'}")
        routing = RoutingTable.load(settings.routing_file)
        self.store = SqlCaseStore(settings.database_url or "", Context(settings, routing))
        repliers = build_repliers(ChatReplySettings(
            telegram_api_base=far.base, telegram_bot_token=SecretStr(BOT_TOKEN), whatsapp_api_base=far.base,
            whatsapp_phone_number_id="106540352242922", whatsapp_access_token=SecretStr(WA_TOKEN),
            meta_api_base=far.base, meta_page_access_token=SecretStr(PAGE_TOKEN),
            webhook_url=f"{far.base}/hooks/social", webhook_secret=SecretStr(HOOK_SECRET), max_attempts=1))
        self.triage = FixedTriage(self.bus.topics.triaged)
        triage = StageRunner("triage", self.bus, self.bus.consumer("e2e-triage", [self.bus.topics.inbound]),
                             self.triage, poll_timeout=0.1)
        self.port = free_port()
        self.server = make_server(HttpIntakeSettings(
            host="127.0.0.1", port=self.port, api_tokens=(SecretStr(API_TOKEN),),
            telegram_secret_token=SecretStr(TG_SECRET), meta_app_secret=SecretStr(APP_SECRET)), self.bus)
        self.threads = [threading.Thread(target=self.server.run, name="intake"),
                        threading.Thread(target=triage.run, args=(self.stop,), name="triage"),
                        threading.Thread(target=run_dispatch, name="dispatch",
                                         args=(self.bus, self.store, settings, repliers, self.stop))]
        for thread in self.threads:
            thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=10)

    def close(self) -> None:
        self.http.close()
        self.server.should_exit = True
        self.stop.set()
        for thread in self.threads:
            thread.join(20)
        assert not any(t.is_alive() for t in self.threads)
        self.store.close()
        self.bus.close()

    # --- posting like the platforms ---------------------------------------------------------------

    def telegram(self, payload: dict[str, Any]) -> None:
        answer = self.http.post("/webhooks/telegram", json=payload,
                                headers={"X-Telegram-Bot-Api-Secret-Token": TG_SECRET})
        assert answer.status_code == 200 and answer.json()["published"] == 1, answer.text

    def meta(self, payload: dict[str, Any]) -> None:
        raw = json.dumps(payload, ensure_ascii=False).encode()
        signature = "sha256=" + hmac.new(APP_SECRET.encode(), raw, hashlib.sha256).hexdigest()
        answer = self.http.post("/webhooks/meta", content=raw, headers={"X-Hub-Signature-256": signature,
                                                                         "Content-Type": "application/json"})
        assert answer.status_code == 200 and answer.json()["published"] == 1, answer.text

    def api(self, **body: Any) -> None:
        answer = self.http.post("/v1/messages", json=body, headers={"Authorization": f"Bearer {API_TOKEN}"})
        assert answer.status_code == 202, answer.text

    # --- what the far side and the store hold --------------------------------------------------------

    def references(self) -> dict[str, str]:
        """External id of every stored message → its case reference."""
        found = {}
        for row in list_cases(self.store, None, None):
            case = show_case(self.store, row["reference"])
            assert case is not None
            found |= {m["external_id"]: row["reference"] for m in case["messages"]}
        return found

    def settle(self, messages: int, timeout: float = 30) -> None:
        """Wait until ``messages`` messages are stored and the outbox is empty, then a few relay rounds more."""
        deadline = time.monotonic() + timeout
        while len(self.references()) < messages or self.store.read(lambda s: s.scalar(
                select(func.count()).select_from(OutboxRow).where(OutboxRow.status == "pending"))):
            assert time.monotonic() < deadline, f"not settled: {len(self.references())}/{messages} messages"
            time.sleep(0.1)
        time.sleep(1.0)


@pytest.fixture()
def far() -> Iterator[Recorder]:
    server = Recorder()
    yield server
    server.close()


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))


def webchat(external_id: str, text: str) -> dict[str, Any]:
    return {"channel": "chat", "platform": "webchat", "external_id": external_id, "text": text,
            "author": {"id": "visitor-7f3a", "name": "Emre"}, "conversation_id": "widget-conv-51"}


TWEET = {"channel": "social", "platform": "twitter", "external_id": "1790012345678901234",
         "author": {"id": "44196397", "handle": "@rauf_az", "name": "Rauf"},
         "text": "@BetAz 3 gündür pul çıxarışı gözləyirəm!",
         "permalink": "https://x.com/rauf_az/status/1790012345678901234"}


def by_path(seen: list[Seen]) -> dict[str, list[Seen]]:
    grouped: dict[str, list[Seen]] = {}
    for request in seen:
        grouped.setdefault(request.path, []).append(request)
    return grouped


def signed(request: Seen) -> bool:
    expected = hmac.new(HOOK_SECRET.encode(), request.raw, hashlib.sha256).hexdigest()
    return request.headers.get("x-frontdesk-signature") == f"sha256={expected}"


@pytest.mark.parametrize(("bus_kind", "mode"), [
    ("sqlite", "none"), ("sqlite", "reply"), ("sqlite", "dm"), pytest.param("kafka", "reply", marks=pytest.mark.kafka),
])
def test_one_reply_per_case_on_the_customers_channel(request: pytest.FixtureRequest, tmp_path: Path, far: Recorder,
                                                     bus_kind: str, mode: str) -> None:
    if bus_kind == "kafka":
        broker = request.getfixturevalue("kafka_broker")
        bus: Bus = KafkaBus(KafkaSettings(bootstrap_servers=broker.bootstrap), Topics(f"e2e{uuid.uuid4().hex[:6]}."))
    else:
        bus = SqliteBus(tmp_path / "bus.sqlite3")
    rig = Rig(tmp_path, mode, far, bus)
    try:
        rig.telegram(fixture("telegram/private_text"))
        rig.meta(fixture("whatsapp/text"))
        rig.api(**webchat("wc-1", "Merhaba, yatırdığım para hesabıma geçmedi"))
        rig.meta(fixture("instagram/mentions_comment"))
        rig.meta(fixture("messenger/mention_comment"))
        rig.api(**TWEET)
        expected = 3 if mode == "none" else 6
        first_wave = far.wait_for(expected)

        # Follow-ups in the same conversations, then the very same webhooks again.
        rig.telegram(fixture("telegram/photo_caption"))
        rig.meta(fixture("whatsapp/image"))
        rig.api(**webchat("wc-2", "Hâlâ bekliyorum"))
        for replay in ("whatsapp/text", "instagram/mentions_comment", "messenger/mention_comment"):
            rig.meta(fixture(replay))
        rig.telegram(fixture("telegram/private_text"))
        rig.api(**TWEET)
        rig.settle(messages=9)
        refs = rig.references()
        seen = far.seen()
    finally:
        rig.close()

    # Media stay on the platform; their references travel with the message.
    [photo] = rig.triage.seen["5123456789:1207"].attachments
    assert (photo.ref, photo.sha256_of, photo.stored_at) == (
        fixture("telegram/photo_caption")["message"]["photo"][-1]["file_id"], "reference", None)
    [image] = rig.triage.seen["wamid.HBgMOTk0NTAxMjM0NTY3FQIAEhgUM0VCMDVCMkE1NjI2NkMwMTU4NUIA"].attachments
    assert (image.ref, image.sha256_of) == ("1003383421387256", "content")

    assert seen == first_wave, "follow-ups and replays must not be acknowledged again"
    assert len(set(refs.values())) == 6, "replays and follow-ups make no new case"
    assert refs["5123456789:1207"] == refs["5123456789:1204"] and refs["wc-2"] == refs["wc-1"]
    paths = by_path(seen)

    [tg] = paths.pop(f"/bot{BOT_TOKEN}/sendMessage")
    assert tg.json["chat_id"] == 5123456789 and tg.json["reply_parameters"]["message_id"] == 1204
    assert tg.json["text"].startswith("Salam, Elvin Məmmədov!") and refs["5123456789:1204"] in tg.json["text"]

    [wa] = paths.pop("/v21.0/106540352242922/messages")
    whatsapp_id = "wamid.HBgMOTk0NTAxMjM0NTY3FQIAEhgUM0VCMEQ0NzE4QTdGNzBDRjQ3RTIA"
    assert (wa.json["to"], wa.json["context"]["message_id"]) == ("994501234567", whatsapp_id)
    body = wa.json["text"]["body"]
    assert body.startswith("Здравствуйте, Leyla Əliyeva!") and refs[whatsapp_id] in body

    hooks = [r.json for r in paths.pop("/hooks/social")]
    assert all(signed(r) for r in far.seen() if r.path == "/hooks/social")
    [chat] = [h for h in hooks if h["mode"] == "chat"]
    assert (chat["platform"], chat["recipient"], chat["in_reply_to"]) == ("webchat", "visitor-7f3a", "wc-1")
    assert chat["body"].startswith("Merhaba Emre,") and refs["wc-1"] in chat["body"]
    mentions = [h for h in hooks if h["mode"] != "chat"]
    meta = paths  # what is left: the Graph API calls for the two Meta mentions
    if mode == "none":
        assert mentions == [] and meta == {}
        return

    [tweet] = mentions
    assert tweet["target"]["permalink"] == TWEET["permalink"] and tweet["target"]["author_id"] == "44196397"
    ig_ref, fb_ref, tweet_ref = refs[f"mention:{IG_COMMENT}"], refs[f"mention:{FB_COMMENT}"], refs[TWEET["external_id"]]
    if mode == "reply":
        assert (tweet["mode"], tweet["recipient"]) == ("public_reply", TWEET["external_id"])
        assert tweet["body"].startswith("Спасибо, что написали")
        [ig] = meta.pop(f"/v21.0/{IG_ACCOUNT}/mentions")
        assert ig.json == {"media_id": IG_MEDIA, "comment_id": IG_COMMENT, "message": ig.json["message"]}
        assert ig.json["message"].startswith("Thank you for reaching out")
        [fb] = meta.pop(f"/v21.0/{FB_COMMENT}/comments")
        assert fb.json["message"].startswith("Bizə yazdığınız üçün")
        public_texts = [tweet["body"], ig.json["message"], fb.json["message"]]
        assert not any(ref in text or "FD-" in text for text in public_texts for ref in (ig_ref, fb_ref, tweet_ref))
    else:
        assert (tweet["mode"], tweet["recipient"]) == ("dm", "44196397") and tweet_ref in tweet["body"]
        private = meta.pop("/v21.0/me/messages")
        assert {p.json["recipient"]["comment_id"]: p.json for p in private}.keys() == {IG_COMMENT, FB_COMMENT}
        for request in private:
            text = request.json["message"]["text"]
            if request.json["recipient"]["comment_id"] == IG_COMMENT:
                assert text.startswith("Hello,") and ig_ref in text
            else:
                assert text.startswith("Salam, Nigar Məmmədova!") and fb_ref in text
                assert request.json["messaging_type"] == "RESPONSE"
    assert meta == {}, f"unexpected calls: {list(meta)}"
