"""The dead-letter record of a platform payload part the intake could not take (stage ``ingest``).

Shared by the webhooks (:mod:`ingest.http.app`) and the Telegram poller (:mod:`ingest.telegram`), so a
malformed update gives the same record whichever path received it; built by
:func:`frontdesk.deadletter.build_dead_letter`, like every dead letter, so it fits the bus's record
limit. ``source_topic`` is ``<connector>/<where>`` (``telegram/update:42``,
``facebook/webhook:entry.0.messaging.1``), which is no topic: ``frontdesk replay`` reports such
records as skipped; re-deliver them at the source.
"""

from __future__ import annotations

from frontdesk.bus.base import Headers, Outgoing
from frontdesk.deadletter import build_dead_letter
from ingest.http.normalise import Rejected


def dead_letter_record(topic: str, rejected: Rejected, max_bytes: int, headers: Headers = ()) -> Outgoing:
    """The record for ``topic`` (the dead-letter topic): the reason, the error type and the part's bytes
    (cut to fit ``max_bytes``), keyed ``<connector>:<where>``; ``headers`` follow the stage and error headers."""
    error_type = type(rejected.error).__name__
    return build_dead_letter(
        topic, f"{rejected.connector}:{rejected.where}".encode(), rejected.raw, stage="ingest",
        reason=str(rejected.error), error_type=error_type, max_bytes=max_bytes,
        headers=(("frontdesk-stage", b"ingest"), ("frontdesk-error", error_type.encode()), *headers),
        source_topic=f"{rejected.connector}/{rejected.where}", message_id=None)
