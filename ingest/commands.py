"""Body of ``frontdesk ingest imap [--once]``."""

from __future__ import annotations

import threading
from pathlib import Path

from frontdesk.bus.base import Bus
from frontdesk.health import Probes
from frontdesk.metrics import default_metrics
from ingest.blobs import BlobStore
from ingest.imap import CheckpointStore, MailboxConnector
from ingest.imap_settings import ImapSettings
from ingest.mail.parse import MailLimits


def connectors(settings: ImapSettings, bus: Bus, data_dir: Path, blob_dir: Path) -> list[MailboxConnector]:
    """One connector per configured mailbox; each one's ``health`` is exported as metrics."""
    checkpoints = CheckpointStore(settings.checkpoint_dir or data_dir / "imap")
    limits = MailLimits(max_message_bytes=settings.max_message_bytes,
                        max_attachment_bytes=settings.max_attachment_bytes)
    blobs = BlobStore(blob_dir)
    conns = [MailboxConnector(box, bus, checkpoints, blobs, limits,
                              reconnect=(settings.reconnect_initial_s, settings.reconnect_max_s))
             for box in settings.mailboxes]
    for conn in conns:
        default_metrics().watch_connector(conn)
    return conns


def run_forever(conns: list[MailboxConnector], stop: threading.Event, probes: Probes | None = None) -> None:
    """One thread per mailbox until ``stop``; ``probes`` (if given) watches the threads."""
    threads = [threading.Thread(target=c.run, args=(stop,), name=c.connector) for c in conns]
    for t in threads:
        if probes is not None:
            probes.watch_thread(t)
        t.start()
    for t in threads:
        t.join()
