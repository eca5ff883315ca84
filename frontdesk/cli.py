"""The ``frontdesk`` command (also ``python -m frontdesk``): kernel commands plus the stages'.

Stage commands live beside their stages (``classify/cli.py``, ``dispatch/cli.py``,
``ingest/cli.py``); importing them registers them on the shared Typer app.
"""

from __future__ import annotations

import itertools
import json
import threading
import uuid
from typing import TYPE_CHECKING, Annotated, Optional, TypeVar

import typer

import ingest.cli  # noqa: F401  (importing a stage's cli module registers its commands)
from classify.cli import classifier_settings
from dispatch.cli import dispatch_store
from frontdesk import __version__
from frontdesk.clikit import app, deadletter_app, fail, guard, load, open_configured_bus, stop_on_signals
from frontdesk.messages import DeadLetter
from frontdesk.settings import StorageSettings

if TYPE_CHECKING:
    from frontdesk.bus.base import Bus

__all__ = ["app"]
T = TypeVar("T")


@app.command()
def version() -> None:
    """Print the Frontdesk version."""
    typer.echo(__version__)


@app.command()
def topics() -> None:
    """Create the pipeline topics if missing and print their end offsets."""
    with open_configured_bus() as bus:
        for name in bus.topics.all():
            ends = bus.end_offsets(name)
            typer.echo(f"{name:32} partitions={len(ends):<3} records={sum(ends.values())}")


@app.command()
def schemas(
    write: Annotated[bool, typer.Option("--write", help="Rewrite the committed schema files")] = False,
) -> None:
    """Print (or rewrite) the published JSON Schemas of the pipeline topics."""
    from frontdesk.codec import json_schema, schema_path, write_schemas
    from frontdesk.messages import PIPELINE_TYPES

    if write:
        for path in write_schemas():
            typer.echo(f"wrote {path}")
        return
    for topic in PIPELINE_TYPES:
        typer.echo(f"{topic}: {schema_path(topic)}  ({len(json.dumps(json_schema(topic)))} bytes)")


@deadletter_app.command("list")
def deadletter_list(
    stage: Annotated[Optional[str], typer.Option(help="Only records from this stage")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array on stdout")] = False,
    limit: Annotated[int, typer.Option(min=1, help="At most this many records")] = 100,
) -> None:
    """List dead-letter records (stage, reason, origin) without consuming them.

    Reads the topic up to its end offsets at the start, or until ``limit`` records of ``stage``;
    malformed records are counted (on stderr), never listed.
    """
    with open_configured_bus() as bus:
        letters, malformed = guard(lambda: read_dead_letters(bus, stage, limit))
    if malformed:
        typer.echo(f"{malformed} malformed dead-letter record(s) passed over", err=True)
    if as_json:
        typer.echo(json.dumps([d.model_dump(mode="json") for d in letters], ensure_ascii=False))
        return
    for d in letters:
        typer.echo(f"{d.failed_at:%Y-%m-%d %H:%M:%S} {d.stage:10} {d.error_type:18} {d.reason[:90]}")
    typer.echo(f"{len(letters)} dead-letter record(s)")


def read_dead_letters(bus: Bus, stage: str | None, limit: int, timeout: float = 30.0) -> tuple[list[DeadLetter], int]:
    """Up to ``limit`` dead letters of ``stage`` (any stage if None) in topic order, read in a
    throwaway consumer group that commits nothing, and how many malformed records were passed over.
    Raises BusUnavailable if the topic's partitions are not assigned within ``timeout`` s."""
    from frontdesk.codec import decode
    from frontdesk.errors import DecodeError
    from frontdesk.replay import read_until

    letters: list[DeadLetter] = []
    malformed = 0
    ends = bus.end_offsets(bus.topics.deadletter)
    with bus.consumer(f"frontdesk-cli-{uuid.uuid4().hex}", [bus.topics.deadletter]) as consumer:
        for batch in read_until(consumer, ends, timeout, 500):
            for record in batch:
                try:
                    letter = decode(record.value, DeadLetter)
                except DecodeError:
                    malformed += 1
                    continue
                if stage is None or letter.stage == stage:
                    letters.append(letter)
                    if len(letters) == limit:
                        return letters, malformed
    return letters, malformed


def demo_samples(examples: list[T], n: int) -> list[T]:
    """The first ``n`` of ``examples`` taken by turns from each language (in the order the languages
    first appear), so that a short demo shows every one of them. Pure."""
    by_language: dict[str, list[T]] = {}
    for example in examples:
        by_language.setdefault(getattr(example, "language", ""), []).append(example)
    turns = itertools.zip_longest(*by_language.values())
    return [e for e in itertools.chain.from_iterable(turns) if e is not None][:n]


@app.command()
def run(
    demo: Annotated[int, typer.Option(help="On an empty bus, publish this many sample messages (0: none)")] = 40,
) -> None:
    """Run every stage in one process on the embedded default (bus, SQLite, blobs). Ctrl-C stops."""
    from classify.cli import model_loaded
    from classify.commands import run_stage
    from classify.data import DEV_FILE, read_examples
    from dispatch.cli import configured_repliers, database_answers
    from dispatch.commands import run_dispatch
    from dispatch.maildrop import MaildropReplier
    from dispatch.settings import SmtpSettings
    from dispatch.store.models import Case
    from frontdesk.health import bus_probes, ops_endpoint
    from frontdesk.metrics import MetricsSettings
    from frontdesk.pipeline import publish_demo, run_pipeline
    from ingest.commands import intake_stages, retention_stage
    from ingest.http import HttpIntakeSettings
    from ingest.imap_settings import ImapSettings
    from ingest.telegram import TelegramSettings
    from sqlalchemy import func, select

    storage = load(StorageSettings)
    classifier = classifier_settings()
    settings, store = dispatch_store()
    repliers = {"demo": MaildropReplier(storage.data_dir / "outgoing"), **configured_repliers(settings)}
    stop = stop_on_signals()

    def counts() -> tuple[int, int]:
        return store.read(lambda s: (s.scalar(select(func.count(Case.id))) or 0,
                                     s.scalar(select(func.count(Case.id)).where(Case.acknowledged)) or 0))

    metrics = load(MetricsSettings)
    with open_configured_bus(trims=True) as bus:
        probes = bus_probes(bus, metrics)
        probes.add_readiness("database", database_answers(store))
        loaded = threading.Event()
        probes.add_readiness("model", model_loaded(loaded))
        if demo:
            added = publish_demo(bus, demo_samples(read_examples(DEV_FILE), demo))
            if added:
                typer.echo(f"published {added} sample customer messages (connector 'demo') to {bus.topics.inbound}")
        typer.echo(f"data in {storage.data_dir.resolve()}; acknowledgements: "  # type: ignore[attr-defined]
                   f"{'SMTP' if load(SmtpSettings).host else storage.data_dir / 'outgoing'}")  # type: ignore[attr-defined]
        typer.echo("next: `frontdesk cases list` in another terminal; Ctrl-C stops (restarting loses nothing)")
        stages = {
            "classify": lambda ev: run_stage(bus, classifier, ev, loaded),  # type: ignore[arg-type]
            "dispatch": lambda ev: run_dispatch(bus, store, settings, repliers, ev, probes),
        }
        stages.update(intake_stages(bus, storage.data_dir, storage.blobs, load(ImapSettings),  # type: ignore[attr-defined]
                                    load(HttpIntakeSettings), load(TelegramSettings), typer.echo, probes))
        if storage.blob_retention_days is not None:  # type: ignore[attr-defined]
            stages["blob-retention"] = retention_stage(storage.blobs, storage.blob_retention_days)  # type: ignore[attr-defined]
            typer.echo(f"blobs last stored over {storage.blob_retention_days:g} days ago are erased daily")  # type: ignore[attr-defined]
        with ops_endpoint(metrics, probes) as ops:
            if ops is not None:
                typer.echo(f"metrics and health on {ops.url}/metrics, /healthz, /readyz")
            code = run_pipeline(stages, stop, bus, counts, typer.echo, probes=probes)
    store.close()
    raise typer.Exit(code)


@app.command()
def replay(
    source: Annotated[str, typer.Option("--from", help="What to re-drive: 'deadletter'")],
    stage: Annotated[Optional[str], typer.Option(
        help="Only dead letters of this stage (classify, dispatch, relay, ingest)")] = None,
    error_type: Annotated[Optional[str], typer.Option(help="Only this error type, e.g. StoreError")] = None,
    since: Annotated[Optional[str], typer.Option(
        help="ISO time or 30m/2h/7d ago; older dead letters of the selection are passed over for good")] = None,
    limit: Annotated[Optional[int], typer.Option(min=1, help="Replay at most this many")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be replayed; change nothing")] = False,
    to_topic: Annotated[Optional[str], typer.Option(help="Publish to this topic instead of the source topic")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The summary as one JSON object")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the replay group's partitions")] = 60.0,
) -> None:
    """Re-drive dead-lettered records to their source topic after a fix; each one at most once."""
    from datetime import UTC, datetime

    from frontdesk.replay import Replayer, ReplayOptions, parse_since

    if source != "deadletter":
        fail(f"--from {source!r}: only 'deadletter' can be replayed", code=2)
    try:
        moment = parse_since(since, datetime.now(UTC)) if since else None
    except ValueError as exc:
        fail(f"--since {since!r}: {exc} (use an ISO time or 30m, 2h, 7d)", code=2)
    options = ReplayOptions(stage=stage, error_type=error_type, since=moment, limit=limit, dry_run=dry_run,
                            to_topic=to_topic, assign_timeout_s=timeout)
    with open_configured_bus() as bus:
        if to_topic == bus.topics.deadletter:
            fail("--to-topic must not be the dead-letter topic", code=2)
        summary = guard(lambda: Replayer(bus, options).run())
    if as_json:
        typer.echo(json.dumps(summary.as_dict(), ensure_ascii=False))
        return
    for line in summary.lines():
        typer.echo(line)


@app.command("config-reference")
def config_reference(
    write: Annotated[bool, typer.Option("--write", help="Rewrite the generated block in README.md")] = False,
) -> None:
    """Print the Markdown configuration reference generated from the settings classes (`make docs`)."""
    from frontdesk.settings_doc import README, render, write_readme

    if not write:
        typer.echo(render(), nl=False)
        return
    try:
        changed = write_readme()
    except (OSError, ValueError) as exc:
        fail(f"{README}: {exc}")
    typer.echo(f"{README}: configuration reference {'updated' if changed else 'already up to date'}")

