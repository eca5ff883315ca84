"""The shipped training data, dev split and holdout: valid labels, full coverage, and no evaluation
text in training.

The dev split and the three holdouts are the proxies for "data the developers never saw", so no training
example may be the same message or a close paraphrase of one of theirs (character 5-gram Jaccard
similarity above 0.5).
"""

from __future__ import annotations

import collections
import json

from classify.base import CATEGORIES, URGENCIES
from pathlib import Path

import pytest

from classify.data import (DEV_FILE, HOLDOUT2_FILE, HOLDOUT3_FILE, HOLDOUT4_FILE, HOLDOUT_FILE, read_examples,
                           training_files)

LANGUAGES = {"az", "en", "ru", "tr"}
CHANNELS = {"email", "chat", "social"}
NEAR_DUPLICATE = 0.5


def grams(text: str) -> frozenset[str]:
    flat = " ".join(text.lower().split())
    return frozenset(flat[i : i + 5] for i in range(max(1, len(flat) - 4)))


def test_every_training_and_dev_line_has_valid_labels_and_every_label_is_covered() -> None:
    files = training_files()
    assert len(files) >= 4
    train = [e for path in files for e in read_examples(path)]
    dev, holdout, holdout2 = read_examples(DEV_FILE), read_examples(HOLDOUT_FILE), read_examples(HOLDOUT2_FILE)
    holdout3, holdout4 = read_examples(HOLDOUT3_FILE), read_examples(HOLDOUT4_FILE)
    assert len(train) >= 1500 and len(dev) >= 500 and len(holdout) >= 400 and len(holdout2) >= 1100
    assert len(holdout3) >= 1200 and len(holdout4) >= 1150
    for examples in (train, dev, holdout, holdout2, holdout3, holdout4):
        assert {e.category for e in examples} == set(CATEGORIES)
        assert {e.urgency for e in examples} == set(URGENCIES)
        assert {e.language for e in examples} == LANGUAGES
        assert {e.channel for e in examples} == CHANNELS
    counts = collections.Counter((e.language, e.category) for e in train)
    assert min(counts[(lang, cat)] for lang in LANGUAGES for cat in CATEGORIES) >= 10, counts


def test_the_training_files_declare_their_script_variants() -> None:
    variants = collections.Counter()
    for path in training_files():
        for line in path.read_text(encoding="utf-8").splitlines():
            variants[json.loads(line).get("variant")] += 1
    for needed in ("az-latn", "az-latn-noascii", "az-cyrl", "ru-cyrl", "ru-latn", "tr", "tr-noascii", "en", "mixed"):
        assert variants[needed] >= 30, (needed, variants)


@pytest.mark.parametrize("held_out", [DEV_FILE, HOLDOUT_FILE, HOLDOUT2_FILE, HOLDOUT3_FILE, HOLDOUT4_FILE],
                         ids=["dev", "holdout", "holdout2", "holdout3", "holdout4"])
def test_no_evaluation_text_is_in_the_training_data_not_even_paraphrased(held_out: Path) -> None:
    dev = [grams(e.text) for e in read_examples(held_out)]
    index: dict[str, list[int]] = collections.defaultdict(list)
    for i, shingles in enumerate(dev):
        for gram in shingles:
            index[gram].append(i)
    for path in training_files():
        for example in read_examples(path):
            shingles = grams(example.text)
            shared = collections.Counter(i for gram in shingles for i in index.get(gram, ()))
            for i, n in shared.items():
                similarity = n / (len(shingles) + len(dev[i]) - n)
                assert similarity <= NEAR_DUPLICATE, (path.name, example.text[:120], round(similarity, 2))


def test_the_extra_data_is_labelled_and_no_evaluation_text_either() -> None:
    """``classify/data/extra/`` holds labelled data the shipped model was not trained on (README:
    Triage model); it must be ready to train on: valid labels, no dev or holdout (either) paraphrase."""
    extra = sorted((DEV_FILE.parent / "extra").glob("*.jsonl"))
    assert extra
    examples = [e for path in extra for e in read_examples(path)]
    assert {e.category for e in examples} == set(CATEGORIES) and {e.urgency for e in examples} == set(URGENCIES)
    held = [grams(e.text) for path in (DEV_FILE, HOLDOUT_FILE, HOLDOUT2_FILE, HOLDOUT3_FILE, HOLDOUT4_FILE)
            for e in read_examples(path)]
    for example in examples:
        shingles = grams(example.text)
        for other in held:
            shared = len(shingles & other)
            assert shared / (len(shingles) + len(other) - shared) <= NEAR_DUPLICATE, example.text[:120]


@pytest.mark.parametrize(("blind_file", "earlier"), [
    (HOLDOUT3_FILE, (DEV_FILE, HOLDOUT_FILE, HOLDOUT2_FILE)),
    (HOLDOUT4_FILE, (DEV_FILE, HOLDOUT_FILE, HOLDOUT2_FILE, HOLDOUT3_FILE)),
], ids=["holdout3", "holdout4"])
def test_a_later_holdout_paraphrases_no_other_labelled_text(blind_file: Path, earlier: tuple[Path, ...]) -> None:
    """A later model may train on the earlier holdouts (README: Triage model), so a later one must be
    free of their texts and the dev split's, as of the training and ``extra/`` data (tests above)."""
    blind = [grams(e.text) for e in read_examples(blind_file)]
    index: dict[str, set[int]] = collections.defaultdict(set)
    for i, shingles in enumerate(blind):
        for gram in shingles:
            index[gram].add(i)
    for path in earlier:
        for example in read_examples(path):
            shingles = grams(example.text)
            shared = collections.Counter(i for gram in shingles for i in index.get(gram, ()))
            for i, n in shared.items():
                assert n / (len(shingles) + len(blind[i]) - n) <= NEAR_DUPLICATE, (path.name, example.text[:120])
