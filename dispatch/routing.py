"""Routing: the queue, priority and first-response SLA of a triaged message.

Rules live in YAML (``config/routing.yaml``). The first rule whose every condition holds wins;
``default`` applies when none does. A file is validated completely when it is loaded, and every
mistake raises :class:`ConfigError` as ``<file>:<line>: <what is wrong>`` so that whoever edited
it sees where. Routing itself is pure: no I/O, no clock; the rules as data and how a rule is
checked are in :mod:`dispatch.routing_rules`.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import yaml

from classify.base import CATEGORIES
from dispatch.routing_rules import Match, Route, Rule, fold, parse_sla
from frontdesk.errors import ConfigError
from frontdesk.messages import URGENCY_ORDER, TriagedMessage

__all__ = ["CHANNELS", "Match", "Route", "RoutingTable", "parse_sla"]

CHANNELS = ("email", "social", "chat")
TOP_FIELDS = ("vip_senders", "rules", "default")
ACTION_FIELDS = ("queue", "priority", "sla")
MATCH_FIELDS = ("category", "urgency", "min_urgency", "language", "channel", "connector",
                "sender_domain", "vip", "keywords", "needs_review")
_QUEUE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")


class _Map(dict[Any, Any]):
    """A YAML mapping that remembers its own line and the line of each key (1-based)."""

    line: int = 0
    key_lines: dict[Any, int]


class _LineLoader(yaml.SafeLoader):
    """SafeLoader whose mappings are :class:`_Map` and which refuses duplicate keys."""


def _construct_map(loader: _LineLoader, node: yaml.MappingNode) -> _Map:
    loader.flatten_mapping(node)
    result = _Map()
    result.line, result.key_lines = node.start_mark.line + 1, {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, Hashable) or key in result:
            problem = "duplicate key" if isinstance(key, Hashable) else "unusable key"
            raise yaml.constructor.ConstructorError(None, None, f"{problem} {key!r}", key_node.start_mark)
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = key_node.start_mark.line + 1
    return result


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_map)


class _Parser:
    """Turns the loaded YAML into rules; every failure names ``source`` and a line."""

    def __init__(self, source: str, categories: Iterable[str]) -> None:
        self.source = source
        self.allowed = {"category": tuple(categories), "urgency": tuple(URGENCY_ORDER),
                        "min_urgency": tuple(URGENCY_ORDER), "channel": CHANNELS}

    def fail(self, line: int, what: str) -> NoReturn:
        raise ConfigError(f"{self.source}:{line}: {what}")

    def mapping(self, value: Any, line: int, what: str, fields: Iterable[str]) -> _Map:
        """Check that ``value`` is a mapping with only known ``fields``."""
        if not isinstance(value, _Map):
            self.fail(line, f"{what} must be a mapping, got {type(value).__name__}")
        allowed = tuple(fields)
        for key in value:
            if key not in allowed:
                self.fail(value.key_lines[key], f"{what}: unknown field {key!r} (allowed: {', '.join(allowed)})")
        return value

    def strings(self, value: Any, line: int, what: str, *, list_only: bool = False) -> tuple[str, ...]:
        """A non-empty string, or a non-empty list of them (only a list if ``list_only``)."""
        items = [value] if isinstance(value, str) and not list_only else value
        if not isinstance(items, list) or not items:
            shape = "a non-empty list of strings" if list_only else "a string or a non-empty list of strings"
            self.fail(line, f"{what} must be {shape}, e.g. [\"word\"]; got {value!r}")
        for item in items:
            if not isinstance(item, str) or not item.strip():
                self.fail(line, f"{what}: every entry must be a non-empty string, got {item!r}")
        return tuple(item.strip() for item in items)

    def labels(self, field: str, value: Any, line: int, what: str) -> frozenset[str]:
        labels = self.strings(value, line, f"{what}: {field}")
        allowed = self.allowed.get(field)
        for label in labels:
            if allowed is not None and label not in allowed:
                self.fail(line, f"{what}: unknown {field.removeprefix('min_')} {label!r} "
                                f"(allowed: {', '.join(allowed)})")
        return frozenset(label.lower() for label in labels)

    def flag(self, value: Any, line: int, what: str) -> bool:
        if not isinstance(value, bool):
            self.fail(line, f"{what} must be true or false, got {value!r}")
        return value

    def match(self, raw: Any, line: int, what: str) -> Match:
        spec = self.mapping(raw, line, f"{what}: match", MATCH_FIELDS)
        found: dict[str, Any] = {}
        for field, value in spec.items():
            at, where = spec.key_lines[field], f"{what}: match.{field}"
            if field in ("vip", "needs_review"):
                found[field] = self.flag(value, at, where)
            elif field == "keywords":
                found[field] = tuple(fold(k) for k in self.strings(value, at, where, list_only=True))
            elif field == "connector":
                found[field] = self.strings(value, at, where)
            elif field == "sender_domain":
                found[field] = frozenset(d.lower().lstrip("@") for d in self.strings(value, at, where))
            elif field == "min_urgency":
                if not isinstance(value, str):
                    self.fail(at, f"{where} must be one urgency label, got {value!r}")
                found[field] = URGENCY_ORDER[next(iter(self.labels(field, value, at, what)))]
            else:
                found[field] = self.labels(field, value, at, what)
        return Match(**found)

    def action(self, spec: _Map, what: str, name: str, inherit: Route | None) -> Route:
        """A Route from ``queue``/``priority``/``sla`` in ``spec``; missing ones come from ``inherit``."""
        if "queue" not in spec:
            self.fail(spec.line, f"{what}: missing queue")
        queue, qline = spec["queue"], spec.key_lines["queue"]
        if not isinstance(queue, str) or not _QUEUE.fullmatch(queue):
            self.fail(qline, f"{what}: bad queue name {queue!r} (letters, digits, '_', '-', '.', ':')")
        if inherit is None and ("priority" not in spec or "sla" not in spec):
            self.fail(spec.line, f"{what}: needs queue, priority and sla")
        priority = spec.get("priority", inherit.priority if inherit else None)
        if isinstance(priority, bool) or not isinstance(priority, int) or not 1 <= priority <= 5:
            self.fail(spec.key_lines["priority"], f"{what}: priority must be a whole number from 1 (most "
                                                  f"urgent) to 5, got {priority!r}")
        if "sla" not in spec:
            return Route(name, queue, priority, inherit.sla)  # type: ignore[union-attr]
        try:
            return Route(name, queue, priority, parse_sla(spec["sla"]))
        except ValueError as exc:
            self.fail(spec.key_lines["sla"], f"{what}: {exc}")

    def rule(self, raw: Any, line: int, default: Route) -> Rule:
        spec = self.mapping(raw, line, "rule", ("name", "match", "action", *ACTION_FIELDS))
        name = spec.get("name")
        if not isinstance(name, str) or not name.strip():
            self.fail(spec.line, f"rule: missing name (got {name!r})")
        what = f"rule {name!r}"
        flat = [f for f in ACTION_FIELDS if f in spec]
        if "action" in spec and flat:
            self.fail(spec.key_lines[flat[0]], f"{what}: give {', '.join(flat)} inside action, not beside it")
        action = spec.get("action", spec)
        if "action" in spec:
            action = self.mapping(action, spec.key_lines["action"], f"{what}: action", ACTION_FIELDS)
        match = self.match(spec["match"], spec.key_lines["match"], what) if "match" in spec else Match()
        return Rule(name, spec.line, match, self.action(action, what, name, default))

    def table(self, data: Any) -> RoutingTable:
        top = self.mapping(data, 1, "routing file", TOP_FIELDS)
        if "default" not in top:
            self.fail(top.line, "missing 'default' (queue, priority and sla used when no rule matches)")
        default_spec = self.mapping(top["default"], top.key_lines["default"], "default", ACTION_FIELDS)
        default = self.action(default_spec, "default", "default", None)
        vip: tuple[str, ...] = ()
        if top.get("vip_senders"):
            vip = self.strings(top["vip_senders"], top.key_lines["vip_senders"], "vip_senders", list_only=True)
        raw_rules = top.get("rules") or []
        if not isinstance(raw_rules, list):
            self.fail(top.key_lines["rules"], f"rules must be a list, got {type(raw_rules).__name__}")
        rules: list[Rule] = []
        for raw in raw_rules:
            rule = self.rule(raw, getattr(raw, "line", top.key_lines["rules"]), default)
            self.check_new(rule, rules)
            rules.append(rule)
        return RoutingTable(tuple(rules), default, frozenset(v.lower() for v in vip))

    def check_new(self, rule: Rule, earlier: list[Rule]) -> None:
        if rule.name == "default":
            self.fail(rule.line, "rule name 'default' is reserved for the top-level default route")
        for other in earlier:
            if other.name == rule.name:
                self.fail(rule.line, f"duplicate rule name {rule.name!r} (first at line {other.line})")
            if other.match == Match():
                self.fail(rule.line, f"rule {rule.name!r} can never match: rule {other.name!r} "
                                     f"(line {other.line}) has no match and catches everything")


@dataclass(frozen=True, slots=True)
class RoutingTable:
    """Validated routing rules; :meth:`route` is pure and never fails for a valid message."""

    rules: tuple[Rule, ...]
    default: Route
    vip_senders: frozenset[str] = frozenset()

    @classmethod
    def load(cls, path: Path, *, categories: Iterable[str] = CATEGORIES) -> RoutingTable:
        """Load and validate a routing file; any problem raises ConfigError naming file and line."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read routing rules: {exc}") from exc
        return cls.from_yaml(text, source=str(path), categories=categories)

    @classmethod
    def from_yaml(cls, text: str, source: str = "<routing>", *,
                  categories: Iterable[str] = CATEGORIES) -> RoutingTable:
        """Parse routing rules from YAML ``text``; ``source`` names it in error messages.

        ``categories`` are the labels a rule may name (the default taxonomy unless replaced).
        """
        try:
            data = yaml.load(text, Loader=_LineLoader)  # noqa: S506 - a SafeLoader subclass
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = mark.line + 1 if mark is not None else 1
            problem = getattr(exc, "problem", None) or str(exc)
            raise ConfigError(f"{source}:{line}: not valid YAML: {problem}") from exc
        return _Parser(source, categories).table(data)

    def is_vip(self, address: str | None) -> bool:
        """True if ``address`` or its domain is listed in ``vip_senders``."""
        if not address:
            return False
        address = address.lower()
        domain = address.rpartition("@")[2]
        return address in self.vip_senders or domain in self.vip_senders or f"@{domain}" in self.vip_senders

    def route(self, msg: TriagedMessage) -> Route:
        """The route of the first rule that matches ``msg``, else the default route."""
        is_vip = self.is_vip(msg.message.sender.address)
        for rule in self.rules:
            if rule.match.holds(msg, is_vip):
                return rule.route
        return self.default
