"""The shipped triage model: fine-tuned e5 encoder with calibrated heads.

A model directory holds ``card.json`` (what was trained on what, and how it scored),
``encoder_delta.safetensors`` (fine-tuned − base encoder weights, :mod:`classify.delta`; or
``adapters.safetensors``, LoRA adapters, for ``--method lora``), ``heads.joblib`` (the
category/urgency heads with their temperatures and the language n-gram model) and
``baseline.joblib`` (the TF-IDF baseline, loaded by ``frontdesk eval`` only). Model directories
are trusted artifacts: the ``.joblib`` files are pickles, so only load directories you built or
shipped yourself.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from classify.base import Classifier, TextItem
from classify.language import LanguageIdentifier
from classify.ngrams import NgramFeatures
from classify.rules import apply_rules
from classify.settings import ClassifierSettings
from classify.text import compose, model_input, transliterate_az_cyrillic
from frontdesk.errors import ClassifierError
from frontdesk.messages import Triage

log = logging.getLogger(__name__)

CARD, HEADS, BASELINE = "card.json", "heads.joblib", "baseline.joblib"
# What the n-gram heads of models trained since 2026-12-06 read; older cards lack it: "composed".
NGRAM_INPUT = "transliterated"


@dataclass
class Head:
    """A linear classifier whose scores are divided by a fitted temperature before softmax."""

    estimator: Any
    temperature: float = 1.0

    @property
    def classes(self) -> list[str]:
        return [str(c) for c in self.estimator.classes_]

    def proba(self, x: Any) -> np.ndarray:
        return self._softmax(self.estimator.decision_function(x))

    def proba_from_features(self, features: Any) -> np.ndarray:
        """For a pipeline head: skip the feature step (already computed by the caller)."""
        return self._softmax(self.estimator[-1].decision_function(features))

    def _softmax(self, raw: Any) -> np.ndarray:
        scores = np.asarray(raw, dtype=np.float64) / self.temperature
        scores -= scores.max(axis=1, keepdims=True)
        exp = np.exp(scores)
        return exp / exp.sum(axis=1, keepdims=True)


@dataclass
class EnsembleHead:
    """Weighted mean of the encoder head's and a character/word n-gram head's probabilities.

    ``weight`` (the encoder's share) is chosen on the calibration split by the trainer, never on
    evaluation data. Both heads share the same class order.
    """

    encoder: Head
    ngram: Head
    weight: float

    @property
    def classes(self) -> list[str]:
        return self.encoder.classes

    def proba(self, x: np.ndarray, texts: Sequence[str], features: Any | None = None) -> np.ndarray:
        """``features``: the n-gram pipeline's transformed ``texts``, when the caller shares them."""
        return self.mix(x, self.ngram_proba(texts, features))

    def ngram_proba(self, texts: Sequence[str], features: Any | None = None) -> np.ndarray:
        return self.ngram.proba(texts) if features is None else self.ngram.proba_from_features(features)

    def mix(self, x: np.ndarray, ngram: np.ndarray) -> np.ndarray:
        """The ensemble's probabilities from the encoder's rows ``x`` and the n-gram head's rows."""
        return self.weight * self.encoder.proba(x) + (1.0 - self.weight) * ngram


def same_features(a: Any, b: Any) -> bool:
    """True if two n-gram pipelines were fitted with identical feature extractors (same texts)."""
    try:
        fa, fb = a[:-1][0], b[:-1][0]
        return all(
            ta.vocabulary_ == tb.vocabulary_ and np.array_equal(ta.idf_, tb.idf_)
            for (_, ta), (_, tb) in zip(fa.transformer_list, fb.transformer_list, strict=True)
        )
    except (AttributeError, TypeError, IndexError, ValueError):
        return False


def tuning_of(card: dict[str, Any]) -> dict[str, Any] | None:
    """How the card's encoder was fine-tuned (``TuneConfig`` as a dict), or None if frozen.
    Cards written before 2026-12-06 name only LoRA settings, under ``lora``."""
    if card.get("tuning"):
        return dict(card["tuning"])
    return {**card["lora"], "method": "lora"} if card.get("lora") else None


def read_card(model_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((model_dir / CARD).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ClassifierError(f"no usable model card in {model_dir}: {exc} (run `frontdesk train`)") from exc


def load_heads(model_dir: Path, name: str = HEADS) -> dict[str, Any]:
    """Load ``heads.joblib`` (or ``baseline.joblib``) from a trusted model directory."""
    import joblib

    try:
        return joblib.load(model_dir / name)
    except (OSError, EOFError, ValueError) as exc:
        raise ClassifierError(f"cannot load {name} from {model_dir}: {exc}") from exc


def _release_load_buffers() -> None:
    """Loading leaves the fp32 checkpoint's buffers in freed-but-held heap; give them back."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class TriageModel(Classifier):
    """Blocking, not thread-safe (the encoder isn't); one instance per worker thread/process."""

    def __init__(self, settings: ClassifierSettings) -> None:
        from classify.encoder import E5Encoder, resolve_model
        from classify.finetune import apply_tuning, load_tuning

        self.settings = settings
        self.card = read_card(settings.model_dir)
        if self.card.get("encoder") != settings.encoder:
            raise ClassifierError(
                f"model in {settings.model_dir} was trained on encoder {self.card.get('encoder')!r}, "
                f"configured encoder is {settings.encoder!r}"
            )
        heads = load_heads(settings.model_dir)
        self.heads: dict[str, EnsembleHead] = {"category": heads["category"], "urgency": heads["urgency"]}
        # Both n-gram heads are fitted on the same texts, so one feature pass can serve both.
        ngrams = self.heads["category"].ngram.estimator
        self._shared_features = same_features(ngrams, self.heads["urgency"].ngram.estimator)
        self._language_shares = self._shared_features and same_features(ngrams, heads.get("language"))
        self._features = NgramFeatures(ngrams[:-1][0]) if self._shared_features else None
        self._classes = {task: head.classes for task, head in self.heads.items()}
        self.language = LanguageIdentifier(settings.languages, heads.get("language"),
                                           lingua_accuracy=settings.lingua_accuracy)
        self.language.load()  # at start-up, not inside the first batch's latency
        self.encoder = E5Encoder(
            resolve_model(settings.encoder, settings.cache_dir), max_tokens=settings.max_tokens,
            batch_size=settings.batch_size, quantize="none", embeddings=settings.embeddings,
            threads=settings.threads,
        )
        tuning = tuning_of(self.card)
        if tuning:
            changed = apply_tuning(self.encoder.model, load_tuning(settings.model_dir, tuning), tuning)
            log.info("fine-tuning (%s) folded into %d encoder tensors", tuning["method"], changed)
        self._transliterated_ngrams = self.card.get("ngram_input") == NGRAM_INPUT
        if settings.quantize == "int8":
            self.encoder.quantize_int8()
        _release_load_buffers()
        self.model_version = f"{self.card['version']}+{self.encoder.name.rsplit(':', 1)[1]}"  # what runs, not what was asked

    def embed(self, items: Sequence[TextItem]) -> np.ndarray:
        return self.encoder.encode([model_input(i.subject, i.text) for i in items])

    def classify(self, items: Sequence[TextItem]) -> list[Triage]:
        out: list[Triage | None] = [None] * len(items)
        for chunk, triages in self.classify_stream(items):
            for n, triage in zip(chunk, triages, strict=True):
                out[n] = triage
        return out  # type: ignore[return-value]  # every index was answered (encode_stream's contract)

    def classify_stream(self, items: Sequence[TextItem]) -> Iterator[tuple[Sequence[int], list[Triage]]]:
        """The n-gram heads and the language for all ``items`` first (vectorised), then the
        encoder batch by batch: each batch's Triages as soon as it is encoded."""
        if not items:
            return
        plain = [compose(i.subject, i.text) for i in items]
        encoded = [transliterate_az_cyrillic(p) for p in plain]  # = model_input(subject, text)
        ngram_texts = encoded if self._transliterated_ngrams else plain
        feats = self._features.transform(ngram_texts) if self._features is not None else None
        ngram = {task: head.ngram_proba(ngram_texts, feats) for task, head in self.heads.items()}
        languages = self.language.identify(plain, feats if self._language_shares else None)
        for chunk, x in self.encoder.encode_stream(encoded):
            probs = {task: head.mix(x, ngram[task][chunk]).tolist() for task, head in self.heads.items()}
            yield chunk, [self._triage((plain[n], encoded[n]), {t: p[row] for t, p in probs.items()}, languages[n])
                          for row, n in enumerate(chunk)]

    def _triage(self, texts: tuple[str, str], probs: dict[str, list[float]], lang: tuple[str, float]) -> Triage:
        """One message's labels from its rows of class probabilities (in ``self._classes`` order).

        ``texts``: the message as written and as encoded (Azerbaijani Cyrillic transliterated);
        the rules read both. ``scores`` stay the model's probabilities; ``confidence`` is the
        model's probability of each label reported, so when a rule raised the urgency it is the
        (low) probability the model gave that urgency, and the message ``needs_review``: a rule
        overrode the model, a person should look. A message without text always ``needs_review``.
        """
        best = {t: max(range(len(p)), key=p.__getitem__) for t, p in probs.items()}  # first maximum, as argmax
        category = self._classes["category"][best["category"]]
        urgency = self._classes["urgency"][best["urgency"]]
        reasons: tuple[str, ...] = ()
        if self.settings.use_rules:
            urgency, reasons = apply_rules(texts, category, urgency)
        by_label = {t: dict(zip(self._classes[t], probs[t], strict=True)) for t in probs}
        chosen = {"category": category, "urgency": urgency}
        confidence = {t: round(by_label[t].get(chosen[t], 0.0), 4) for t in probs}
        confidence["language"] = round(lang[1], 4)
        scores = {t: {c: round(v, 4) for c, v in row.items()} for t, row in by_label.items()}
        review = (bool(reasons) or min(confidence["category"], confidence["urgency"]) < self.settings.review_threshold
                  or not texts[0].strip())  # nothing to read (an attachment, a sticker): a person must look
        return Triage(category=category, urgency=urgency, language=lang[0], confidence=confidence, scores=scores,
                      model_version=self.model_version, needs_review=review, reasons=reasons)
