"""CPU accounting for the benchmarks, from /proc: per process group and for the whole machine.

A sample holds the CPU seconds so far of each labelled process with its descendants, of the rest
of the benchmark's own process tree, and of the machine; two samples give cores busy or CPU per
message between them, so other users of a shared machine show up as such.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def _proc_stat(pid: int | str) -> tuple[int, float] | None:
    """(parent pid, CPU seconds) of a live process, from /proc/<pid>/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK


def machine_busy() -> float:
    """CPU seconds the whole machine spent busy since boot (all cores, /proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(values) - values[3] - values[4]) / TICK  # less idle and iowait


@dataclass
class CpuSample:
    at: float
    machine: float
    ours: dict[str, float]  # group -> CPU seconds of its live processes


def cpu_sample(services: dict[int, str]) -> CpuSample:
    """CPU seconds so far: per labelled process (``services``: pid -> label) with its descendants,
    the rest of this bench's process tree (servers, recorder, load generator), and the machine."""
    stats = {int(p): s for p in os.listdir("/proc") if p.isdigit() and (s := _proc_stat(p)) is not None}
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    ours: Counter[str] = Counter()
    todo = [(os.getpid(), "bench + SMTP")]
    while todo:
        pid, label = todo.pop()
        label = services.get(pid, label)  # a stage's own children (e.g. parse workers) count as the stage
        if pid in stats:
            ours[label] += stats[pid][1]
        todo.extend((child, label) for child in children.get(pid, ()))
    return CpuSample(time.monotonic(), machine_busy(), dict(ours))


def cpu_used(before: CpuSample, after: CpuSample) -> dict[str, float]:
    """CPU seconds per group between two samples, largest first."""
    used = {k: after.ours.get(k, 0.0) - before.ours.get(k, 0.0) for k in after.ours}
    return dict(sorted(used.items(), key=lambda kv: -kv[1]))


def cpu_text(before: CpuSample, after: CpuSample) -> str:
    """Average cores busy between two samples: the machine, each group of ours, everybody else."""
    wall = after.at - before.at
    machine = (after.machine - before.machine) / wall
    used = {k: v / wall for k, v in cpu_used(before, after).items()}
    parts = ", ".join(f"{k} {v:.2f}" for k, v in used.items())
    others = max(0.0, machine - sum(used.values()))
    return f"machine {machine:.2f} of {os.cpu_count()} cores busy: {parts}; other users {others:.2f}"


def cpu_per_message(before: CpuSample, after: CpuSample, n: int) -> str:
    used = cpu_used(before, after)
    parts = ", ".join(f"{k} {v / n * 1000:.1f}" for k, v in used.items())
    return f"{parts}; total {sum(used.values()) / n * 1000:.1f}"
