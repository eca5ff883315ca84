"""The n-gram heads' feature step, computed faster and bit for bit the same.

The heads' features are a scikit-learn ``FeatureUnion`` of TF-IDF vectorizers (word 1–2-grams,
``char_wb`` character 2–5-grams; :mod:`classify.baseline`). scikit-learn cuts every word of every
message into character n-grams in Python (~0.13 ms a message, a third of the classify stage's own
work). ``char_wb`` n-grams never cross a word boundary, so a word's vocabulary indices depend on the
word alone: :class:`NgramFeatures` computes them once per distinct word (a bounded cache) and
builds the same count matrix, which the fitted vectorizer's own TF-IDF step then weights. Any
vectorizer whose options this does not reproduce (another analyzer, a custom preprocessor,
accent stripping, ``binary``) goes through scikit-learn's ``transform`` unchanged.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from typing import Any

import numpy as np

# A word longer than this (a URL, base64, a run of emoji) is analysed but not kept: it rarely recurs.
CACHED_WORD_CHARS = 48


class CharWordCounts:
    """Counts of a fitted ``char_wb`` vectorizer's vocabulary, one distinct word analysed once.

    Not thread-safe for concurrent writers beyond what the GIL gives (a dict); the cache is
    bounded by ``max_words`` (cleared when full: messages repeat a small working set of words).
    """

    def __init__(self, vectorizer: Any, max_words: int = 50_000) -> None:
        self.vectorizer = vectorizer
        self.vocabulary: dict[str, int] = vectorizer.vocabulary_
        self.min_n, self.max_n = vectorizer.ngram_range
        self.lowercase = bool(vectorizer.lowercase)
        self.max_words = max_words
        self._words: dict[str, array] = {}
        self._matrix_type = type(vectorizer.transform([""]))

    @staticmethod
    def supports(vectorizer: Any) -> bool:
        """True for the options this class reproduces exactly (see :meth:`_word_indices`)."""
        get = getattr(vectorizer, "get_params", None)
        if get is None or not hasattr(vectorizer, "vocabulary_") or not hasattr(vectorizer, "_tfidf"):
            return False
        p = get()
        return (p["analyzer"] == "char_wb" and p["input"] == "content" and p["preprocessor"] is None
                and p["strip_accents"] is None and not p["binary"])

    def transform(self, texts: Sequence[str]) -> Any:
        """TF-IDF features of ``texts``, equal to ``vectorizer.transform(texts)``."""
        import scipy.sparse as sp

        columns, indptr = array("i"), array("i", [0])
        for text in texts:
            for word in (text.lower() if self.lowercase else text).split():
                columns.extend(self._word_indices(word))
            indptr.append(len(columns))
        counts = sp.csr_matrix(
            (np.ones(len(columns), dtype=self.vectorizer.dtype), np.frombuffer(columns, dtype=np.int32),
             np.frombuffer(indptr, dtype=np.int32)), shape=(len(texts), len(self.vocabulary)))
        counts.sum_duplicates()  # = scikit-learn's per-document counter, columns sorted
        counts = counts if self._matrix_type is sp.csr_matrix else self._matrix_type(counts)
        return self.vectorizer._tfidf.transform(counts, copy=False)

    def _word_indices(self, word: str) -> array:
        """Vocabulary indices of the word's n-grams, repeats kept (scikit-learn's
        ``_char_wb_ngrams``: the word padded by one space each side; a word shorter than an
        n-gram size counts once, as itself, and ends the sizes)."""
        cached = self._words.get(word)
        if cached is not None:
            return cached
        padded, vocabulary, out = f" {word} ", self.vocabulary, array("i")
        length = len(padded)
        for n in range(self.min_n, self.max_n + 1):
            for offset in range(max(length - n + 1, 1)):
                index = vocabulary.get(padded[offset:offset + n])
                if index is not None:
                    out.append(index)
            if length <= n:
                break
        if len(word) <= CACHED_WORD_CHARS:
            if len(self._words) >= self.max_words:
                self._words.clear()
            self._words[word] = out
        return out


class NgramFeatures:
    """A fitted feature step (``FeatureUnion`` of vectorizers, or one vectorizer) whose
    ``transform`` equals the original's, with ``char_wb`` vectorizers through :class:`CharWordCounts`."""

    def __init__(self, step: Any) -> None:
        self.step = step
        parts = getattr(step, "transformer_list", None)
        exact = parts is not None and getattr(step, "transformer_weights", None) is None
        self._parts: list[Any] | None = (
            [CharWordCounts(t) if CharWordCounts.supports(t) else t for _, t in parts] if exact else None
        )
        if parts is None and CharWordCounts.supports(step):
            self._parts = [CharWordCounts(step)]

    @property
    def accelerated(self) -> bool:
        return self._parts is not None and any(isinstance(p, CharWordCounts) for p in self._parts)

    def transform(self, texts: Sequence[str]) -> Any:
        """Same matrix (type, values, column order) as ``step.transform(texts)``."""
        if self._parts is None:
            return self.step.transform(texts)
        import scipy.sparse as sp

        blocks = [p.transform(texts) for p in self._parts]
        return blocks[0] if len(blocks) == 1 else sp.hstack(blocks, format="csr")
