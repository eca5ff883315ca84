"""``frontdesk cases list`` on a SQLite case store holding more cases than it lists at once."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

from typer.testing import CliRunner

from dispatch.commands import open_store
from dispatch.settings import DispatchSettings
from frontdesk.cli import app
from frontdesk.messages import InboundMessage, Party, ThreadHints, Triage, TriagedMessage

NOW = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)
runner = CliRunner()


def chat(n: int) -> TriagedMessage:
    msg = InboundMessage.create(
        connector="telegram", external_id=f"{n}:1", channel="chat", platform="telegram",
        sender=Party(platform_id=str(n)), text=f"bonus {n}", received_at=NOW,
        thread=ThreadHints(conversation_id=str(n)))
    triage = Triage(category="bonuses", urgency="normal", language="az", model_version="test")
    return TriagedMessage(message=msg, triage=triage, triaged_at=NOW)


def fill(data_dir: Path, cases: int) -> None:
    store = open_store(DispatchSettings(), data_dir)
    try:
        batch = [chat(n) for n in range(cases)]
        for start in range(0, cases, 16):
            store.apply_many(batch[start : start + 16])
    finally:
        store.close()


def test_a_list_cut_at_its_limit_says_so_and_limit_lists_more(tmp_path: Path) -> None:
    fill(tmp_path, 501)
    env = {**os.environ, "FRONTDESK_STORAGE_DATA_DIR": str(tmp_path)}
    cut = runner.invoke(app, ["cases", "list"], env=env)
    assert cut.exit_code == 0, cut.output
    lines = cut.output.strip().splitlines()
    assert len(lines) == 1 + 500 + 1  # header, the 500 most urgent, the count
    assert lines[-1] == "500 of 501 case(s), the most urgent first (--limit N for more)"
    every = runner.invoke(app, ["cases", "list", "--limit", "1000", "--json"], env=env)
    assert every.exit_code == 0, every.output
    assert len(json.loads(every.stdout)) == 501
    few = runner.invoke(app, ["cases", "list", "--limit", "2", "--json"], env=env)
    assert len(json.loads(few.stdout)) == 2 and "2 of 501 case(s)" in few.stderr


def test_a_whole_list_says_how_many(tmp_path: Path) -> None:
    fill(tmp_path, 3)
    env = {**os.environ, "FRONTDESK_STORAGE_DATA_DIR": str(tmp_path)}
    result = runner.invoke(app, ["cases", "list"], env=env)
    assert result.exit_code == 0 and result.output.strip().splitlines()[-1] == "3 case(s)", result.output
