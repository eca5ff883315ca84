"""The worker side of the parse pool (:mod:`ingest.imap_parse`): what a connector asks for
(:class:`ParseJob`), what comes back per mail (:class:`Parsed`) and the function a worker process
runs on a chunk of mails (:func:`parse_chunk`). Runs in the worker processes; pure but for the
blob pack it appends to."""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from frontdesk.codec import encode
from ingest.blobs import BlobStore, BlobWriteFailed, PackWriter, Staged
from ingest.mail.parse import MailLimits, MailRejected, normalise_mail

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ParseJob:
    """How a connector wants its mail parsed (sent to the workers with every chunk)."""

    connector: str
    channel: Literal["email", "social"]
    limits: MailLimits
    blob_root: str | None  # where to stage the blobs; None: no blob store


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


def parse_chunk(job: ParseJob, mails: list[tuple[int, bytes]]) -> tuple[list[Parsed], int, float]:
    """Worker side: the parsed mails, this process's id and its CPU seconds so far. The blobs go
    to this process's shared pack (``BlobStore.writer(shared=True)``: one file for many chunks),
    written out before the chunk is returned; if that fails, every mail that staged a blob in it
    carries the ``store_error``."""
    if job.blob_root is None:
        return [_parse_one(job, uid, raw, None) for uid, raw in mails], os.getpid(), time.process_time()
    writer, lock = _writer(job.blob_root)
    with lock:  # a chunk's blobs are flushed (or failed) together: one chunk at a time per writer
        parsed = [_parse_one(job, uid, raw, writer) for uid, raw in mails]
        try:
            writer.flush()
        except BlobWriteFailed as exc:
            parsed = [replace(p, store_error=str(exc)) if any(s.pack for s in p.staged) else p for p in parsed]
    return parsed, os.getpid(), time.process_time()


@functools.lru_cache(maxsize=8)
def _writer(root: str) -> tuple[PackWriter, threading.Lock]:
    """One per process and root: its store keeps the index connection open, its pack takes many
    chunks. The lock matters only where connector threads parse themselves (``workers=0``)."""
    return BlobStore(Path(root)).writer(shared=True), threading.Lock()


def _parse_one(job: ParseJob, uid: int, raw: bytes, writer: PackWriter | None) -> Parsed:
    try:
        message, blobs = normalise_mail(raw, connector=job.connector, channel=job.channel,
                                        store=writer is not None, limits=job.limits)
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
