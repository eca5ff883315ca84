"""The table ``bench.pipeline`` prints: what a run measured (``res``), as rows, and its goals.

Only formatting and arithmetic on the measurements; nothing here touches a server.
"""

from __future__ import annotations

import argparse
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Outcome:
    """What one phase saw come out: acknowledgements, suppressions, duplicates, and whether all came."""

    acked: dict[str, float] = field(default_factory=dict)  # Message-ID -> first acknowledgement received
    suppressed: dict[str, str] = field(default_factory=dict)  # Message-ID -> reason (no acknowledgement)
    duplicates: int = 0
    complete: bool = False


def pct(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank); NaN for no values."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))] if s else float("nan")


def loadavg() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


def hops(res: dict[str, Any]) -> str:
    """p50/p99 of each hop of the latency phase's mails, in ms."""
    inbound, triaged = res["inbound_at"], res["triaged_at"]
    spans: dict[str, list[float]] = {"ingest": [], "classify": [], "dispatch + relay + SMTP": []}
    for mid, acked in res["paced"].acked.items():
        if mid in inbound and mid in triaged:
            spans["ingest"].append((inbound[mid] - res["issued"][mid]) * 1000)
            spans["classify"].append((triaged[mid] - inbound[mid]) * 1000)
            spans["dispatch + relay + SMTP"].append((acked - triaged[mid]) * 1000)
    return "; ".join(f"{k} {pct(v, 50):.0f} / {pct(v, 99):.0f}" for k, v in spans.items())


def stages_done(res: dict[str, Any]) -> str:
    """When the last burst mail reached each topic, was stored as a case and was acknowledged (s after
    the first APPEND): which stage the others waited for."""
    ids, first = list(res["burst"].acked), res["first_append"]
    done = [max((times[m] for m in ids if m in times), default=float("nan")) - first
            for times in (res["inbound_at"], res["triaged_at"], res["stored_at"], res["burst"].acked)]
    return "ingest {:.1f} s, classify {:.1f} s, dispatch {:.1f} s, relay + SMTP {:.1f} s".format(*done)


def outcome_text(o: Outcome, n: int, timeout: float) -> str:
    reasons = Counter(o.suppressed.values())
    extra = f", suppressed {len(o.suppressed)} ({dict(reasons)})" if o.suppressed else ""
    return f"{len(o.acked)} of {n} acknowledged{extra}, {o.duplicates} duplicates" + \
        ("" if o.complete else f"  INCOMPLETE after {timeout:.0f} s")


def header(args: argparse.Namespace, res: dict[str, Any]) -> list[str]:
    relay = dict(kv.split("=", 1) for kv in args.env).get("FRONTDESK_DISPATCH_RELAY_INTERVAL_S", "0.5 (default)")
    variant = "fp32" if args.quantize == "none" else args.quantize
    return [f"pipeline benchmark: Dovecot → ingest-imap (IDLE) → Kafka → classify ({args.classify_replicas} "
            f"replica × {args.classify_threads} torch threads, {variant}, poll_records {args.poll_records}) → "
            f"dispatch (PostgreSQL with fsync, outbox relay idle poll {relay} s) → SMTP recorder (no TLS, as compose's Mailpit)",
            f"topology: docker-compose.yml as local processes (frontdesk.topology), {res['partitions']} partitions; private "
            f"Kafka, PostgreSQL, Dovecot; {os.cpu_count()} cores shared with whatever else runs on this machine"]


def burst_rates(args: argparse.Namespace, res: dict[str, Any]) -> list[float]:
    return [args.n / b["burst_s"] if b["burst"].complete and b["burst_s"] > 0 else float("nan") for b in res["bursts"]]


def mean_ratio(args: argparse.Namespace, res: dict[str, Any]) -> float:
    """Mean burst rate over the classifier alone's mean rate: the estimator without the better-of."""
    rates, alone = burst_rates(args, res), [a["rate"] for a in res["alone_runs"]]
    return (sum(rates) / len(rates)) / (sum(alone) / len(alone))


def rows(args: argparse.Namespace, res: dict[str, Any], rate: float, lat: list[float]) -> list[tuple[str, str]]:
    alone, cores = res["alone"], os.cpu_count()
    issued = sorted(res["issued"].values())
    offered = (len(issued) - 1) / (issued[-1] - issued[0]) if len(issued) > 1 and issued[-1] > issued[0] else rate
    return [
        ("classifier alone (topic to topic)", f"{alone['rate']:.1f} msg/s, the better of two runs of {alone['n']} "
                                              f"messages, before and after the pipeline: "
                                              + " / ".join(f"{a['rate']:.1f}" for a in res["alone_runs"])),
        *[(f"classifier alone, run {i + 1}: CPU", f"{a['cpu_s'] / a['n'] * 1000:.1f} ms per message; machine "
                                                  f"{a['machine_cores']:.2f} of {cores} cores busy: classifier "
                                                  f"{a['cpu_s'] / a['wall_s']:.2f}, Kafka + other users "
                                                  f"{max(0.0, a['machine_cores'] - a['cpu_s'] / a['wall_s']):.2f}")
          for i, a in enumerate(res["alone_runs"])],
        ("topology ready + warm-up", f"{res['ready_s']:.0f} s"),
        ("throughput: mails", "; ".join(f"{args.n} APPENDed in {b['appended_s']:.1f} s, "
                                        f"{outcome_text(b['burst'], args.n, args.timeout)}" for b in res["bursts"])),
        ("throughput: first APPEND → last ack", f"{res['burst_s']:.1f} s = {rate:.1f} msg/s, the better of "
                                                f"{len(res['bursts'])} bursts: " + " / ".join(
                                                    f"{r:.1f}" for r in burst_rates(args, res))),
        ("pipeline / classifier alone", f"{rate / alone['rate']:.2f}× (better over better; mean over mean "
                                        f"{mean_ratio(args, res):.2f}×)"),
        ("throughput: each stage done after", stages_done(res)),
        ("throughput: CPU (cores)", res["cpu_burst"] + "  (the better burst)"),
        ("throughput: CPU per message (ms)", res["cpu_burst_msg"]),
        ("latency: mails", f"{args.latency_n} at {args.rate:g}/s (APPENDs issued at {offered:.1f}/s); "
                           f"{outcome_text(res['paced'], args.latency_n, args.timeout)}"),
        ("latency p50 / p95 / p99 / max", f"{pct(lat, 50):.0f} / {pct(lat, 95):.0f} / {pct(lat, 99):.0f} / "
                                          f"{max(lat, default=float('nan')):.0f} ms (APPEND issued → ack received)"),
        ("latency p50 / p99 per hop (ms)", hops(res) + "  (topic record timestamps)"),
        ("latency: CPU (cores)", res["cpu_paced"]),
        ("cases in PostgreSQL / dead letters", f"{res['cases']} (incl. {res['warmup']} warm-up) / {res['dead']}"),
        ("load average 1/5/15 min", f"start {res['load_start']}, after classifier alone {res['load_alone']}, "
                                    f"after throughput {res['load_burst']}, after latency {res['load_paced']}, "
                                    f"end {loadavg()}"),
        ("process exit codes", ", ".join(f"{k} {v}" for k, v in res["exits"].items())),
    ]


def report(args: argparse.Namespace, res: dict[str, Any]) -> bool:
    """Print the table and the goals; True when every mail was acknowledged or knowingly suppressed."""
    burst, paced, alone = res["burst"], res["paced"], res["alone"]
    rate = args.n / res["burst_s"] if burst.complete and res["burst_s"] > 0 else float("nan")
    lat = [(acked - res["issued"][k]) * 1000 for k, acked in paced.acked.items()]
    p99 = pct(lat, 99) if paced.complete else float("nan")
    table = rows(args, res, rate, lat)
    width = max(len(name) for name, _ in table)
    print("\n" + "\n".join(header(args, res)))
    for name, value in table:
        print(f"{name:<{width}}  {value}")
    ratio = rate / alone["rate"]
    for goal, met in ((f"pipeline ≥ 0.8× classifier alone: {ratio:.2f}×", ratio >= 0.8),
                      (f"p99 < 2 s at {args.rate:g} messages/s: {p99 / 1000:.2f} s", p99 < 2000)):
        print(f"goal {goal} -- {'met' if met else 'NOT met'}")
    if alone["rate"] < args.rate:
        print(f"note: the classifier alone managed {alone['rate']:.1f} msg/s on this machine at the time, less than "
              f"the {args.rate:g} msg/s offered: the latency phase ran over capacity (its latency is queueing)")
    return all(b["burst"].complete for b in res["bursts"]) and paced.complete
