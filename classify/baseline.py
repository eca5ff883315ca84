"""The TF-IDF + logistic-regression baseline, trained on the same data as the transformer.

Word 1–2-grams plus character 2–5-grams (so transliteration and missing diacritics are not
out-of-vocabulary). ``frontdesk eval`` reports it beside the transformer so the gain is visible.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def ngram_pipeline() -> Any:
    """Unfitted TF-IDF (word 1-2 + char 2-5) → logistic regression."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline, make_union

    features = make_union(
        TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True),
        TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2),
    )
    return make_pipeline(features, LogisticRegression(C=10, max_iter=3000, class_weight="balanced"))


def fit_baseline(texts: Sequence[str], labels: dict[str, Sequence[str]]) -> dict[str, Any]:
    """One fitted pipeline per task, on all the training data."""
    return {task: ngram_pipeline().fit(list(texts), list(ys)) for task, ys in labels.items()}
