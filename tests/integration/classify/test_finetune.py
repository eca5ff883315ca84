"""Fine-tuning end to end on a small sample: what ``frontdesk train`` writes is what loads.

Full fine-tuning ships an int8 delta on the base encoder (``classify/delta.py``); LoRA ships
adapters. Either way the loaded encoder must be the one the heads were fitted on, and a model
directory holds exactly one kind of tuning file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from classify.base import TextItem
from classify.delta import apply_delta, load_delta, roundtrip, save_delta
from classify.encoder import E5Encoder, resolve_model
from classify.finetune import ADAPTERS, DELTA, TuneConfig, apply_tuning, load_tuning
from classify.model import CARD, TriageModel, tuning_of
from classify.settings import ClassifierSettings
from classify.text import model_input, transliterate_az_cyrillic
from frontdesk.errors import ClassifierError, ConfigError
from tests.integration.classify.test_train import sample

torch = pytest.importorskip("torch", reason="the model extra is not installed")
ITEMS = [TextItem("Вывод 500 AZN не пришёл на карту уже три дня", "Вывод", "email"),
         TextItem("Hesabıma kimsə girib, şifrəni dəyişiblər", "", "chat")]


def test_the_delta_format_keeps_changes_to_within_half_a_percent_of_each_rows_largest() -> None:
    gen = torch.Generator().manual_seed(3)
    delta = {"w": torch.randn(64, 32, generator=gen) * 1e-3, "b": torch.randn(64, generator=gen) * 1e-3,
             "zero": torch.zeros(4, 8)}
    back = roundtrip(delta)
    assert set(back) == set(delta)
    bound = delta["w"].abs().amax(dim=1, keepdim=True) / 200  # half a step (1/254), plus the fp16 scale's rounding
    assert torch.all((back["w"] - delta["w"]).abs() <= bound)
    assert torch.equal(back["b"], delta["b"])
    assert torch.equal(back["zero"], delta["zero"])


def test_a_saved_delta_loads_as_its_roundtrip_and_only_fits_its_own_encoder(tmp_path: Path) -> None:
    net = torch.nn.Sequential(torch.nn.Linear(8, 4))
    before = net[0].weight.detach().clone()
    delta = {"0.weight": torch.full((4, 8), 0.5), "0.bias": torch.full((4,), -0.25)}
    save_delta(tmp_path / DELTA, delta)
    loaded = load_delta(tmp_path / DELTA)
    assert all(torch.equal(loaded[k], roundtrip(delta)[k]) for k in delta)
    assert apply_delta(net, loaded) == 2 and torch.equal(net[0].weight, before + loaded["0.weight"])
    assert torch.allclose(loaded["0.weight"], torch.full((4, 8), 0.5), atol=0.5 / 200)
    with pytest.raises(ClassifierError, match="does not fit"):
        apply_delta(net, {"0.weight": torch.zeros(8, 4)})
    with pytest.raises(ClassifierError, match="does not fit"):
        apply_delta(net, {"1.weight": torch.zeros(4, 8)})
    (tmp_path / "broken").write_bytes(b"not safetensors")
    with pytest.raises(ClassifierError, match="cannot load"):
        load_delta(tmp_path / "broken")


@pytest.mark.parametrize(("method", "shipped", "stale", "tensors"),
                         [("full", DELTA, ADAPTERS, 16 * 12),  # every weight and bias of the 12 layers
                          ("lora", ADAPTERS, DELTA, 6 * 12)])  # 6 projections a layer
def test_fine_tuning_ships_the_encoder_its_heads_were_fitted_on(tmp_path: Path, method: str, shipped: str,
                                                                 stale: str, tensors: int) -> None:
    from classify.train import train

    out = tmp_path / "model"
    settings = ClassifierSettings(model_dir=out, quantize="none")  # type: ignore[call-arg]
    out.mkdir()
    (out / stale).write_bytes(b"left over from an earlier run with the other method")
    card = train([sample(tmp_path / "train.jsonl", per_group=1)], out, settings, TuneConfig(method=method, epochs=1))
    assert card["tuning"]["method"] == method and card["version"].startswith(f"e5s-{method}-")
    assert card["finetune"]["tuned_tensors"] == tensors
    assert (out / shipped).is_file() and not (out / stale).exists()
    assert (out / shipped).stat().st_mode & 0o777 == (out / CARD).stat().st_mode & 0o777, "readable like the card"
    assert json.loads((out / CARD).read_text(encoding="utf-8"))["ngram_input"] == "transliterated"

    model = TriageModel(settings)
    base = E5Encoder(resolve_model(settings.encoder, settings.cache_dir), embeddings=settings.embeddings)
    apply_tuning(base.model, load_tuning(out, card["tuning"]), card["tuning"])
    texts = [model_input(i.subject, i.text) for i in ITEMS]
    assert np.allclose(model.embed(ITEMS), base.encode(texts), atol=1e-5)
    untuned = E5Encoder(resolve_model(settings.encoder, settings.cache_dir), embeddings=settings.embeddings)
    assert not np.allclose(model.embed(ITEMS), untuned.encode(texts), atol=1e-3), "the tuning changed nothing"

    again = tmp_path / "heads-again"
    refit = train([tmp_path / "train.jsonl"], again, settings, TuneConfig(epochs=3), encoder_from=out)
    assert (again / shipped).read_bytes() == (out / shipped).read_bytes(), "the encoder is reused as shipped"
    assert refit["tuning"] == card["tuning"] and refit["encoder_from"]["version"] == card["version"]
    assert refit["version"].startswith(card["version"] + "-heads")
    assert np.allclose(TriageModel(settings.model_copy(update={"model_dir": again})).embed(ITEMS), model.embed(ITEMS),
                       atol=1e-6)
    with pytest.raises(ConfigError, match="other data"):
        train([sample(tmp_path / "other.jsonl", per_group=2)], tmp_path / "x", settings, TuneConfig(),
              encoder_from=out)


def test_azerbaijani_cyrillic_is_scored_as_its_latin_transliteration(tmp_path: Path) -> None:
    """Both the encoder and the n-gram heads read the transliteration, so the scores agree."""
    from classify.train import train

    out = tmp_path / "model"
    settings = ClassifierSettings(model_dir=out, quantize="none")  # type: ignore[call-arg]
    train([sample(tmp_path / "train.jsonl", per_group=2)], out, settings, TuneConfig(epochs=0))
    model = TriageModel(settings)
    text = "Һесабымдан 200 манат чыхарыш етмишәм, ҝәлмәјиб"
    cyrillic, latin = model.classify([TextItem(text, "", "chat"), TextItem(transliterate_az_cyrillic(text), "", "chat")])
    assert cyrillic.scores["category"] == latin.scores["category"]
    assert cyrillic.scores["urgency"] == latin.scores["urgency"]


def test_a_card_naming_a_missing_tuning_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ClassifierError, match="missing"):
        load_tuning(tmp_path, {"method": "full"})
    with pytest.raises(ConfigError, match="unknown fine-tuning method"):
        TuneConfig(method="adapters")


def test_cards_from_before_full_fine_tuning_still_name_their_lora_settings() -> None:
    assert tuning_of({"lora": {"rank": 8, "alpha": 16.0}}) == {"rank": 8, "alpha": 16.0, "method": "lora"}
    assert tuning_of({"tuning": None, "lora": None}) is None
    assert tuning_of({"tuning": {"method": "full", "epochs": 6}})["method"] == "full"
    assert TuneConfig().lr == 8e-5 and TuneConfig(method="lora").lr == 5e-4


def test_layer_decay_gives_each_lower_layer_a_smaller_share_of_the_learning_rate() -> None:
    from transformers import BertConfig, BertModel

    from classify.finetune import layer_groups

    model = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                                 intermediate_size=32))
    trainable = {id(p) for n, p in model.named_parameters() if p.requires_grad_(".layer." in n).requires_grad}
    flat = layer_groups(model, TuneConfig(lr=1e-4))
    decayed = layer_groups(model, TuneConfig(lr=1e-4, layer_decay=0.5))
    for groups in (flat, decayed):
        assert sorted(id(p) for g in groups for p in g["params"]) == sorted(trainable), "every trainable weight once"
    assert [g["lr"] for g in flat] == [1e-4] * 3
    assert [g["lr"] for g in decayed] == pytest.approx([0.25e-4, 0.5e-4, 1e-4]), "bottom layer first"
    for bad in (0.0, 1.5):
        with pytest.raises(ConfigError, match="layer_decay"):
            TuneConfig(layer_decay=bad)
