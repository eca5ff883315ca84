"""Plain-letter copies of Azerbaijani training examples."""

from __future__ import annotations

from classify.augment import augment, plain_azerbaijani
from classify.data import Example


def example(text: str, language: str = "az", subject: str = "") -> Example:
    return Example(text, subject, "email", "payments", "high", language)


def test_plain_azerbaijani_replaces_exactly_the_seven_letters_and_their_capitals() -> None:
    assert plain_azerbaijani("Çıxarış gəlmədi, ödəniş üçün ĞÖÜŞƏ İ") == "Cixaris gelmedi, odenis ucun GOUSE I"
    assert plain_azerbaijani("already plain, кириллица, ß") == "already plain, кириллица, ß"


def test_only_azerbaijani_latin_examples_with_those_letters_get_a_copy() -> None:
    az = example("Pulum gəlmədi", subject="Çıxarış")
    plain = example("pulum gelmedi")
    cyrillic = example("Пулум ҝәлмәди")
    turkish = example("Çekimim gelmedi", language="tr")
    out = augment([az, plain, cyrillic, turkish])
    assert out[:4] == [az, plain, cyrillic, turkish]
    assert out[4:] == [Example("Pulum gelmedi", "Cixaris", "email", "payments", "high", "az")]


def test_no_example_no_copy() -> None:
    assert augment([]) == []
