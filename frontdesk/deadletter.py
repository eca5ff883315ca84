"""Dead-letter records, built to fit the bus.

A dead letter carries the original bytes (base64) so that ``frontdesk replay`` can re-drive them
and an operator can see what failed. Base64 makes them a third bigger, and a connector's original
(a mail of up to ``max_message_bytes``) can be far bigger than a record may be: a dead letter that
the bus refused would stop the stage that writes it, so every dead letter is cut to fit
``max_record_bytes``. A cut one keeps the first bytes of the original, says so in ``reason`` and
carries the original's size in the ``frontdesk-original-bytes`` header; replay passes over it
(its bytes are not the record any more: re-deliver it at the source).
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime

from frontdesk.bus.base import DEFAULT_MAX_RECORD_BYTES, Headers, Outgoing, record_size
from frontdesk.codec import encode
from frontdesk.messages import DeadLetter

TRUNCATED_HEADER = "frontdesk-original-bytes"
MAX_REASON_CHARS = 2_000
_SLACK = 256  # bytes of room below the limit: the size of the base64 text is computed, not measured


def build_dead_letter(topic: str, key: bytes | None, raw: bytes, *, stage: str, reason: str, error_type: str,
                      headers: Headers = (), max_bytes: int = DEFAULT_MAX_RECORD_BYTES,
                      **fields: object) -> Outgoing:
    """The dead-letter record of ``raw`` (its original bytes) under ``key``, at most ``max_bytes``.

    ``fields``: the other :class:`~frontdesk.messages.DeadLetter` fields (source topic, partition,
    offset, key_b64, message_id). ``reason`` is cut at ``MAX_REASON_CHARS``. Pure.
    """
    reason = reason if len(reason) <= MAX_REASON_CHARS else reason[:MAX_REASON_CHARS] + "…"
    letter = DeadLetter(stage=stage, reason=reason, error_type=error_type, value_b64="",
                        failed_at=datetime.now(UTC), **fields)  # type: ignore[arg-type]
    empty = Outgoing(topic, encode(letter), key, headers + ((TRUNCATED_HEADER, b"0" * 20),))
    room = max(0, (max_bytes - record_size(empty) - _SLACK - 200) // 4 * 3)  # 200: the note added to reason
    if len(raw) > room:
        letter = letter.model_copy(update={"reason": f"{reason} (original {len(raw):,} bytes, the first {room:,} kept)"})
        headers = headers + ((TRUNCATED_HEADER, str(len(raw)).encode()),)
        raw = raw[:room]
    letter = letter.model_copy(update={"value_b64": base64.b64encode(raw).decode()})
    return Outgoing(topic, encode(letter), key, headers)
