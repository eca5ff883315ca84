"""Benchmark of the IMAP intake against isync's mbsync: ``python -m bench.intake [--n 2000] [--kafka] [--profile]``.

One command, everything on this machine:

* a private Dovecot (``tests.harness.dovecot``) with one user and, for every measured run, a folder
  of its own holding the same N distinct mails: the MIME corpus (``tests.fixtures.mail.corpus``, less
  the mails built for non-default limits or expected to be rejected, and mails over 1 MiB) cycled to
  N, every copy with a Message-ID of its own (prefixed in the top-level header; added where missing)
  and MIME boundaries of its own, as real mail has (``bench.intake_mails``);
* ``mbsync`` (``Sync Pull``: it never changes anything on the server; ``Create Near``; FSync at its
  default, ``yes``) copies its folder into a local Maildir; wall clock of the subprocess; the files it
  wrote are counted (mbsync skips mails whose header it finds incomplete, and says so);
* the Frontdesk connector (``MailboxConnector.run_once``, production settings: batch 200, blob store
  on, default limits, one parser process per CPU) imports its folder — fetch, parse, store blobs,
  publish durably, flag \\Seen, checkpoint — onto the embedded SQLite bus, and with ``--kafka`` onto
  a real Kafka broker (``tests.harness.kafka``); the inbound + dead-letter records are then read
  back: their UIDs must be exactly the folder's (nothing lost, nothing twice) and their ids distinct.
  The parser processes are started once before the first run, as the daemon does at start-up (the
  start is timed and printed on its own);
* the tools take turns, ``--rounds`` times (default 3), each run after ``os.sync()`` so that nobody
  pays for the writeback of the fills or of the run before; the median run is reported;
* CPU: user + system seconds (``getrusage``) of the mbsync process (``RUSAGE_CHILDREN``), and of the
  Frontdesk process plus its parser processes (what they report). Other engineers' work on the same
  cores stretches wall clocks, much less CPU seconds: compare both, on runs done back to back.
  Dovecot's own CPU is in neither;
* ``--profile``: one more Frontdesk pass with timing wrappers around each step of the connector
  (``bench.intake_profile``; onto Kafka with ``--kafka``), then one parsing in the connector thread
  under cProfile (embedded bus).

Prints a table (MB = 10^6 bytes of the messages as the server serves them, RFC822.SIZE);
goal: Frontdesk at least as fast as mbsync while also parsing and publishing.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path

import ingest.blob_files as blob_files
from bench.cpu import machine_busy
from bench.intake_mails import PASSWORD, USER, bench_mails, fill, folder_uids, unseen
from bench.intake_report import MB, Row, print_table, summarise
from frontdesk.bus.base import Bus, Topics
from ingest.blobs import BlobStore
from ingest.imap import CheckpointStore, MailboxConnector
from ingest.imap_parse import ParsePool
from ingest.imap_settings import MailboxSettings
from ingest.mail.parse import MailLimits
from tests.harness.dovecot import DovecotServer, find_dovecot
from tests.harness.mbsync import find_mbsync, mbsync_config



# --- mbsync -----------------------------------------------------------------------------------


def run_mbsync(server: DovecotServer, folder: str, work: Path, nbytes: int, n: int) -> Row:
    binary, version = find_mbsync()
    if binary is None:
        raise SystemExit(version)
    local = work / "maildir"
    config = work / "mbsyncrc"
    config.write_text(mbsync_config(server.host, server.port, USER, PASSWORD, local, name="bench",
                                    patterns=folder, create="Near", expunge="None",
                                    extra_channel_lines=("Sync Pull",)))
    before = unseen(server, folder)
    cpu, machine = cpu_seconds(resource.RUSAGE_CHILDREN), machine_busy()
    started = time.perf_counter()
    out = subprocess.run([str(binary), "-c", str(config), "-q", "bench"], capture_output=True, text=True,
                         stdin=subprocess.DEVNULL, timeout=3600)
    elapsed = time.perf_counter() - started
    cpu, machine = cpu_seconds(resource.RUSAGE_CHILDREN) - cpu, machine_busy() - machine
    if out.returncode != 0:
        raise RuntimeError(f"mbsync failed ({out.returncode}): {out.stderr[-2000:]}")
    files = [p for p in local.rglob("*") if p.is_file() and p.parent.name in ("cur", "new")]
    written = sum(p.stat().st_size for p in files)
    after = unseen(server, folder)
    skipped = len(re.findall(r"(?m)^Warning: message \d+ from far side .*skipping", out.stderr))
    check = f"{len(files)} files, {written / MB:.1f} MB; skipped {skipped} (malformed header); " \
            f"server unseen {before}->{after}"
    if len(files) + skipped != n:
        check += f"  MISMATCH: expected {n}"
    return Row(f"mbsync ({version.split()[-1]})", len(files), elapsed, nbytes, check, cpu, machine)


def cpu_seconds(who: int = resource.RUSAGE_SELF) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


# --- Frontdesk --------------------------------------------------------------------------------


def connector(server: DovecotServer, folder: str, bus: Bus, work: Path, batch: int,
              pool: ParsePool) -> MailboxConnector:
    box = MailboxSettings(name="bench", host=server.host, port=server.port, security="none", username=USER,
                          password=PASSWORD, folders=(folder,), batch=batch)
    return MailboxConnector(box, bus, CheckpointStore(work / "imap"), BlobStore(work / "blobs"), MailLimits(),
                            pool=pool)


def open_bus(kind: str, work: Path, bootstrap: str | None) -> Bus:
    if kind == "kafka":
        from frontdesk.bus.kafka import KafkaBus
        from frontdesk.settings import KafkaSettings

        bus: Bus = KafkaBus(KafkaSettings(bootstrap_servers=bootstrap),
                            Topics(prefix=f"bench{uuid.uuid4().hex[:8]}."))
    else:
        from frontdesk.bus.sqlite import SqliteBus

        bus = SqliteBus(work / "bus.sqlite3")
    bus.ensure_topics()
    bus.connect()  # as frontdesk.bus.open_bus does when a daemon starts
    return bus


def read_back(bus: Bus, expected: set[int]) -> str:
    """Read the inbound and dead-letter topics back: every UID exactly once, ids distinct."""
    uids: list[int] = []
    keys: set[bytes] = set()
    counts = {}
    for topic in (bus.topics.inbound, bus.topics.deadletter):
        total = sum(bus.end_offsets(topic).values())
        got = 0
        with bus.consumer(f"bench-check-{uuid.uuid4().hex}", [topic]) as consumer:
            deadline = time.monotonic() + 60
            while got < total and time.monotonic() < deadline:
                for r in consumer.poll(1000, timeout=0.5):
                    uids.append(int(r.header("frontdesk-imap-uid") or -1))
                    if topic == bus.topics.inbound and r.key is not None:
                        keys.add(r.key)
                    got += 1
        counts[topic] = got
    inbound, dead = counts[bus.topics.inbound], counts[bus.topics.deadletter]
    lost = len(expected - set(uids))
    twice = len(uids) - len(set(uids))
    check = f"{inbound} inbound + {dead} dead-letter = {inbound + dead}; lost {lost}, twice {twice}, " \
            f"distinct ids {len(keys)}"
    if inbound + dead != len(expected) or lost or twice or len(keys) != inbound:
        check += "  MISMATCH"
    return check


def run_frontdesk(server: DovecotServer, folder: str, work: Path, nbytes: int, kind: str, bootstrap: str | None,
                  batch: int, pool: ParsePool) -> Row:
    expected = folder_uids(server, folder)
    bus = open_bus(kind, work, bootstrap)
    try:
        conn = connector(server, folder, bus, work, batch, pool)
        cpu, machine = cpu_seconds() + pool.cpu_seconds(), machine_busy()
        started = time.perf_counter()
        published = conn.run_once()
        elapsed = time.perf_counter() - started
        cpu, machine = cpu_seconds() + pool.cpu_seconds() - cpu, machine_busy() - machine
        check = read_back(bus, expected)
        left = unseen(server, folder)
        check += f"; server unseen after {left}"
    finally:
        bus.close()
    tool = f"Frontdesk ({'embedded bus' if kind == 'embedded' else 'Kafka'})"
    return Row(tool, published, elapsed, nbytes, check, cpu, machine)


# --- main -------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="messages per folder")
    parser.add_argument("--kafka", action="store_true", help="also run Frontdesk against a real Kafka broker")
    parser.add_argument("--profile", action="store_true",
                        help="also show where the connector's time goes (timed steps, then cProfile)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per tool, interleaved (median reported)")
    parser.add_argument("--batch", type=int, default=200, help="connector batch (MailboxSettings.batch)")
    parser.add_argument("--workers", type=int, default=None,
                        help="parser processes (default: one per CPU; 0: parse in the connector thread)")
    parser.add_argument("--blob-sync", choices=("auto", "fsync"), default="auto",
                        help="auto: syncfs(2) where available; fsync: one fsync per pack file and directory")
    args = parser.parse_args()
    if args.blob_sync == "fsync":
        blob_files._syncfs = None
    for found, reason in (find_dovecot(), find_mbsync()):
        if found is None:
            raise SystemExit(reason)
    pool = ParsePool(args.workers)
    tools = ["mbsync", "embedded"] + (["kafka"] if args.kafka else [])
    runs = [(tool, r) for r in range(args.rounds) for tool in tools]
    runs += [("phases", 0), ("cprofile", 0)] if args.profile else []
    results: dict[str, list[Row]] = defaultdict(list)
    profile: list[str] = []
    broker = None
    with tempfile.TemporaryDirectory(prefix="bench-intake-") as tmp_name:
        tmp = Path(tmp_name)
        server = DovecotServer(tmp / "dovecot")
        server.add_user(USER, PASSWORD)
        server.start()
        try:
            mails = bench_mails(args.n)
            print(f"filling {len(runs)} identical folders of {args.n} mails "
                  f"({sum(map(len, mails)) / MB:.1f} MB each) ...", file=sys.stderr)
            folders = {run: f"bench-{run[0]}-{run[1]}" for run in runs}
            nbytes = {run: fill(server, folder, mails) for run, folder in folders.items()}
            bootstrap = None
            if args.kafka:
                from tests.harness.kafka import KafkaBroker, find_kafka_libs

                libs, reason = find_kafka_libs()
                if libs is None:
                    raise SystemExit(f"--kafka: {reason}")
                broker = KafkaBroker(libs, tmp / "kafka")
                print("starting Kafka ...", file=sys.stderr)
                broker.start()
                bootstrap = broker.bootstrap
            started = time.perf_counter()
            pool.warm()
            pool_start = time.perf_counter() - started
            for (tool, rnd), folder in folders.items():
                work = tmp / folder
                work.mkdir()
                os.sync()  # nobody pays for the writeback of the fills or of the previous run
                print(f"running {tool} (round {rnd + 1}) ...", file=sys.stderr)
                if tool == "mbsync":
                    results[tool].append(run_mbsync(server, folder, work, nbytes[tool, rnd], args.n))
                elif tool in ("embedded", "kafka"):
                    results[tool].append(run_frontdesk(server, folder, work, nbytes[tool, rnd], tool, bootstrap,
                                                       args.batch, pool))
                else:
                    from bench import intake_profile

                    kind = "kafka" if args.kafka and tool == "phases" else "embedded"
                    bus = open_bus(kind, work, bootstrap)
                    try:
                        conn = connector(server, folder, bus, work, args.batch,
                                         pool if tool == "phases" else ParsePool(0))
                        profile += (intake_profile.phases(conn, "Kafka" if kind == "kafka" else "embedded bus")
                                    if tool == "phases" else intake_profile.hotspots(conn))
                    finally:
                        bus.close()
        finally:
            pool.close()
            if broker is not None:
                broker.stop()
            server.close()
    notes = [
        "fair play: every run reads its own freshly filled, never-read copy of the same folder, after os.sync();",
        "  mbsync: 'Sync Pull' (never changes the server), 'Create Near', fsyncs each mail (its default FSync yes);",
        f"  Frontdesk: run_once() with production settings (batch {args.batch}, {pool.workers} parser processes, "
        f"blob store on with {'syncfs' if blob_files._syncfs else 'fsync per pack'}, durable publish), "
        "then marks the mails \\Seen;",
        "  seconds: wall clock of the mbsync process / of the run_once() call, connect + login included;",
        f"  the parser processes were started once before the first run, in {pool_start:.2f} s (as at daemon start);",
        "  CPU s: user + system of the mbsync process / of the Frontdesk process and its parser processes;",
        "  machine: cores the whole machine kept busy during the median run (Dovecot, the broker and other",
        "    users included; at 2.00c on this 2-core VM a run is bound by CPU, not by waiting);",
        "  MB = 10^6 bytes of mail as the server serves it (RFC822.SIZE).",
    ]
    rows = [summarise(results[tool]) for tool in tools]
    print_table(rows, args.n, args.rounds, notes)
    if profile:
        print()
        print("\n".join(profile))
    if any("MISMATCH" in r.check for r in rows):
        raise SystemExit("record counts do not match (see the check column)")


if __name__ == "__main__":
    os.environ.setdefault("FRONTDESK_LOG_LEVEL", "WARNING")
    main()
