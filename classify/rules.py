"""Explicit urgency rules layered on the model, each kept only if it measurably helps.

A rule can only *raise* urgency (never lower it): the cost of under-triaging a hacked account or
a self-exclusion request is far higher than an extra high-priority case. ``frontdesk eval``
reports the scores with and without the rules, so their effect stays visible.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from frontdesk.messages import URGENCY_ORDER


@dataclass(frozen=True, slots=True)
class UrgencyRule:
    name: str
    floor: str
    pattern: re.Pattern[str]
    categories: frozenset[str] = frozenset()

    def applies(self, text: str, category: str) -> bool:
        return (not self.categories or category in self.categories) and bool(self.pattern.search(text))


_AMOUNT = (
    r"(?:(?:[1-9]\d{3,}|[1-9]\d{0,2}[ .,]\d{3})(?:[.,]\d+)?\s*(?:azn|manat|usd|\$|eur|€|usdt))"
    r"|(?:(?:[1-9]\d{4,}|[1-9]\d{1,2}[ .,]\d{3})\s*(?:tl|try|₺|lira|rub|руб|₽))"
)
_REPEAT = (
    r"\b(?:3rd|third|4th|fourth|5th|fifth)\s+(?:time|email|message|reminder)"
    r"|(?:üçüncü|ucuncu|dördüncü|dorduncu|beşinci|besinci)\s+(?:dəfə|defe|kez|kere)"
    r"|(?:трет|четв[её]рт|пят)\w*\s+раз|(?:tret|chetvert|pyat)\w*\s+raz"
)
_SELF_EXCLUSION = (
    r"self[- ]?exclu|самоисключ|özümü\s+blok|ozumu\s+blok|kendimi\s+(?:engel|blok|kapat)"
    r"|kendimi\s+dışla|intihar|suicid|покончить\s+с\s+собой|özümü\s+öldür"
)

DEFAULT_RULES: tuple[UrgencyRule, ...] = (
    UrgencyRule("self-exclusion-or-harm", "critical", re.compile(_SELF_EXCLUSION, re.I)),
    UrgencyRule("security-at-least-high", "high", re.compile(r"."), frozenset({"security"})),
    UrgencyRule("large-amount", "high", re.compile(_AMOUNT, re.I), frozenset({"payments", "security"})),
    UrgencyRule("repeated-follow-up", "high", re.compile(_REPEAT, re.I)),
)


def apply_rules(text: str, category: str, urgency: str,
                rules: tuple[UrgencyRule, ...] = DEFAULT_RULES) -> tuple[str, tuple[str, ...]]:
    """Raise ``urgency`` to the floor of every matching rule; returns (urgency, rule names)."""
    fired = []
    for rule in rules:
        if rule.applies(text, category) and URGENCY_ORDER[rule.floor] > URGENCY_ORDER[urgency]:
            urgency = rule.floor
            fired.append(rule.name)
    return urgency, tuple(fired)
