"""From a compose service to the argv and environment of one local process.

* External services (Kafka, PostgreSQL, the SMTP catcher) are replaced by the addresses the caller
  gives: a ``host:port`` list naming ``kafka``, a URL whose host is ``postgres``, and a ``*_HOST``
  setting naming ``mailpit`` (with its ``*_PORT`` sibling). Leaving out an optional endpoint
  (SMTP) drops those settings, so the dispatcher writes acknowledgements to files.
* Container paths under a mount become local paths: bind mounts relative to the compose file,
  named volumes under ``<state_dir>/volumes/<name>`` unless mapped elsewhere.
* Listen addresses become 127.0.0.1, and every listening port (metrics, HTTP intake) a free port
  of its own, since replicas share one host here.
* The Kafka client id gets ``-<service>-<index>``, so a consumer-group member names its process.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from frontdesk.errors import ConfigError
from frontdesk.topology.compose import (
    frontdesk_services,
    is_named_volume,
    service_command,
    service_environment,
    service_mounts,
)

FRONTDESK = (sys.executable, "-m", "frontdesk")
ROLES = {"kafka": "kafka", "postgres": "postgres", "mailpit": "smtp"}  # compose service -> endpoint key
OPTIONAL_ROLES = {"smtp"}  # without it the dispatcher writes acknowledgements to files
LISTEN_HOSTS = ("FRONTDESK_METRICS_HOST", "FRONTDESK_HTTP_HOST")
LISTEN_PORTS = ("FRONTDESK_HTTP_PORT", "FRONTDESK_METRICS_PORT")  # the first one present serves /readyz


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (racy, like every such helper)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def host_port(endpoint: Any) -> tuple[str, int]:
    """(host, port) of an endpoint given as a tuple, ``"host:port"`` or a URL."""
    if isinstance(endpoint, tuple):
        return str(endpoint[0]), int(endpoint[1])
    if "://" in str(endpoint):
        url = urlsplit(str(endpoint))
        return url.hostname or "", url.port or 0
    host, _, port = str(endpoint).rpartition(":")
    return host, int(port)


class LocalServices:
    """The frontdesk services of one parsed compose file, localised for processes on this host."""

    def __init__(self, compose: Mapping[str, Any], base_dir: Path, state_dir: Path, endpoints: Mapping[str, Any],
                 *, volumes: Mapping[str, Path] | None = None, metrics: bool = True,
                 environ: Mapping[str, str] | None = None) -> None:
        self.services: dict[str, Any] = dict(compose["services"])
        self.base_dir, self.state_dir, self.endpoints = base_dir, state_dir, endpoints
        self.volumes, self.metrics = dict(volumes or {}), metrics
        self.environ = dict(os.environ if environ is None else environ)
        self.ours = frontdesk_services(compose)
        self.external = set(self.services) - set(self.ours)

    def select(self, wanted: Iterable[str] | None) -> list[str]:
        """``wanted`` in file order (default: every frontdesk service without a profile)."""
        if wanted is None:
            return [n for n in self.ours if not self.services[n].get("profiles")]
        unknown = sorted(set(wanted) - set(self.ours))
        if unknown:
            raise ConfigError(f"not a frontdesk service of the compose file: {', '.join(unknown)} "
                              f"(have {', '.join(self.ours)})")
        return [n for n in self.ours if n in set(wanted)]

    def argv(self, name: str) -> list[str]:
        return [*FRONTDESK, *service_command(self.services[name])[1:]]

    def env(self, name: str, index: int) -> dict[str, str]:
        """The process environment: inherited non-FRONTDESK variables plus the localised compose ones."""
        env = service_environment(self.services[name], self.environ)
        mounts = self._mounts(self.services[name])
        # Containers do not inherit the host's FRONTDESK_* variables; neither do these processes.
        out = {k: v for k, v in self.environ.items() if not k.startswith("FRONTDESK_")}
        for key, value in env.items():
            if key.startswith("FRONTDESK_METRICS_") and not self.metrics:
                continue
            local = self._localise(name, key, value, env, mounts)
            if local is not None:
                out[key] = local
        if not self.metrics:  # dropping the variables is not enough: the config file may enable the endpoint
            out["FRONTDESK_METRICS_ENABLED"] = "false"
        for key in LISTEN_PORTS:
            if key in out:
                out[key] = str(free_port())
        out["FRONTDESK_KAFKA_CLIENT_ID"] = f"{env.get('FRONTDESK_KAFKA_CLIENT_ID', 'frontdesk')}-{name}-{index}"
        return out

    def _mounts(self, service: Mapping[str, Any]) -> dict[str, Path]:
        out = {}
        for target, source in service_mounts(service).items():
            if is_named_volume(source):
                out[target] = Path(self.volumes.get(source) or self.state_dir / "volumes" / source)
                out[target].mkdir(parents=True, exist_ok=True)
            else:
                out[target] = (self.base_dir / Path(source).expanduser()).resolve()
        return out

    def _localise(self, name: str, key: str, value: str, env: Mapping[str, str],
                  mounts: Mapping[str, Path]) -> str | None:
        if key in LISTEN_HOSTS:
            return "127.0.0.1"
        host_of_port = env.get(key[:-5] + "_HOST", "") if key.endswith("_PORT") else ""
        if host_of_port in self.external:  # e.g. FRONTDESK_SMTP_PORT beside FRONTDESK_SMTP_HOST: mailpit
            found = self._endpoint(name, host_of_port)
            return None if found is None else str(host_port(found)[1])
        if key.endswith("_HOST") and value in self.external:
            found = self._endpoint(name, value)
            return None if found is None else host_port(found)[0]
        if "://" in value and urlsplit(value).hostname in self.external:
            return str(self._endpoint(name, urlsplit(value).hostname or ""))
        hosts = [item.rsplit(":", 1)[0] for item in value.split(",")]
        if ":" in value and all(h in self.external for h in hosts):
            return ",".join(str(self._endpoint(name, h)) for h in hosts)
        for target in sorted(mounts, key=len, reverse=True):
            if value == target or value.startswith(target.rstrip("/") + "/"):
                return str(mounts[target] / value[len(target):].lstrip("/"))
        return value

    def _endpoint(self, name: str, host: str) -> Any:
        """The local stand-in for compose service ``host``; None for an optional one not given."""
        role = ROLES.get(host)
        if role is None:
            raise ConfigError(f"service {name} refers to compose service {host!r}, which has no local stand-in")
        if role not in self.endpoints:
            if role in OPTIONAL_ROLES:
                return None
            raise ConfigError(f"service {name} needs {role}: pass its local address (endpoints['{role}'])")
        return self.endpoints[role]
