"""One batch of an IMAP pass: how mail is cut into batches, a fetched batch (:class:`Fetched`), its
records, and a batch on its way to the bus (:class:`Delivery`); what the pass they belong to works
on (:class:`Where`). The order of the steps is :mod:`ingest.imap`'s."""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from frontdesk.bus.base import DEFAULT_MAX_RECORD_BYTES, Outgoing, Topics, record_size
from frontdesk.deadletter import build_dead_letter
from ingest.blobs import BlobStore, BlobWriteFailed, Staged
from ingest.imap_isolate import Refusals
from ingest.imap_parse import Pending
from ingest.imap_worker import ParseJob, Parsed
from ingest.imap_state import Checkpoint, CheckpointSaver, PendingMail
from ingest.mail.parse import MailLimits, over_limit

BATCH_BYTES = 32 * 1024 * 1024  # a batch also ends here: memory is bounded by (PREFETCH + 1) batches


class Where(NamedTuple):
    """The folder a pass imports, its checkpoint when the pass began, its saver, and the mail its
    server refused to hand over."""

    folder: str
    start_cp: Checkpoint
    saver: CheckpointSaver
    refusals: Refusals


@dataclass(frozen=True)
class Fetched:
    """A batch fetched and parsing (``pending``): the raw mails by UID, and the UIDs the server
    refused to hand over (``refused``: UID → its answer); ``done`` as in :class:`Delivery`."""

    done: int
    batch: list[PendingMail]
    raws: dict[int, bytes]
    refused: dict[int, str]
    pending: Pending


@dataclass(frozen=True)
class Delivery:
    """A batch on its way to the bus: ``future`` ends when its blobs are committed and the bus has
    acknowledged ``records``; ``done`` is where the batch ends in the pass's list of mails;
    ``unfetchable``: the UIDs dead-lettered because the server would not hand them over."""

    done: int
    batch: list[PendingMail]
    records: list[Outgoing]
    future: Future[None]
    unfetchable: frozenset[int] = field(default_factory=frozenset)


def batches(mails: list[PendingMail], most: int, limits: MailLimits,
            alone: Collection[int] = ()) -> Iterator[tuple[int, list[PendingMail]]]:
    """Consecutive batches of at most ``most`` mails and ``BATCH_BYTES`` (a bigger mail goes alone;
    a mail over the size limit is not fetched and counts nothing), each with the index in ``mails``
    where it ends. A UID in ``alone`` (:attr:`Refusals.alone`) is a batch of its own."""
    batch: list[PendingMail] = []
    size = 0
    for index, mail in enumerate(mails):
        fetched = mail.size if mail.size <= limits.max_message_bytes else 0
        cut = mail.uid in alone or (len(batch) == 1 and batch[0].uid in alone)
        if batch and (cut or len(batch) >= most or size + fetched > BATCH_BYTES):
            yield index, batch
            batch, size = [], 0
        batch.append(mail)
        size += fetched
    if batch:
        yield len(mails), batch


def batch_records(job: ParseJob, topics: Topics, batch: list[PendingMail], raws: dict[int, bytes],
                  parsed: list[Parsed], blobs: BlobStore | None, max_record: int = DEFAULT_MAX_RECORD_BYTES,
                  unfetchable: Mapping[int, str] | None = None) -> tuple[list[Outgoing], list[Staged]]:
    """The batch's records (inbound or dead-letter, in UID order) and the blobs they name. A blob
    that could not be staged fails the whole batch (``BlobWriteFailed``, transient), its staged
    blobs discarded. A message over the bus's ``max_record`` bytes is dead-lettered (the bus would
    refuse the batch every time), and a dead letter keeps what of the mail fits. A mail the server
    would not hand over is dead-lettered with the reason in ``unfetchable`` (UID → reason), without
    bytes; any other mail without raw bytes was expunged meanwhile and has no record."""
    by_uid = {p.uid: p for p in parsed}
    staged = [s for p in parsed for s in p.staged]
    failed = next((p.store_error for p in parsed if p.store_error), None)
    if failed is not None:
        if blobs is not None:
            blobs.discard(staged)
        raise BlobWriteFailed(failed)
    records: list[Outgoing] = []
    for mail in batch:
        raw = raws.get(mail.uid)
        if raw is None:
            if unfetchable and mail.uid in unfetchable:
                records.append(dead_letter_record(topics, job.connector, mail.uid, b"", unfetchable[mail.uid],
                                                  max_record, error_type="MailUnfetchable"))
            elif mail.size > job.limits.max_message_bytes:
                records.append(dead_letter_record(topics, job.connector, mail.uid, b"", _over(mail.size, job.limits),
                                                  max_record))
            continue  # expunged by another client since the FETCH of sizes: nothing to import
        item = by_uid[mail.uid]
        record = inbound_record(topics, job.connector, item) if item.rejected is None else None
        if record is not None and record_size(record) > max_record:
            item = replace(item, rejected=f"the normalised message is {record_size(record):,} bytes, over the "
                                          f"bus's {max_record:,}-byte record limit")
        if item.rejected is not None:
            records.append(dead_letter_record(topics, job.connector, mail.uid, raw, item.rejected, max_record))
            continue
        records.append(record)  # type: ignore[arg-type]  # not None: not rejected
    return records, staged


def _over(size: int, limits: MailLimits) -> str:
    """'message is 0.3 MiB, over the 195.3 KiB limit' (the parser's wording for any limit)."""
    return f"message is {over_limit(size, limits.max_message_bytes)} limit"


def inbound_record(topics: Topics, connector: str, parsed: Parsed) -> Outgoing:
    """The inbound-topic record of a parsed (not rejected) mail."""
    return Outgoing(topics.inbound, parsed.value, parsed.key,
                    (("frontdesk-connector", connector.encode()), ("frontdesk-imap-uid", str(parsed.uid).encode())))


def dead_letter_record(topics: Topics, connector: str, uid: int, raw: bytes, reason: str,
                       max_record: int = DEFAULT_MAX_RECORD_BYTES, *, error_type: str = "MailRejected") -> Outgoing:
    """The dead-letter record of a rejected mail (``raw``: the mail, cut to fit ``max_record``:
    :mod:`frontdesk.deadletter`), keyed by mailbox and UID."""
    return build_dead_letter(
        topics.deadletter, f"{connector}:{uid}".encode(), raw, stage="ingest", reason=reason,
        error_type=error_type, max_bytes=max_record, source_topic=f"{connector}/uid:{uid}",
        headers=(("frontdesk-stage", b"ingest"), ("frontdesk-error", error_type.encode()),
                 ("frontdesk-imap-uid", str(uid).encode())))
