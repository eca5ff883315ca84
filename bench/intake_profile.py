"""Where the IMAP connector's time goes (``python -m bench.intake --profile``).

:func:`phases` times each step of one ``run_once`` by wrapping what the connector calls (instance
attributes only; the connector's own code runs unchanged). :func:`hotspots` runs one ``run_once``
under cProfile with the parsing done in the connector thread (``ParsePool(0)``), so that the
parser's hottest functions show up in the same profile as the I/O.
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import resource
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from imapclient import IMAPClient

from ingest import imap_fetch
from ingest.imap import MailboxConnector

_STEPS = ("IMAP connect + login", "IMAP select", "IMAP search", "IMAP fetch RFC822.SIZE INTERNALDATE",
          "IMAP fetch BODY.PEEK[]", "hand mails to the parser processes", "wait for the parser processes",
          "wait for the publisher thread", "IMAP flag \\Seen")
_TICK = os.sysconf("SC_CLK_TCK")
_OTHER_STEPS = ("blob commit (sync + index)", "bus publish (durable)", "checkpoint save")


class Phases:
    """Accumulated wall time per step."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                with self._lock:
                    self.seconds[name] += time.perf_counter() - started
                    self.calls[name] += 1

        return timed


def _instrument(conn: MailboxConnector, phases: Phases) -> None:
    connect = conn.connect

    def connect_and_wrap() -> IMAPClient:
        client = connect()
        client.search = phases.wrap("IMAP search", client.search)  # type: ignore[method-assign]
        client.select_folder = phases.wrap("IMAP select", client.select_folder)  # type: ignore[method-assign]
        return client

    conn.connect = phases.wrap("IMAP connect + login", connect_and_wrap)  # type: ignore[method-assign]
    conn._after_import = phases.wrap("IMAP flag \\Seen", conn._after_import)  # type: ignore[method-assign]
    conn._delivered = phases.wrap("wait for the publisher thread", conn._delivered)  # type: ignore[method-assign]
    conn.bus.publish = phases.wrap("bus publish (durable)", conn.bus.publish)  # type: ignore[method-assign]
    conn.checkpoints.save = phases.wrap("checkpoint save", conn.checkpoints.save)  # type: ignore[method-assign]
    conn.pool.start = phases.wrap("hand mails to the parser processes", conn.pool.start)  # type: ignore[method-assign]
    conn.pool.finish = phases.wrap("wait for the parser processes", conn.pool.finish)  # type: ignore[method-assign]
    if conn.blobs is not None:
        conn.blobs.commit = phases.wrap("blob commit (sync + index)",  # type: ignore[method-assign]
                                        conn.blobs.commit)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class ThreadCpu:
    """CPU seconds per thread of this process while it runs (Linux /proc), sampled every 5 ms
    so that threads which end before the run does (the publisher) are counted too. Threads are
    named by ``threading`` (kafka-python's sender, the pool's feeder and manager included)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._last: dict[int, tuple[str, float]] = {}
        self._start: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="bench-thread-cpu", daemon=True)

    def __enter__(self) -> ThreadCpu:
        self._sample()
        self._start = {tid: cpu for tid, (_, cpu) in self._last.items()}
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        for tid, (name, cpu) in self._last.items():
            if name != self._thread.name:
                self.seconds[name] += cpu - self._start.get(tid, 0.0)

    def _watch(self) -> None:
        while not self._stop.wait(0.005):
            self._sample()

    def _sample(self) -> None:
        names = {t.native_id: t.name for t in threading.enumerate()}
        for tid in os.listdir("/proc/self/task"):
            try:
                fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            cpu = (int(fields[11]) + int(fields[12])) / _TICK
            known = self._last.get(int(tid))
            self._last[int(tid)] = (names.get(int(tid)) or (known[0] if known else f"thread {tid}"), cpu)


def phases(conn: MailboxConnector, bus_name: str = "embedded bus") -> list[str]:
    """One timed ``run_once``: a table of the connector thread's steps (they add up to the wall time),
    then the publisher's and the checkpoint saver's, then CPU by thread."""
    phases = Phases()
    _instrument(conn, phases)
    fetch = imap_fetch.fetch

    def fetch_timed(client: IMAPClient, uids: Any, items: tuple[str, ...]) -> Any:
        name = "IMAP fetch RFC822.SIZE INTERNALDATE" if items == imap_fetch.SIZE_AND_DATE else "IMAP fetch BODY.PEEK[]"
        return phases.wrap(name, fetch)(client, uids, items)

    imap_fetch.fetch = fetch_timed  # type: ignore[assignment]
    workers = conn.pool.cpu_seconds()
    cpu, started = _cpu(), time.perf_counter()
    try:
        with ThreadCpu() as threads:
            count = conn.run_once()
    finally:
        imap_fetch.fetch = fetch
    total, cpu = time.perf_counter() - started, _cpu() - cpu
    workers = conn.pool.cpu_seconds() - workers
    s = phases.seconds
    rest = total - sum(s[name] for name in _STEPS)
    lines = [f"where the connector's time goes: one run_once of {count} mails, {bus_name}, {total:.2f} s wall; "
             f"CPU: connector process {cpu:.2f} s, {conn.pool.workers} parser processes {workers:.2f} s "
             f"({1000 * workers / max(count, 1):.2f} ms a mail)",
             f"  {'connector thread':46} {'seconds':>8} {'share':>6} {'calls':>6}"]
    for name in (*_STEPS, "records, loop, the rest"):
        seconds = s[name] if name in _STEPS else rest
        lines.append(f"  {name:46} {seconds:>8.3f} {100 * seconds / total:>5.1f}% {phases.calls.get(name, 0):>6}")
    lines.append(f"  {'publisher and checkpoint threads (overlap it)':46}")
    for name in _OTHER_STEPS:
        lines.append(f"  {name:46} {s[name]:>8.3f} {100 * s[name] / total:>5.1f}% {phases.calls.get(name, 0):>6}")
    lines.append(f"  {'CPU of the connector process by thread':46} {'CPU s':>8} {'ms/mail':>7}")
    for name, seconds in sorted(threads.seconds.items(), key=lambda item: -item[1]):
        if seconds > 0:
            lines.append(f"  {name[:46]:46} {seconds:>8.3f} {1000 * seconds / max(count, 1):>7.3f}")
    return lines


def hotspots(conn: MailboxConnector, top: int = 25) -> list[str]:
    """cProfile of one ``run_once`` (``conn`` should parse in its own thread: ``ParsePool(0)``)."""
    profiler = cProfile.Profile()
    profiler.enable()
    conn.run_once()
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    text = out.getvalue()
    body = text[text.find("   ncalls"):] if "ncalls" in text else text
    lines = ["", f"cProfile, one run_once parsing in the connector thread (embedded bus), top {top} by own time:"]
    return lines + ["  " + line for line in body.rstrip().splitlines()]
