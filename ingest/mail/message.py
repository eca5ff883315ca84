"""The parser's ``email.message.Message``: the stdlib class, remembering what it looked up.

Normalising a mail asks each part for its content type about ten times (structure checks, body
and attachment sorting, bounce detection) and for some sixteen raw header values (flags, parties,
ids), and each answer is a linear, case-folding scan of the part's headers: ~8% and ~5% of the
parse; the parameters of Content-Type and Content-Disposition (charset, filename, name) are
parsed again on every ask (~5%). :class:`CachedMessage` keeps the content type, the parsed
parameters and an index of its raw header values until something that can change them happens
(any header write, ``set_boundary``, ``set_default_type``); the answers are those of ``Message``
(tested on both corpora, mutations included).
"""

from __future__ import annotations

from email import message_from_bytes
from email.message import Message
from typing import Any

from ingest.mail.quickparse import quick_parse


_MISSING = object()


class CachedMessage(Message):
    """``Message`` with cached :meth:`get_content_type`, header parameters and :meth:`raw_values`."""

    _content_type: str | None = None
    _raw_index: dict[str, list[str]] | None = None
    _params: dict[str, list[tuple[str, Any]] | None] | None = None

    def get_content_type(self) -> str:
        cached = self._content_type
        if cached is None:
            cached = self._content_type = super().get_content_type()
        return cached

    def _get_params_preserve(self, failobj: Any, header: str) -> Any:
        # What get_param / get_params / get_content_charset parse each time they are asked.
        cache = self._params
        if cache is None:
            cache = self._params = {}
        key = header.lower()
        if key not in cache:
            params = super()._get_params_preserve(_MISSING, header)  # type: ignore[misc]
            cache[key] = None if params is _MISSING else params
        found = cache[key]
        return failobj if found is None else list(found)

    def _forget(self) -> None:
        self._content_type = self._raw_index = self._params = None

    def raw_values(self, name: str) -> list[str]:
        """Every value of header ``name`` as stored, in order (``str`` of each; a new list)."""
        index = self._raw_index
        if index is None:
            index = {}
            for key, value in self.raw_items():
                index.setdefault(key.lower(), []).append(str(value))
            self._raw_index = index
        return list(index.get(name.lower(), ()))


def _forgetting(name: str) -> Any:
    """``Message.<name>``, then forget what was cached — after, not before: the stdlib may ask for
    (and so cache) the parameters before it rewrites the headers (``set_boundary`` does)."""
    original = getattr(Message, name)

    def method(self: CachedMessage, *args: Any, **kwargs: Any) -> Any:
        try:
            return original(self, *args, **kwargs)
        finally:
            self._forget()

    method.__name__ = method.__qualname__ = name
    method.__doc__ = original.__doc__
    return method


# Every Message method that writes headers itself; the others (set_param, set_type, del_param,
# set_charset, ...) write through these.
for _name in ("__setitem__", "__delitem__", "set_raw", "add_header", "replace_header", "set_boundary",
              "set_default_type"):
    setattr(CachedMessage, _name, _forgetting(_name))


def parse_bytes(raw: bytes) -> CachedMessage:
    """``email.message_from_bytes(raw)`` (compat32 policy) building :class:`CachedMessage` parts;
    well-formed mail is split by :func:`~ingest.mail.quickparse.quick_parse` (the same tree in ~40% of the time)."""
    quick = quick_parse(raw, CachedMessage)
    return quick if quick is not None else message_from_bytes(raw, _class=CachedMessage)  # type: ignore[no-any-return]
