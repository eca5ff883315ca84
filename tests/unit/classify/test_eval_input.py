"""The labelled JSONL that ``frontdesk eval`` and ``frontdesk train`` read, and eval's macro-F1:
every input that is not a labelled example is a one-line error naming the file and line (exit 2),
never a traceback; the harmless variations of the format are read as the data they hold."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sklearn.metrics import f1_score
from typer.testing import CliRunner

from classify.data import Example, read_examples
from classify.evaluate import macro_f1
from classify.train import split
from frontdesk.cli import app
from frontdesk.errors import ConfigError

ROW = {"text": "Pulum gəlmədi", "subject": "", "channel": "chat", "category": "payments", "urgency": "high",
       "language": "az"}


def jsonl(path: Path, *rows: object) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows) + "\n",
                    encoding="utf-8")
    return path


def test_a_bom_crlf_line_ends_and_blank_lines_are_read_as_the_examples_they_hold(tmp_path: Path) -> None:
    path = tmp_path / "windows.jsonl"
    lines = [json.dumps(ROW, ensure_ascii=False), "", "  ", json.dumps({**ROW, "urgency": "low"}, ensure_ascii=False)]
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode("utf-8") + b"\r\n")
    assert [e.urgency for e in read_examples(path)] == ["high", "low"]


def test_a_null_or_missing_subject_or_channel_is_empty_or_email_and_other_fields_are_ignored(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "loose.jsonl", {**ROW, "subject": None, "channel": None},
                 {k: v for k, v in ROW.items() if k not in ("subject", "channel")}, {**ROW, "extra": {"a": [1]}})
    assert [(e.subject, e.channel) for e in read_examples(path)] == [("", "email"), ("", "email"), ("", "chat")]


def test_a_gold_language_tag_is_read_as_its_language_as_the_taxonomy_says(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "tags.jsonl", {**ROW, "language": "az-Cyrl"}, {**ROW, "language": "AZ"},
                 {**ROW, "language": "und"}, {**ROW, "language": "ru_RU"})
    assert [e.language for e in read_examples(path)] == ["az", "az", "und", "ru"]


@pytest.mark.parametrize(("line", "reason"), [
    ({**ROW, "text": None}, "text"),
    ({**ROW, "language": None}, "language"),
    ({**ROW, "language": ""}, "language"),
    ({k: v for k, v in ROW.items() if k != "urgency"}, "urgency"),
    ({**ROW, "category": "refunds"}, "category 'refunds'"),
    ({**ROW, "urgency": "URGENT"}, "urgency 'URGENT'"),
    ([1, 2], "JSON object"),
    ('{"text": ', "JSON"),
])
def test_a_bad_line_is_an_error_naming_the_file_the_line_and_the_field(tmp_path: Path, line: object,
                                                                       reason: str) -> None:
    path = jsonl(tmp_path / "bad.jsonl", ROW, line, ROW)
    with pytest.raises(ConfigError, match=rf"bad\.jsonl:2: .*{reason}"):
        read_examples(path)


def test_a_line_that_is_not_utf8_is_an_error_naming_its_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes((json.dumps(ROW) + "\n").encode() * 2 + json.dumps({**ROW, "text": "café"},
                                                                        ensure_ascii=False).encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.jsonl:3: not UTF-8"):
        read_examples(path)


@pytest.mark.parametrize("content", ["", "\n \r\n"], ids=["empty", "blank lines"])
def test_eval_of_a_file_without_examples_exits_2_with_the_reason_and_prints_nothing(tmp_path: Path,
                                                                                   content: str) -> None:
    path = tmp_path / "none.jsonl"
    path.write_text(content, encoding="utf-8")
    result = CliRunner().invoke(app, ["eval", str(path), "--json"])
    assert (result.exit_code, result.stdout) == (2, ""), result.exception
    assert "no labelled examples" in result.stderr and "none.jsonl" in result.stderr


@pytest.mark.parametrize("command", [["eval", "{}", "--json"], ["train", "--data", "{}"]])
def test_a_missing_or_unreadable_file_exits_2_with_the_reason(tmp_path: Path, command: list[str]) -> None:
    for path in (tmp_path / "missing.jsonl", tmp_path):
        args = [a.format(path) for a in command] + (["--out", str(tmp_path / "m")] if command[0] == "train" else [])
        result = CliRunner().invoke(app, args)
        assert (result.exit_code, result.stdout) == (2, ""), result.exception
        assert f"cannot read {path}" in result.stderr


def test_macro_f1_averages_the_labels_of_gold_and_predictions_as_sklearn_does() -> None:
    gold, pred = ["a", "a", "b"], ["a", "a", "c"]  # "c" predicted, never gold: its F1 is 0 and counts
    assert macro_f1(gold, pred) == round(f1_score(gold, pred, average="macro", zero_division=0), 4) == 0.3333
    assert macro_f1(["a", "b"], ["a", "b"]) == 1.0  # labels absent from both do not count


def example(category: str, urgency: str) -> Example:
    return Example(f"{category} {urgency}", "", "chat", category, urgency, "en")


def test_the_split_fits_the_heads_on_every_label_of_each_task() -> None:
    """A label with one example (or whose examples all went to calibration) must be in *fit*: the
    heads cannot score a calibration label they were not fitted on."""
    examples = [example("payments", "high") for _ in range(12)] + [example("spam", "low")]
    examples += [example("general", "critical"), example("general", "normal")]
    for seed in range(8):  # some seeds draw the one critical message for calibration
        fit, calib = split(examples, seed=seed)
        assert sorted(map(id, fit + calib)) == sorted(map(id, examples))
        assert {e.category for e in fit} == {"payments", "spam", "general"}
        assert {e.urgency for e in fit} == {"high", "low", "critical", "normal"}
        assert calib and {e.category for e in calib} <= {"payments", "general"}


def test_train_on_one_language_exits_2_with_the_reason_before_loading_the_encoder(tmp_path: Path) -> None:
    rows = [{**ROW, "language": "en", "category": c, "urgency": u, "text": f"{c} {u} {i}"}
            for i in range(3) for c, u in (("payments", "high"), ("general", "low"))]
    data = jsonl(tmp_path / "en.jsonl", *rows)
    result = CliRunner().invoke(app, ["train", "--data", str(data), "--out", str(tmp_path / "m"), "--epochs", "0"])
    assert (result.exit_code, result.stdout) == (2, ""), result.exception
    assert "fewer than two language labels" in result.stderr and not (tmp_path / "m").exists()
