"""Labelled examples: the JSONL format of the training data, the dev split and ``frontdesk eval``.

One JSON object per line with ``text``, ``subject`` (may be empty), ``channel`` and gold
``category``, ``urgency``, ``language``; other fields are ignored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from classify.base import CATEGORIES, URGENCIES, TextItem
from frontdesk.errors import ConfigError

TRAIN_DIR = Path(__file__).parent / "data" / "train"
DEV_FILE = Path(__file__).parent / "data" / "dev.jsonl"
# Written 2026-12-04 by writers who never saw the training data or the dev split; evaluated, never
# trained or tuned on (see README, Triage model).
HOLDOUT_FILE = Path(__file__).parent / "data" / "holdout.jsonl"


@dataclass(frozen=True, slots=True)
class Example:
    text: str
    subject: str
    channel: str
    category: str
    urgency: str
    language: str

    @property
    def item(self) -> TextItem:
        return TextItem(self.text, self.subject, self.channel)


def read_examples(path: Path) -> list[Example]:
    """Parse a labelled JSONL file. Raises ConfigError naming the line of the first bad record."""
    out = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                ex = Example(str(row["text"]), str(row.get("subject") or ""), str(row.get("channel") or "email"),
                             row["category"], row["urgency"], row["language"])
            except (ValueError, KeyError, TypeError) as exc:
                raise ConfigError(f"{path}:{number}: not a labelled example ({exc})") from exc
            if ex.category not in CATEGORIES or ex.urgency not in URGENCIES:
                raise ConfigError(f"{path}:{number}: unknown label {ex.category!r}/{ex.urgency!r}")
            out.append(ex)
    return out


def training_files() -> list[Path]:
    return sorted(TRAIN_DIR.glob("*.jsonl"))
