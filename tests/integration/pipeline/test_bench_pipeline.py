"""Smoke test of ``python -m bench.pipeline``: a small run of the one command, its table read back.

The bench starts its own private Kafka, PostgreSQL, Dovecot and SMTP recorder and the compose
topology; here it runs with 30 + 10 mails. Its numbers depend on the machine, so only what must
hold anywhere is checked: every mail acknowledged exactly once, none dead-lettered, every case in
PostgreSQL, positive finite rates, ordered percentiles, both goals judged, a clean stop.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the model extra is not installed")
pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.dovecot, pytest.mark.smtp, pytest.mark.slow,
              pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[3]
N, LATENCY_N, WARMUP = 30, 10, 5


@pytest.fixture()
def servers_available() -> None:
    from tests.conftest import unavailable
    from tests.harness.dovecot import find_dovecot
    from tests.harness.kafka import find_kafka_libs
    from tests.harness.postgres import find_postgres

    for what, (found, reason) in (("Apache Kafka", find_kafka_libs()), ("PostgreSQL", find_postgres()),
                                  ("Dovecot IMAP", find_dovecot())):
        if found is None:
            unavailable(what, reason)


def table(output: str) -> dict[str, str]:
    """The bench's table: row name -> value (names are separated from values by two spaces)."""
    rows = {}
    for line in output.splitlines():
        name, sep, value = line.partition("  ")
        if sep and name and not name.startswith(" "):
            rows[name.strip()] = value.strip()
    return rows


def numbers(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"-?\d+(?:\.\d+)?|nan", text)]


def test_small_run_acknowledges_every_mail_and_prints_sane_numbers(servers_available: None) -> None:
    out = subprocess.run([sys.executable, "-m", "bench.pipeline", "--n", str(N), "--latency-n", str(LATENCY_N)],
                         capture_output=True, text=True, cwd=ROOT, timeout=1700)
    assert out.returncode == 0, f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    rows = table(out.stdout)

    assert rows["throughput: mails"].count(f"{N} of {N} acknowledged, 0 duplicates") == 2, rows  # two bursts
    assert f"{LATENCY_N} of {LATENCY_N} acknowledged, 0 duplicates" in rows["latency: mails"], rows
    assert "INCOMPLETE" not in out.stdout
    assert rows["cases in PostgreSQL / dead letters"].startswith(f"{2 * N + LATENCY_N + WARMUP} (incl."), rows
    assert rows["cases in PostgreSQL / dead letters"].endswith("/ 0"), rows

    alone = numbers(rows["classifier alone (topic to topic)"])[0]
    seconds, rate, _, first, second = numbers(rows["throughput: first APPEND → last ack"])[:5]
    ratio = numbers(rows["pipeline / classifier alone"])[0]
    assert alone > 0 and seconds > 0 and math.isfinite(rate) and rate > 0
    assert rate == max(first, second) and ratio == pytest.approx(rate / alone, rel=0.05, abs=0.01)
    assert N / (seconds + 0.05) * 0.99 <= rate <= N / max(seconds - 0.05, 0.01) * 1.01  # seconds printed to 0.1

    ingested, triaged, stored, acknowledged = numbers(rows["throughput: each stage done after"])[:4]
    assert 0 < ingested <= triaged <= stored <= acknowledged == pytest.approx(seconds, abs=0.1), rows

    p50, p95, p99, worst = numbers(rows["latency p50 / p95 / p99 / max"])[:4]
    assert 0 < p50 <= p95 <= p99 <= worst < 1_800_000
    hops = dict(re.findall(r"(\w[\w +]*?) (\d+) / \d+", rows["latency p50 / p99 per hop (ms)"]))
    assert set(hops) == {"ingest", "classify", "dispatch + relay + SMTP"}, rows

    assert "cores busy" in rows["throughput: CPU (cores)"] and "classify" in rows["throughput: CPU (cores)"]
    assert re.search(r"goal pipeline ≥ 0\.8× classifier alone: [\d.]+× -- (met|NOT met)", out.stdout)
    assert re.search(r"goal p99 < 2 s at 10 messages/s: [\d.]+ s -- (met|NOT met)", out.stdout)
    assert set(re.findall(r"(\S+-\d) (-?\d+)", rows["process exit codes"])) == {
        ("ingest-imap-0", "0"), ("classify-0", "0"), ("dispatch-0", "0")}, rows
