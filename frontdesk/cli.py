"""The ``frontdesk`` command line: the only place that reads the environment.

Each command loads the settings it needs (env ``FRONTDESK_*`` + the optional YAML file) and hands
them to components through their constructors.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import uuid
from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer

from frontdesk import __version__
from frontdesk.errors import ConfigError, FrontdeskError
from frontdesk.settings import BusSettings, ComponentSettings, KafkaSettings, StorageSettings

app = typer.Typer(
    name="frontdesk",
    help="Ingestion and triage pipeline for customer support (email, social, chat).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
ingest_app = typer.Typer(help="Source connectors: publish customer messages to the inbound topic.", no_args_is_help=True)
cases_app = typer.Typer(help="Inspect routed cases.", no_args_is_help=True)
deadletter_app = typer.Typer(help="Inspect the dead-letter topic.", no_args_is_help=True)
app.add_typer(ingest_app, name="ingest")
app.add_typer(cases_app, name="cases")
app.add_typer(deadletter_app, name="deadletter")


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


def load(cls: type[ComponentSettings]) -> ComponentSettings:
    """Load one component's settings, turning a ConfigError into a clear exit."""
    try:
        return cls.load(STATE.config)
    except ConfigError as exc:
        fail(str(exc), code=2)


def fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"frontdesk: {message}", err=True)
    raise typer.Exit(code)


def not_yet(what: str, issue: int) -> NoReturn:
    fail(f"{what} is not yet implemented (tracked in issue #{issue})", code=3)


def open_configured_bus():  # type: ignore[no-untyped-def]
    from frontdesk.bus import open_bus

    bus_settings = load(BusSettings)
    kafka = load(KafkaSettings) if bus_settings.kind == "kafka" else None  # type: ignore[attr-defined]
    try:
        return open_bus(bus_settings, load(StorageSettings), kafka)  # type: ignore[arg-type]
    except FrontdeskError as exc:
        fail(str(exc))


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
    from dispatch.commands import email_replier, run_dispatch
    from dispatch.settings import SmtpSettings
    from dispatch.store.models import Case
    from frontdesk.pipeline import publish_demo, run_pipeline
    from ingest.commands import connectors
    from ingest.imap_settings import ImapSettings
    from sqlalchemy import func, select

    storage = load(StorageSettings)
    classifier = classifier_settings()
    settings, store = dispatch_store()
    replier = email_replier(load(SmtpSettings), settings, storage.data_dir)  # type: ignore[arg-type,attr-defined]
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
            "dispatch": lambda ev: run_dispatch(bus, store, settings, replier, ev),
        }
        imap = load(ImapSettings)
        for conn in connectors(imap, bus, storage.data_dir, storage.blobs):  # type: ignore[arg-type,attr-defined]
            stages[conn.connector] = conn.run
            typer.echo(f"watching mailbox {conn.connector} ({conn.box.host}, {', '.join(conn.box.folders)})")
        if not imap.mailboxes:  # type: ignore[attr-defined]
            typer.echo("no mailboxes configured: add imap.mailboxes to a config file (see config/frontdesk.yaml)")
        code = run_pipeline(stages, stop, bus, counts, typer.echo)
    store.close()
    raise typer.Exit(code)


@ingest_app.command("imap")
def ingest_imap(once: Annotated[bool, typer.Option("--once", help="One pass over all mailboxes, then exit")] = False) -> None:
    """Import mail from the configured IMAP mailboxes (IDLE; --once for one pass)."""
    from ingest.commands import connectors, run_forever
    from ingest.imap_settings import ImapSettings

    settings = load(ImapSettings)
    storage = load(StorageSettings)
    if not settings.mailboxes:  # type: ignore[attr-defined]
        fail("no mailboxes configured (imap.mailboxes in the config file)", code=2)
    with open_configured_bus() as bus:
        conns = connectors(settings, bus, storage.data_dir, storage.blobs)  # type: ignore[arg-type,attr-defined]
        if once:
            total = sum(guard(lambda c=c: c.run_once()) for c in conns)
            typer.echo(f"published {total} message(s)")
            return
        run_forever(conns, stop_on_signals())


@ingest_app.command("http")
def ingest_http() -> None:
    """Serve the HTTP intake (messages API, Telegram and Meta/WhatsApp webhooks)."""
    not_yet("the HTTP intake", 6)


@ingest_app.command("telegram")
def ingest_telegram() -> None:
    """Long-poll the Telegram Bot API (for bots without a public URL)."""
    not_yet("the Telegram polling connector", 6)


@app.command("parse-mail")
def parse_mail(path: Path, as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout")] = False) -> None:
    """Print the normalised message the IMAP connector would publish for an .eml file."""
    from ingest.imap_settings import ImapSettings
    from ingest.mail.parse import MailLimits, MailRejected, parse_mail as parse, to_parse_json

    settings = load(ImapSettings)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        fail(f"cannot read {path}: {exc}")
    limits = MailLimits(max_message_bytes=settings.max_message_bytes,  # type: ignore[attr-defined]
                        max_attachment_bytes=settings.max_attachment_bytes)  # type: ignore[attr-defined]
    try:
        view = to_parse_json(parse(raw, connector="parse-mail", channel="email", blobs=None, limits=limits))
    except MailRejected as exc:
        fail(f"{path}: {exc.reason}")
    if as_json:
        typer.echo(json.dumps(view, ensure_ascii=False, default=str))
        return
    for key in ("subject", "sender", "sender_name", "sent_at", "auto_submitted", "auto_reply", "bounce", "bulk"):
        typer.echo(f"{key:16} {view.get(key)}")
    for a in view.get("attachments", []):  # type: ignore[union-attr]
        typer.echo(f"attachment       {a['name']} ({a['content_type']}, {a['size']} bytes)")
    typer.echo("\n" + str(view.get("text", "")))


def classifier_settings():  # type: ignore[no-untyped-def]
    from classify.settings import ClassifierSettings

    return load(ClassifierSettings)


def stop_on_signals() -> threading.Event:
    """An Event set by SIGINT/SIGTERM: stages finish their cycle, commit, and exit cleanly."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


@app.command()
def classify() -> None:
    """Run the classify stage: inbound topic -> triaged topic (one consumer group)."""
    from classify.commands import run_stage

    settings = classifier_settings()
    with open_configured_bus() as bus:
        guard(lambda: run_stage(bus, settings, stop_on_signals()))


@app.command("classify-text")
def classify_text(
    text: str,
    subject: Annotated[str, typer.Option(help="Email subject, if any")] = "",
    channel: Annotated[str, typer.Option(help="email, chat or social")] = "email",
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Print labels and confidences for one message."""
    from classify.commands import classify_text as run

    triage = guard(lambda: run(text, subject, channel, classifier_settings()))
    if as_json:
        typer.echo(json.dumps(triage, ensure_ascii=False))
        return
    conf = triage["confidence"]
    for task in ("category", "urgency", "language"):
        typer.echo(f"{task:10} {triage[task]:22} {conf.get(task, 0):.2f}")
    typer.echo(f"{'review':10} {'needs review' if triage['needs_review'] else 'no':22}")
    if triage["reasons"]:
        typer.echo(f"{'rules':10} {', '.join(triage['reasons'])}")


@app.command()
def train(
    data: Annotated[list[Path], typer.Option("--data", help="Labelled JSONL file (repeatable)")],
    out: Annotated[Optional[Path], typer.Option(help="Model directory (default: the configured one)")] = None,
    epochs: Annotated[int, typer.Option(help="LoRA fine-tuning epochs; 0 keeps the encoder frozen")] = 4,
    dev: Annotated[Optional[Path], typer.Option(help="Evaluate on this file and record it in the card")] = None,
) -> None:
    """Fine-tune the encoder adapters, train the heads and write a model card."""
    from classify.commands import train_command

    settings = classifier_settings()
    target = out or settings.model_dir
    card = guard(lambda: train_command(data, target, settings, epochs, dev))
    typer.echo(f"trained {card['version']} on {card['data']['examples']} examples in {card['seconds']}s -> {target}")
    if "dev" in card:
        d = card["dev"]
        typer.echo(f"dev: category F1 {d['category_macro_f1']:.3f}  urgency F1 {d['urgency_macro_f1']:.3f}  "
                   f"language acc {d['language_accuracy']:.3f}")


@app.command("eval")
def evaluate(path: Path, as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout")] = False) -> None:
    """Evaluate the classifier and the TF-IDF baseline on a labelled JSONL file."""
    from classify.commands import eval_report
    from classify.evaluate import render

    report = guard(lambda: eval_report(path, classifier_settings()))
    typer.echo(json.dumps(report, ensure_ascii=False) if as_json else render(report))


def guard(action):  # type: ignore[no-untyped-def]
    """Run ``action``; a Frontdesk error becomes a one-line message and exit code 1."""
    try:
        return action()
    except FrontdeskError as exc:
        fail(str(exc))


def dispatch_store():  # type: ignore[no-untyped-def]
    from dispatch.commands import open_store
    from dispatch.settings import DispatchSettings

    settings = load(DispatchSettings)
    storage = load(StorageSettings)
    return settings, guard(lambda: open_store(settings, storage.data_dir))  # type: ignore[attr-defined]


@app.command()
def dispatch() -> None:
    """Run the dispatch stage and the outbox relay: triaged topic -> cases, events, replies."""
    from dispatch.commands import email_replier, run_dispatch
    from dispatch.settings import SmtpSettings

    settings, store = dispatch_store()
    replier = email_replier(load(SmtpSettings), settings, load(StorageSettings).data_dir)  # type: ignore[arg-type]
    with open_configured_bus() as bus:
        guard(lambda: run_dispatch(bus, store, settings, replier, stop_on_signals()))
    store.close()


@cases_app.command("list")
def cases_list(
    queue: Annotated[Optional[str], typer.Option()] = None,
    status: Annotated[Optional[str], typer.Option()] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array on stdout")] = False,
) -> None:
    """List cases, most urgent first."""
    from dispatch.commands import list_cases

    _, store = dispatch_store()
    rows = guard(lambda: list_cases(store, queue, status))
    if as_json:
        typer.echo(json.dumps(rows, ensure_ascii=False))
        return
    typer.echo(f"{'reference':16} {'queue':20} {'pri':>3} {'category':20} {'urgency':8} {'lang':4} {'chan':6} "
               f"{'ack':3} {'msgs':>4}  customer")
    for c in rows:
        who = c["customer"]["identities"][0] if c["customer"]["identities"] else c["customer"]["id"]
        typer.echo(f"{c['reference']:16} {c['queue']:20} {c['priority']:>3} {c['category']:20} {c['urgency']:8} "
                   f"{c['language']:4} {c['channel']:6} {'yes' if c['acknowledged'] else 'no':3} "
                   f"{c['message_count']:>4}  {who}")
    typer.echo(f"{len(rows)} case(s)")


@cases_app.command("show")
def cases_show(reference: str, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Show one case with its messages and full history."""
    from dispatch.commands import show_case

    _, store = dispatch_store()
    case = guard(lambda: show_case(store, reference))
    if case is None:
        fail(f"no case {reference}")
    if as_json:
        typer.echo(json.dumps(case, ensure_ascii=False))
        return
    for key in ("reference", "status", "queue", "priority", "category", "urgency", "language", "channel",
                "acknowledged", "first_response_due", "possible_thread_match"):
        typer.echo(f"{key:22} {case[key]}")
    typer.echo("\nmessages:")
    for m in case["messages"]:
        typer.echo(f"  {m['received_at']}  {m['sender']}: {m['subject']} | {m['text'][:100]!r}")
    typer.echo("\nhistory:")
    for h in case["history"]:
        typer.echo(f"  {h['at']}  {h['event']:22} {json.dumps(h['detail'], ensure_ascii=False)}")


@app.command()
def replay(
    source: Annotated[str, typer.Option("--from", help="Only 'deadletter' for now")] = "deadletter",
    stage: Annotated[Optional[str], typer.Option()] = None,
) -> None:
    """Re-drive failed records from the dead-letter topic after a fix."""
    not_yet("replay", 7)


if __name__ == "__main__":  # pragma: no cover
    app(prog_name="frontdesk")
    sys.exit(0)
