"""Fixtures shared by the connectors' integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from frontdesk.bus.sqlite import SqliteBus


@pytest.fixture()
def bus(tmp_path: Path) -> Iterator[SqliteBus]:
    """A fresh embedded (SQLite) bus with its topics, closed after the test."""
    b = SqliteBus(tmp_path / "bus.sqlite3")
    b.ensure_topics()
    yield b
    b.close()
