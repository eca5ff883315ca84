"""The parser's ``email.message.Message``: the stdlib class, remembering what it looked up.

Normalising a mail asks each part for its content type about ten times (structure checks, body
and attachment sorting, bounce detection) and for some sixteen raw header values (flags, parties,
ids), and each answer is a linear, case-folding scan of the part's headers: ~8% and ~5% of the
parse. :class:`CachedMessage` keeps the content type and an index of its raw header values until
something that can change them happens (any header write, ``set_boundary``,
``set_default_type``); the answers are those of ``Message`` (tested on both corpora, mutations
included).
"""

from __future__ import annotations

from email import message_from_bytes
from email.message import Message
from typing import Any


class CachedMessage(Message):
    """``Message`` with a cached :meth:`get_content_type` and :meth:`raw_values`."""

    _content_type: str | None = None
    _raw_index: dict[str, list[str]] | None = None

    def get_content_type(self) -> str:
        cached = self._content_type
        if cached is None:
            cached = self._content_type = super().get_content_type()
        return cached

    def raw_values(self, name: str) -> list[str]:
        """Every value of header ``name`` as stored, in order (``str`` of each; a new list)."""
        index = self._raw_index
        if index is None:
            index = {}
            for key, value in self.raw_items():
                index.setdefault(key.lower(), []).append(str(value))
            self._raw_index = index
        return list(index.get(name.lower(), ()))

    def __setitem__(self, name: str, val: Any) -> None:
        self._content_type, self._raw_index = None, None
        super().__setitem__(name, val)

    def __delitem__(self, name: str) -> None:
        self._content_type, self._raw_index = None, None
        super().__delitem__(name)

    def set_raw(self, name: str, value: Any) -> None:
        self._content_type, self._raw_index = None, None
        super().set_raw(name, value)

    def add_header(self, _name: str, _value: str, **_params: Any) -> None:
        self._content_type, self._raw_index = None, None
        super().add_header(_name, _value, **_params)

    def replace_header(self, _name: str, _value: Any) -> None:
        self._content_type, self._raw_index = None, None
        super().replace_header(_name, _value)

    def set_boundary(self, boundary: str) -> None:
        self._content_type, self._raw_index = None, None
        super().set_boundary(boundary)

    def set_default_type(self, ctype: str) -> None:
        self._content_type, self._raw_index = None, None
        super().set_default_type(ctype)


def parse_bytes(raw: bytes) -> CachedMessage:
    """``email.message_from_bytes(raw)`` (compat32 policy) building :class:`CachedMessage` parts."""
    return message_from_bytes(raw, _class=CachedMessage)  # type: ignore[no-any-return]
