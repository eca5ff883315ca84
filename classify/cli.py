"""``frontdesk train | eval | classify | classify-text``."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Optional

import click
import typer

from classify.settings import ClassifierSettings
from frontdesk.clikit import app, guard, load, open_configured_bus, stop_on_signals

CHANNELS = ("email", "chat", "social")


def classifier_settings() -> ClassifierSettings:
    return load(ClassifierSettings)


@app.command()
def classify() -> None:
    """Run the classify stage: inbound topic -> triaged topic (one consumer group)."""
    from classify.commands import run_stage
    from frontdesk.health import bus_probes, ops_endpoint
    from frontdesk.metrics import MetricsSettings

    settings, metrics = classifier_settings(), load(MetricsSettings)
    loaded = threading.Event()
    with open_configured_bus(trims=True) as bus:
        probes = bus_probes(bus, metrics)
        probes.add_readiness("model", model_loaded(loaded))
        with ops_endpoint(metrics, probes):
            guard(lambda: run_stage(bus, settings, stop_on_signals(), loaded))


def model_loaded(loaded: threading.Event) -> Callable[[], bool]:
    """A readiness check: raises until ``loaded`` is set (the classifier takes seconds to load)."""
    def check() -> bool:
        if not loaded.is_set():
            raise RuntimeError("the model is still loading")
        return True
    return check


def _one_of_channels(value: str) -> str:
    if value not in CHANNELS:
        raise typer.BadParameter(f"one of {', '.join(CHANNELS)}")
    return value


@app.command("classify-text")
def classify_text(
    text: Annotated[str, typer.Argument(help="The message; '-' reads it from standard input (one argument "
                                             "is at most 128 KiB)")],
    subject: Annotated[str, typer.Option(help="Email subject, if any")] = "",
    channel: Annotated[str, typer.Option(help="email, chat or social (the labels do not depend on it today)",
                                         callback=_one_of_channels)] = "email",
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Print labels and confidences for one message."""
    from classify.commands import classify_text as run

    if text == "-":
        text = click.get_text_stream("stdin", encoding="utf-8", errors="replace").read()
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
    epochs: Annotated[int, typer.Option(help="Fine-tuning epochs; 0 keeps the encoder frozen")] = 6,
    method: Annotated[str, typer.Option(help="Fine-tuning: full (the layers' weights) or lora (adapters)")] = "full",
    lr: Annotated[float, typer.Option(help="Peak learning rate of the encoder (of its top layer with "
                                            "--layer-decay); 0: the method's default")] = 0.0,
    layer_decay: Annotated[float, typer.Option(help="Learning rate of each lower layer, as a share of the one "
                                                    "above it (1: the same rate for every layer)")] = 1.0,
    mix: Annotated[str, typer.Option(help="The encoder head's share in the heads' mix (0-1), or 'auto': "
                                          "best on the calibration split")] = "0.5",
    dev: Annotated[Optional[Path], typer.Option(help="Evaluate on this file and record it in the card")] = None,
    encoder_from: Annotated[Optional[Path], typer.Option(help="Reuse the fine-tuned encoder of this model directory "
                                                               "(tuned on the same --data): only the heads are fitted")] = None,
    augment: Annotated[bool, typer.Option(help="Also learn from Azerbaijani examples spelled without ə ş ç ğ ı ö ü "
                                               "(the baseline never does)")] = True,
) -> None:
    """Fine-tune the encoder, train the heads and write a model card."""
    from classify.commands import train_command

    settings = classifier_settings()
    target = out or settings.model_dir
    card = guard(lambda: train_command(data, target, settings, epochs, dev, augment, method, mix,
                                                layer_decay, lr, encoder_from))
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
