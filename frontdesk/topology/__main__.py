"""``python -m frontdesk.topology`` (or ``scripts/topology``): the compose services as local processes.

    FRONTDESK_TOPOLOGY_DATABASE_URL=postgresql+psycopg://… python -m frontdesk.topology --kafka 127.0.0.1:9092 \
        [--smtp 127.0.0.1:1025] [--services classify dispatch] [--replicas classify=2] [--env K=V]

Kafka, PostgreSQL and the SMTP server are not started: pass their addresses. The database URL
holds a password, so it is read from ``FRONTDESK_TOPOLOGY_DATABASE_URL`` (``--database-url``, which
every local user can read in the process list, wins when both are given). Runs until Ctrl-C or
SIGTERM, then stops every process cleanly (SIGTERM, then SIGKILL after the stop timeout).
Exit code 2 for an invalid compose file, database URL or arguments, 1 when a process exits for
good at start-up (e.g. invalid settings), else 0.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from frontdesk.errors import ConfigError, TopologyError
from frontdesk.settings import database_url_problem
from frontdesk.topology.supervisor import Topology


DATABASE_URL_ENV = "FRONTDESK_TOPOLOGY_DATABASE_URL"


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """``python -m frontdesk.topology``: start the services, wait for Ctrl-C / SIGTERM, stop them cleanly."""
    args = _parser().parse_args(argv)
    environ = os.environ if environ is None else environ
    endpoints: dict[str, Any] = {"kafka": args.kafka}
    try:
        if url := database_url(args.database_url, environ):
            endpoints["postgres"] = url
        if args.smtp:
            host, _, port = args.smtp.rpartition(":")
            endpoints["smtp"] = (host, int(port))
        topo = Topology.from_compose(args.compose, endpoints, env_extra=dict(kv.split("=", 1) for kv in args.env),
                                     log_dir=args.log_dir, services=args.services, state_dir=args.state_dir,
                                     replicas={k: int(v) for k, v in (kv.split("=", 1) for kv in args.replicas)},
                                     metrics=not args.no_metrics, environ=environ)
    except (ConfigError, ValueError) as exc:
        print(f"frontdesk.topology: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with topo:
        for name, procs in topo.processes.items():
            print(f"{name}: {len(procs)} process(es), logs {procs[0].log_path.parent}/{name}-*.log", flush=True)
            for p in procs:  # the ports are picked free per process: say where each one is scraped
                if p.ready_port is not None:
                    print(f"  {p.name}: http://127.0.0.1:{p.ready_port}/metrics, /healthz, /readyz", flush=True)
        code = _until_ready(topo, stop, args.ready_timeout)
        while code == 0 and not stop.wait(5.0):
            pass
        print("stopping (SIGTERM to every process)", flush=True)
    return code


def database_url(given: str | None, environ: Mapping[str, str]) -> str | None:
    """``--database-url`` if given, else ``$FRONTDESK_TOPOLOGY_DATABASE_URL`` (None: neither).

    Raises ConfigError for a URL SQLAlchemy cannot use (unparseable, port not in 1-65535, unknown
    dialect); the message names where the URL came from, never the URL (it holds the password).
    """
    source, url = ("--database-url", given) if given else (DATABASE_URL_ENV, environ.get(DATABASE_URL_ENV))
    if not url:
        return None
    problem = database_url_problem(url)
    if problem is not None:
        raise ConfigError(f"{source}: {problem}")
    return url


def _until_ready(topo: Topology, stop: threading.Event, timeout: float) -> int:
    """0 once ready, or when not ready in time (the supervisor keeps trying); 1 if a process gave up."""
    deadline = time.monotonic() + timeout
    while not stop.is_set():
        try:
            topo.wait_ready(min(5.0, max(0.0, deadline - time.monotonic())))
            print("all processes ready; Ctrl-C stops", flush=True)
            return 0
        except TopologyError as exc:
            if any(p.failed for ps in topo.processes.values() for p in ps):
                print(f"frontdesk.topology: {exc}", file=sys.stderr)
                return 1
            if time.monotonic() >= deadline:
                print(f"frontdesk.topology: {exc}\n(still supervising; Ctrl-C stops)", file=sys.stderr, flush=True)
                return 0
    return 0


def _parser() -> argparse.ArgumentParser:
    default = Path("docker-compose.yml")
    parser = argparse.ArgumentParser(prog="python -m frontdesk.topology",
                                     description="Run the docker-compose services as supervised local processes.")
    parser.add_argument("--compose", type=Path, default=default if default.exists() else
                        Path(__file__).resolve().parents[2] / "docker-compose.yml")
    parser.add_argument("--kafka", required=True, metavar="HOST:PORT", help="Kafka bootstrap servers")
    parser.add_argument("--database-url", metavar="URL",
                        help=f"SQLAlchemy URL of the cases database; better ${DATABASE_URL_ENV}: the command "
                        "line is visible to every local user")
    parser.add_argument("--smtp", metavar="HOST:PORT", help="SMTP server (default: acknowledgements as files)")
    parser.add_argument("--services", nargs="+", metavar="NAME", help="Default: every service without a profile")
    parser.add_argument("--replicas", action="append", default=[], metavar="NAME=N", help="Override deploy.replicas")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="Extra environment (last); not for secrets, which pass from the environment "
                        "where docker-compose.yml lists them")
    parser.add_argument("--log-dir", type=Path)
    parser.add_argument("--state-dir", type=Path, help="Named volumes and logs (default var/topology)")
    parser.add_argument("--no-metrics", action="store_true",
                        help="Serve no /metrics, /healthz, /readyz (FRONTDESK_METRICS_ENABLED=false)")
    parser.add_argument("--ready-timeout", type=float, default=300.0)
    return parser


if __name__ == "__main__":
    sys.exit(main())
