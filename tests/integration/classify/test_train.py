"""``classify.train.train`` end to end on a small sample (frozen encoder: ``epochs=0``): the model
directory it writes loads and classifies, the card says what was fitted, and the heads were refitted
on fit + calibration data after the temperatures and the mix were chosen."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from classify.base import CATEGORIES, TextItem
from classify.data import read_examples, training_files
from classify.finetune import TuneConfig
from classify.model import CARD, HEADS, TriageModel, load_heads
from classify.settings import ClassifierSettings
from classify.text import compose
from classify.train import split, train


def sample(path: Path, per_group: int = 4) -> Path:
    """A small training file with every category in every language (every class the heads need)."""
    kept: dict[tuple[str, str], list[str]] = defaultdict(list)
    for source in training_files():
        for line in source.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if len(kept[row["language"], row["category"]]) < per_group:
                kept[row["language"], row["category"]].append(line)
    path.write_text("\n".join(line for lines in kept.values() for line in lines) + "\n", encoding="utf-8")
    return path


def test_train_writes_a_loadable_model_with_heads_fitted_on_all_examples(tmp_path: Path) -> None:
    data = sample(tmp_path / "train.jsonl")
    out = tmp_path / "model"
    settings = ClassifierSettings(model_dir=out)  # type: ignore[call-arg]
    card = train([data], out, settings, TuneConfig(epochs=0))
    examples = read_examples(data)
    fit, calib = split(examples, seed=TuneConfig().seed)
    assert card["data"]["examples"] == len(examples) == len(fit) + len(calib) and card["tuning"] is None
    assert json.loads((out / CARD).read_text(encoding="utf-8"))["version"] == card["version"]
    assert all(card["heads"][t]["fitted_on"] == "fit + calibration" for t in ("category", "urgency"))
    vocabulary = load_heads(out, HEADS)["category"].ngram.estimator[0].transformer_list[0][1].vocabulary_
    only_in_calib = ({w for e in calib for w in e.text.lower().split() if w.isalpha() and len(w) > 1}
                     - {w for e in fit for w in f"{e.subject} {e.text}".lower().split()})
    assert only_in_calib and only_in_calib <= set(vocabulary), "the n-gram head learned the calibration texts too"
    model = TriageModel(settings)
    [triage] = model.classify([TextItem("Withdrawal of 300 AZN pending for 5 days", "", "chat")])
    assert triage.category in CATEGORIES and 0 < triage.confidence["category"] <= 1


def test_the_language_model_reads_the_heads_features_and_decides_as_if_it_had_its_own(tmp_path: Path) -> None:
    out = tmp_path / "model"
    settings = ClassifierSettings(model_dir=out)  # type: ignore[call-arg]
    train([sample(tmp_path / "train.jsonl")], out, settings, TuneConfig(epochs=0))
    bundle = load_heads(out, HEADS)
    assert bundle["language"][0] is bundle["category"].ngram.estimator[0], "one feature step, stored once"
    model = TriageModel(settings)
    items = [TextItem(t, "", "chat") for t in ("Pul hələ gəlmədi, 3 gündür gözləyirəm", "pul cixmir 3 gundur",
                                                 "Вывод не пришёл", "vyvod ne prishel uzhe 3 dnya",
                                                 "My withdrawal is still pending", "Para çekme talebim onaylanmadı",
                                                 "Һесабым бағланыб", "12345 !!!")]
    by_features = [(t.language, t.confidence["language"]) for t in model.classify(items)]
    alone = model.language.identify([compose(i.subject, i.text) for i in items])
    assert by_features == [(lang, round(conf, 4)) for lang, conf in alone]
