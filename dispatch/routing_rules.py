"""Routing rules as data: a :class:`Route` (queue, priority, SLA), the conditions of a rule
(:class:`Match`) and how they are checked. Pure: no I/O, no clock. Loading and validating the
YAML file: :mod:`dispatch.routing`."""

from __future__ import annotations

import fnmatch
import re
import unicodedata
from dataclasses import dataclass
from datetime import timedelta

from frontdesk.messages import URGENCY_ORDER, TriagedMessage

_SLA = re.compile(r"\s*(?:\d+\s*[wdhm]\s*)+")
_SLA_PART = re.compile(r"(\d+)\s*([wdhm])")
_SLA_UNITS = {"w": timedelta(weeks=1), "d": timedelta(days=1), "h": timedelta(hours=1), "m": timedelta(minutes=1)}
_FOLD = str.maketrans({"ı": "i", "ə": "e"})


@dataclass(frozen=True, slots=True)
class Route:
    """Where a message goes: the rule that decided, the queue, priority (1 = most urgent), SLA."""

    rule: str
    queue: str
    priority: int
    sla: timedelta


def parse_sla(text: str) -> timedelta:
    """Parse a duration such as ``15m``, ``4h``, ``1d`` or ``2d 4h`` (units w, d, h, m).

    Raises ValueError for anything else, and for a zero duration.
    """
    if not isinstance(text, str) or not _SLA.fullmatch(text):
        raise ValueError(f"bad sla {text!r}: use a duration such as '15m', '4h', '1d' or '2d 4h'")
    total = sum((int(n) * _SLA_UNITS[unit] for n, unit in _SLA_PART.findall(text)), timedelta())
    if total <= timedelta():
        raise ValueError(f"bad sla {text!r}: must be longer than zero")
    return total


@dataclass(frozen=True, slots=True)
class Match:
    """The conditions of one rule; ``None`` means "any". All given conditions must hold."""

    category: frozenset[str] | None = None
    urgency: frozenset[str] | None = None
    min_urgency: int | None = None
    language: frozenset[str] | None = None
    channel: frozenset[str] | None = None
    connector: tuple[str, ...] | None = None
    sender_domain: frozenset[str] | None = None
    vip: bool | None = None
    keywords: tuple[str, ...] | None = None
    needs_review: bool | None = None

    def holds(self, msg: TriagedMessage, is_vip: bool) -> bool:
        """True when every given condition holds for ``msg`` (``is_vip``: sender is a VIP)."""
        triage, inbound = msg.triage, msg.message
        domain = (inbound.sender.address or "").lower().rpartition("@")[2]
        checks = (
            lambda: self.category is None or triage.category in self.category,
            lambda: self.urgency is None or triage.urgency in self.urgency,
            lambda: self.min_urgency is None or URGENCY_ORDER[triage.urgency] >= self.min_urgency,
            lambda: self.language is None or triage.language.lower() in self.language,
            lambda: self.channel is None or inbound.channel in self.channel,
            lambda: self.connector is None or any(fnmatch.fnmatchcase(inbound.connector, g) for g in self.connector),
            lambda: self.sender_domain is None or domain in self.sender_domain,
            lambda: self.vip is None or self.vip == is_vip,
            lambda: self.needs_review is None or self.needs_review == triage.needs_review,
            lambda: self.keywords is None or _has_keyword(f"{inbound.subject}\n{inbound.text}", self.keywords),
        )
        return all(check() for check in checks)


def fold(text: str) -> str:
    """Case- and accent-insensitive form: customers often type "odenis" for "ödəniş", "iade" for "İade".

    The NFKD decomposition with the combining marks dropped, taken one character at a time: the
    same text as decomposing the whole (which only reorders the marks), in linear time, where NFKD
    sorts a run of combining marks by insertion (100,000 marks: seconds)."""
    return text.casefold().translate(_FOLDED)


class _FoldedChars(dict[int, str]):
    """``str.translate`` table of :func:`fold`, filled on first use (at most ``_MAX_FOLDED`` entries)."""

    def __missing__(self, code: int) -> str:
        decomposed = unicodedata.normalize("NFKD", chr(code))
        folded = "".join(c for c in decomposed if not unicodedata.combining(c)).translate(_FOLD)
        if len(self) < _MAX_FOLDED:
            self[code] = folded
        return folded


_MAX_FOLDED = 20_000  # a text of every code point must not grow the table to ~100 MB
_FOLDED = _FoldedChars()


def _has_keyword(text: str, keywords: tuple[str, ...]) -> bool:
    folded = fold(text)
    return any(keyword in folded for keyword in keywords)


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    line: int
    match: Match
    route: Route
