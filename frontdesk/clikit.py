"""Shared pieces of the ``frontdesk`` command line: the Typer apps, settings loading, exits.

The command line is the only place that reads the environment: each command loads the settings it
needs (env ``FRONTDESK_*`` + the optional YAML file) and hands them to components through their
constructors. Stage packages add their commands in their own ``cli`` modules.

Exit codes: 0 done; 1 a Frontdesk error (:func:`guard`; e.g. a server unreachable); 2 invalid
settings or usage (a ConfigError from :func:`load` or :func:`guard`, a bad option), which the
topology supervisor does not restart; 3 not yet implemented.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, Optional, TypeVar

import typer

from frontdesk.errors import ConfigError, FrontdeskError
from frontdesk.settings import BusSettings, ComponentSettings, KafkaSettings, StorageSettings

T = TypeVar("T")
CONFIG_ERROR_EXIT = 2  # invalid settings or usage; frontdesk.topology.supervisor does not restart after it
S = TypeVar("S", bound=ComponentSettings)

app = typer.Typer(
    name="frontdesk",
    help="Ingestion and triage pipeline for customer support (email, social, chat).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
ingest_app = typer.Typer(help="Source connectors: publish customer messages to the inbound topic.", no_args_is_help=True)
cases_app = typer.Typer(help="Inspect routed cases.", no_args_is_help=True)
deadletter_app = typer.Typer(help="Inspect the dead-letter topic.", no_args_is_help=True)
blobs_app = typer.Typer(help="The blob store of raw mail and attachments: read, expire.", no_args_is_help=True)
app.add_typer(ingest_app, name="ingest")
app.add_typer(cases_app, name="cases")
app.add_typer(deadletter_app, name="deadletter")
app.add_typer(blobs_app, name="blobs")


class _State:
    config: Path | None = None


STATE = _State()


@app.callback()
def main(
    config: Annotated[
        Optional[Path], typer.Option("--config", "-c", envvar="FRONTDESK_CONFIG", help="YAML settings file")
    ] = None,
    log_level: Annotated[str, typer.Option(envvar="FRONTDESK_LOG_LEVEL", help="DEBUG, INFO, WARNING")] = "INFO",
) -> None:
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    STATE.config = config
    for noisy in ("alembic", "kafka", "httpx"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    if crash_at := os.environ.get("FRONTDESK_CRASH_AT"):
        from frontdesk.faults import arm

        arm(crash_at)




def load(cls: type[S]) -> S:
    """Load one component's settings, turning a ConfigError into a clear exit (code 2)."""
    try:
        return cls.load(STATE.config)
    except ConfigError as exc:
        fail(str(exc), code=CONFIG_ERROR_EXIT)


def fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"frontdesk: {message}", err=True)
    raise typer.Exit(code)


def not_yet(what: str, issue: int) -> NoReturn:
    fail(f"{what} is not yet implemented (tracked in issue #{issue})", code=3)


def guard(action: Callable[[], T]) -> T:
    """Run ``action``; a Frontdesk error becomes a one-line message and an exit code.

    ConfigError exits with 2 like :func:`load` (invalid settings: restarting cannot help, so the
    topology supervisor does not), every other Frontdesk error with 1.
    """
    try:
        return action()
    except ConfigError as exc:
        fail(str(exc), code=CONFIG_ERROR_EXIT)
    except FrontdeskError as exc:
        fail(str(exc))


def open_configured_bus(*, trims: bool = False) -> Any:
    """The configured bus (embedded or Kafka), topics ensured; a failure exits with the reason.
    ``trims``: a long-running stage, which trims an embedded bus to its retention as it goes (short
    commands such as ``deadletter list`` do not, so that they never wait for a pass to end)."""
    from frontdesk.bus import open_bus

    bus_settings = load(BusSettings)
    kafka = load(KafkaSettings) if bus_settings.kind == "kafka" else None
    return guard(lambda: open_bus(bus_settings, load(StorageSettings), kafka, trims=trims))


def stop_on_signals() -> threading.Event:
    """An Event set by SIGINT/SIGTERM: stages finish their cycle, commit, and exit cleanly."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop
