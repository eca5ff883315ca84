from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from frontdesk.cli import app

runner = CliRunner()


def test_help_lists_stage_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("run", "ingest", "classify", "dispatch", "cases", "replay", "train", "eval", "parse-mail"):
        assert command in result.output


def test_module_entry_point() -> None:
    out = subprocess.run([sys.executable, "-m", "frontdesk", "version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0.1.0"


def test_replay_on_an_empty_bus_and_an_unknown_source(tmp_path: Path) -> None:
    env = {**os.environ, "FRONTDESK_STORAGE_DATA_DIR": str(tmp_path)}
    result = runner.invoke(app, ["replay", "--from", "deadletter", "--json"], env=env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["replayed_total"] == 0
    result = runner.invoke(app, ["replay", "--from", "inbound"], env=env)
    assert result.exit_code == 2 and "only 'deadletter'" in result.output


def test_topics_on_the_embedded_bus(tmp_path: Path) -> None:
    env = {**os.environ, "FRONTDESK_STORAGE_DATA_DIR": str(tmp_path)}
    result = runner.invoke(app, ["topics"], env=env)
    assert result.exit_code == 0, result.output
    assert "frontdesk.inbound" in result.output and (tmp_path / "bus.sqlite3").exists()


def test_bad_config_exits_2_naming_the_field(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("bus:\n  kind: nats\n")
    result = runner.invoke(app, ["--config", str(cfg), "topics"])
    assert result.exit_code == 2 and "bus.kind" in result.output


def test_deadletter_list_on_empty_bus(tmp_path: Path) -> None:
    env = {**os.environ, "FRONTDESK_STORAGE_DATA_DIR": str(tmp_path)}
    result = runner.invoke(app, ["deadletter", "list", "--json"], env=env)
    assert result.exit_code == 0 and result.output.strip() == "[]"
