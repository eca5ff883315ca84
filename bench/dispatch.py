"""Benchmark of the dispatcher's database work: ``python -m bench.dispatch [--n 2000] [--db postgres,sqlite]``.

One command, everything on this machine: the case store (:class:`dispatch.store.sql.SqlCaseStore`)
on a private PostgreSQL server (``tests.harness.postgres``, durable as in production: ``fsync``,
``synchronous_commit`` and ``full_page_writes`` on) and on the embedded default, an SQLite file
(WAL, ``synchronous=FULL``).
Each database gets ``--n`` triaged messages, a fixed mix (per 10: 6 emails from new senders, 2 from
known senders, 1 email follow-up by In-Reply-To, 1 Telegram chat message in one of 50 conversations),
three times, each on a fresh database:

* apply, one transaction a message (``CaseStore.apply``: what a single message costs);
* apply in transactions of ``dispatch.stage.CHUNK`` (``CaseStore.apply_many``, what the stage does);
* the outbox relay's database work after the second: claim 100 rows, mark the case events sent
  together and each acknowledgement on its own (as :mod:`dispatch.relay` does; nothing is sent).

Prints per step: messages (or outbox rows) per second, CPU per message of this process (the
dispatcher's side: SQLAlchemy, the driver, building cases and acknowledgements) and of PostgreSQL's
processes, and SQL statements per message (an executemany counts once; BEGIN/COMMIT not counted).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import event

from bench.cpu import cpu_sample
from dispatch.cases import Context
from dispatch.routing import RoutingTable
from dispatch.settings import DispatchSettings
from dispatch.stage import CHUNK
from dispatch.store.sql import SqlCaseStore
from frontdesk.messages import Flags, InboundMessage, Party, ThreadHints, Triage, TriagedMessage
from tests.harness.postgres import DURABLE, PostgresServer, find_postgres

NOW = datetime.now(UTC)


def triaged(n: int, i: int) -> TriagedMessage:
    """Message ``i`` of the mix (see the module docstring)."""
    kind = i % 10
    if kind == 9:
        user = f"{i % 50}"
        msg = InboundMessage.create(
            connector="telegram:bot", external_id=f"conv{user}:{i}", channel="chat", platform="telegram",
            sender=Party(platform_id=user, handle=f"user{user}"), text=f"chat message {i}", received_at=NOW,
            thread=ThreadHints(conversation_id=f"conv{user}"))
        return TriagedMessage(message=msg, triage=Triage(category="bonuses", urgency="normal", language="ru",
                                                         model_version="bench"), triaged_at=NOW)
    sender = f"known{i // 10 % max(1, n // 100)}@mail.az" if kind in (6, 7) else f"c{i}@mail.az"
    reply_to = f"<m{i - 8}@mail.az>" if kind == 8 else None
    if kind == 8:
        sender = f"c{i - 8}@mail.az"
    msg = InboundMessage.create(
        connector="imap:support", external_id=f"<m{i}@mail.az>", channel="email", platform="email",
        sender=Party(address=sender, name="Customer"), subject=f"Pul çıxarışı {i}",
        text="Salam, 3 gündür çıxarış gözləyirəm, 250 AZN. " * 4, received_at=NOW,
        thread=ThreadHints(in_reply_to=reply_to, references=(reply_to,) if reply_to else ()), flags=Flags())
    return TriagedMessage(message=msg, triage=Triage(category="payments", urgency="high", language="az",
                                                     model_version="bench"), triaged_at=NOW)


@dataclass
class Step:
    database: str
    name: str
    count: int
    seconds: float
    cpu_ms: float
    db_cpu_ms: float | None
    statements: float


@contextmanager
def statements(store: SqlCaseStore) -> Iterator[list[int]]:
    """Counts the SQL statements the store sends meanwhile (an executemany once) into ``[n]``."""
    seen = [0]

    def count(*_: object) -> None:
        seen[0] += 1

    event.listen(store.engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(store.engine, "before_cursor_execute", count)


def measure(database: str, name: str, store: SqlCaseStore, server: PostgresServer | None,
            work: Callable[[], int]) -> Step:
    """Run ``work`` (returns how many items it handled) and time it."""
    labels = {server.pid: "db"} if server is not None and server.pid else {}
    with statements(store) as sent:
        before, cpu0, t0 = cpu_sample(labels), time.process_time(), time.perf_counter()
        n = work()
        seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        after = cpu_sample(labels)
    db = (after.ours.get("db", 0.0) - before.ours.get("db", 0.0)) if labels else None
    return Step(database, name, n, seconds, cpu / n * 1000, None if db is None else db / n * 1000, sent[0] / n)


def relay_work(store: SqlCaseStore) -> int:
    """What the relay does in the database for every due outbox row; returns the rows handled."""
    handled = 0
    while items := store.claim_outbox(100, 60):
        store.mark_sent_many([i.id for i in items if i.kind == "event"])
        for item in items:
            if item.kind == "ack":
                store.mark_sent_many([item.id])
        handled += len(items)
    return handled


def run_database(database: str, url_for: Callable[[str], str], server: PostgresServer | None,
                 n: int) -> list[Step]:
    settings = DispatchSettings(our_addresses=("@bet.example",), from_address="support@bet.example",
                                message_id_domain="bet.example")
    ctx = Context(settings, RoutingTable.load(settings.routing_file))
    batch = [triaged(n, i) for i in range(n)]
    one, many = SqlCaseStore(url_for("one"), ctx), SqlCaseStore(url_for("many"), ctx)

    def singly() -> int:
        return len([one.apply(t) for t in batch])

    def chunked() -> int:
        return sum(len(many.apply_many(batch[i:i + CHUNK])) for i in range(0, n, CHUNK))

    steps = [measure(database, "apply, one transaction a message", one, server, singly),
             measure(database, f"apply, transactions of {CHUNK}", many, server, chunked),
             measure(database, "relay: claim, mark sent (outbox rows)", many, server, lambda: relay_work(many))]
    one.close()
    many.close()
    return steps


@contextmanager
def postgres(tmp: Path) -> Iterator[PostgresServer]:
    bin_dir, reason = find_postgres()
    if bin_dir is None:
        raise SystemExit(f"no PostgreSQL available: {reason}")
    server = PostgresServer(bin_dir, tmp / "pg", extra_conf=DURABLE)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def print_table(steps: list[Step], n: int) -> None:
    print(f"\ndispatch benchmark: {n} triaged messages (per 10: 6 new senders, 2 known senders, 1 email "
          f"follow-up, 1 Telegram chat), each step on a fresh database; PostgreSQL durable (fsync, "
          f"synchronous_commit on), SQLite a file (WAL, synchronous=FULL)")
    print(f"{'database':<11} {'step':<36} {'items':>6} {'items/s':>8} {'CPU ms/item':>12} "
          f"{'DB CPU ms/item':>15} {'statements/item':>16}")
    for s in steps:
        db = f"{s.db_cpu_ms:.2f}" if s.db_cpu_ms is not None else "in-process"
        print(f"{s.database:<11} {s.name:<36} {s.count:>6} {s.count / s.seconds:>8.0f} {s.cpu_ms:>12.2f} "
              f"{db:>15} {s.statements:>16.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="triaged messages per step")
    parser.add_argument("--db", default="postgres,sqlite", help="comma-separated: postgres, sqlite")
    args = parser.parse_args()
    steps: list[Step] = []
    with tempfile.TemporaryDirectory(prefix="bench-dispatch-") as tmp_name:
        tmp = Path(tmp_name)
        if "postgres" in args.db:
            print("starting PostgreSQL ...", file=sys.stderr)
            with postgres(tmp) as server:
                steps += run_database("PostgreSQL", lambda name: server.create_database(name, replace=True),
                                      server, args.n)
        if "sqlite" in args.db:
            steps += run_database("SQLite", lambda name: f"sqlite:///{tmp / name}.sqlite3", None, args.n)
    print_table(steps, args.n)


if __name__ == "__main__":
    main()
