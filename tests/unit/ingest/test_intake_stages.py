"""What ``frontdesk run`` starts for intake: exactly the connectors that are configured."""

from __future__ import annotations

import os
import time
from pathlib import Path

from frontdesk.bus.memory import MemoryBus
from frontdesk.health import Probes
from ingest.blobs import PACKS, SWEEP_AFTER_S, BlobStore
from ingest.commands import connectors, intake_stages
from ingest.http import HttpIntakeSettings
from ingest.imap_settings import ImapSettings, MailboxSettings
from ingest.telegram import TelegramSettings


def test_nothing_configured_starts_nothing_and_says_what_to_do(tmp_path: Path) -> None:
    said: list[str] = []
    stages = intake_stages(MemoryBus(), tmp_path, tmp_path / "blobs", ImapSettings(), HttpIntakeSettings(),
                           TelegramSettings(), said.append)
    assert stages == {}
    assert any("no mailboxes configured" in line for line in said)


def test_each_configured_connector_is_a_stage(tmp_path: Path) -> None:
    box = MailboxSettings(name="support", host="imap.example", username="u", password="p")  # type: ignore[arg-type]
    said: list[str] = []
    stages = intake_stages(MemoryBus(), tmp_path, tmp_path / "blobs", ImapSettings(mailboxes=(box,)),
                           HttpIntakeSettings(api_tokens=("t" * 24,)),  # type: ignore[arg-type]
                           TelegramSettings(bot_token="123:abc", connector="tg"),  # type: ignore[arg-type]
                           said.append)
    assert set(stages) == {"imap:support", "http", "tg"}
    assert all(callable(fn) for fn in stages.values())
    assert any("polling Telegram" in line for line in said) and any("HTTP intake" in line for line in said)


def test_mailbox_connectors_sweep_packs_that_crashed_writers_left(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    kept = store.put(b"committed")
    orphan, young = store.stage(b"never committed"), store.stage(b"being committed right now")
    old = time.time() - 2 * SWEEP_AFTER_S
    for pack in (tmp_path / "blobs" / PACKS).iterdir():
        if pack.name != young.pack:
            os.utime(pack, (old, old))
    box = MailboxSettings(name="support", host="imap.example", username="u", password="p")  # type: ignore[arg-type]
    connectors(ImapSettings(mailboxes=(box,)), MemoryBus(), tmp_path, tmp_path / "blobs")
    left = {p.name for p in (tmp_path / "blobs" / PACKS).iterdir()}
    assert orphan.pack not in left and young.pack in left and len(left) == 2
    assert store.get(kept) == b"committed"


def test_frontdesk_run_is_ready_only_while_every_mailbox_and_poller_answers(tmp_path: Path) -> None:
    box = MailboxSettings(name="support", host="imap.example", username="u", password="p")  # type: ignore[arg-type]
    probes = Probes()
    telegram = TelegramSettings(bot_token="123:abc", connector="tg")  # type: ignore[arg-type]
    stages = intake_stages(MemoryBus(), tmp_path, tmp_path / "blobs", ImapSettings(mailboxes=(box,)),
                           HttpIntakeSettings(), telegram, lambda line: None, probes)
    assert probes.readiness() == (True, {"status": "ready", "checks": {"imap:support": "ok", "tg": "ok"}})
    mailbox = stages["imap:support"].__self__.health  # type: ignore[attr-defined]
    mailbox.consecutive_failures, mailbox.last_error = 3, "imap:support: cannot connect to imap.example:993: refused"
    ready, body = probes.readiness()
    assert not ready and body["checks"]["tg"] == "ok"
    assert body["checks"]["imap:support"] == ("SourceError: 3 failed attempt(s) since the last success: "
                                              "imap:support: cannot connect to imap.example:993: refused")
    mailbox.consecutive_failures = 0  # the next pass succeeded
    stages["tg"].__self__.health.consecutive_failures = 1  # type: ignore[attr-defined]
    ready, body = probes.readiness()
    assert not ready and body["checks"]["imap:support"] == "ok" and body["reason"].startswith("tg: SourceError")
