"""``frontdesk dispatch`` and ``frontdesk cases list | show``."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from dispatch.base import Replier
from dispatch.settings import DispatchSettings

from frontdesk.clikit import app, cases_app, fail, guard, load, open_configured_bus, stop_on_signals
from frontdesk.settings import StorageSettings

if TYPE_CHECKING:
    from dispatch.store.sql import SqlCaseStore


def dispatch_store():  # type: ignore[no-untyped-def]
    from dispatch.commands import open_store
    from dispatch.settings import DispatchSettings

    settings = load(DispatchSettings)
    storage = load(StorageSettings)
    return settings, guard(lambda: open_store(settings, storage.data_dir))  # type: ignore[attr-defined]


def configured_repliers(settings: DispatchSettings) -> dict[str, Replier]:
    from dispatch.chat_repliers import ChatReplySettings
    from dispatch.commands import repliers
    from dispatch.settings import SmtpSettings

    return guard(lambda: repliers(load(SmtpSettings), load(ChatReplySettings), settings, load(StorageSettings).data_dir))


@app.command()
def dispatch() -> None:
    """Run the dispatch stage and the outbox relay: triaged topic -> cases, events, replies."""
    from dispatch.commands import run_dispatch
    from frontdesk.health import bus_probes, ops_endpoint
    from frontdesk.metrics import MetricsSettings

    settings, store = dispatch_store()
    out = configured_repliers(settings)
    metrics = load(MetricsSettings)
    with open_configured_bus(trims=True) as bus:
        probes = bus_probes(bus, metrics)
        probes.add_readiness("database", database_answers(store))
        with ops_endpoint(metrics, probes):
            guard(lambda: run_dispatch(bus, store, settings, out, stop_on_signals(), probes))
    store.close()


def database_answers(store: SqlCaseStore) -> Callable[[], object]:
    """A readiness check: the case store runs ``SELECT 1`` (raises StoreUnavailable when down)."""
    from sqlalchemy import text

    return lambda: store.read(lambda session: session.execute(text("SELECT 1")).scalar_one())


@cases_app.command("list")
def cases_list(
    queue: Annotated[Optional[str], typer.Option()] = None,
    status: Annotated[Optional[str], typer.Option()] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array on stdout")] = False,
    limit: Annotated[int, typer.Option(min=1, help="At most this many cases, the most urgent")] = 500,
) -> None:
    """List cases, most urgent first; a list cut at ``--limit`` says so (on stderr with ``--json``)."""
    from dispatch.commands import count_cases, list_cases

    _, store = dispatch_store()
    rows = guard(lambda: list_cases(store, queue, status, limit))
    shown = len(rows)
    total = shown if shown < limit else guard(lambda: count_cases(store, queue, status))
    footer = f"{shown} case(s)" if total == shown else f"{shown} of {total} case(s), the most urgent first (--limit N for more)"
    if as_json:
        typer.echo(json.dumps(rows, ensure_ascii=False))
        if total != shown:
            typer.echo(footer, err=True)
        return
    typer.echo(f"{'reference':16} {'queue':20} {'pri':>3} {'category':20} {'urgency':8} {'lang':4} {'chan':6} "
               f"{'ack':3} {'msgs':>4}  customer")
    for c in rows:
        who = c["customer"]["identities"][0] if c["customer"]["identities"] else c["customer"]["id"]
        typer.echo(f"{c['reference']:16} {c['queue']:20} {c['priority']:>3} {c['category']:20} {c['urgency']:8} "
                   f"{c['language']:4} {c['channel']:6} {'yes' if c['acknowledged'] else 'no':3} "
                   f"{c['message_count']:>4}  {who}")
    typer.echo(footer)


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
