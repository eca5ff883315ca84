"""Smoke test of ``python -m bench.dispatch``: a small run of the one command, its table read back.

Timings depend on the machine; what must hold anywhere is checked: every step handled every
message (and the relay every outbox row: an event per message, at most one acknowledgement),
positive rates and CPU, PostgreSQL's CPU measured, and fewer statements a message in chunks than
one by one (what the chunks are for).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[3]
N = 60


@pytest.fixture()
def postgres_available() -> None:
    from tests.conftest import unavailable
    from tests.harness.postgres import find_postgres

    found, reason = find_postgres()
    if found is None:
        unavailable("PostgreSQL", reason)


def test_small_run_prints_every_step_of_both_databases(postgres_available: None) -> None:
    out = subprocess.run([sys.executable, "-m", "bench.dispatch", "--n", str(N)], capture_output=True, text=True,
                         cwd=ROOT, timeout=550)
    assert out.returncode == 0, f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    rows = {}
    for line in out.stdout.splitlines():
        if m := re.match(r"(PostgreSQL|SQLite) +(\S.*?) {2,}(\d+) +(\d+) +([\d.]+) +([\d.]+|in-process) +([\d.]+)$", line):
            rows[m[1], m[2]] = m.groups()[2:]
    assert len(rows) == 6, out.stdout
    for (database, step), (items, rate, cpu, db_cpu, statements) in rows.items():
        if step.startswith("relay"):
            assert N <= int(items) <= 2 * N, (database, step, items)
        else:
            assert int(items) == N, (database, step, items)
        assert int(rate) > 0 and float(cpu) > 0 and float(statements) > 0, (database, step)
        assert (db_cpu == "in-process") == (database == "SQLite"), (database, step, db_cpu)
    for database in ("PostgreSQL", "SQLite"):
        one = float(rows[database, "apply, one transaction a message"][4])
        chunked = float(rows[database, "apply, transactions of 16"][4])
        assert chunked < one / 2, (database, one, chunked)
