"""The Telegram long-polling connector against a local stand-in for the Bot API (real HTTP, real SQLite bus).

The stand-in (:mod:`tests.harness.bot_api`) keeps Telegram's getUpdates semantics: it returns updates with ``update_id >= offset``
(at most ``limit``), forgets everything below the offset it is called with (that is how Telegram
confirms updates: a poller that advanced its offset too early would lose them here), long-polls for
``timeout`` seconds when nothing is pending, and records every request.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from frontdesk.bus.sqlite import SqliteBus
from frontdesk.codec import decode
from frontdesk.errors import SourceAuthError, SourceError
from frontdesk.messages import DeadLetter, InboundMessage
from ingest.http.telegram_update import telegram_update
from ingest.telegram import OffsetStore, TelegramPoller, TelegramSettings
from tests.harness.bot_api import BotApiStandIn

ROOT = Path(__file__).resolve().parents[3]
FIXTURES = ROOT / "tests" / "fixtures" / "webhooks" / "telegram"
TOKEN = "123456789:AAH-test_token_for_the_stand_in"
SKIPPED = {874512311, 874512312}  # callback_query, new_chat_members: not customer messages


def fixture_updates() -> list[dict[str, Any]]:
    return sorted((json.loads(p.read_text()) for p in FIXTURES.glob("*.json")), key=lambda u: u["update_id"])


@pytest.fixture()
def api() -> Iterator[BotApiStandIn]:
    server = BotApiStandIn(TOKEN)
    yield server
    server.close()


def settings(api: BotApiStandIn, **over: object) -> TelegramSettings:
    fields: dict[str, object] = dict(bot_token=SecretStr(TOKEN), api_base=api.base, poll_timeout_s=1,
                                     backoff_initial_s=0.05, backoff_max_s=0.2)
    fields.update(over)
    return TelegramSettings(**fields)  # type: ignore[arg-type]


def inbound(bus: SqliteBus) -> list[InboundMessage]:
    out = []
    with bus.consumer(f"check-{uuid.uuid4().hex}", [bus.topics.inbound]) as consumer:
        while batch := consumer.poll(1000, timeout=0.3):
            out.extend(decode(r.value, InboundMessage) for r in batch)
    return out


def webhook_ids() -> dict[str, str]:
    """external id -> message id, as the webhook's normaliser gives them."""
    msgs = (telegram_update(u, connector="telegram", received_at=time_now()) for u in fixture_updates())
    return {m.external_id: m.id for m in msgs if m is not None}


def time_now():  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime

    return datetime.now(UTC)


def test_updates_reach_the_bus_with_their_identities(api: BotApiStandIn, bus: SqliteBus, tmp_path: Path) -> None:
    api.add(*fixture_updates())
    poller = TelegramPoller(settings(api), bus, tmp_path / "tg")
    assert poller.run_once() == 10
    assert poller.run_once() == 0
    msgs = {m.external_id: m for m in inbound(bus)}
    assert {e: m.id for e, m in msgs.items()} == webhook_ids()  # same ids as the webhook
    assert all(m.connector == "telegram" and m.platform == "telegram" and m.channel == "chat" for m in msgs.values())
    group = msgs["-1001987654321:98211"]
    assert group.thread.conversation_id == "-1001987654321" and group.sender.platform_id == "6011223344"
    assert msgs["-1003344556677:4410"].thread.conversation_id == "-1003344556677:4402"
    assert msgs["5123456789:1204"].sender.handle == "elvin_m"
    assert any(e.startswith("5123456789:1204#edit:1767261655.") and m.flags.edited for e, m in msgs.items())
    # the skipped updates advanced the offset too; the request carried the Bot API parameters
    assert OffsetStore(tmp_path / "tg", "telegram").load() == 874512313
    first = api.requests[0]
    assert first["path"] == f"/bot{TOKEN}/getUpdates" and first["timeout"] == 0 and "offset" not in first
    assert set(first["allowed_updates"]) == {"message", "edited_message", "channel_post", "edited_channel_post"}
    assert api.offsets()[1] == 874512313


def test_malformed_updates_are_dead_lettered_and_non_customer_messages_skipped(
        api: BotApiStandIn, bus: SqliteBus, tmp_path: Path) -> None:
    good, broken, forwarded, anonymous = (json.loads((FIXTURES / "group_text.json").read_text()) for _ in range(4))
    broken["update_id"], broken["message"]["date"] = 2, "yesterday"
    forwarded["update_id"] = 3
    forwarded["message"].update(is_automatic_forward=True, sender_chat={"id": -1002111111111, "type": "channel"},
                                **{"from": {"id": 777000, "is_bot": False, "first_name": "Telegram"}})
    anonymous["update_id"] = 4
    anonymous["message"].update(sender_chat=anonymous["message"]["chat"],
                                **{"from": {"id": 1087968824, "is_bot": True, "first_name": "Group"}})
    good["update_id"] = 1
    api.add(good, broken, forwarded, anonymous)
    poller = TelegramPoller(settings(api), bus, tmp_path / "tg")
    assert poller.run_once() == 2
    assert [m.sender.platform_id for m in inbound(bus)] == ["6011223344"]
    with bus.consumer(f"check-{uuid.uuid4().hex}", [bus.topics.deadletter]) as consumer:
        (record,) = consumer.poll(100, timeout=0.3)
    letter = decode(record.value, DeadLetter)
    assert (letter.stage, letter.error_type, letter.source_topic, letter.reason) == (
        "ingest", "PayloadError", "telegram/update:2", "message.date: expected a Unix timestamp")
    assert json.loads(base64.b64decode(letter.value_b64)) == broken
    assert record.key == b"telegram:update:2" and record.header("frontdesk-telegram-update-id") == b"2"
    health = poller.health
    assert (health.published, health.dead_lettered, health.skipped) == (1, 1, 2)
    assert OffsetStore(tmp_path / "tg", "telegram").load() == 5


def test_restart_resumes_at_the_stored_offset(api: BotApiStandIn, bus: SqliteBus, tmp_path: Path) -> None:
    updates = fixture_updates()
    api.add(*updates[:4])
    TelegramPoller(settings(api), bus, tmp_path / "tg").run_once()
    api.add(*updates[4:])
    restarted = TelegramPoller(settings(api), bus, tmp_path / "tg")  # a new process would start like this
    assert restarted.run_once() == 10 - 4
    assert api.offsets()[-1] == updates[3]["update_id"] + 1
    ids = [m.id for m in inbound(bus)]
    assert len(ids) == len(set(ids)) == 10


def test_long_poll_delivers_a_new_update_promptly(api: BotApiStandIn, bus: SqliteBus, tmp_path: Path) -> None:
    poller = TelegramPoller(settings(api, poll_timeout_s=5), bus, tmp_path / "tg")
    stop = threading.Event()
    runner = threading.Thread(target=poller.run, args=(stop,), daemon=True)
    runner.start()
    time.sleep(0.3)
    api.add(fixture_updates()[0])
    deadline = time.monotonic() + 3
    while not inbound(bus) and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    assert [m.external_id for m in inbound(bus)] == ["5123456789:1204"]
    assert any(r["timeout"] == 5 for r in api.requests)
    api.add(fixture_updates()[1])  # ends the pending long poll
    runner.join(10)
    assert not runner.is_alive()


def test_server_errors_back_off_and_recover(api: BotApiStandIn, bus: SqliteBus, tmp_path: Path) -> None:
    api.add(*fixture_updates()[:3])
    api.fail = [(502, {"ok": False, "error_code": 502, "description": "Bad Gateway"}),
                (429, {"ok": False, "error_code": 429, "description": "Too Many Requests: retry after 0",
                       "parameters": {"retry_after": 0}})]
    poller = TelegramPoller(settings(api), bus, tmp_path / "tg")
    with pytest.raises(SourceError):
        poller.run_once()
    stop = threading.Event()
    runner = threading.Thread(target=poller.run, args=(stop,), daemon=True)
    runner.start()
    deadline = time.monotonic() + 5
    while len(inbound(bus)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    runner.join(5)
    assert len(inbound(bus)) == 3 and poller.health.consecutive_failures == 0


def test_connection_refused_is_a_source_error(bus: SqliteBus, tmp_path: Path) -> None:
    poller = TelegramPoller(TelegramSettings(bot_token=SecretStr(TOKEN), api_base="http://127.0.0.1:9"),
                            bus, tmp_path / "tg")
    with pytest.raises(SourceError) as info:
        poller.run_once()
    assert TOKEN not in str(info.value)


def test_rejected_token_stops_fast(api: BotApiStandIn, bus: SqliteBus, tmp_path: Path) -> None:
    wrong = "123456789:wrong_token"
    poller = TelegramPoller(settings(api, bot_token=SecretStr(wrong)), bus, tmp_path / "tg")
    with pytest.raises(SourceAuthError) as info:
        poller.run_once()
    assert wrong not in str(info.value)
    started = time.monotonic()
    with pytest.raises(SourceAuthError):
        poller.run(threading.Event())  # does not retry
    assert time.monotonic() - started < 2 and len(api.requests) == 2


CHILD = """
import sys
from pathlib import Path
from pydantic import SecretStr
from frontdesk import faults
from frontdesk.bus.sqlite import SqliteBus
from ingest.telegram import TelegramPoller, TelegramSettings

base, data, crash = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
if crash:
    faults.arm(crash)
bus = SqliteBus(data / "bus.sqlite3")
poller = TelegramPoller(TelegramSettings(bot_token=SecretStr({token!r}), api_base=base, limit=3), bus, data / "tg")
while True:
    before = poller.offsets.load()
    poller.run_once()
    if poller.offsets.load() == before:
        break
print("done", poller.offsets.load())
"""


def test_kill_between_publish_and_offset_write_loses_nothing(api: BotApiStandIn, tmp_path: Path) -> None:
    api.add(*fixture_updates())
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(token=TOKEN))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(script), api.base, str(tmp_path)]
    crashed = subprocess.run([*cmd, "telegram.after_publish:2"], env=env, cwd=ROOT, capture_output=True,
                             text=True, timeout=60)
    assert crashed.returncode == -9, crashed.stderr
    assert OffsetStore(tmp_path / "tg", "telegram").load() == 874512304  # first batch of 3 only
    done = subprocess.run([*cmd, ""], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "done 874512313" in done.stdout, done.stderr
    # the second run re-asked from the stored offset: the unconfirmed batch came again
    assert api.offsets()[:3] == [None, 874512304, 874512304]
    bus = SqliteBus(tmp_path / "bus.sqlite3")
    try:
        msgs = inbound(bus)
    finally:
        bus.close()
    ids = [m.id for m in msgs]
    assert set(ids) == set(webhook_ids().values())  # nothing lost
    repeated = {i for i in ids if ids.count(i) > 1}
    second_batch = {m.id for m in msgs if m.external_id in {"5123456789:1207", "5987001122:1210", "6011223344:5531"}}
    assert repeated == second_batch and len(ids) == 10 + 3  # only the crashed batch, with the same ids
