"""``frontdesk eval``: scores of the model and of the TF-IDF baseline on a labelled JSONL file."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from classify.base import CATEGORIES, URGENCIES, Classifier
from classify.data import Example
from classify.text import compose
from frontdesk.messages import Triage


def macro_f1(gold: Sequence[str], pred: Sequence[str]) -> float:
    """The mean F1 of every label in ``gold`` or ``pred`` (sklearn's default): a label only predicted
    counts with F1 0, one in neither (a subset without it) does not count."""
    from sklearn.metrics import f1_score

    labels = sorted(set(gold) | set(pred))
    return round(float(f1_score(list(gold), list(pred), labels=labels, average="macro", zero_division=0)), 4)


def accuracy(gold: Sequence[str], pred: Sequence[str]) -> float:
    return round(sum(g == p for g, p in zip(gold, pred, strict=True)) / max(len(gold), 1), 4)


def confusion(gold: Sequence[str], pred: Sequence[str], labels: Sequence[str]) -> dict[str, dict[str, int]]:
    table = {g: {p: 0 for p in labels} for g in labels}
    for g, p in zip(gold, pred, strict=True):
        if g in table and p in table[g]:
            table[g][p] += 1
    return table


def expected_calibration_error(confidence: Sequence[float], correct: Sequence[bool], bins: int = 10) -> float:
    conf, hit = np.asarray(confidence), np.asarray(correct, dtype=float)
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        mask = (conf > lo) & (conf <= hi)
        if mask.any():
            ece += mask.mean() * abs(conf[mask].mean() - hit[mask].mean())
    return round(float(ece), 4)


def evaluate(examples: Sequence[Example], model: Classifier, baseline: dict[str, Any] | None) -> dict[str, Any]:
    """Run the model over ``examples`` and compute the report (a JSON-able dict)."""
    started = time.perf_counter()
    triages = model.classify([e.item for e in examples])
    elapsed = time.perf_counter() - started
    gold = {t: [getattr(e, t) for e in examples] for t in ("category", "urgency", "language")}
    pred = {t: [getattr(x, t) for x in triages] for t in ("category", "urgency", "language")}
    report: dict[str, Any] = {
        "n": len(examples),
        "model_version": model.model_version,
        "category_macro_f1": macro_f1(gold["category"], pred["category"]),
        "category_accuracy": accuracy(gold["category"], pred["category"]),
        "urgency_macro_f1": macro_f1(gold["urgency"], pred["urgency"]),
        "urgency_accuracy": accuracy(gold["urgency"], pred["urgency"]),
        "urgency_macro_f1_without_rules": _without_rules(examples, triages, gold["urgency"]),
        "language_accuracy": accuracy(gold["language"], pred["language"]),
        "per_language": _per_language(examples, pred),
        "needs_review_share": round(sum(t.needs_review for t in triages) / max(len(triages), 1), 4),
        "category_ece": expected_calibration_error(
            [t.confidence.get("category", 0.0) for t in triages],
            [g == p for g, p in zip(gold["category"], pred["category"], strict=True)],
        ),
        "confusion_category": confusion(gold["category"], pred["category"], CATEGORIES),
        "confusion_urgency": confusion(gold["urgency"], pred["urgency"], URGENCIES),
        "messages_per_second": round(len(examples) / elapsed, 1) if elapsed > 0 else None,
    }
    if baseline is not None:
        texts = [compose(e.subject, e.text) for e in examples]
        base = {t: [str(p) for p in baseline[t].predict(texts)] for t in ("category", "urgency")}
        report["baseline"] = {
            "category_macro_f1": macro_f1(gold["category"], base["category"]),
            "urgency_macro_f1": macro_f1(gold["urgency"], base["urgency"]),
        }
    return report


def _per_language(examples: Sequence[Example], pred: dict[str, list[str]]) -> dict[str, dict[str, Any]]:
    out = {}
    for lang in sorted({e.language for e in examples}):
        idx = [i for i, e in enumerate(examples) if e.language == lang]
        out[lang] = {
            "n": len(idx),
            "category_macro_f1": macro_f1([examples[i].category for i in idx], [pred["category"][i] for i in idx]),
            "urgency_macro_f1": macro_f1([examples[i].urgency for i in idx], [pred["urgency"][i] for i in idx]),
        }
    return out


def _without_rules(examples: Sequence[Example], triages: Sequence[Triage], gold: Sequence[str]) -> float | None:
    """Urgency macro-F1 of the model's own urgency (the rules undone), to show what they add."""
    if not any(t.reasons for t in triages):
        return None
    own = [max(t.scores.get("urgency", {t.urgency: 1.0}).items(), key=lambda kv: kv[1])[0] for t in triages]
    return macro_f1(gold, own)


def render(report: dict[str, Any]) -> str:
    """A human-readable report."""
    lines = [
        f"examples: {report['n']}   model: {report['model_version']}   {report['messages_per_second']} msg/s",
        "",
        f"{'':22}{'model':>10}{'baseline':>10}",
    ]
    base = report.get("baseline", {})
    for key in ("category_macro_f1", "urgency_macro_f1"):
        lines.append(f"{key:22}{report[key]:>10.3f}{base.get(key, float('nan')):>10.3f}")
    lines += [
        f"{'category_accuracy':22}{report['category_accuracy']:>10.3f}",
        f"{'urgency_accuracy':22}{report['urgency_accuracy']:>10.3f}",
        f"{'language_accuracy':22}{report['language_accuracy']:>10.3f}",
        f"urgency macro-F1 without rules: {_or_no_rule(report['urgency_macro_f1_without_rules'])}",
        f"category ECE: {report['category_ece']}   needs review: {report['needs_review_share']:.1%}",
        "",
        f"{'language':10}{'n':>6}{'category F1':>14}{'urgency F1':>12}",
    ]
    for lang, row in report["per_language"].items():
        lines.append(f"{lang:10}{row['n']:>6}{row['category_macro_f1']:>14.3f}{row['urgency_macro_f1']:>12.3f}")
    for task in ("category", "urgency"):
        lines += ["", f"{task} confusion (rows: gold, columns: predicted)", *_table(report[f"confusion_{task}"])]
    return "\n".join(lines)


def _or_no_rule(score: float | None) -> str:
    return "same (no rule fired)" if score is None else f"{score:.3f}"


def _table(matrix: dict[str, dict[str, int]]) -> list[str]:
    labels = list(matrix)
    rows = [" " * 22 + "".join(f"{lab[:6]:>7}" for lab in labels)]
    return rows + [f"{gold:22}" + "".join(f"{row[lab]:>7}" for lab in labels) for gold, row in matrix.items()]
