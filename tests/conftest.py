"""Session-scoped fixtures that start REAL servers (Kafka, PostgreSQL, Dovecot, SMTP) locally.

A server that is missing on this machine skips the tests that need it, with the reason; under
``CI=true`` a missing server fails the run instead (CI must exercise everything).
Servers are started lazily, once per session, on free 127.0.0.1 ports, and stopped at the end.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
DOVECOT_USERS = ("support", "social", "harness")
DOVECOT_PASSWORD = "secret"
SMTP_USERS = {"frontdesk": "secret"}


def unavailable(what: str, reason: str) -> None:
    """Skip (locally) or fail (in CI) because a real server is missing."""
    message = f"{what} is not available: {reason}"
    if IN_CI:
        pytest.fail(message + " (CI=true requires every real server; run scripts/setup.sh)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from tests.harness.kafka import KafkaBroker, find_kafka_libs

    libs, reason = find_kafka_libs()
    if libs is None:
        unavailable("Apache Kafka", reason)
    broker = KafkaBroker(libs, tmp_path_factory.mktemp("kafka"))
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from tests.harness.postgres import PostgresServer, find_postgres

    bin_dir, reason = find_postgres()
    if bin_dir is None:
        unavailable("PostgreSQL", reason)
    server = PostgresServer(bin_dir, tmp_path_factory.mktemp("postgres"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def dovecot_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from tests.harness.dovecot import DovecotServer, find_dovecot

    binary, reason = find_dovecot()
    if binary is None:
        unavailable("Dovecot IMAP", reason)
    server = DovecotServer(tmp_path_factory.mktemp("dovecot"))
    for user in DOVECOT_USERS:
        server.add_user(user, DOVECOT_PASSWORD)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def smtp_server() -> Iterator[object]:
    try:
        from tests.harness.smtp import RecordingSMTPServer
    except ImportError as exc:
        unavailable("the recording SMTP server (aiosmtpd)", str(exc))
    server = RecordingSMTPServer(require_auth=True, users=SMTP_USERS)
    server.start()
    yield server
    server.stop()


@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "var"
    path.mkdir()
    return path
