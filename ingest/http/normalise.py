"""Platform payloads -> :class:`InboundMessage`: the shared cleaning and typed access.

Contract of every normaliser built on it (:mod:`ingest.http.telegram_update`, :mod:`ingest.http.meta`,
:mod:`ingest.http.api`):

* pure: no I/O, nothing downloaded; the same payload and ``received_at`` give the same message, and
  the id depends only on (connector, platform message id), so a replayed webhook is a no-op downstream;
* events that are not customer messages (other update types, service messages, receipts, automatic
  forwards of our channel's posts, anonymous group admins) give ``None`` / nothing, whatever fields
  they lack; a customer message with the wrong shape raises :class:`PayloadError` naming the field;
* ``telegram_normalised`` and ``meta_normalised`` give a :class:`Normalised`:
  each part of a body (an update, a Meta change, event or WhatsApp message) is normalised on its
  own and a malformed one becomes a :class:`Rejected` (for the dead-letter topic) instead of failing
  the others; only a body that is not a JSON object raises;
* text is untrusted data: NUL and control characters (except newline and tab) and lone surrogates
  are removed and it is cut at ``max_text`` characters; names and ids become single lines;
* what a customer shares without text (a location, a contact card, a button they tapped) becomes a
  short descriptive text such as ``[location 40.40926,49.86709] Nizami St 5`` or
  ``[contact Elvin +994501234567]``.

An edit gets its own external id (``<original>#edit:<version>``) and ``flags.edited``, with the
original in ``thread.references``, so it is not mistaken for a replay of the original.

Media are not downloaded here. Every platform attachment keeps the platform's file reference in
``Attachment.ref`` (Telegram ``file_id``, WhatsApp media id, Messenger/Instagram URL) so the support
team can fetch it later, with ``stored_at=None``. ``Attachment.sha256`` is required, but Telegram and
Messenger send no content hash: their attachments carry ``reference_digest(platform, file id)`` with
``sha256_of="reference"`` — a stable identifier of the file, not a hash of its bytes. (WhatsApp's own
media hash is a content hash and is used as is, ``sha256_of="content"``.)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from frontdesk.codec import encode
from frontdesk.errors import RecordTooLarge
from frontdesk.messages import InboundMessage

MAX_TEXT = 20_000
MAX_NAME = 200
MAX_ID = 300
RECORD_OVERHEAD = 1024  # a message record's key and headers, generously
Loc = tuple[str | int, ...]
T = TypeVar("T")

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufeff\ud800-\udfff]")
_LINE_BREAKS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ufeff\ud800-\udfff]+")
_MIME = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*$")


class PayloadError(ValueError):
    """A payload part we understand has the wrong shape; ``loc`` names the field (under the body)."""

    def __init__(self, loc: Loc, msg: str) -> None:
        super().__init__(f"{'.'.join(map(str, loc)) or 'body'}: {msg}")
        self.loc, self.msg = loc, msg

    def detail(self) -> list[dict[str, Any]]:
        return [{"type": "payload", "loc": ["body", *self.loc], "msg": self.msg}]


def clean_text(text: str, limit: int = MAX_TEXT) -> str:
    """Unix newlines, no NUL/control characters or lone surrogates, outer whitespace trimmed, cut at ``limit``."""
    text = _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    return text.strip()[:limit]


def single_line(text: str | None, limit: int = MAX_NAME) -> str:
    """``text`` as one line (no CR/LF/controls: safe in any header), spaces collapsed, cut at ``limit``."""
    return " ".join(_LINE_BREAKS.sub(" ", text or "").split())[:limit]


def as_handle(value: str | None) -> str | None:
    """A handle without its leading '@', as one line; None if empty."""
    return single_line(value, MAX_NAME).lstrip("@") or None


def reference_digest(platform: str, reference: str) -> str:
    """Stand-in ``Attachment.sha256`` for media known only by a platform file id (not a content hash)."""
    return hashlib.sha256(f"{platform}-file\x00{reference}".encode()).hexdigest()


def platform_ref(value: str | None, limit: int = 4096) -> str | None:
    """A platform file id or URL kept verbatim for fetching later; None if absent, not one line, or too long
    (cutting it would make it useless)."""
    if not value or len(value) > limit or _LINE_BREAKS.search(value) or not value.strip():
        return None
    return value


def content_digest(value: str | None) -> str | None:
    """A platform-sent SHA-256 (hex or base64, as WhatsApp sends it) as lower-case hex, else None."""
    if not value:
        return None
    if re.fullmatch(r"[0-9a-fA-F]{64}", value):
        return value.lower()
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw.hex() if len(raw) == 32 else None


def media_type(value: str | None, default: str) -> str:
    """A bare, lower-case ``type/subtype`` (parameters dropped), or ``default`` if it is not one."""
    base = (value or "").split(";", 1)[0].strip().lower()
    return base if _MIME.match(base) else default


def unix_time(value: Any, loc: Loc, *, millis: bool = False) -> datetime | None:
    """A Unix timestamp (int, float or numeric string; ms if ``millis``) as an aware UTC datetime."""
    if value is None:
        return None
    try:
        seconds = float(value) / (1000 if millis else 1)
        return datetime.fromtimestamp(seconds, UTC)
    except (TypeError, ValueError, OverflowError, OSError) as exc:
        raise PayloadError(loc, "expected a Unix timestamp") from exc


@dataclass(frozen=True, slots=True)
class Node:
    """A value inside an untrusted JSON document and where it sits, for typed access with clear errors."""

    value: Any
    loc: Loc = ()

    def has(self, key: str) -> bool:
        return isinstance(self.value, dict) and self.value.get(key) is not None

    def child(self, key: str) -> Node:
        return Node(self.value.get(key) if isinstance(self.value, dict) else None, (*self.loc, key))

    def obj(self, key: str) -> Node | None:
        """The object under ``key``; None if absent or null."""
        node = self.child(key)
        if node.value is None:
            return None
        if not isinstance(node.value, dict):
            raise PayloadError(node.loc, "expected an object")
        return node

    def need(self, key: str) -> Node:
        """The object under ``key``, which must be there."""
        node = self.obj(key)
        if node is None:
            raise PayloadError((*self.loc, key), "field required")
        return node

    def items(self, key: str) -> list[Node]:
        """The array of objects under ``key``; [] if absent or null."""
        node = self.child(key)
        if node.value is None:
            return []
        if not isinstance(node.value, list):
            raise PayloadError(node.loc, "expected an array")
        for i, item in enumerate(node.value):
            if not isinstance(item, dict):
                raise PayloadError((*node.loc, i), "expected an object")
        return [Node(item, (*node.loc, i)) for i, item in enumerate(node.value)]

    def string(self, key: str) -> str | None:
        node = self.child(key)
        if node.value is not None and not isinstance(node.value, str):
            raise PayloadError(node.loc, "expected a string")
        return node.value

    def ident(self, key: str) -> str | None:
        """An id sent as a string or an integer, as a clean single line; None if absent."""
        node = self.child(key)
        if node.value is None:
            return None
        if isinstance(node.value, bool) or not isinstance(node.value, (str, int)):
            raise PayloadError(node.loc, "expected an id (string or integer)")
        ident = single_line(str(node.value), MAX_ID)
        if not ident:
            raise PayloadError(node.loc, "empty id")
        return ident

    def need_id(self, key: str) -> str:
        ident = self.ident(key)
        if ident is None:
            raise PayloadError((*self.loc, key), "field required")
        return ident

    def flag(self, key: str) -> bool:
        return isinstance(self.value, dict) and self.value.get(key) is True

    def size(self, key: str) -> int:
        value = self.value.get(key) if isinstance(self.value, dict) else None
        return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def root(payload: Any) -> Node:
    if not isinstance(payload, dict):
        raise PayloadError((), "expected a JSON object")
    return Node(payload)


def edit_id(original: str, version: str | None, text: str) -> str:
    return f"{original}#edit:{version or hashlib.sha256(text.encode()).hexdigest()[:16]}"


def json_bytes(value: Any) -> bytes:
    """``value`` as UTF-8 JSON. A lone surrogate (valid JSON, not valid UTF-8) stays a ``\\uXXXX`` escape."""
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "backslashreplace")


def location_text(place: Node, *labels: str | None) -> str:
    """``[location <lat>,<lon>] <labels>`` for a shared location (its ``latitude`` / ``longitude``)."""
    coordinates = ",".join(_coordinate(place.child(key)) for key in ("latitude", "longitude"))
    return " ".join(filter(None, (f"[location {coordinates}]", ", ".join(filter(None, map(single_line, labels))))))


def contact_text(name: str | None, phones: Iterable[str | None]) -> str:
    """``[contact <name> <phones>]`` for a shared contact card."""
    return "[" + " ".join(filter(None, ("contact", single_line(name), *(single_line(p, 40) for p in phones)))) + "]"


def _coordinate(node: Node) -> str:
    value = node.value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or abs(value) > 180:
        raise PayloadError(node.loc, "expected a coordinate in degrees")
    return f"{value:.5f}".rstrip("0").rstrip(".")  # 5 decimals: about 1 m


# --- Bodies of several parts ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rejected:
    """A part of a platform body that could not be taken: the connector, where it was (``update:<update_id>``,
    ``webhook:<loc>``, ``message:<external id>``), why (PayloadError, RecordTooLarge), its bytes."""

    connector: str
    where: str
    error: Exception
    raw: bytes


@dataclass(slots=True)
class Normalised:
    """What one body gave: its customer messages (in order, one per id: the last wins) and its rejected parts."""

    connector: str = ""
    by_id: dict[str, InboundMessage] = field(default_factory=dict)
    rejected: list[Rejected] = field(default_factory=list)

    @property
    def messages(self) -> list[InboundMessage]:
        return list(self.by_id.values())

    def add(self, message: InboundMessage | None) -> None:
        if message is not None:
            self.by_id[message.id] = message

    def reject(self, part: Node, error: PayloadError) -> None:
        where = "webhook:" + (".".join(map(str, part.loc)) or "body")
        self.rejected.append(Rejected(self.connector, where, error, json_bytes(part.value)))

    def attempt(self, part: Node, normalise: Callable[..., T], *args: Any) -> T | None:
        """``normalise(*args)``, or None with ``part`` rejected if it raises PayloadError."""
        try:
            return normalise(*args)
        except PayloadError as exc:
            self.reject(part, exc)
            return None

    def fit(self, max_bytes: int) -> None:
        """Reject every message whose record would be over the bus's ``max_bytes``: the bus would refuse the
        whole publish, at every redelivery."""
        for message in self.messages:
            raw = encode(message)
            if len(raw) + RECORD_OVERHEAD > max_bytes:
                del self.by_id[message.id]
                error = RecordTooLarge(f"the normalised message is {len(raw):,} bytes, over the bus's "
                                       f"{max_bytes:,}-byte record limit")
                self.rejected.append(Rejected(self.connector, f"message:{message.external_id}", error, raw))

    def parts(self, node: Node, key: str) -> list[Node]:
        """The objects of the array under ``key``; a value that is not an array, or an item that is not an
        object, is rejected on its own."""
        array = node.child(key)
        if array.value is None:
            return []
        if not isinstance(array.value, list):
            self.reject(array, PayloadError(array.loc, "expected an array"))
            return []
        items = [Node(item, (*array.loc, i)) for i, item in enumerate(array.value)]
        for item in items:
            if not isinstance(item.value, dict):
                self.reject(item, PayloadError(item.loc, "expected an object"))
        return [item for item in items if isinstance(item.value, dict)]

