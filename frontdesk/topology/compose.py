"""Reading ``docker-compose.yml`` the way Docker Compose does, for the parts Frontdesk uses.

Variables are interpolated in every string (``$V ${V} ${V:-d} ${V-d} ${V:?e} ${V?e} ${V:+r}
${V+r}``, ``$$`` for a literal ``$``); YAML anchors and ``<<`` merge keys are resolved by the YAML
loader. Shared by the topology runner and the static test of the compose file.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from frontdesk.errors import ConfigError
from frontdesk.settings import yaml_problem

_VAR = re.compile(r"\$(?:(\$)|\{([A-Za-z_]\w*)(?:(:?[-?+])((?:[^{}]|\{[^{}]*\})*))?\}|([A-Za-z_]\w*))")


def interpolate(text: str, environ: Mapping[str, str]) -> str:
    """``text`` with compose variables substituted from ``environ``.

    Raises ConfigError for a required variable (``?`` forms) that is unset (or empty, with ``:?``).
    """
    def one(m: re.Match[str]) -> str:
        if m.group(1):
            return "$"
        name = m.group(2) or m.group(5)
        op, arg = m.group(3), interpolate(m.group(4) or "", environ)
        value = environ.get(name)
        usable = bool(value) if op and op.startswith(":") else value is not None
        if op in (":-", "-"):
            return value if usable and value is not None else arg
        if op in (":?", "?"):
            if not usable or value is None:
                raise ConfigError(f"variable {name} is required: {arg or 'not set'}")
            return value
        if op in (":+", "+"):
            return arg if usable else ""
        return value or ""

    return _VAR.sub(one, text)


def _interpolate_tree(node: Any, environ: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, environ)
    if isinstance(node, list):
        return [_interpolate_tree(v, environ) for v in node]
    if isinstance(node, dict):
        return {k: _interpolate_tree(v, environ) for k, v in node.items()}
    return node


def load_compose(path: Path, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The compose file as a dict, every string interpolated with ``environ`` (default: os.environ).

    Raises ConfigError if the file is unreadable, not YAML (naming line and column, never the
    text), or has no ``services`` mapping.
    """
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read compose file {path}: {exc.strerror or type(exc).__name__}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"cannot read compose file {path}: not UTF-8 text (byte {exc.start})") from None
    except yaml.YAMLError as exc:  # PyYAML's message quotes the line, which may hold a password
        raise ConfigError(f"cannot read compose file {path}: {yaml_problem(exc)}") from None
    if not isinstance(data, dict) or not isinstance(data.get("services"), dict):
        raise ConfigError(f"compose file {path}: no 'services' mapping")
    return _interpolate_tree(data, os.environ if environ is None else environ)


def service_environment(service: Mapping[str, Any], environ: Mapping[str, str]) -> dict[str, str]:
    """A service's environment (mapping or ``K=V`` list) as strings.

    A key without a value is passed through from ``environ`` (and left out when not there), as
    compose does: that is how secrets reach a container without being written in the file.
    """
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) if "=" in item else (item, None) for item in raw)
    env = {}
    for key, value in raw.items():
        if value is None:
            if key in environ:
                env[key] = environ[key]
        else:
            env[key] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


def service_command(service: Mapping[str, Any]) -> list[str]:
    """The service's ``command`` as an argv list ([] when it has none)."""
    command = service.get("command") or []
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def service_mounts(service: Mapping[str, Any]) -> dict[str, str]:
    """Container path -> source (a named volume, or a host path as written in the file)."""
    mounts = {}
    for item in service.get("volumes") or []:
        if isinstance(item, dict):
            mounts[str(item["target"])] = str(item.get("source", ""))
        else:
            source, target = str(item).split(":")[:2]
            mounts[target] = source
    return mounts


def service_depends_on(service: Mapping[str, Any]) -> list[str]:
    deps = service.get("depends_on") or []
    return list(deps) if isinstance(deps, (list, dict)) else [str(deps)]


def replicas_of(service: Mapping[str, Any]) -> int:
    """``deploy.replicas`` (or the legacy ``scale``), default 1."""
    return int((service.get("deploy") or {}).get("replicas", service.get("scale", 1)))


def frontdesk_services(compose: Mapping[str, Any]) -> list[str]:
    """Names of the services whose command is ``frontdesk …``, in file order."""
    return [name for name, s in compose["services"].items() if service_command(s)[:1] == ["frontdesk"]]


def is_named_volume(source: str) -> bool:
    return not source.startswith((".", "/", "~"))
