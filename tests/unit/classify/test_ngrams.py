"""The fast n-gram feature step equals scikit-learn's, bit for bit, or is scikit-learn's."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
from sklearn.pipeline import make_union

from classify.baseline import ngram_pipeline
from classify.data import DEV_FILE, read_examples
from classify.model import HEADS, load_heads
from classify.ngrams import CACHED_WORD_CHARS, CharWordCounts, NgramFeatures
from classify.settings import DEFAULT_MODEL_DIR
from classify.text import model_input

TRAIN = [
    "Pulumu çıxarmaq istəyirəm, 500 AZN hələ gəlməyib", "Не могу вывести деньги на карту",
    "I can't withdraw my winnings", "Para çekme talebim onaylanmadı", "pulu cixara bilmirem kartdan",
    "ne mogu vyvesti dengi", "Hesabım bloklanıb, şifrə dəyişdirilib", "Аккаунт взломали, пароль сменили",
    "bonus wagering requirement not met", "Bonus çevrim şartı", "self exclusion please close my account",
]
EDGE = [
    "", " ", "\t\n", "a", "ab", "a b c", "ΟΔΟΣ Σ", "x\u00a0y\u2003z\tq\n\x1c w", "İstanbul İSTANBUL ı I",
    "ﬁnal ǅemal ß", "😀😀 😀", "a" * 300, "çıxarmaq " * 40, "URL:example.com 12,500.00 AZN", "\x00 nul\x00byte",
]


def same_matrix(a: Any, b: Any) -> bool:
    return (type(a) is type(b) and a.shape == b.shape and a.dtype == b.dtype
            and a.indices.dtype == b.indices.dtype and a.indptr.dtype == b.indptr.dtype
            and np.array_equal(a.indptr, b.indptr) and np.array_equal(a.indices, b.indices)
            and np.array_equal(a.data, b.data))


def fitted_union() -> Any:
    return ngram_pipeline().fit(TRAIN, ["payments"] * 6 + ["security"] * 2 + ["bonuses"] * 2 + ["rg"])[0]


@pytest.mark.parametrize("texts", [TRAIN, EDGE, TRAIN + EDGE + TRAIN, [t.upper() for t in TRAIN]])
def test_equals_scikit_learn_on_the_project_feature_union(texts: list[str]) -> None:
    union = fitted_union()
    fast = NgramFeatures(union)
    assert fast.accelerated
    assert same_matrix(fast.transform(texts), union.transform(texts))
    assert same_matrix(fast.transform(texts), union.transform(texts))  # second pass from the cache


@pytest.mark.parametrize("options", [
    {"ngram_range": (1, 1)}, {"ngram_range": (3, 6)}, {"lowercase": False}, {"sublinear_tf": False},
    {"use_idf": False, "norm": None}, {"min_df": 2, "max_df": 0.5},
])
def test_equals_scikit_learn_for_char_wb_options(options: dict[str, Any]) -> None:
    vectorizer = TfidfVectorizer(analyzer="char_wb", **options).fit(TRAIN)
    assert CharWordCounts.supports(vectorizer)
    assert same_matrix(CharWordCounts(vectorizer).transform(TRAIN + EDGE), vectorizer.transform(TRAIN + EDGE))


def test_bounded_cache_and_long_words_keep_results_exact() -> None:
    vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5)).fit(TRAIN)
    counts = CharWordCounts(vectorizer, max_words=3)
    texts = TRAIN + ["q" * (CACHED_WORD_CHARS + 1) + " pul"]
    for _ in range(2):
        assert same_matrix(counts.transform(texts), vectorizer.transform(texts))
        assert len(counts._words) <= 3
    assert "q" * (CACHED_WORD_CHARS + 1) not in counts._words


@pytest.mark.parametrize("vectorizer", [
    TfidfVectorizer(analyzer="char"), TfidfVectorizer(analyzer="char_wb", binary=True),
    TfidfVectorizer(analyzer="char_wb", strip_accents="unicode"),
    TfidfVectorizer(analyzer="char_wb", preprocessor=str.strip), CountVectorizer(analyzer="char_wb"),
])
def test_options_it_does_not_reproduce_go_through_scikit_learn(vectorizer: Any) -> None:
    vectorizer.fit(TRAIN)
    fast = NgramFeatures(make_union(vectorizer, TfidfVectorizer().fit(TRAIN)))
    assert not fast.accelerated
    assert same_matrix(fast.transform(EDGE), fast.step.transform(EDGE))


def test_weighted_union_goes_through_scikit_learn() -> None:
    union = fitted_union()
    union.transformer_weights = {"tfidfvectorizer-2": 0.5}
    fast = NgramFeatures(union)
    assert not fast.accelerated
    assert same_matrix(fast.transform(TRAIN), union.transform(TRAIN))


@pytest.mark.skipif(not (DEFAULT_MODEL_DIR / HEADS).exists(), reason="no shipped model")
def test_equals_scikit_learn_for_the_shipped_heads_on_the_dev_split() -> None:
    step = load_heads(DEFAULT_MODEL_DIR)["category"].ngram.estimator[:-1][0]
    texts = [model_input(e.subject, e.text) for e in read_examples(DEV_FILE)]
    fast = NgramFeatures(step)
    assert fast.accelerated
    assert same_matrix(fast.transform(texts), step.transform(texts))
