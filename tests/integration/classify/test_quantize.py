"""The int8 default (a scale per token, classify/int8.py), PyTorch's dynamic int8 where a torch build has
no ``torch._int_mm``, and fp32 where it has neither."""

from __future__ import annotations

import numpy as np
import pytest

import classify.encoder
import classify.int8
from classify.base import TextItem
from classify.model import TriageModel
from classify.settings import ClassifierSettings

pytest.importorskip("torch", reason="the model extra is not installed")
ITEMS = [TextItem(subject="Вывод", text="Вывод 500 AZN не пришёл на карту уже три дня", channel="email"),
         TextItem(subject="", text="Hesabıma kimsə girib, şifrəni dəyişiblər", channel="chat")]


def test_int8_is_the_default_and_agrees_with_fp32() -> None:
    int8, fp32 = TriageModel(ClassifierSettings()), TriageModel(ClassifierSettings(quantize="none"))
    assert int8.model_version.endswith("+int8") and fp32.model_version.endswith("+none")
    cosine = (int8.embed(ITEMS) * fp32.embed(ITEMS)).sum(1)
    assert np.all(cosine > 0.95), cosine
    assert [t.category for t in int8.classify(ITEMS)] == [t.category for t in fp32.classify(ITEMS)]


def test_without_int_mm_the_encoder_uses_dynamic_int8(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(classify.int8, "int_mm_available", lambda: False)
    model = TriageModel(ClassifierSettings(quantize="int8"))
    assert model.model_version.endswith("+int8-dynamic")
    assert any("quantized" in type(m).__module__ for m in model.encoder.model.modules())
    assert [t.category for t in model.classify(ITEMS)] == ["payments", "security"]


def test_without_an_int8_engine_the_encoder_stays_fp32(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(classify.int8, "int_mm_available", lambda: False)
    monkeypatch.setattr(classify.encoder, "int8_available", lambda: False)
    model = TriageModel(ClassifierSettings(quantize="int8"))
    assert model.model_version.endswith("+none")
    assert not any("quantized" in type(m).__module__ for m in model.encoder.model.modules())
    assert [t.category for t in model.classify(ITEMS)] == ["payments", "security"]
