"""The shipped model with its rules: what a rule decides is reported consistently, and Azerbaijani
Cyrillic letters alone neither change a message's language nor what the encoder reads."""

from __future__ import annotations

import pytest

from classify.base import TextItem
from classify.model import TriageModel
from classify.settings import ClassifierSettings
from frontdesk.messages import Triage

pytest.importorskip("torch", reason="the model extra is not installed")
# A payments message past the encoder's 128 tokens: only the rules see the sentence at its end.
HEAD = ("Hello. I requested a withdrawal of 150 AZN three days ago and the money still has not arrived on my "
        "card. I wrote to support several times and nobody answers. My bank says no payment came. ") * 3
HEAD_AZ = ("Салам. Мән үч ҝүн әввәл 150 манат чыхарыш сифариш етмишәм, амма пул һәлә дә карта ҝәлмәјиб. "
           "Дәстәјә бир нечә дәфә јазмышам, һеч ким ҹаваб вермир. Банкла әлагә сахладым, дедиләр ки, "
           "онлара һеч бир өдәниш ҝәлмәјиб. Һесабымда баланс сыфыр ҝөстәрир. ") * 2


@pytest.fixture(scope="module")
def model() -> TriageModel:
    return TriageModel(ClassifierSettings())


def one(model: TriageModel, text: str) -> Triage:
    [triage] = model.classify([TextItem(text, "", "email")])
    return triage


@pytest.mark.parametrize(
    ("tail", "rule"),
    [("Also I want to kill myself if this money does not come back.", "self-harm"),
     ("И ещё, заблокируйте меня на полгода, я не могу остановиться.", "self-exclusion")],
)
def test_a_rule_that_overrides_the_model_reports_the_models_probability_and_asks_for_review(
        model: TriageModel, tail: str, rule: str) -> None:
    triage = one(model, HEAD + tail)
    assert triage.category == "payments" and triage.urgency == "critical" and triage.reasons == (rule,)
    assert triage.confidence["urgency"] == triage.scores["urgency"]["critical"] < 0.5
    assert max(triage.scores["urgency"], key=triage.scores["urgency"].__getitem__) != "critical"
    assert triage.needs_review


@pytest.mark.parametrize(
    ("tail", "rule"),
    [("Вә өзүмү блокламаг истәјирәм, артыг дајана билмирәм.", "self-exclusion"),
     ("Өзүмү өлдүрәҹәм бу пул ҝәлмәсә.", "self-harm")],
)
def test_rules_read_azerbaijani_cyrillic_through_its_transliteration(model: TriageModel, tail: str, rule: str) -> None:
    triage = one(model, HEAD_AZ + tail)
    assert (triage.language, triage.urgency, triage.reasons) == ("az", "critical", (rule,))


def test_without_a_rule_the_confidence_is_the_models_top_probability(model: TriageModel) -> None:
    triage = one(model, "не хочу самоисключение, просто скажите лимит депозита")
    assert triage.reasons == () and triage.urgency != "critical"
    assert triage.confidence["urgency"] == max(triage.scores["urgency"].values())


@pytest.mark.parametrize(
    ("signed", "unsigned"),
    [("Добрый день. Мой аккаунт заблокировали без причины, не могу войти. С уважением, Әлијев Һәсән",
      "Добрый день. Мой аккаунт заблокировали без причины, не могу войти. С уважением, Алиев Гасан"),
     ("Ставка на матч Карабах была рассчитана как проигрыш, хотя команда выиграла. Игрок Әли",
      "Ставка на матч Карабах была рассчитана как проигрыш, хотя команда выиграла. Игрок Али")],
)
def test_an_azerbaijani_name_leaves_a_russian_message_russian(model: TriageModel, signed: str, unsigned: str) -> None:
    a, b = model.classify([TextItem(signed, "", "email"), TextItem(unsigned, "", "email")])
    assert a.language == b.language == "ru"
    assert (a.category, a.urgency) == (b.category, b.urgency)


@pytest.mark.parametrize("text", ["مرحبا، سحب أموالي معلق منذ ثلاثة أيام", "我的提款已经三天没有到账了"])
def test_a_language_we_do_not_know_is_und(model: TriageModel, text: str) -> None:
    triage = one(model, text)
    assert (triage.language, triage.confidence["language"]) == ("und", 0.0)
