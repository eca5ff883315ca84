"""The worker side of the parse pool (:mod:`ingest.imap_parse`): what a connector asks for
(:class:`ParseJob`), what comes back per mail (:class:`Parsed`) and the function a worker process
runs on a chunk of mails (:func:`parse_chunk`). Runs in the worker processes; pure but for the
blob pack it appends to.

CPU budget: in a worker process (:func:`install_cpu_guard`, run by the pool's worker initializer)
each mail may take ``ParseJob.cpu_limit_s`` of CPU to parse; a profiling timer (``ITIMER_PROF``)
armed around the parser interrupts it past that, and the mail is rejected ("parsing took more than
N s of CPU"). Signals reach only a process's main thread and only between bytecodes: parsing in
the connector threads (``workers=0``) runs without the budget, and one long C call that checks no
signals (``sum`` over a huge range does not; ``re`` does, since 3.11 at least) or a blocked one is
left to the pool's wall-clock bound.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Literal

from frontdesk.codec import encode
from frontdesk.messages import InboundMessage
from ingest.blobs import BlobStore, BlobWriteFailed, PackWriter, Staged
from ingest.mail.parse import MailLimits, MailRejected, normalise_mail

log = logging.getLogger(__name__)
DEFAULT_CPU_LIMIT_S = 10.0  # imap.parse_cpu_limit_s
_REFIRE_S = 0.5  # the timer fires again while the mail is still parsing: a parser's bare ``except:`` cannot stop it


@dataclass(frozen=True)
class ParseJob:
    """How a connector wants its mail parsed (sent to the workers with every chunk)."""

    connector: str
    channel: Literal["email", "social"]
    limits: MailLimits
    blob_root: str | None  # where to stage the blobs; None: no blob store
    cpu_limit_s: float = DEFAULT_CPU_LIMIT_S  # per mail, where the worker has the guard (see the module docstring)


@dataclass(frozen=True, slots=True)
class Parsed:
    """One parsed mail: ``value`` (the encoded InboundMessage) and ``key`` (its id), plus its
    ``staged`` blobs to commit before publishing; or why it is ``rejected`` (for good: a
    dead-letter record), or a ``store_error`` (transient: the blob store could not be written)."""

    uid: int
    value: bytes = b""
    key: bytes = b""
    staged: tuple[Staged, ...] = ()
    rejected: str | None = None
    store_error: str | None = None


Normalise = Callable[..., tuple[InboundMessage, list[bytes]]]
ChunkParser = Callable[[ParseJob, list[tuple[int, bytes]]], tuple[list[Parsed], int, float]]


class _OverBudget(BaseException):
    """Raised by the CPU timer in the middle of a parse. A BaseException, like KeyboardInterrupt,
    so that the parser's own ``except Exception`` cannot swallow it; it never leaves this module."""


_guarded = False  # set in the pool's worker processes only
_armed = False  # a mail is being parsed under the budget: a late timer signal after it is ignored


def install_cpu_guard() -> None:
    """Give this process the per-mail CPU budget. Call from the main thread of a process that
    parses nothing else (the pool's workers): it takes over SIGPROF, and so any profiler using it."""
    global _guarded
    if hasattr(signal, "setitimer"):
        signal.signal(signal.SIGPROF, _over_budget)
        _guarded = True


def _over_budget(signum: int, frame: object) -> None:
    if _armed:
        raise _OverBudget


def cpu_reason(limit_s: float) -> str:
    """The rejection reason of a mail over its CPU budget."""
    return f"parsing took more than {limit_s:g} s of CPU"


def parse_chunk(job: ParseJob, mails: list[tuple[int, bytes]], *,
                normalise: Normalise = normalise_mail) -> tuple[list[Parsed], int, float]:
    """Worker side: the parsed mails, this process's id and its CPU seconds so far. The blobs go
    to this process's shared pack (``BlobStore.writer(shared=True)``: one file for many chunks),
    written out before the chunk is returned; if that fails, every mail that staged a blob in it
    carries the ``store_error``. ``normalise`` is the parser (tests pass one that misbehaves)."""
    if job.blob_root is None:
        parsed = [_parse_one(job, uid, raw, None, normalise) for uid, raw in mails]
        return parsed, os.getpid(), time.process_time()
    writer, lock = _writer(job.blob_root)
    with lock:  # a chunk's blobs are flushed (or failed) together: one chunk at a time per writer
        parsed = [_parse_one(job, uid, raw, writer, normalise) for uid, raw in mails]
        try:
            writer.flush()
        except BlobWriteFailed as exc:
            parsed = [replace(p, store_error=str(exc)) if any(s.pack for s in p.staged) else p for p in parsed]
    return parsed, os.getpid(), time.process_time()


_starts: Any = None  # in a worker: the pool's start records


def run_chunk(parse: ChunkParser, slot: int, job: ParseJob,
              chunk: list[tuple[int, bytes]]) -> tuple[list[Parsed], int, float]:
    """What a pool's worker runs per task: record who took it and when in the pool's start records
    (the owner's wall-clock bound counts from there, not from when it was queued), then parse."""
    _starts[2 * slot + 1] = os.getpid()
    _starts[2 * slot] = time.monotonic_ns()  # the same clock in every process (CLOCK_MONOTONIC)
    return parse(job, chunk)


def init_worker(owner_alive: Connection, starts: Any) -> None:
    """The pool's worker initializer: the per-mail CPU budget (:func:`install_cpu_guard`), the
    pool's start records, and exit when the pool's owner is gone (SIGKILL included). Nobody else
    would stop us: the forkserver waits for its children, and the task queue never reaches EOF. Ctrl-C
    in a terminal is for the owner, which stops cleanly and then takes the workers with it (a
    worker interrupted mid-parse would look like a mail that kills it). SIGTERM keeps its default:
    the executor terminates the workers of a broken pool with it."""
    global _starts
    _starts = starts
    install_cpu_guard()
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:
        try:
            owner_alive.recv_bytes()
        except (EOFError, OSError):
            pass
        os._exit(0)

    threading.Thread(target=watch, name="owner-watch", daemon=True).start()


@functools.lru_cache(maxsize=8)
def _writer(root: str) -> tuple[PackWriter, threading.Lock]:
    """One per process and root: its store keeps the index connection open, its pack takes many
    chunks. The lock matters only where connector threads parse themselves (``workers=0``)."""
    return BlobStore(Path(root)).writer(shared=True), threading.Lock()


def _parse_one(job: ParseJob, uid: int, raw: bytes, writer: PackWriter | None, normalise: Normalise) -> Parsed:
    try:
        message, blobs = _within_budget(job, raw, writer is not None, normalise)
    except _OverBudget:
        log.warning("%s: UID %s took more than %g s of CPU to parse; dead-lettered", job.connector, uid, job.cpu_limit_s)
        return Parsed(uid, rejected=cpu_reason(job.cpu_limit_s))
    except MailRejected as exc:
        return Parsed(uid, rejected=exc.reason)
    except Exception as exc:  # a parser bug must not stop the mailbox: this one mail is dead-lettered
        log.exception("%s: parser error on UID %s", job.connector, uid)
        return Parsed(uid, rejected=f"parser error: {type(exc).__name__}: {exc}"[:500])
    staged: list[Staged] = []
    if writer is not None:
        try:
            for blob in blobs:
                staged.append(writer.add(blob))
        except BlobWriteFailed as exc:  # the caller discards the whole batch's blobs
            return Parsed(uid, staged=tuple(staged), store_error=str(exc))
    return Parsed(uid, encode(message), message.id.encode(), tuple(staged))


def _within_budget(job: ParseJob, raw: bytes, store: bool, normalise: Normalise) -> tuple[InboundMessage, list[bytes]]:
    """``normalise`` on one mail, interrupted by _OverBudget once it used ``job.cpu_limit_s`` of CPU
    (in a guarded process). Only the parser is timed: the blob writes after it must never be cut
    short (a pack written in part)."""
    global _armed
    if not _guarded:
        return normalise(raw, connector=job.connector, channel=job.channel, store=store, limits=job.limits)
    _armed = True
    signal.setitimer(signal.ITIMER_PROF, job.cpu_limit_s, _REFIRE_S)
    try:
        return normalise(raw, connector=job.connector, channel=job.channel, store=store, limits=job.limits)
    finally:
        _armed = False
        signal.setitimer(signal.ITIMER_PROF, 0)
