"""The ``frontdesk`` command (also ``python -m frontdesk``): kernel commands plus the stages'.

Stage commands live beside their stages (``classify/cli.py``, ``dispatch/cli.py``,
``ingest/cli.py``); importing them registers them on the shared Typer app.
"""

from __future__ import annotations

import json
import uuid
from typing import Annotated, Optional

import typer

import ingest.cli  # noqa: F401  (importing a stage's cli module registers its commands)
from classify.cli import classifier_settings
from dispatch.cli import dispatch_store
from frontdesk import __version__
from frontdesk.clikit import app, deadletter_app, load, not_yet, open_configured_bus, stop_on_signals
from frontdesk.settings import StorageSettings

__all__ = ["app"]

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
    limit: Annotated[int, typer.Option(help="At most this many records")] = 100,
) -> None:
    """List dead-letter records (stage, reason, origin) without consuming them."""
    from frontdesk.codec import decode
    from frontdesk.messages import DeadLetter

    with open_configured_bus() as bus:
        letters = []
        with bus.consumer(f"frontdesk-cli-{uuid.uuid4().hex}", [bus.topics.deadletter]) as consumer:
            while len(letters) < limit and (batch := consumer.poll(500, timeout=1.0)):
                letters.extend(decode(r.value, DeadLetter) for r in batch)
        letters = [d for d in letters if stage is None or d.stage == stage][:limit]
    if as_json:
        typer.echo(json.dumps([d.model_dump(mode="json") for d in letters], ensure_ascii=False))
        return
    for d in letters:
        typer.echo(f"{d.failed_at:%Y-%m-%d %H:%M:%S} {d.stage:10} {d.error_type:18} {d.reason[:90]}")
    typer.echo(f"{len(letters)} dead-letter record(s)")


@app.command()
def run(
    demo: Annotated[int, typer.Option(help="On an empty bus, publish this many sample messages (0: none)")] = 40,
) -> None:
    """Run every stage in one process on the embedded default (bus, SQLite, blobs). Ctrl-C stops."""
    from classify.commands import run_stage
    from classify.data import DEV_FILE, read_examples
    from dispatch.cli import configured_repliers
    from dispatch.commands import run_dispatch
    from dispatch.maildrop import MaildropReplier
    from dispatch.settings import SmtpSettings
    from dispatch.store.models import Case
    from frontdesk.pipeline import publish_demo, run_pipeline
    from ingest.commands import connectors
    from ingest.http import HttpIntakeSettings, serve
    from ingest.imap_settings import ImapSettings
    from sqlalchemy import func, select

    storage = load(StorageSettings)
    classifier = classifier_settings()
    settings, store = dispatch_store()
    repliers = {"demo": MaildropReplier(storage.data_dir / "outgoing"), **configured_repliers(settings)}
    stop = stop_on_signals()

    def counts() -> tuple[int, int]:
        return store.read(lambda s: (s.scalar(select(func.count(Case.id))) or 0,
                                     s.scalar(select(func.count(Case.id)).where(Case.acknowledged)) or 0))

    with open_configured_bus() as bus:
        if demo:
            added = publish_demo(bus, read_examples(DEV_FILE)[:demo])
            if added:
                typer.echo(f"published {added} sample customer messages (connector 'demo') to {bus.topics.inbound}")
        typer.echo(f"data in {storage.data_dir.resolve()}; acknowledgements: "  # type: ignore[attr-defined]
                   f"{'SMTP' if load(SmtpSettings).host else storage.data_dir / 'outgoing'}")  # type: ignore[attr-defined]
        typer.echo("next: `frontdesk cases list` in another terminal; Ctrl-C stops (restarting loses nothing)")
        stages = {
            "classify": lambda ev: run_stage(bus, classifier, ev),  # type: ignore[arg-type]
            "dispatch": lambda ev: run_dispatch(bus, store, settings, repliers, ev),
        }
        imap = load(ImapSettings)
        for conn in connectors(imap, bus, storage.data_dir, storage.blobs):  # type: ignore[arg-type,attr-defined]
            stages[conn.connector] = conn.run
            typer.echo(f"watching mailbox {conn.connector} ({conn.box.host}, {', '.join(conn.box.folders)})")
        if not imap.mailboxes:  # type: ignore[attr-defined]
            typer.echo("no mailboxes configured: add imap.mailboxes to a config file (see config/frontdesk.yaml)")
        http = load(HttpIntakeSettings)
        if http.api_tokens or http.hmac_secret or http.telegram_secret_token or http.meta_app_secret:
            stages["http"] = lambda ev: serve(http, bus, ev)
            typer.echo(f"HTTP intake on http://{http.host}:{http.port}")
        code = run_pipeline(stages, stop, bus, counts, typer.echo)
    store.close()
    raise typer.Exit(code)


@app.command()
def replay(
    source: Annotated[str, typer.Option("--from", help="Only 'deadletter' for now")] = "deadletter",
    stage: Annotated[Optional[str], typer.Option()] = None,
) -> None:
    """Re-drive failed records from the dead-letter topic after a fix."""
    not_yet("replay", 7)

