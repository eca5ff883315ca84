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
* ``workers=0`` parses in the calling thread (``start`` does the work); so does a pool that cannot
  start processes (it logs why, once);
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
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

from ingest.imap_worker import ParseJob, Parsed, parse_chunk

log = logging.getLogger(__name__)
MAX_DEFAULT_WORKERS = 8  # a worker costs ~60 MB; 8 parse several thousand mails a second
CHUNKS_PER_WORKER = 4  # per batch: small enough to balance the workers, large enough to amortise the IPC
_DIED = "the parser process died on this mail (crash or out-of-memory kill)"


_Task = tuple[ProcessPoolExecutor | None, Future[tuple[list[Parsed], int, float]]]


@dataclass
class Pending:
    """Mails handed to the pool by one ``start`` call."""

    job: ParseJob
    chunks: list[list[tuple[int, bytes]]]
    tasks: list[_Task] = field(default_factory=list)


ChunkParser = Callable[[ParseJob, list[tuple[int, bytes]]], tuple[list[Parsed], int, float]]


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
            except BrokenProcessPool:
                log.warning("%s: a parser process died; parsing %d mails one at a time",
                            pending.job.connector, len(chunk))
                parsed += [self._isolated(pending.job, uid, raw) for uid, raw in chunk]
        return parsed

    def abandon(self, pending: Pending) -> list[Parsed]:
        """Give ``pending`` up (its mails will be fetched again): drop the chunks no worker has
        started, wait for the others (blocking) and return what they parsed, so that the caller can
        discard its staged blobs. Never raises."""
        for _, future in pending.tasks:
            future.cancel()
        parsed: list[Parsed] = []
        for _, future in pending.tasks:
            try:
                parsed += future.result()[0]
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
        try:
            return self._result(self._submit(job, [(uid, raw)]))[0]
        except BrokenProcessPool:
            log.error("%s: UID %s kills the parser process; dead-lettered", job.connector, uid)
            return Parsed(uid, rejected=_DIED)

    def _submit(self, job: ParseJob, chunk: list[tuple[int, bytes]]) -> _Task:
        try:
            executor = self._pool()
            try:
                return executor, executor.submit(self.parse, job, chunk)
            except BrokenProcessPool:  # broken by another connector's chunk since we got it
                self._discard(executor)
                executor = self._pool()
                return executor, executor.submit(self.parse, job, chunk)
        except OSError as exc:  # no processes to be had here (limits, no /dev/shm): degrade, never loop
            log.error("cannot start parser processes (%s); parsing in the connector threads from now on", exc)
            self.workers = 0
            done: Future[tuple[list[Parsed], int, float]] = Future()
            done.set_result((self.parse(job, chunk)[0], 0, 0.0))
            return None, done

    def _result(self, task: _Task) -> list[Parsed]:
        executor, future = task
        try:
            parsed, pid, cpu = future.result()
        except BrokenProcessPool:
            if executor is not None:
                self._discard(executor)
            raise
        if pid:
            self._cpu[pid] = cpu
        return parsed

    def _pool(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._executor is None:
                context = _context()
                if self._owner_alive is None:
                    # never written to: the workers see EOF when this process is gone, however it ended
                    self._owner_watch, self._owner_alive = context.Pipe(duplex=False)
                self._executor = ProcessPoolExecutor(self.workers, mp_context=context,
                                                     initializer=_exit_with_owner, initargs=(self._owner_watch,))
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


def _exit_with_owner(owner_alive: Connection) -> None:
    """Worker initializer: exit when the pool's owner is gone (SIGKILL included). Nobody else would
    stop us: the forkserver waits for its children, and the task queue never reaches EOF. Ctrl-C
    in a terminal is for the owner, which stops cleanly and then takes the workers with it (a
    worker interrupted mid-parse would look like a mail that kills it). SIGTERM keeps its default:
    the executor terminates the workers of a broken pool with it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:
        try:
            owner_alive.recv_bytes()
        except (EOFError, OSError):
            pass
        os._exit(0)

    threading.Thread(target=watch, name="owner-watch", daemon=True).start()


_shared: ParsePool | None = None
_shared_lock = threading.Lock()


def shared_pool() -> ParsePool:
    """The process-wide pool (one worker per CPU) that connectors use unless given one."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = ParsePool()
        return _shared
