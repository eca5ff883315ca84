"""Versioned JSON (de)serialisation of pipeline messages, and their published JSON Schemas.

``encode`` is total for valid messages. ``decode`` either returns a validated, frozen message or
raises :class:`~frontdesk.errors.DecodeError` carrying the raw bytes; it never returns a half-read
object. A record from a newer schema version is refused (not guessed at).
"""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from frontdesk.errors import DecodeError
from frontdesk.messages import PIPELINE_TYPES, Frozen

M = TypeVar("M", bound=Frozen)

SCHEMA_DIR = Path(str(resources.files("frontdesk") / "schemas"))
# Only a \u escape can put a surrogate into a JSON string (raw UTF-8 bytes cannot); this search
# is cheap, and the full check runs only on records that have such an escape.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def encode(message: Frozen) -> bytes:
    """Serialise a message to compact UTF-8 JSON (the bytes that go on the bus)."""
    return message.model_dump_json(exclude_none=False).encode("utf-8")


def decode(raw: bytes, expected: type[M]) -> M:
    """Parse ``raw`` as a message of type ``expected``.

    Raises DecodeError (with ``raw``) for invalid UTF-8/JSON, a wrong ``kind``, an unsupported
    ``version`` or any schema violation.
    """
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:  # ValueError: bad JSON, or an integer of >4300 digits
        raise DecodeError(f"not valid JSON: {exc}", raw) from exc
    except RecursionError as exc:
        raise DecodeError("not valid JSON: nested too deeply", raw) from exc
    if _SURROGATE_ESCAPE.search(raw) and _holds_lone_surrogate(data):
        raise DecodeError("not Unicode text: a string holds a lone UTF-16 surrogate (a \\uD800-\\uDFFF escape)", raw)
    if not isinstance(data, dict):
        raise DecodeError("not a JSON object", raw)
    want_kind = expected.model_fields["kind"].default
    want_version = expected.model_fields["version"].default
    if data.get("kind") != want_kind:
        raise DecodeError(f"expected kind {want_kind!r}, got {data.get('kind')!r}", raw)
    if data.get("version") != want_version or isinstance(data.get("version"), bool):  # true == 1 in Python
        raise DecodeError(
            f"unsupported {want_kind} version {data.get('version')!r} (this build reads {want_version})",
            raw,
        )
    try:
        return expected.model_validate(data)
    except ValidationError as exc:
        raise DecodeError(f"invalid {want_kind} message: {_summarise(exc)}", raw) from exc


def _holds_lone_surrogate(data: Any) -> bool:
    """Whether a JSON value holds a string that is not Unicode text (a lone surrogate, which JSON's
    ``\\u`` escapes can write and UTF-8 cannot: every later encode of it would fail)."""
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _summarise(exc: ValidationError) -> str:
    parts = [f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()[:3]]
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


def json_schema(topic: str) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the records on a logical topic."""
    model = PIPELINE_TYPES[topic]
    schema = model.model_json_schema(mode="serialization")
    version = model.model_fields["version"].default
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://frontdesk.dev/schemas/{topic}.v{version}.json"
    return schema


def schema_path(topic: str) -> Path:
    version = PIPELINE_TYPES[topic].model_fields["version"].default
    return SCHEMA_DIR / f"{topic}.v{version}.json"


def write_schemas(directory: Path = SCHEMA_DIR) -> list[Path]:
    """(Re)write the published schema files; tests fail if the committed ones drift."""
    written = []
    for topic in PIPELINE_TYPES:
        path = directory / schema_path(topic).name
        path.write_text(json.dumps(json_schema(topic), indent=2, ensure_ascii=False) + "\n")
        written.append(path)
    return written
