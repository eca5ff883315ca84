"""Padding-aware batch planning and the compact SentencePiece tokenizer (no torch needed)."""

from __future__ import annotations

import random
from itertools import combinations
from pathlib import Path

import pytest

from classify.encoder import plan_batches
from classify.tokenizer import SentencePieceTokenizer, load_tokenizer, sentencepiece_model


def cost(lengths: list[int], batches: list[list[int]], overhead: int) -> int:
    return sum(max(lengths[i] for i in b) * len(b) + overhead for b in batches)


def brute_force(lengths: list[int], max_batch: int, overhead: int) -> int:
    """Cheapest cut of the length-sorted order into consecutive batches, by enumeration."""
    size, best = sorted(lengths), None
    for k in range(len(size)):
        for cuts in combinations(range(1, len(size)), k):
            bounds = [0, *cuts, len(size)]
            spans = list(zip(bounds, bounds[1:]))
            if all(e - s <= max_batch for s, e in spans):
                c = sum(size[e - 1] * (e - s) + overhead for s, e in spans)
                best = c if best is None else min(best, c)
    assert best is not None
    return best


@pytest.mark.parametrize("seed", range(30))
def test_plan_is_a_partition_and_optimal(seed: int) -> None:
    rng = random.Random(seed)
    lengths = [rng.randint(3, 60) for _ in range(rng.randint(1, 9))]
    max_batch, overhead = rng.randint(1, 5), rng.choice([0, 4, 16, 64])
    batches = plan_batches(lengths, max_batch, overhead)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(1 <= len(b) <= max_batch for b in batches)
    assert cost(lengths, batches, overhead) == brute_force(lengths, max_batch, overhead)


def test_plan_beats_fixed_batches_on_a_stage_sized_poll() -> None:
    rng = random.Random(7)
    lengths = [min(128, int(rng.lognormvariate(3.3, 0.5))) for _ in range(256)]
    fixed = sorted(range(256), key=lambda i: lengths[i])
    fixed_batches = [fixed[i:i + 32] for i in range(0, 256, 32)]
    planned = plan_batches(lengths, 32, overhead=16)
    padded = sum(max(lengths[i] for i in b) * len(b) for b in planned)
    assert padded < 1.05 * sum(lengths)  # fixed batches of 32 pad far more
    assert cost(lengths, planned, 16) < cost(lengths, fixed_batches, 16)
    assert plan_batches([], 32) == [] and plan_batches([5, 5, 5], 2, overhead=0) in ([[0], [1, 2]], [[0, 1], [2]])


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sentencepiece = pytest.importorskip("sentencepiece")
    sentencepiece.set_min_log_level(2)
    spec = sentencepiece.SentencePieceNormalizer(norm_map=[("Ａ", "A")]).serialized_normalizer_spec()
    pieces = ["<s>", "<pad>", "</s>", "<unk>", "▁", "▁pul", "▁çıx", "arış", "p", "u", "l", "<mask>"]
    scores = [0.0] * 4 + [-2.0, -3.0, -4.0, -4.0, -8.0, -8.0, -8.0, 0.0]
    directory = tmp_path_factory.mktemp("spm")
    (directory / "sentencepiece.model").write_bytes(sentencepiece_model(pieces, scores, spec))
    return directory


def test_sentencepiece_model_encodes_with_specials_and_truncates(tiny_model: Path) -> None:
    tok = load_tokenizer(str(tiny_model))
    assert isinstance(tok, SentencePieceTokenizer) and tok.pad_id == 1
    assert tok(["pul çıxarış"], 128) == [[0, 5, 6, 7, 2]]
    assert tok(["pul çıxarış pul"], 4) == [[0, 5, 6, 2]]  # at most max_tokens, </s> kept
    assert tok(["Ａpul <mask>"], 128) == [[0, 4, 3, 8, 9, 10, 4, 11, 2]]  # normalised; Ａ→A is unknown


def test_sentencepiece_model_rejects_other_layouts() -> None:
    with pytest.raises(ValueError, match="special pieces"):
        sentencepiece_model(["<unk>", "<s>", "</s>", "<pad>"], [0.0] * 4, b"")


def test_corrupt_sentencepiece_model_is_a_value_error(tmp_path: Path) -> None:
    pytest.importorskip("sentencepiece")
    (tmp_path / "sentencepiece.model").write_bytes(b"\x0a\x03abc not a model")
    with pytest.raises(ValueError, match="cannot load"):
        load_tokenizer(str(tmp_path))
