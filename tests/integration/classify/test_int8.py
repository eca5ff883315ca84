"""int8 Linear layers with a scale per token (classify/int8.py): close to fp32, and a token's quantisation
never depends on the other tokens or messages of its batch (PyTorch's dynamic quantisation's does)."""

from __future__ import annotations

import numpy as np
import pytest

from classify.encoder import E5Encoder, resolve_model
from classify.int8 import int_mm_available, quantize_linears, row_int8_linear
from classify.settings import ClassifierSettings

torch = pytest.importorskip("torch", reason="the model extra is not installed")
pytestmark = pytest.mark.skipif(not int_mm_available(), reason="this torch build has no torch._int_mm")

TEXTS = ["Вывод 500 AZN не пришёл на карту уже три дня", "Hesabıma kimsə girib, şifrəni dəyişiblər",
         "My bet on Qarabağ was settled as lost although they won 2-1. I want this checked.",
         "Para çekme talebim 3 gündür beklemede, lütfen yardım edin", "ok"]


def test_a_row_int8_linear_is_close_to_its_float_layer() -> None:
    gen = torch.Generator().manual_seed(5)
    linear = torch.nn.Linear(64, 48).requires_grad_(False)
    x = torch.randn(3, 7, 64, generator=gen)
    exact, approx = linear(x), row_int8_linear(linear)(x)
    assert approx.shape == exact.shape == (3, 7, 48)
    assert float((approx - exact).norm() / exact.norm()) < 0.02
    no_bias = torch.nn.Linear(64, 48, bias=False).requires_grad_(False)
    assert float((row_int8_linear(no_bias)(x) - no_bias(x)).norm() / no_bias(x).norm()) < 0.02


def test_a_rows_output_is_the_same_alone_and_beside_an_outlier() -> None:
    gen = torch.Generator().manual_seed(6)
    layer = row_int8_linear(torch.nn.Linear(32, 16))
    row = torch.randn(1, 32, generator=gen)
    batch = torch.cat([row, 1000 * torch.randn(4, 32, generator=gen), torch.zeros(1, 32)])
    assert torch.equal(layer(batch)[:1], layer(row)), "integer products: exactly the same"
    assert torch.equal(layer(batch)[5], layer.bias), "a zero row gives the bias, not NaN"


def test_quantize_linears_spares_the_layers_of_the_given_input_width() -> None:
    net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.GELU(), torch.nn.Linear(32, 8), torch.nn.Linear(8, 4))
    assert quantize_linears(net, skip_in_features=32) == 2
    assert [type(m).__name__ for m in net] == ["RowInt8Linear", "GELU", "Linear", "RowInt8Linear"]


def test_a_message_embeds_the_same_alone_or_in_any_batch() -> None:
    """Mostly bit for bit: the float attention over padding can still tip one rounding now and then
    (on 300 dev messages 280 were identical, none changed label); per-batch scales left none identical."""
    settings = ClassifierSettings()
    encoder = E5Encoder(resolve_model(settings.encoder, settings.cache_dir), quantize="int8",
                        embeddings=settings.embeddings)
    assert encoder.name.endswith(":int8")
    together = encoder.encode(TEXTS)
    alone = np.vstack([encoder.encode([text]) for text in TEXTS])
    reversed_ = encoder.encode(TEXTS[::-1])[::-1]
    for other in (alone, reversed_):
        assert sum(np.array_equal(a, b) for a, b in zip(together, other)) >= 3
        assert float(np.min(np.sum(together * other, axis=1))) > 0.9995


def test_the_shipped_model_labels_a_message_the_same_alone_and_in_a_batch() -> None:
    """What ``frontdesk classify-text`` says about a message is what the stage said in its batch."""
    from classify.base import TextItem
    from classify.model import TriageModel

    model = TriageModel(ClassifierSettings())
    items = [TextItem(text, "", channel) for text, channel in zip(TEXTS, ["email", "chat", "social", "chat", "chat"])]
    together = model.classify(items)
    for item, batched in zip(items, together, strict=True):
        [alone] = model.classify([item])
        assert (alone.category, alone.urgency, alone.language, alone.needs_review) == \
            (batched.category, batched.urgency, batched.language, batched.needs_review)
        assert alone.confidence == pytest.approx(batched.confidence, abs=0.03)


def test_the_model_streams_its_encoder_batches_with_the_labels_of_classify() -> None:
    """The stage publishes each encoder batch's triages as it is done (``classify_stream``): the
    chunks cover every message once, and each triage is the one ``classify`` gives the batch."""
    from classify.base import TextItem
    from classify.data import DEV_FILE, read_examples
    from classify.model import TriageModel

    model = TriageModel(ClassifierSettings(batch_size=8))
    items: list[TextItem] = [e.item for e in read_examples(DEV_FILE)[:40]]
    chunks = list(model.classify_stream(items))
    assert len(chunks) >= 5 and all(len(c) <= 8 for c, _ in chunks)
    assert sorted(n for c, _ in chunks for n in c) == list(range(len(items)))
    streamed = {n: t for c, ts in chunks for n, t in zip(c, ts, strict=True)}
    assert [streamed[n] for n in range(len(items))] == model.classify(items)
