"""The model's command-line contract as other tools use it, on the real model: ``train`` with two
``--data`` files into a directory of its own, ``eval --json`` of that directory on loosely formatted
input, ``classify-text`` of a message too long for one argument."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from classify.data import DEV_FILE, training_files

pytest.importorskip("torch", reason="the model extra is not installed")
FRONTDESK = [sys.executable, "-m", "frontdesk"]


def run_cli(*args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FRONTDESK, *args], capture_output=True, text=True, timeout=600, input=stdin,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "FRONTDESK_CLASSIFIER_THREADS": "1", **(env or {})})


def training_sample(a: Path, b: Path) -> None:
    """Two examples of each category but spam in each language (``a``), and one spam message (``b``):
    a label with a single example."""
    kept: dict[tuple[str, str], list[str]] = defaultdict(list)
    spam: list[str] = []
    for source in training_files():
        for line in source.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if row["category"] == "spam":
                spam = spam or [line]
            elif len(kept[row["language"], row["category"]]) < 2:
                kept[row["language"], row["category"]].append(line)
    a.write_text("\n".join(line for lines in kept.values() for line in lines) + "\n", encoding="utf-8")
    b.write_text(spam[0] + "\n", encoding="utf-8")


def messy_english_sample(path: Path) -> int:
    """20 English dev messages as a Windows tool might write them, with the optional fields loose."""
    rows = [json.loads(line) for line in DEV_FILE.read_text(encoding="utf-8").splitlines()]
    rows = [r for r in rows if r["language"] == "en"][::7][:20]
    rows[0]["subject"] = None
    del rows[1]["subject"], rows[2]["channel"]
    rows[3]["channel"], rows[4]["language"] = "fax", "en-GB"
    lines = [json.dumps({**r, "note": {"x": [1]}}, ensure_ascii=False) for r in rows]
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines[:10] + ["", "  "] + lines[10:]).encode("utf-8") + b"\r\n")
    return len(rows)


def test_train_two_files_then_eval_json_of_the_trained_directory(tmp_path: Path) -> None:
    a, b, out = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "model"
    training_sample(a, b)
    trained = run_cli("train", "--data", str(a), "--data", str(b), "--out", str(out), "--epochs", "0")
    assert trained.returncode == 0, trained.stderr[-2000:]
    card = json.loads((out / "card.json").read_text(encoding="utf-8"))
    assert card["data"]["files"] == [str(a), str(b)] and "spam" in card["heads"]["category"]["classes"]

    sample = tmp_path / "dev.jsonl"
    n = messy_english_sample(sample)
    result = run_cli("eval", str(sample), "--json", env={"FRONTDESK_CLASSIFIER_MODEL_DIR": str(out)})
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)  # the whole of stdout is one JSON object
    assert report["n"] == n and report["model_version"].startswith(card["version"])
    assert list(report["per_language"]) == ["en"] and report["per_language"]["en"]["n"] == n
    scores = [report[k] for k in ("category_macro_f1", "urgency_macro_f1", "language_accuracy")]
    scores += [report["per_language"]["en"][k] for k in ("category_macro_f1", "urgency_macro_f1")]
    scores += [report["baseline"][k] for k in ("category_macro_f1", "urgency_macro_f1")]
    assert all(isinstance(s, float) and 0 <= s <= 1 for s in scores), scores
    assert report["messages_per_second"] > 0


def test_classify_text_reads_a_message_longer_than_an_argument_from_stdin() -> None:
    text = "Someone hacked my account and withdrew 500 AZN, it was not me! " * 16_000  # ~1 MB
    result = run_cli("classify-text", "-", "--json", stdin=text)
    assert result.returncode == 0, result.stderr[-2000:]
    triage = json.loads(result.stdout)
    assert (triage["category"], triage["urgency"], triage["language"]) == ("security", "critical", "en")


@pytest.mark.parametrize("text", ["", "   \n\t "])
def test_a_message_without_text_needs_review(text: str) -> None:
    """An attachment-only mail or a bare sticker: the labels are a guess, so a person must look."""
    result = run_cli("classify-text", text, "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["needs_review"] is True
