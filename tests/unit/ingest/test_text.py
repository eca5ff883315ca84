"""Charset guessing, RFC 2047 decoding, HTML to text and quote/signature removal."""

from __future__ import annotations

import base64

import pytest

from ingest.mail.replies import clean_text
from ingest.mail.text import decode_bytes, decode_header_value, html_to_text, single_line

RU = "Здравствуйте, вывод средств задерживается уже три дня."
TR = "Merhaba, çekim talebim üç gündür bekliyor; hâlâ ödenmedi."
AZ = "Salam, çıxarış sorğum üç gündür gözləmədədir."


@pytest.mark.parametrize(
    ("data", "label", "expected"),
    [
        (RU.encode("cp1251"), "windows-1251", RU),
        (RU.encode("koi8-r"), "koi8-r", RU),
        (TR.encode("iso-8859-9"), "iso-8859-9", TR),
        (AZ.encode(), "utf-8", AZ),
        (AZ.encode(), "iso-8859-1", AZ),  # UTF-8 labelled Latin-1
        (RU.encode("cp1251"), "koi8-r", RU),  # cp1251 labelled KOI8-R
        (RU.encode("koi8-r"), "windows-1251", RU),
        (RU.encode("cp1251"), "utf-8", RU),  # cp1251 labelled UTF-8
        (RU.encode("cp1251"), None, RU),
        (TR.encode("iso-8859-9"), None, TR),
        (AZ.encode(), "no-such-charset", AZ),
        (AZ.encode(), "unknown-8bit", AZ),
        (b"plain ascii", "utf-16", "plain ascii"),
    ],
)
def test_decode_bytes(data: bytes, label: str | None, expected: str) -> None:
    assert decode_bytes(data, label) == expected


@pytest.mark.parametrize("label", ["utf-8", None])
def test_broken_utf8_is_replaced_not_guessed(label: str | None) -> None:
    data = AZ.encode()[:6] + b"\xff\xc3" + AZ.encode()[6:]
    text = decode_bytes(data, label)
    assert text.startswith(AZ[:6]) and text.endswith(AZ[6:]) and "\ufffd" in text


TURKISH_WORDS = ["Şükrü", "Çağrı", "Öğün", "Işığı", "İğdır", "üç", "ÇÖĞÜŞ", "Çiğdem Öztürk"]


@pytest.mark.parametrize("label", ["iso-8859-9", "ISO_8859-9", "latin5", "l5", "windows-1254", "cp1254", "x-cp1254"])
@pytest.mark.parametrize("word", TURKISH_WORDS)
def test_a_turkish_label_is_never_taken_for_cyrillic(word: str, label: str) -> None:
    assert decode_bytes(word.encode("cp1254"), label) == word


@pytest.mark.parametrize("label", ["iso-8859-1", "windows-1252", None])
@pytest.mark.parametrize("word", [*TURKISH_WORDS, TR])
def test_turkish_labelled_latin1_or_unlabelled_is_read_as_turkish(word: str, label: str | None) -> None:
    assert decode_bytes(word.encode("cp1254"), label) == word


@pytest.mark.parametrize("text", ["déjà vu à côté", "Über Öl", "Señor Muñoz", "São João", "À ÉTÉ", "à é è ù â", "Ærø"])
@pytest.mark.parametrize("label", ["iso-8859-1", "windows-1252"])
def test_short_latin_words_stay_latin(text: str, label: str) -> None:
    assert decode_bytes(text.encode("cp1252"), label) == text


RU_NAMES = ["Иван Петров", "Дмитрий Козлов", "ИВАН ПЕТРОВ", "Служба поддержки", "Юлия Щукина", "Вопрос", RU]


@pytest.mark.parametrize("label", ["iso-8859-1", "windows-1252", "iso-8859-15", "us-ascii", "utf-8", None])
@pytest.mark.parametrize("charset", ["cp1251", "koi8-r"])
@pytest.mark.parametrize("text", RU_NAMES)
def test_russian_labelled_latin_or_unlabelled_is_still_recognised(text: str, charset: str, label: str | None) -> None:
    assert decode_bytes(text.encode(charset), label) == text


@pytest.mark.parametrize("charset", ["windows-1251", "koi8-r"])
@pytest.mark.parametrize("text", ["ОЛЕГ", "СРОЧНО", "ООО РОМАШКА", "ИВАН ПЕТРОВ", "Иван", "Помощь", "помощь",
                                  RU.upper()])
def test_a_cyrillic_label_keeps_text_of_one_case(text: str, charset: str) -> None:
    """All-caps text read in the other Cyrillic charset is all lower case: no reason to switch."""
    assert decode_bytes(text.encode(charset), charset) == text


@pytest.mark.parametrize("text", [RU, RU.upper(), RU.lower(), "Иван Петров", "Юлия Щукина"])
def test_swapped_cyrillic_labels_are_recognised(text: str) -> None:
    assert decode_bytes(text.encode("koi8-r"), "windows-1251") == text
    assert decode_bytes(text.encode("cp1251"), "koi8-r") == text


def ew(text: str, charset: str = "utf-8") -> str:
    return f"=?{charset}?B?{base64.b64encode(text.encode(charset)).decode()}?="


def test_header_decoding_joins_adjacent_words_and_keeps_surrounding_text() -> None:
    raw = AZ.encode()
    split = f"=?utf-8?B?{base64.b64encode(raw[:9]).decode()}?=\r\n =?UTF-8?B?{base64.b64encode(raw[9:]).decode()}?="
    assert decode_header_value(split) == AZ
    assert decode_header_value(f"Re: {ew(RU, 'koi8-r')} [#12]") == f"Re: {RU} [#12]"


def test_header_decoding_survives_wrong_missing_and_broken_charsets() -> None:
    assert decode_header_value(f"=?x-unknown?B?{base64.b64encode(AZ.encode()).decode()}?=") == AZ
    assert decode_header_value(RU.encode("cp1251").decode("ascii", "surrogateescape")) == RU
    assert decode_header_value("=?utf-8?B?A?= stays") == "=?utf-8?B?A?= stays"  # undecodable: kept
    assert decode_header_value("=?utf-8?Q?caf=C3=A9_ok?=") == "café ok"


def test_single_line_removes_line_breaks_nul_and_controls() -> None:
    assert single_line("Hi\r\nBcc: x@evil.example\x00\x1b[0m\u2028end", 200) == "Hi Bcc: x@evil.example [0m end"
    assert single_line("x" * 50, 10) == "x" * 10


def test_html_to_text_drops_scripts_styles_and_keeps_text() -> None:
    html = (
        "<html><head><style>body{font-family:Arial}</style><script>steal('cookie')</script></head>"
        '<body onload="evil()"><p>Withdrawal &amp; bonus&nbsp;question</p><script type="text/javascript">'
        "var token = 'secret-token';</script><p>1. First step</p><hr><a href='https://x.example'>my link</a>"
        '<img src="data:image/png;base64,' + "A" * 500 + '"><noscript>noscript text</noscript></body></html>'
    )
    text = html_to_text(html, 100_000)
    assert "Withdrawal & bonus\u00a0question" in text or "Withdrawal & bonus question" in text
    assert "1. First step" in text and "my link" in text
    for hidden in ("steal", "cookie", "secret-token", "font-family", "evil()", "x.example", "* * *", "AAAA"):
        assert hidden not in text


def test_html_to_text_only_converts_up_to_the_limit() -> None:
    assert len(html_to_text("<p>" + "word " * 10_000 + "</p>", 1000)) <= 1000


QUOTE_CASES = {
    "en-gmail": "On Mon, 8 Jan 2024 at 12:00, Support <support@bet.az> wrote:\n> old answer",
    "en-outlook": "________________________________\nFrom: Support <support@bet.az>\nSent: Monday\nTo: "
                  "me\nSubject: RE: x\n\nold answer",
    "en-original": "-----Original Message-----\nFrom: Support\nSent: Monday\n\nold answer",
    "ru-pishet": "08.01.2024 12:00, Поддержка пишет:\n> old answer",
    "ru-pisal": "8 января 2024 г., в 12:00, Поддержка <support@bet.az> писал(а):\n> old answer",
    "ru-gmail": "пн, 8 янв. 2024 г. в 12:00, Поддержка <support@bet.az>:\n> old answer",
    "ru-outlook": "От: Поддержка <support@bet.az>\nОтправлено: 8 января 2024 г.\nКому: me\nТема: RE: x\n\nold answer",
    "tr-gmail": "8 Oca 2024 Pzt, 12:00 tarihinde Destek <support@bet.az> şunu yazdı:\n> old answer",
    "tr-outlook": "Kimden: Destek <support@bet.az>\nGönderildi: 8 Ocak 2024\nKime: me\nKonu: YNT: x\n\nold answer",
    "az-gmail": "B.e., 8 yan 2024, 12:00 tarixində Dəstək <support@bet.az> yazdı:\n> old answer",
    "az-outlook": "Kimdən: Dəstək <support@bet.az>\nGöndərildi: 8 yanvar 2024\nKimə: me\nMövzu: RE: x\n\nold answer",
    "az-wrapped": "B.e., 8 yan 2024, 12:00 tarixində Dəstək Xidməti <support@bet.az>\nyazdı:\n> old answer",
    "bare-quote": "> old answer\n> > older answer",
    "forward": "---------- Forwarded message ---------\nFrom: Bank <b@bank.az>\nDate: Mon\n\nold answer",
    "signature-dashes": "-- \nElvin Məmmədov\nold answer +994 50 000 00 00",
    "iphone-en": "Sent from my iPhone\nold answer",
    "iphone-ru": "Отправлено с iPhone\nold answer",
    "iphone-az": "iPhone-dan göndərildi\nold answer",
    "iphone-tr": "iPhone'umdan gönderildi\nold answer",
    "closing-az": "Hörmətlə,\nElvin old answer",
    "closing-ru": "С уважением,\nИван old answer",
}


@pytest.mark.parametrize("case", QUOTE_CASES)
def test_clean_text_removes_quotes_and_signatures(case: str) -> None:
    own = "Pulum hələ gəlməyib, zəhmət olmasa yoxlayın."
    text = clean_text(f"{own}\n\n{QUOTE_CASES[case]}\n")
    assert text == own


@pytest.mark.parametrize(
    "own",
    [
        "On Monday I deposited 50 AZN.\nStill nothing on my balance.",
        "Thanks, but the money is still not there.\nPlease check again.",
        "Steps I tried:\n- logged out\n- reset the password\nNothing helped.",
        "Я вам писал на прошлой неделе, ответа нет.",
        "Tarix: 08.01.2024 idi, məbləğ 150 AZN.",
        "Hello.\nCAUTION: someone uses my email address to log in.\nHelp!",
        "Warning: I never got the mail with the code.",
    ],
)
def test_clean_text_keeps_ordinary_customer_text(own: str) -> None:
    assert clean_text(own) == own


def test_clean_text_of_a_bare_forward_is_the_forwarded_content() -> None:
    text = clean_text("---------- Forwarded message ---------\nFrom: Bank <b@bank.az>\nDate: Mon\n\nCard "
                      "charged 150 AZN.")
    assert text == "Card charged 150 AZN."


def test_clean_text_keeps_inline_answers_between_quotes() -> None:
    text = clean_text("> What is your player ID?\n12345\n> Which card?\nVisa ending 4417")
    assert text == "12345\nVisa ending 4417"


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "hostile",
    [
        "On " + "a" * 100_000,
        ("On " + "a b " * 240 + "\n") * 100,
        ("> " * 5000 + "\n") * 10,
        "x" + " " * 100_000 + "y",
        "\n" * 100_000,
        ("From: a\nSent: b\n") * 5000,
        ("1 2 3 <a@b.c> " * 40 + "\n") * 150,
        "- a\n" * 20_000,
    ],
)
def test_clean_text_is_not_quadratic_on_hostile_text(hostile: str) -> None:
    clean_text(hostile[:100_000])  # must return; the regexes would backtrack for hours unbounded
