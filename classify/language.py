"""Language identification for az / ru / en / tr, including the cases detectors get wrong.

Order of evidence:
1. Azerbaijani in Cyrillic script (:func:`classify.text.is_azerbaijani_cyrillic`: letters only
   Azerbaijani Cyrillic has, in enough of the words, and no other Cyrillic alphabet's) → ``az``.
   No detector knows Azerbaijani in Cyrillic script. One such letter is not enough (a Russian
   message signed with an Azerbaijani name, Kazakh, Serbian, a homoglyph): those go on to 2.
2. A word + character n-gram logistic regression trained on the project's labelled data: it
   learns Azerbaijani and Turkish typed without diacritics, and Russian in Latin transliteration,
   which lingua confuses (measured on the dev split: lingua + rule 0.894, n-grams + rule 0.989).
   Since 2026-12-06 it reads the category/urgency heads' n-gram features (:func:`fit_ngram_model`),
   so one feature pass serves all three (same dev accuracy, 0.992; ~0.2 ms a message less).
3. When that model is unsure (max probability below ``min_confidence``), lingua restricted to the
   configured languages decides; text with no letters, or that lingua gives no confidence in any
   configured language (Arabic, Georgian, Chinese, …), is ``und``. Lingua runs in its low-accuracy
   mode by default (trigram models only): as a fallback it decides few texts, and its full models
   take ~130-180 MB of RAM against ~14 MB (dev split: 0.983 with low, 0.985 with high accuracy).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import Any, Literal

from classify.text import is_azerbaijani_cyrillic

_LINGUA_NAMES = {"az": "AZERBAIJANI", "ru": "RUSSIAN", "en": "ENGLISH", "tr": "TURKISH"}


class LanguageIdentifier:
    """``identify`` → (code, confidence). ``ngram_model`` is a fitted sklearn pipeline or None."""

    def __init__(self, languages: Sequence[str] = ("az", "ru", "en", "tr"), ngram_model: Any | None = None,
                 min_confidence: float = 0.55, lingua_accuracy: Literal["low", "high"] = "low") -> None:
        self.languages = tuple(languages)
        self.lingua_accuracy = lingua_accuracy
        self.ngram_model = ngram_model
        self.min_confidence = min_confidence

    def load(self) -> None:
        """Build lingua with its models loaded now (~1 s) rather than at the first unsure text."""
        _ = self._lingua

    @cached_property
    def _lingua(self) -> Any:
        from lingua import Language, LanguageDetectorBuilder

        langs = [getattr(Language, _LINGUA_NAMES[c]) for c in self.languages if c in _LINGUA_NAMES]
        builder = LanguageDetectorBuilder.from_languages(*langs).with_preloaded_language_models()
        return (builder.with_low_accuracy_mode() if self.lingua_accuracy == "low" else builder).build()

    def identify(self, texts: Sequence[str], features: Any | None = None) -> list[tuple[str, float]]:
        """``features``: the n-gram model's feature step applied to ``texts`` (rows in order),
        when the caller has computed them already."""
        out: list[tuple[str, float] | None] = [None] * len(texts)
        pending = []
        for i, text in enumerate(texts):
            if not any(map(str.isalpha, text)):
                out[i] = ("und", 0.0)
            elif is_azerbaijani_cyrillic(text) and "az" in self.languages:
                out[i] = ("az", 1.0)
            else:
                pending.append(i)
        if pending and self.ngram_model is not None:
            probs = (self.ngram_model.predict_proba([texts[i] for i in pending]) if features is None
                     else self.ngram_model[-1].predict_proba(features[pending]))
            classes = list(self.ngram_model.classes_)
            for i, row in zip(pending, probs, strict=True):
                best = int(row.argmax())
                if row[best] >= self.min_confidence:
                    out[i] = (str(classes[best]), float(row[best]))
        for i, text in enumerate(texts):
            if out[i] is None:
                out[i] = self._by_lingua(text)
        return [x for x in out if x is not None]

    def _by_lingua(self, text: str) -> tuple[str, float]:
        values = self._lingua.compute_language_confidence_values(text)
        if not values or values[0].value <= 0.0:  # all zeros: none of our languages, not the first
            return ("und", 0.0)
        top = values[0]
        code = top.language.iso_code_639_1.name.lower()
        return (code, float(top.value))


def fit_ngram_model(features: Any, texts: Sequence[str], languages: Sequence[str]) -> Any:
    """Train the n-gram language model on a fitted feature step (an sklearn transformer, shared
    with the heads): a pipeline of that step and a logistic regression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    classifier = LogisticRegression(C=10, max_iter=3000).fit(features.transform(list(texts)), list(languages))
    return Pipeline([("features", features), ("classifier", classifier)])
