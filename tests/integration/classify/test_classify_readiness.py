"""``frontdesk classify`` is ready only once its model is loaded: a load takes seconds, and an
orchestrator that sent traffic (or counted the replica as up) before then would be misled."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from classify.cli import model_loaded
from frontdesk.health import Probes
from tests.harness.process import free_port

pytest.importorskip("torch", reason="the model extra is not installed")


def test_the_model_check_fails_until_the_model_is_loaded() -> None:
    loaded, probes = threading.Event(), Probes()
    probes.add_readiness("model", model_loaded(loaded))
    ready, body = probes.readiness()
    assert not ready and body["checks"]["model"] == "RuntimeError: the model is still loading"
    loaded.set()
    assert probes.readiness() == (True, {"status": "ready", "checks": {"model": "ok"}})


def _get(url: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except OSError:
        return 0, {}


def test_a_classify_process_reports_its_model_in_readiness(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "FRONTDESK_STORAGE_DATA_DIR": str(tmp_path), "FRONTDESK_METRICS_PORT": str(port),
           "FRONTDESK_LOG_LEVEL": "WARNING", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "frontdesk", "classify"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    seen: list[tuple[int, dict[str, object]]] = []
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and (not seen or seen[-1][0] != 200):
            assert proc.poll() is None, proc.stderr.read()[-2000:] if proc.stderr else ""
            status, body = _get(f"http://127.0.0.1:{port}/readyz")
            if status:
                seen.append((status, body))
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    assert seen and seen[-1] == (200, {"status": "ready", "checks": {"bus": "ok", "model": "ok"}})
    assert all(body["checks"]["model"] in ("ok", "RuntimeError: the model is still loading")  # type: ignore[index]
               for _, body in seen)
