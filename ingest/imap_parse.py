"""Parsing fetched mail off the IMAP connection: a pool of worker processes shared by all mailboxes.

Parsing is CPU-bound Python (about 0.4 ms a mail), so threads would share one core under the GIL;
worker processes use every core while the connector thread fetches, commits and publishes. A
worker (:mod:`ingest.imap_worker`) gets a chunk of ``(uid, raw bytes)`` and returns, per mail, the
encoded ``InboundMessage`` and its blobs (raw mail, attachments) staged in the blob store —
appended to the worker's own pack file, neither synced nor indexed (``BlobStore.writer(shared=True)``) — or
the reason the mail is rejected. The connector commits a whole batch's blobs with one sync and
one index transaction and only then publishes (``ingest.blobs``); it discards what it does not
commit.

Contract of :class:`ParsePool`:

* ``start`` returns at once (the mails are queued); ``finish`` blocks until every mail of that
  call is parsed and returns one :class:`Parsed` per mail, in the order given;
* total: every mail gets a ``Parsed``, never an exception. ``MailRejected``, a bug in the
  parser (any exception) and a worker that dies on a mail (crash, out-of-memory kill) all become
  a rejection reason, i.e. a dead-letter record. A broken pool is replaced and the mails of the
  lost chunks are parsed again one at a time, so only a mail that kills a worker twice is rejected;
* bounded: a worker gives each mail ``ParseJob.cpu_limit_s`` of CPU (:mod:`ingest.imap_worker`),
  and what a signal cannot interrupt (C code that never returns to the interpreter) meets a
  wall-clock bound here (:func:`wall_bound`, from the moment a worker takes the chunk): the waiting
  caller kills the chunk's worker, which breaks the pool like a crash. Alone, a mail still over the
  bound is rejected with that reason; a mail alone caught in a pool that another caller killed is
  parsed again;
* ``workers=0`` parses in the calling thread (``start`` does the work), without the CPU budget and
  the bound (they need the worker processes); so does a pool that cannot start processes (it logs
  why, once);
* workers are forked from a clean single-threaded server process (``forkserver``, where the
  platform has it) that has the parser imported, never from the threaded connector process;
  they exit when that server, or the process that owns the pool, is gone (a SIGKILLed
  connector leaves no workers behind).
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import signal
import threading
import time
import weakref
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from ingest.imap_worker import ChunkParser, ParseJob, Parsed, init_worker, parse_chunk, run_chunk

log = logging.getLogger(__name__)
MAX_DEFAULT_WORKERS = 8  # a worker costs ~60 MB; 8 parse several thousand mails a second
CHUNKS_PER_WORKER = 4  # per batch: small enough to balance the workers, large enough to amortise the IPC
_DIED = "the parser process died on this mail (crash or out-of-memory kill)"
WALL_BUDGETS = 3.0  # a busy machine's wall clock runs slower than a worker's CPU clock
WALL_BUDGET_PER_MAIL = 0.1
WALL_SLACK_S = 1.0  # scheduling, a worker's first chunk, a chunk's megabytes through the pipes
_SLOTS = 16384  # start records of tasks in flight (a slot is reused after that many tasks)
_POLL_S = 0.25  # how often a caller looks whether its queued chunk has started
_KILL_WAIT_S = 30.0
_ISOLATED_TRIES = 3


def wall_bound(job: ParseJob, mails: int) -> float:
    """How long a worker may hold a chunk of ``mails`` (wall clock) before it is killed: three CPU
    budgets plus a tenth of one per mail, plus a second. Generous on purpose: a mail over its CPU
    budget is stopped by the worker itself; this only catches what the signal cannot interrupt."""
    return job.cpu_limit_s * (WALL_BUDGETS + WALL_BUDGET_PER_MAIL * mails) + WALL_SLACK_S


def wall_reason(job: ParseJob, bound_s: float) -> str:
    """The rejection reason of a mail that a worker could not stop and the pool killed."""
    return (f"parsing did not finish within {bound_s:g} s (wall clock; CPU budget {job.cpu_limit_s:g} s) "
            "and could not be interrupted: the parser process was killed")


@dataclass(frozen=True)
class _Run:
    """A chunk handed to a worker process: its pool, its start-record slot and its wall bound."""

    executor: ProcessPoolExecutor
    slot: int
    bound_s: float


class _Overdue(BrokenProcessPool):
    """A chunk held its worker past its wall bound; the worker was killed (the pool is broken)."""

    def __init__(self, bound_s: float) -> None:
        super().__init__(f"no result within {bound_s:g} s")
        self.bound_s = bound_s


_Task = tuple[_Run | None, Future[tuple[list[Parsed], int, float]]]


@dataclass
class Pending:
    """Mails handed to the pool by one ``start`` call."""

    job: ParseJob
    chunks: list[list[tuple[int, bytes]]]
    tasks: list[_Task] = field(default_factory=list)


class ParsePool:
    """Parses mail on ``workers`` processes (default: one per CPU this process may use, at most
    ``MAX_DEFAULT_WORKERS``), started on first use.

    ``parse`` is what a worker runs per chunk (:func:`parse_chunk`; tests pass another importable one).
    """

    def __init__(self, workers: int | None = None, *, parse: ChunkParser = parse_chunk) -> None:
        self.workers = _usable_cpus() if workers is None else workers
        self.parse = parse
        self._executor: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        self._cpu: dict[int, float] = {}
        self._owner_watch: Connection | None = None
        self._owner_alive: Connection | None = None
        self._starts: Any = None  # shared with the workers: per slot, when (monotonic ns) and which pid took it
        self._next_slot = 0
        self._killed: weakref.WeakSet[ProcessPoolExecutor] = weakref.WeakSet()

    def start(self, job: ParseJob, mails: list[tuple[int, bytes]]) -> Pending:
        """Queue ``mails`` for parsing; non-blocking (unless ``workers`` is 0)."""
        if not mails:
            return Pending(job, [])
        if not self.workers:
            done: Future[tuple[list[Parsed], int, float]] = Future()
            parsed, _, _ = self.parse(job, mails)
            done.set_result((parsed, 0, 0.0))
            return Pending(job, [mails], [(None, done)])
        size = math.ceil(len(mails) / (self.workers * CHUNKS_PER_WORKER))
        chunks = [mails[at : at + size] for at in range(0, len(mails), size)]
        return Pending(job, chunks, [self._submit(job, chunk) for chunk in chunks])

    def finish(self, pending: Pending) -> list[Parsed]:
        """Every mail of ``pending`` parsed, in order (blocking; never raises, see module docstring)."""
        parsed: list[Parsed] = []
        for chunk, task in zip(pending.chunks, pending.tasks, strict=True):
            try:
                parsed += self._result(task)
            except BrokenProcessPool as exc:
                why = (f"a chunk held a parser process over {exc.bound_s:g} s and it was killed"
                       if isinstance(exc, _Overdue) else "a parser process died")
                log.warning("%s: %s; parsing %d mails one at a time", pending.job.connector, why, len(chunk))
                parsed += [self._isolated(pending.job, uid, raw) for uid, raw in chunk]
        return parsed

    def abandon(self, pending: Pending) -> list[Parsed]:
        """Give ``pending`` up (its mails will be fetched again): drop the chunks no worker has
        started, wait for the others (blocking, at most their wall bound) and return what they
        parsed, so that the caller can discard its staged blobs. Never raises."""
        for _, future in pending.tasks:
            future.cancel()
        parsed: list[Parsed] = []
        for task in pending.tasks:
            try:
                parsed += self._result(task)
            except BaseException:  # cancelled, or the pool broke: nothing was staged that we know of
                continue
        return parsed

    def warm(self) -> None:
        """Start the worker processes now (blocking) rather than on the first mail; a failure is
        only logged (the first mail tries again, see ``_submit``)."""
        if not self.workers:
            return
        try:
            for future in [self._pool().submit(os.getpid) for _ in range(self.workers)]:
                future.result()
        except (OSError, BrokenProcessPool) as exc:
            log.warning("parser processes did not start: %s", exc)
            if self._executor is not None:
                self._discard(self._executor)

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the worker processes reported so far, summed."""
        return sum(self._cpu.values())

    def close(self) -> None:
        """Stop the workers (blocking); the pool starts new ones if used again."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)

    def _isolated(self, job: ParseJob, uid: int, raw: bytes) -> Parsed:
        for _ in range(_ISOLATED_TRIES):
            task = self._submit(job, [(uid, raw)])
            try:
                return self._result(task)[0]
            except _Overdue as exc:
                log.error("%s: UID %s cannot be parsed within %g s; dead-lettered", job.connector, uid, exc.bound_s)
                return Parsed(uid, rejected=wall_reason(job, exc.bound_s))
            except BrokenProcessPool:
                if task[0] is None or task[0].executor not in self._killed:
                    break  # else another caller killed the pool under this mail: not its doing, try again
        log.error("%s: UID %s kills the parser process; dead-lettered", job.connector, uid)
        return Parsed(uid, rejected=_DIED)

    def _submit(self, job: ParseJob, chunk: list[tuple[int, bytes]]) -> _Task:
        try:
            executor = self._pool()
            try:
                return self._submit_to(executor, job, chunk)
            except BrokenProcessPool:  # broken by another connector's chunk since we got it
                self._discard(executor)
                return self._submit_to(self._pool(), job, chunk)
        except OSError as exc:  # no processes to be had here (limits, no /dev/shm): degrade, never loop
            log.error("cannot start parser processes (%s); parsing in the connector threads from now on", exc)
            self.workers = 0
            done: Future[tuple[list[Parsed], int, float]] = Future()
            done.set_result((self.parse(job, chunk)[0], 0, 0.0))
            return None, done

    def _submit_to(self, executor: ProcessPoolExecutor, job: ParseJob, chunk: list[tuple[int, bytes]]) -> _Task:
        with self._lock:
            slot, self._next_slot = self._next_slot, (self._next_slot + 1) % _SLOTS
            self._starts[2 * slot] = 0
        future = executor.submit(run_chunk, self.parse, slot, job, chunk)
        return _Run(executor, slot, wall_bound(job, len(chunk))), future

    def _result(self, task: _Task) -> list[Parsed]:
        run, future = task
        try:
            parsed, pid, cpu = future.result() if run is None else self._wait(run, future)
        except BrokenProcessPool:
            if run is not None:
                self._discard(run.executor)
            raise
        if pid:
            self._cpu[pid] = cpu
        return parsed

    def _wait(self, run: _Run, future: Future[tuple[list[Parsed], int, float]]) -> tuple[list[Parsed], int, float]:
        """``future``'s result (blocking); once its worker has held it ``run.bound_s``, the worker is
        killed and this raises _Overdue (unless the result came first)."""
        while True:
            started = self._starts[2 * run.slot]
            left = _POLL_S if not started else run.bound_s - (time.monotonic_ns() - started) / 1e9
            try:
                return future.result(timeout=max(left, 0.0))
            except TimeoutError:
                if started and time.monotonic_ns() - started >= run.bound_s * 1e9:
                    break
        pid = self._starts[2 * run.slot + 1]
        self._killed.add(run.executor)
        try:
            os.kill(pid, signal.SIGKILL)  # the executor sees a worker die: it stops the others and fails their tasks
            # a task wakes the executor's thread, which misses a worker started while it waited (3.11's on-demand spawns)
            run.executor.submit(os.getpid)
        except (ProcessLookupError, BrokenProcessPool, RuntimeError):  # it just finished; the pool is already down
            pass
        try:
            return future.result(timeout=_KILL_WAIT_S)
        except (BrokenProcessPool, TimeoutError) as exc:
            raise _Overdue(run.bound_s) from exc

    def _pool(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._executor is None:
                context = _context()
                if self._owner_alive is None:
                    # never written to: the workers see EOF when this process is gone, however it ended
                    self._owner_watch, self._owner_alive = context.Pipe(duplex=False)
                    self._starts = context.RawArray("q", 2 * _SLOTS)
                self._executor = ProcessPoolExecutor(self.workers, mp_context=context, initializer=init_worker,
                                                     initargs=(self._owner_watch, self._starts))
            return self._executor

    def _discard(self, executor: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._executor is executor:
                self._executor = None
        executor.shutdown(wait=False, cancel_futures=True)


def _usable_cpus() -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cpus, MAX_DEFAULT_WORKERS))


def _context() -> multiprocessing.context.BaseContext:
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])  # workers start with the parser imported
        return context
    return multiprocessing.get_context("spawn")


_shared: ParsePool | None = None
_shared_lock = threading.Lock()


def shared_pool() -> ParsePool:
    """The process-wide pool (one worker per CPU) that connectors use unless given one."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = ParsePool()
        return _shared
