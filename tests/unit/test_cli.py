from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from frontdesk import clikit
from frontdesk.bus.base import Outgoing, Record, Topics
from frontdesk.bus.sqlite import SqliteBus
from frontdesk.cli import app, demo_samples
from frontdesk.errors import ConfigError, StoreUnavailable
from frontdesk.stage import dead_letter

runner = CliRunner()


def test_help_lists_stage_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("run", "ingest", "classify", "dispatch", "cases", "replay", "train", "eval", "parse-mail"):
        assert command in result.output


def test_the_demo_takes_its_samples_from_every_language_by_turns() -> None:
    from classify.data import DEV_FILE, read_examples
    examples = read_examples(DEV_FILE)
    assert {e.language for e in examples[:40]} == {"az"}  # the file's head: one language only
    chosen = demo_samples(examples, 40)
    assert [e.language for e in chosen[:4]] == ["az", "ru", "en", "tr"]
    assert {lang: sum(e.language == lang for e in chosen) for lang in ("az", "ru", "en", "tr")} == dict.fromkeys(
        ("az", "ru", "en", "tr"), 10)
    assert len(demo_samples(examples, 10_000)) == len(examples) and demo_samples(examples, 0) == []


def test_classify_text_refuses_an_unknown_channel_before_loading_the_model() -> None:
    result = runner.invoke(app, ["classify-text", "Pulum gəlmədi", "--channel", "sms"])
    assert result.exit_code == 2 and "--channel" in result.output


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


def test_a_yaml_syntax_error_exits_2_without_printing_the_line(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text('smtp:\n  host: smtp.example.az\n  password: "s3cretPW-do-not-print\n')
    result = runner.invoke(app, ["--config", str(cfg), "topics"], env={"FRONTDESK_STORAGE_DATA_DIR": str(tmp_path)})
    assert result.exit_code == 2 and "line 4, column 1" in result.output
    assert "s3cretPW" not in result.output


def test_a_misspelt_section_or_variable_exits_2_naming_it(tmp_path: Path) -> None:
    env = {"FRONTDESK_STORAGE_DATA_DIR": str(tmp_path)}
    cfg = tmp_path / "c.yaml"
    cfg.write_text("smpt:\n  host: smtp.example.az\n")
    result = runner.invoke(app, ["--config", str(cfg), "topics"], env=env)
    assert result.exit_code == 2 and "unknown top-level section 'smpt' (did you mean 'smtp'?)" in result.output
    result = runner.invoke(app, ["topics"], env={**env, "FRONTDESK_BUS_PARTITONS": "8"})
    assert result.exit_code == 2 and "FRONTDESK_BUS_PARTITONS (did you mean FRONTDESK_BUS_PARTITIONS?)" in result.output


def test_a_config_error_raised_by_a_component_exits_2() -> None:
    # The topology supervisor restarts a process after any exit but 2 (invalid settings).
    from frontdesk.topology.supervisor import CONFIG_ERROR_EXIT

    assert clikit.CONFIG_ERROR_EXIT == CONFIG_ERROR_EXIT == 2
    for error, code in ((ConfigError("routing file missing"), 2), (StoreUnavailable("database down"), 1)):
        with pytest.raises(typer.Exit) as info:
            clikit.guard(lambda error=error: (_ for _ in ()).throw(error))
        assert info.value.exit_code == code


def test_a_missing_routing_file_exits_2(tmp_path: Path) -> None:
    env = {"FRONTDESK_STORAGE_DATA_DIR": str(tmp_path), "FRONTDESK_DISPATCH_ROUTING_FILE": str(tmp_path / "nope.yaml")}
    result = runner.invoke(app, ["cases", "list"], env=env)
    assert result.exit_code == 2 and "cannot read routing rules" in result.output


def dead_letters(tmp_path: Path, stages: list[tuple[str, int]], malformed: int = 0) -> dict[str, str]:
    bus = SqliteBus(tmp_path / "bus.sqlite3", Topics("frontdesk."), partitions=1)
    bus.ensure_topics()
    n = 0
    for stage, count in stages:
        records = [Record(bus.topics.inbound, 0, n + i, b"not json", f"k{n + i}".encode()) for i in range(count)]
        bus.publish([dead_letter(r, stage, ValueError(f"bad {r.offset}"), bus.topics.deadletter) for r in records])
        n += count
    bus.publish([Outgoing(bus.topics.deadletter, b"{broken", b"x")] * malformed)
    bus.close()
    return {"FRONTDESK_STORAGE_DATA_DIR": str(tmp_path), "FRONTDESK_BUS_PARTITIONS": "1"}


def test_deadletter_list_finds_a_stage_behind_many_others(tmp_path: Path) -> None:
    env = dead_letters(tmp_path, [("classify", 600), ("dispatch", 3), ("classify", 5)], malformed=1)
    result = runner.invoke(app, ["deadletter", "list", "--stage", "dispatch", "--json"], env=env)
    assert result.exit_code == 0, result.output
    letters = json.loads(result.stdout)
    assert [d["reason"] for d in letters] == ["bad 600", "bad 601", "bad 602"]
    assert "1 malformed dead-letter record(s) passed over" in result.stderr
    result = runner.invoke(app, ["deadletter", "list", "--stage", "dispatch", "--limit", "2"], env=env)
    assert result.exit_code == 0 and result.stdout.strip().endswith("2 dead-letter record(s)")
    result = runner.invoke(app, ["deadletter", "list", "--stage", "classify", "--limit", "1000", "--json"], env=env)
    assert len(json.loads(result.stdout)) == 605
    result = runner.invoke(app, ["deadletter", "list", "--stage", "replay", "--json"], env=env)
    assert result.exit_code == 0 and json.loads(result.stdout) == []


def test_only_long_running_commands_trim_the_embedded_bus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A short command (deadletter list, replay, topics) never starts a trimming pass it would then
    wait for at exit; the stages do, so a bus file shared by separate stage processes stays bounded."""
    monkeypatch.setenv("FRONTDESK_STORAGE_DATA_DIR", str(tmp_path))
    with clikit.open_configured_bus() as bus:
        assert bus._pruner.retention_s == 0
    with clikit.open_configured_bus(trims=True) as bus:
        assert bus._pruner.retention_s == 168 * 3600
