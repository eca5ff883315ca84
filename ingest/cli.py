"""``frontdesk ingest imap | http | telegram`` and ``frontdesk parse-mail``."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from frontdesk.clikit import app, blobs_app, fail, guard, ingest_app, load, open_configured_bus, stop_on_signals
from frontdesk.errors import FrontdeskError
from frontdesk.health import bus_probes, connector_answers, ops_endpoint
from frontdesk.metrics import MetricsSettings, default_metrics
from frontdesk.settings import StorageSettings


def once_summary(healths: Sequence[Any]) -> str:
    """The line a ``--once`` run prints: messages published to the inbound topic and, apart, records
    dead-lettered (the connectors' ``run_once`` counts both as records published). ``healths``: the
    connectors' ``health``, fresh at the start of the run."""
    published = sum(h.published for h in healths)
    dead = sum(h.dead_lettered for h in healths)
    line = f"published {published} message(s)"
    return f"{line}, dead-lettered {dead} (frontdesk deadletter list)" if dead else line


@ingest_app.command("imap")
def ingest_imap(once: Annotated[bool, typer.Option("--once", help="One pass over all mailboxes, then exit")] = False) -> None:
    """Import mail from the configured IMAP mailboxes (IDLE; --once for one pass)."""
    from ingest.commands import connectors, run_forever
    from ingest.imap_settings import ImapSettings

    settings = load(ImapSettings)
    storage = load(StorageSettings)
    if not settings.mailboxes:  # type: ignore[attr-defined]
        fail("no mailboxes configured (imap.mailboxes in the config file)", code=2)
    with open_configured_bus(trims=True) as bus:
        conns = connectors(settings, bus, storage.data_dir, storage.blobs)  # type: ignore[arg-type,attr-defined]
        if once:
            for c in conns:
                guard(c.run_once)
            typer.echo(once_summary([c.health for c in conns]))
            return
        metrics = load(MetricsSettings)
        probes = bus_probes(bus, metrics)
        for conn in conns:
            probes.add_readiness(conn.connector, connector_answers(conn))
        with ops_endpoint(metrics, probes):
            run_forever(conns, stop_on_signals(), probes)


@ingest_app.command("http")
def ingest_http() -> None:
    """Serve the HTTP intake: /v1/messages, Telegram and Meta (WhatsApp, Messenger, Instagram) webhooks."""
    from ingest.http import HttpIntakeSettings, serve

    settings = load(HttpIntakeSettings)
    with open_configured_bus(trims=True) as bus:
        typer.echo(f"HTTP intake on http://{settings.host}:{settings.port} (OpenAPI at /docs)")
        guard(lambda: serve(settings, bus, stop_on_signals()))


@ingest_app.command("telegram")
def ingest_telegram(once: Annotated[bool, typer.Option("--once", help="One getUpdates call, then exit")] = False) -> None:
    """Long-poll the Telegram Bot API (for bots without a public URL); the offset is stored durably."""
    from ingest.telegram import TelegramPoller, TelegramSettings

    settings = load(TelegramSettings)
    storage = load(StorageSettings)
    with open_configured_bus(trims=True) as bus:
        poller = guard(lambda: TelegramPoller(settings, bus, settings.offset_dir or storage.data_dir / "telegram"))
        if once:
            guard(poller.run_once)
            typer.echo(once_summary([poller.health]))
            return
        default_metrics().watch_connector(poller)
        metrics = load(MetricsSettings)
        probes = bus_probes(bus, metrics)
        probes.add_readiness(poller.connector, connector_answers(poller))
        with ops_endpoint(metrics, probes):
            guard(lambda: poller.run(stop_on_signals()))


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


@blobs_app.command("get")
def blobs_get(ref: str, out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write here, not to stdout")] = None) -> None:
    """Write a blob's bytes (a raw mail or an attachment, by its sha256:<hex> reference) to stdout or a file."""
    from ingest.blobs import BlobNotFound, BlobStore

    store = BlobStore(load(StorageSettings).blobs)  # type: ignore[attr-defined]
    try:
        data = store.get(ref)
    except BlobNotFound:
        fail(f"no blob {ref} (never stored, or expired)")
    except FrontdeskError as exc:  # a malformed reference, a corrupt blob, an unreadable store
        fail(str(exc))
    if out is None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        out.write_bytes(data)


@blobs_app.command("expire")
def blobs_expire(
    older_than_days: Annotated[Optional[float], typer.Option(
        "--older-than-days", help="Retention in days (at least 1); default storage.blob_retention_days")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count what would be erased, change nothing")] = False,
) -> None:
    """Erase blobs last stored longer ago than the retention, bytes included (run it daily, e.g. from cron)."""
    from ingest.blobs import BlobStore

    storage = load(StorageSettings)
    days = older_than_days if older_than_days is not None else storage.blob_retention_days  # type: ignore[attr-defined]
    if days is None:
        fail("no retention: pass --older-than-days or set storage.blob_retention_days", code=2)
    report = guard(lambda: BlobStore(storage.blobs).expire(days * 86_400.0, dry_run=dry_run))  # type: ignore[attr-defined]
    verb = "would erase" if dry_run else "erased"
    typer.echo(f"{verb} {report.blobs} blob(s), {report.bytes:,} bytes (+{report.legacy_files} file(s) of the old "
               f"layout); packs deleted {report.packs_deleted}, compacted {report.packs_compacted} "
               f"({report.bytes_copied:,} bytes of live blobs copied)")
