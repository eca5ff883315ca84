"""``frontdesk ingest imap`` as a process, scraped over HTTP while its real Dovecot comes and goes.

``/readyz`` is 503 naming the mailbox while the server refuses connections, 200 once a pass
succeeded, 503 again when the server stops and 200 after it is back; a rejected login is counted in
``frontdesk_connector_auth_failures_total`` and keeps ``/readyz`` at 503. ``/healthz`` stays 200:
an outage is not a reason to restart.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import unavailable
from tests.harness.dovecot import DovecotServer, find_dovecot
from tests.harness.process import free_port

pytestmark = pytest.mark.dovecot
MAIL = (b"From: aysel@mail.az\r\nTo: support@bet.example\r\nSubject: Pul\r\nMessage-ID: <ready1@mail.az>\r\n"
        b"\r\nsalam\r\n")


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return 0, str(exc)


def sample(base: str, name: str) -> float | None:
    """The mailbox's sample of ``name``; None while the endpoint is not up yet."""
    status, text = get(base + "/metrics")
    if status != 200:
        return None
    return next((s.value for f in text_string_to_metric_families(text) for s in f.samples
                 if s.name == name and s.labels.get("connector") == "imap:support"), None)


def wait_for(what: str, check: Callable[[], bool], proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"frontdesk ingest imap exited ({proc.returncode}) while waiting for {what}"
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[DovecotServer]:
    """A Dovecot of this test's own (not yet started), so that it can be stopped under the connector."""
    if find_dovecot()[0] is None:
        unavailable("Dovecot IMAP", find_dovecot()[1])
    dovecot = DovecotServer(tmp_path / "dovecot", port=free_port())
    dovecot.add_user("support", "secret")
    yield dovecot
    dovecot.stop()


def ingest_imap(tmp_path: Path, imap_port: int, metrics_port: int, password: str) -> subprocess.Popen[bytes]:
    config = tmp_path / f"frontdesk-{password}.yaml"
    config.write_text(f"""imap:
  reconnect_initial_s: 0.2
  reconnect_max_s: 0.5
  mailboxes:
    - name: support
      host: 127.0.0.1
      port: {imap_port}
      security: none
      username: support
      password: {password}
      idle: false
      poll_interval_s: 0.2
""")
    env = {**os.environ, "FRONTDESK_CONFIG": str(config), "FRONTDESK_STORAGE_DATA_DIR": str(tmp_path / password),
           "FRONTDESK_METRICS_PORT": str(metrics_port), "FRONTDESK_LOG_LEVEL": "WARNING"}
    return subprocess.Popen([sys.executable, "-m", "frontdesk", "ingest", "imap"], env=env,
                            stderr=(tmp_path / f"ingest-{password}.log").open("wb"))


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)


def test_readyz_follows_the_mailbox_and_rejected_logins_are_counted(tmp_path: Path, server: DovecotServer) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = ingest_imap(tmp_path, server.port, port, "secret")
    try:
        wait_for("/readyz 503 while the server refuses connections", lambda: get(base + "/readyz")[0] == 503, proc)
        body = json.loads(get(base + "/readyz")[1])
        assert body["checks"]["bus"] == "ok" and "Connection refused" in body["checks"]["imap:support"]
        assert get(base + "/healthz")[0] == 200

        server.start()
        wait_for("/readyz 200 once a pass succeeded", lambda: get(base + "/readyz")[0] == 200, proc)
        server.append("support", MAIL)
        wait_for("the mail published", lambda: sample(base, "frontdesk_connector_published_total") == 1, proc)

        server.stop()
        wait_for("/readyz 503 once the server is gone", lambda: get(base + "/readyz")[0] == 503, proc)
        server.start()
        wait_for("/readyz 200 once it is back", lambda: get(base + "/readyz")[0] == 200, proc)
        assert sample(base, "frontdesk_connector_auth_failures_total") == 0
    finally:
        stop(proc)

    proc = ingest_imap(tmp_path, server.port, port, "wrong")
    try:
        rejected = lambda: (sample(base, "frontdesk_connector_auth_failures_total") or 0) >= 1  # noqa: E731
        wait_for("a rejected login counted", rejected, proc)
        status, text = get(base + "/readyz")
        assert status == 503 and "login rejected" in json.loads(text)["checks"]["imap:support"]
    finally:
        stop(proc)
