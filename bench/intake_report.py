"""The table of ``bench.intake``: one row per tool (the median of its runs), and the goal's verdict."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MB = 1e6


@dataclass
class Row:
    tool: str
    messages: int
    seconds: float
    nbytes: int
    check: str
    cpu: float = 0.0
    machine: float = 0.0  # busy CPU seconds of the whole machine during the run (servers included)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.messages / self.seconds

    @property
    def cpu_per_1000(self) -> float:
        return self.cpu / self.messages * 1000

    @property
    def mbps(self) -> float:
        return self.nbytes / MB / self.seconds


def summarise(runs: list[Row]) -> Row:
    """One row per tool: the median run by seconds, with the median CPU; the check names every run
    that did not match."""
    ordered = sorted(runs, key=lambda r: r.seconds)
    median = ordered[len(ordered) // 2]
    cpu = sorted(r.cpu for r in runs)[len(runs) // 2]
    bad = [r.check for r in runs if "MISMATCH" in r.check]
    return Row(median.tool, median.messages, median.seconds, median.nbytes, bad[0] if bad else median.check, cpu,
               median.machine, {"all": [r.seconds for r in runs], "cpu": [r.cpu for r in runs]})


def print_table(rows: list[Row], n: int, rounds: int, notes: list[str]) -> None:
    print(f"\nintake benchmark: {n} messages per folder (MIME corpus cycled, every copy its own Message-ID and MIME boundaries), "
          f"{rounds} round(s), median run shown")
    for line in notes:
        print(line)
    print(f"{'tool':26} {'messages':>8} {'seconds':>8} {'msg/s':>7} {'MB/s':>5} {'CPU s':>6} {'CPU s/1k':>8}"
          f" {'machine':>7}   runs: seconds | CPU s   check")
    for r in rows:
        spread = "/".join(f"{v:.2f}" for v in r.extra["all"]) + " | " + "/".join(f"{v:.2f}" for v in r.extra["cpu"])
        print(f"{r.tool:26} {r.messages:>8} {r.seconds:>8.2f} {r.rate:>7.0f} {r.mbps:>5.2f} {r.cpu:>6.2f} "
              f"{r.cpu_per_1000:>8.2f} {r.machine / r.seconds:>6.2f}c   {spread}   {r.check}")
    base = next((r for r in rows if r.tool.startswith("mbsync")), None)
    for r in rows:
        if base is not None and r is not base:
            ratio = base.seconds / r.seconds
            print(f"{r.tool} vs mbsync: {ratio:.2f}x its speed ({r.seconds:.2f} s vs {base.seconds:.2f} s wall) -- "
                  f"goal {'met' if ratio >= 1.0 else 'NOT met'}; CPU {r.cpu_per_1000:.2f} vs "
                  f"{base.cpu_per_1000:.2f} s per 1,000 mails ({r.cpu_per_1000 / base.cpu_per_1000:.1f}x)")
    print("goal: Frontdesk at least as fast as mbsync while also parsing and publishing")
