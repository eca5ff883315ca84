"""What ``frontdesk ingest imap --once`` and ``ingest telegram --once`` print: the messages published
and, apart, the records dead-lettered (a dead letter is no message on the inbound topic), against
the real Dovecot and the Bot API stand-in, through the real command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from imapclient import IMAPClient

from frontdesk.bus.sqlite import SqliteBus
from tests.conftest import DOVECOT_PASSWORD
from tests.harness.bot_api import BotApiStandIn

ROOT = Path(__file__).resolve().parents[3]
TOKEN = "123456789:AAH-test_token_for_the_stand_in"


def mail(n: int, body: bytes = b"Salam, pulum gelmir.") -> bytes:
    return (f"From: customer{n}@mail.az\r\nTo: support@bet.example\r\nSubject: withdrawal {n}\r\n"
            f"Message-ID: <once-{n}-{uuid.uuid4().hex}@mail.az>\r\n\r\n").encode() + body + b"\r\n"


def frontdesk(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FRONTDESK_STORAGE_DATA_DIR": str(tmp_path / "var"),
           "FRONTDESK_LOG_LEVEL": "WARNING", "FRONTDESK_METRICS_PORT": "0", **(env or {})}
    return subprocess.run([sys.executable, "-m", "frontdesk", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def topic_sizes(tmp_path: Path) -> tuple[int, int]:
    bus = SqliteBus(tmp_path / "var" / "bus.sqlite3")
    try:
        return (sum(bus.end_offsets(bus.topics.inbound).values()),
                sum(bus.end_offsets(bus.topics.deadletter).values()))
    finally:
        bus.close()


@pytest.mark.dovecot
def test_imap_once_counts_messages_and_dead_letters_apart(dovecot_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder = f"t{uuid.uuid4().hex[:10]}"
    with IMAPClient(dovecot_server.host, dovecot_server.port, ssl=False, timeout=30) as imap:
        imap.login("support", DOVECOT_PASSWORD)
        imap.create_folder(folder)
        imap.multiappend(folder, [mail(1), mail(2), mail(3, b"x" * 5000)])  # the third is over the limit
    config = tmp_path / "frontdesk.yaml"
    config.write_text(yaml.safe_dump({"imap": {"max_message_bytes": 4096, "mailboxes": [
        {"name": "support", "host": dovecot_server.host, "port": dovecot_server.port, "security": "none",
         "username": "support", "password": DOVECOT_PASSWORD, "folders": [folder]}]}}))
    first = frontdesk(tmp_path, "--config", str(config), "ingest", "imap", "--once")
    assert first.returncode == 0, first.stderr[-1500:]
    assert first.stdout.strip() == "published 2 message(s), dead-lettered 1 (frontdesk deadletter list)"
    assert topic_sizes(tmp_path) == (2, 1)
    again = frontdesk(tmp_path, "--config", str(config), "ingest", "imap", "--once")
    assert again.returncode == 0 and again.stdout.strip() == "published 0 message(s)", again.stderr[-1500:]


@pytest.fixture()
def api() -> Iterator[BotApiStandIn]:
    server = BotApiStandIn(TOKEN)
    yield server
    server.close()


def update(update_id: int, date: object) -> dict[str, object]:
    return {"update_id": update_id, "message": {"message_id": update_id, "date": date, "text": "Salam, bonus?",
                                                "chat": {"id": 5123456789, "type": "private"},
                                                "from": {"id": 5123456789, "is_bot": False, "first_name": "Aysel"}}}


def test_telegram_once_counts_messages_and_dead_letters_apart(api: BotApiStandIn, tmp_path: Path) -> None:
    api.add(update(1, 1767263200), update(2, "yesterday"))  # the second is malformed: dead-lettered
    env = {"FRONTDESK_TELEGRAM_BOT_TOKEN": TOKEN, "FRONTDESK_TELEGRAM_API_BASE": api.base}
    done = frontdesk(tmp_path, "ingest", "telegram", "--once", env=env)
    assert done.returncode == 0, done.stderr[-1500:]
    assert done.stdout.strip() == "published 1 message(s), dead-lettered 1 (frontdesk deadletter list)"
    assert topic_sizes(tmp_path) == (1, 1)
    assert json.loads(frontdesk(tmp_path, "deadletter", "list", "--json").stdout)[0]["stage"] == "ingest"
