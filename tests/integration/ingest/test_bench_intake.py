"""Smoke test of ``python -m bench.intake``: a small run of the one command, its table read back.

Its timings depend on the machine, so only what must hold anywhere is checked: every mail of
every Frontdesk run published exactly once and marked \\Seen, mbsync's files counted, the goal
judged, and with ``--profile`` the connector's steps timed (the FETCH steps included: they are
timed through ``ingest.imap_fetch``, which a refactoring could bypass silently).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.dovecot, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[3]
N = 60


@pytest.fixture()
def tools_available() -> None:
    from tests.conftest import unavailable
    from tests.harness.dovecot import find_dovecot
    from tests.harness.mbsync import find_mbsync

    for what, (found, reason) in (("Dovecot IMAP", find_dovecot()), ("isync's mbsync", find_mbsync())):
        if found is None:
            unavailable(what, reason)


def row(output: str, tool: str) -> str:
    """The table row of ``tool`` (its name, then its message count)."""
    [line] = [line for line in output.splitlines() if re.match(rf"{re.escape(tool)}(?: \(\S+\))? +\d", line)]
    return line


def test_small_run_publishes_every_mail_once_and_profiles_every_step(tools_available: None) -> None:
    out = subprocess.run([sys.executable, "-m", "bench.intake", "--n", str(N), "--rounds", "1", "--profile"],
                         capture_output=True, text=True, cwd=ROOT, timeout=500)
    assert out.returncode == 0, f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    frontdesk = row(out.stdout, "Frontdesk (embedded bus)")
    assert f"{N} inbound + 0 dead-letter = {N}; lost 0, twice 0, distinct ids {N}; server unseen after 0" in frontdesk
    files, skipped = map(int, re.search(r"(\d+) files, .* skipped (\d+)", row(out.stdout, "mbsync")).groups())
    assert files + skipped == N and files >= N - 5  # mbsync skips the few mails whose header it finds incomplete
    assert re.search(r"vs mbsync: [\d.]+x its speed .* -- goal (met|NOT met)", out.stdout)

    steps = {m[1]: (float(m[2]), int(m[3])) for m in re.finditer(r"^  (\S.*?) +(\d+\.\d+) +[\d.]+% +(\d+)$",
                                                                   out.stdout, re.M)}
    for step in ("IMAP fetch RFC822.SIZE INTERNALDATE", "IMAP fetch BODY.PEEK[]", "wait for the parser processes",
                 "IMAP flag \\Seen", "bus publish (durable)"):
        seconds, calls = steps[step]
        assert calls >= 1 and seconds > 0, (step, steps)
    assert "cProfile, one run_once parsing in the connector thread" in out.stdout
