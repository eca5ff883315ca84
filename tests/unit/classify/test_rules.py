"""Urgency rules: what they must catch in every language we serve, and what they must leave alone."""

from __future__ import annotations

import pytest

from classify.rules import apply_rules, fold
from classify.text import compose, transliterate_az_cyrillic


def rules_on(text: str, category: str = "responsible_gambling", urgency: str = "normal") -> tuple[str, tuple[str, ...]]:
    """The rules as the model applies them: on the composed text and its transliteration."""
    plain = compose("", text)
    return apply_rules([plain, transliterate_az_cyrillic(plain)], category, urgency)


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("please block me for 6 months, I can't stop", "self-exclusion"),
        ("I can't stop please block me", "self-exclusion"),
        ("can you block me for a year", "self-exclusion"),
        ("Özümü bloklamaq istəyirəm", "self-exclusion"),
        ("ozumu bloklamaq isteyirem", "self-exclusion"),
        ("ÖZÜMÜ BLOKLAYIN", "self-exclusion"),
        ("Өзүмү блоклајын", "self-exclusion"),
        ("Пулуму чыхармаг истәјирәм, сонра өзүмү блоклајын", "self-exclusion"),
        ("хочу самоисключение на год", "self-exclusion"),
        ("Заблокируйте меня пожалуйста", "self-exclusion"),
        ("не могу остановиться заблокируйте меня", "self-exclusion"),
        ("samoisklyuchenie pozhaluysta, ne mogu ostanovitsya", "self-exclusion"),
        ("zablokirujte menja", "self-exclusion"),
        ("KENDİMİ ENGELLEMEK İSTİYORUM", "self-exclusion"),
        ("I want to kill myself, I lost everything", "self-harm"),
        ("I will end my life", "self-harm"),
        ("I'm suicidal", "self-harm"),
        ("Өзүмү өлдүрәҹәм, бүтүн пулуму удузмушам", "self-harm"),
        ("ozumu olduracem", "self-harm"),
        ("Özümü öldürəcəyəm", "self-harm"),
        ("покончу с собой если не вернете", "self-harm"),
        ("я убью себя", "self-harm"),
        ("pokonchu s soboy", "self-harm"),
        ("kendimi öldüreceğim", "self-harm"),
        ("İNTİHAR EDECEĞİM", "self-harm"),
        ("hesabımı kapatın kumar bağımlısıyım", "gambling-harm-closure"),
        ("hesabımı bağlayın, qumar asılılığım var", "gambling-harm-closure"),
        ("закройте мой аккаунт, у меня игровая зависимость", "gambling-harm-closure"),
        ("My 15 year old son has been betting on my account", "minor-gambling"),
        ("Мой сын, ему 14 лет, играет с моего аккаунта", "minor-gambling"),
        ("мой 15-летний сын ставил с моей карты", "minor-gambling"),
        ("14 yaşlı oğlum mənim hesabımdan mərc edir", "minor-gambling"),
        ("14 yasli oglum menim hesabimdan merc edir", "minor-gambling"),
        ("Оғлум 15 јашындадыр, мәним картымла ојнајыр", "minor-gambling"),
        ("15 yaşındaki oğlum hesabımdan bahis oynuyor", "minor-gambling"),
    ],
)
def test_self_exclusion_self_harm_and_minors_are_critical(text: str, rule: str) -> None:
    assert rules_on(text) == ("critical", (rule,))


@pytest.mark.parametrize(
    "text",
    [
        "I do NOT want self-exclusion, just a deposit limit",
        "не хочу самоисключение, просто вопрос",
        "самоисключение мне не нужно, вопрос про бонус",
        "ne hochu samoisklyuchenie",
        "Özümü bloklamayın, səhvən yazmışam",
        "özümü bloklamaq istəmirəm",
        "Kendimi engellemeyin, yanlışlıkla bastım",
        "kendimi engellemek istemiyorum",
        "не блокируйте меня",
        "don't block me please",
        "why did you block me?",
        "вы заблокировали меня без причины",
        "my 6-month self-exclusion ended on 1 March, how do I reactivate?",
        "kendimi kapattım ama hâlâ SMS ile bonus yolluyorsunuz",
        "Hesabımı bağlamaq istəyirəm, başqa sayta keçirəm. Narahat olmayın, oyun asılılığım yoxdur :)",
        "хочу закрыть счёт, коэффы хуже. не зависимость, не переживайте",
        "селфи отклонили, фото в паспорте 10-летней давности",
        "my son is 19, can he open an account",
        "Oğlum 18 oldu, kendi hesabını açmak istiyor",
        "my account is 8 years old",
        "Һесабымы сындырыблар, кимсә пулуму чыхарыб",
    ],
)
def test_negations_reports_and_lookalikes_stay_with_the_model(text: str) -> None:
    assert rules_on(text) == ("normal", ())


@pytest.mark.parametrize(
    "text",
    ["вывод 5000 манат не пришёл", "вывод 5 000 ман не пришёл", "5000₼ çıxarış gəlmir", "5000 азн не пришли",
     "Һесабымдан 5000 манат чыхарыш етмишәм"],
)
def test_large_amounts_in_manat_spellings_raise_payments_to_high(text: str) -> None:
    assert rules_on(text, "payments") == ("high", ("large-amount",))


def test_small_amounts_and_other_words_do_not() -> None:
    assert rules_on("вывод 500 манат не пришёл", "payments") == ("normal", ())
    assert rules_on("5000 мандаринов", "payments") == ("normal", ())


def test_a_rule_names_itself_only_when_it_raised_the_urgency() -> None:
    assert rules_on("please block me, I can't stop", urgency="critical") == ("critical", ())


def test_fold_drops_azerbaijani_and_turkish_marks_and_dotted_capital_i() -> None:
    assert fold("ÖZÜMÜ Öldürəcəyəm İNTİHAR ŞÇĞı ЁЖ") == "ozumu oldureceyem intihar scgi еж"
