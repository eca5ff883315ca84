from __future__ import annotations

import pytest

from classify.language import LanguageIdentifier
from classify.rules import apply_rules
from classify.text import compose, is_azerbaijani_cyrillic, model_input, transliterate_az_cyrillic


def test_azerbaijani_cyrillic_is_transliterated_and_russian_is_not() -> None:
    assert transliterate_az_cyrillic("Ҝирә билмирәм, һесабым ачылмыр") == "Girə bilmirəm, hesabım açılmır"
    assert transliterate_az_cyrillic("Не могу войти в аккаунт") == "Не могу войти в аккаунт"
    assert is_azerbaijani_cyrillic("Пулум ҝәлмәди") and not is_azerbaijani_cyrillic("Деньги не пришли")


def test_compose_bounds_and_shortens_urls() -> None:
    text = compose("Re: çıxarış", "bax https://evil.example.com/a/b?c=d " + "x" * 5000)
    assert text.startswith("Re: çıxarış bax URL:evil.example.com") and len(text) == 2000
    assert model_input("", "Ҝүнаһ") == "Günah"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("Мәним пулум ҝәлмәди", "az"), ("🙂🙂", "und"), ("12345 !!!", "und")],
)
def test_rule_based_languages(text: str, expected: str) -> None:
    [(lang, _)] = LanguageIdentifier().identify([text])
    assert lang == expected


def test_lingua_fallback_without_ngram_model() -> None:
    got = [lang for lang, _ in LanguageIdentifier().identify(
        ["Вывод средств не пришел уже три дня", "My withdrawal has been pending for three days"])]
    assert got == ["ru", "en"]


@pytest.mark.parametrize(
    ("text", "category", "urgency", "expected", "rule"),
    [
        ("please self-exclude me for 6 months", "responsible_gambling", "high", "critical", "self-exclusion-or-harm"),
        ("withdrawal of 2 500 AZN is stuck", "payments", "normal", "high", "large-amount"),
        ("withdrawal of 250 AZN is stuck", "payments", "normal", "normal", None),
        ("bu üçüncü dəfə yazıram", "bonuses", "normal", "high", "repeated-follow-up"),
        ("someone logged in from Brazil", "security", "normal", "high", "security-at-least-high"),
        ("someone withdrew my 3000 AZN", "security", "critical", "critical", None),
    ],
)
def test_urgency_rules_only_raise(text: str, category: str, urgency: str, expected: str, rule: str | None) -> None:
    got, fired = apply_rules(text, category, urgency)
    assert got == expected
    assert (rule in fired) if rule else fired == ()
