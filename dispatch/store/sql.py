"""The SQL case store: SQLite (embedded default, also the in-memory store for tests) and PostgreSQL.

Every method is one transaction: SQLAlchemy Core for the per-message paths (apply, claim, mark
sent), the ORM for the rest. SQLAlchemy errors are translated here: a lost or refused
connection becomes StoreUnavailable (the stage retries the same records), anything else StoreError.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, create_engine, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from dispatch.base import ApplyResult, CaseStore, OutboxItem
from dispatch.cases import Context, apply_message, prefetch
from dispatch.store import rows
from frontdesk.errors import StoreError, StoreUnavailable
from frontdesk.messages import TriagedMessage

T = TypeVar("T")
MIGRATIONS = Path(__file__).parent / "migrations"
MIGRATION_LOCK = 0x46445F4D4947  # "FD_MIG": the advisory lock that serialises migrations on PostgreSQL


def make_engine(url: str) -> Engine:
    """Engine with the settings each backend needs (SQLite: WAL, FKs, busy timeout)."""
    if url.startswith("sqlite"):
        memory = url in ("sqlite://", "sqlite:///:memory:")
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False},
                               poolclass=StaticPool if memory else None)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            if not memory:
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=FULL")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision. Idempotent."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":  # replicas starting together: one migrates, the others wait
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    except OperationalError as exc:
        raise StoreUnavailable(f"database unavailable during migration: {exc.orig}") from exc
    except SQLAlchemyError as exc:
        raise StoreError(f"database error during migration: {exc}") from exc


@contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except (OperationalError, DBAPIError) as exc:
        if isinstance(exc, OperationalError) or exc.connection_invalidated:
            raise StoreUnavailable(f"database unavailable: {exc.orig}") from exc
        raise StoreError(f"database error: {exc.orig}") from exc
    except SQLAlchemyError as exc:
        raise StoreError(f"database error: {exc}") from exc


def _lost_race(exc: StoreError) -> bool:
    """Whether another dispatcher stored the same message or thread key first (a re-run sees it)."""
    return isinstance(exc, rows.ThreadKeyTaken) or isinstance(exc.__cause__, IntegrityError)


class SqlCaseStore(CaseStore):
    """Thread-safe: every call opens its own session."""

    def __init__(self, url: str, ctx: Context, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.engine = make_engine(url)
        self.ctx, self.clock = ctx, clock
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._autocommit = self.engine.execution_options(isolation_level="AUTOCOMMIT")  # same pool
        migrate(self.engine)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One ORM transaction; SQLAlchemy errors translated into the Frontdesk error tree."""
        with _translated():
            with self._sessions.begin() as session:
                yield session

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        """One Core transaction (the hot paths), errors translated like :meth:`transaction`."""
        with _translated():
            with self.engine.begin() as conn:
                yield conn

    def apply(self, triaged: object) -> ApplyResult:
        """:meth:`apply_many` of one message (the same reads and writes)."""
        assert isinstance(triaged, TriagedMessage)
        try:
            return self._apply_chunk([triaged])[0]
        except StoreError as exc:
            if not _lost_race(exc):
                raise
        # A concurrent dispatcher stored the same message (or thread key) first: re-run sees it.
        return self._apply_chunk([triaged])[0]

    def apply_many(self, batch: Sequence[object]) -> list[ApplyResult]:
        """One transaction for the whole batch, at one time: all applied, or none. Each message sees
        the ones before it (a follow-up finds the case its predecessor opened), so the results are
        those of applying them one by one. What the messages look up is read for all of them at
        once first. After a unique-key race with another dispatcher, one by one."""
        assert all(isinstance(t, TriagedMessage) for t in batch)
        try:
            return self._apply_chunk(batch)  # type: ignore[arg-type]
        except StoreError as exc:
            if not _lost_race(exc):
                raise
        return [self.apply(t) for t in batch]

    def _apply_chunk(self, batch: Sequence[TriagedMessage]) -> list[ApplyResult]:
        with self.connection() as conn:
            writes, now = rows.Writes(), self.clock()
            prefetch(conn, batch, self.ctx, writes, now)
            results = [apply_message(conn, t, self.ctx, now, writes) for t in batch]
            writes.flush(conn)
            return results

    def claim_outbox(self, limit: int, lease_seconds: float) -> list[OutboxItem]:
        """Lease up to ``limit`` due rows in three statements, whatever ``limit`` is: pick the
        candidates, lease those still free (``UPDATE ... RETURNING``: a row another relay leased
        in between is not returned), read them with their case references."""
        now = self.clock()
        with self.connection() as conn:
            leased = rows.lease_due(conn, now, now + timedelta(seconds=lease_seconds), limit)
        return [OutboxItem(r.id, r.kind, r.reference or "", r.payload, r.attempts, r.created_at) for r in leased]

    def mark_sent(self, item_id: int) -> None:
        self.mark_sent_many([item_id])

    def mark_sent_many(self, item_ids: Sequence[int]) -> None:
        """Mark rows sent in one transaction (idempotent: rows already sent are left alone); an
        acknowledgement also marks its case acknowledged and adds that to the case history."""
        now = self.clock()
        if self.engine.dialect.name == "postgresql":  # one statement, atomic on its own
            with _translated(), self._autocommit.connect() as conn:
                conn.execute(rows.MARK_SENT_ONE_STATEMENT, {"ids": list(item_ids), "now": now})
            return
        with self.connection() as conn:
            rows.mark_sent(conn, item_ids, now)

    def mark_retry(self, item_id: int, error: str, delay_seconds: float, permanent: bool = False) -> None:
        now = self.clock()
        with self.connection() as conn:
            rows.mark_retry(conn, item_id, error, now + timedelta(seconds=delay_seconds), permanent, now)

    def read(self, fn: Callable[[Session], T]) -> T:
        """Run a read-only query function in a transaction (used by the CLI and tests)."""
        with self.transaction() as session:
            return fn(session)

    def close(self) -> None:
        self.engine.dispose()
