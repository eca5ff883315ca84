"""Bodies of the classifier's CLI commands (``frontdesk train | eval | classify-text | classify``).

Kept out of :mod:`frontdesk.cli` so the kernel's CLI stays a thin layer and heavy imports happen
only when one of these commands runs.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from classify.base import TextItem
from classify.data import read_examples
from classify.settings import ClassifierSettings
from frontdesk.bus.base import Bus
from frontdesk.errors import ConfigError


def load_model(settings: ClassifierSettings) -> Any:
    from classify.model import TriageModel

    return TriageModel(settings)


def train_command(data: list[Path], out: Path, settings: ClassifierSettings, epochs: int,
                  dev: Path | None, augmented: bool = True, method: str = "full",
                  mix: str = "0.5", layer_decay: float = 1.0, lr: float = 0.0,
                  encoder_from: Path | None = None) -> dict[str, Any]:
    from classify.finetune import TuneConfig
    from classify.train import train

    card = train(data, out, settings, TuneConfig(method=method, epochs=epochs, lr=lr, layer_decay=layer_decay),
                 augmented, parse_mix(mix), encoder_from)
    if dev is not None:
        scores = eval_report(dev, settings.model_copy(update={"model_dir": out}))
        card["dev"] = {k: v for k, v in scores.items() if not k.startswith("confusion")}
        (out / "card.json").write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return card


def parse_mix(value: str) -> float | None:
    """``--mix``: the encoder head's share in [0, 1], or ``auto`` (chosen on the calibration split)."""
    if value == "auto":
        return None
    try:
        share = float(value)
    except ValueError:
        share = -1.0
    if not 0.0 <= share <= 1.0:
        raise ConfigError(f"--mix must be a number from 0 to 1 or 'auto', not {value!r}")
    return share


def eval_report(path: Path, settings: ClassifierSettings) -> dict[str, Any]:
    from classify.evaluate import evaluate
    from classify.model import BASELINE, load_heads

    examples = read_examples(path)
    if not examples:
        raise ConfigError(f"{path}: no labelled examples to evaluate")
    model = load_model(settings)
    baseline = load_heads(settings.model_dir, BASELINE)
    return evaluate(examples, model, baseline)


def classify_text(text: str, subject: str, channel: str, settings: ClassifierSettings) -> dict[str, Any]:
    [triage] = load_model(settings).classify([TextItem(text, subject, channel)])
    return triage.model_dump(mode="json")


def run_stage(bus: Bus, settings: ClassifierSettings, stop: threading.Event,
              loaded: threading.Event | None = None) -> None:
    """Blocking: the classify stage until ``stop`` is set; sets ``loaded`` (if given) once the model
    is loaded and the stage about to consume (readiness: loading takes seconds)."""
    from classify.stage import ClassifyProcessor
    from frontdesk.stage import StageRunner

    model = load_model(settings)
    if loaded is not None:
        loaded.set()
    consumer = bus.consumer(settings.group, [bus.topics.inbound])
    runner = StageRunner("classify", bus, consumer, ClassifyProcessor(model, bus.topics),
                         max_records=settings.poll_records)
    runner.run(stop)
