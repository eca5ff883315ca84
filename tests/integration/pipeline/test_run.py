"""``frontdesk run`` on the embedded default: a first run does something useful; Ctrl-C and a
restart lose nothing and double nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the model extra is not installed")


def _cases(cwd: Path) -> list[dict]:  # type: ignore[type-arg]
    out = subprocess.run([sys.executable, "-m", "frontdesk", "cases", "list", "--json"], cwd=cwd,
                         capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-1500:]
    return json.loads(out.stdout)


def _run_until(cwd: Path, want_cases: int, timeout: float = 240) -> str:
    proc = subprocess.Popen([sys.executable, "-m", "frontdesk", "--log-level", "WARNING", "run", "--demo", "12"],
                            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            time.sleep(2)
            if (cwd / "var" / "cases.sqlite3").exists() and len(_cases(cwd)) >= want_cases:
                break
    finally:
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=90)
    assert proc.returncode == 0, output[-2000:]
    return output


def test_first_run_then_restart(tmp_path: Path) -> None:
    first = _run_until(tmp_path, 12)
    assert "published 12 sample customer messages" in first and "frontdesk cases list" in first
    cases = _cases(tmp_path)
    assert len(cases) == 12 and len({c["reference"] for c in cases}) == 12
    emails = [c for c in cases if c["channel"] == "email"]
    outgoing = list((tmp_path / "var" / "outgoing").glob("*.*"))
    second = _run_until(tmp_path, 12, timeout=20)
    assert "published" not in second
    assert len(_cases(tmp_path)) == 12
    assert len(list((tmp_path / "var" / "outgoing").glob("*.*"))) == sum(
        1 for c in _cases(tmp_path) if c["acknowledged"]) >= len(outgoing)
    assert emails and all(c["routing_rule"] for c in cases)
    assert {c["language"] for c in cases} >= {"az", "ru", "en", "tr"}  # the samples take turns by language
