"""Bodies of ``frontdesk ingest imap [--once]`` and the intake part of ``frontdesk run``."""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from frontdesk.bus.base import Bus
from frontdesk.health import Probes, connector_answers
from frontdesk.metrics import default_metrics
from ingest.blobs import BlobError, BlobStore
from ingest.imap import CheckpointStore, MailboxConnector
from ingest.imap_settings import ImapSettings
from ingest.mail.parse import MailLimits

if TYPE_CHECKING:  # the HTTP intake and the Telegram poller are imported only when run
    from ingest.http import HttpIntakeSettings
    from ingest.telegram import TelegramSettings

log = logging.getLogger(__name__)


def connectors(settings: ImapSettings, bus: Bus, data_dir: Path, blob_dir: Path) -> list[MailboxConnector]:
    """One connector per configured mailbox; each one's ``health`` is exported as metrics."""
    checkpoints = CheckpointStore(settings.checkpoint_dir or data_dir / "imap")
    limits = MailLimits(max_message_bytes=settings.max_message_bytes,
                        max_attachment_bytes=settings.max_attachment_bytes)
    blobs = BlobStore(blob_dir)
    if settings.mailboxes:
        _sweep(blobs)
    conns = [MailboxConnector(box, bus, checkpoints, blobs, limits,
                              reconnect=(settings.reconnect_initial_s, settings.reconnect_max_s),
                              parse_cpu_limit_s=settings.parse_cpu_limit_s)
             for box in settings.mailboxes]
    for conn in conns:
        default_metrics().watch_connector(conn)
    return conns


def _sweep(blobs: BlobStore) -> None:
    """Delete packs that crashed writers left behind (``BlobStore.sweep``); a failure only logs."""
    try:
        removed = blobs.sweep()
    except (BlobError, OSError, sqlite3.Error) as exc:
        log.warning("cannot sweep the blob store %s: %s", blobs.root, exc)
        return
    if removed:
        log.info("blob store %s: removed %d uncommitted pack(s) left by crashed writers", blobs.root, removed)


RETENTION_EVERY_S = 86_400.0
RETENTION_RETRY_S = 3_600.0


def retention_stage(blob_dir: Path, days: float) -> Callable[[threading.Event], None]:
    """``frontdesk run``'s blob retention (``storage.blob_retention_days``): a blocking
    ``run(stop)`` that expires the store (:meth:`BlobStore.expire`) at start and once a day; a
    failure (a busy or unwritable store, another expiry running) logs and is tried again in an hour."""
    store = BlobStore(blob_dir)

    def run(stop: threading.Event) -> None:
        wait = 0.0
        while not stop.wait(wait):
            try:
                report = store.expire(days * 86_400.0)
            except BlobError as exc:
                log.warning("blob retention (%g days) failed, trying again in an hour: %s", days, exc)
                wait = RETENTION_RETRY_S
                continue
            if report.blobs or report.legacy_files:
                log.info("blob retention (%g days): erased %d blob(s), %d bytes; packs deleted %d, compacted %d",
                         days, report.blobs + report.legacy_files, report.bytes, report.packs_deleted,
                         report.packs_compacted)
            wait = RETENTION_EVERY_S

    return run


def run_forever(conns: list[MailboxConnector], stop: threading.Event, probes: Probes | None = None) -> None:
    """One thread per mailbox until ``stop``; ``probes`` (if given) watches the threads."""
    threads = [threading.Thread(target=c.run, args=(stop,), name=c.connector) for c in conns]
    for t in threads:
        if probes is not None:
            probes.watch_thread(t)
        t.start()
    for t in threads:
        t.join()


def intake_stages(bus: Bus, data_dir: Path, blob_dir: Path, imap: ImapSettings, http: HttpIntakeSettings,
                  telegram: TelegramSettings, echo: Callable[[str], None],
                  probes: Probes | None = None) -> dict[str, Callable[[threading.Event], None]]:
    """The configured connectors as ``frontdesk run`` stages (name → blocking ``run(stop)``): one per
    mailbox, the HTTP intake when any of its credentials is set, Telegram polling when a bot token is.
    Says on ``echo`` what runs and what the next step would be; ``probes`` (if given) gets a readiness
    check per mailbox and poller (:func:`frontdesk.health.connector_answers`)."""
    from ingest.http import serve
    from ingest.telegram import TelegramPoller

    stages: dict[str, Callable[[threading.Event], None]] = {}
    pulling: list[MailboxConnector | TelegramPoller] = []
    for conn in connectors(imap, bus, data_dir, blob_dir):
        stages[conn.connector] = conn.run
        pulling.append(conn)
        echo(f"watching mailbox {conn.connector} ({conn.box.host}, {', '.join(conn.box.folders)})")
    if not imap.mailboxes:
        echo("no mailboxes configured: add imap.mailboxes to a config file (see config/frontdesk.yaml)")
    if http.api_tokens or http.hmac_secret or http.telegram_secret_token or http.meta_app_secret:
        stages["http"] = lambda ev: serve(http, bus, ev)
        echo(f"HTTP intake on http://{http.host}:{http.port}")
    if telegram.bot_token:
        poller = TelegramPoller(telegram, bus, telegram.offset_dir or data_dir / "telegram")
        default_metrics().watch_connector(poller)
        stages[telegram.connector] = poller.run
        pulling.append(poller)
        echo(f"polling Telegram ({telegram.api_base}) as connector {telegram.connector}")
    for source in pulling:
        if probes is not None:
            probes.add_readiness(source.connector, connector_answers(source))
    return stages
