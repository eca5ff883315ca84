"""Text preparation shared by every classifier: what the model sees of a message.

Pure Python; no heavy imports.
"""

from __future__ import annotations

import re
import unicodedata

AZ_CYRILLIC_LETTERS = frozenset("әғҝјөүһҹӘҒҜЈӨҮҺҸ")
# Once other Cyrillic alphabets' own letters are ruled out (Kazakh's ә comes with қ ң і), ә ҝ ҹ
# are Azerbaijani only.
_AZ_DISTINCT = frozenset("әҝҹӘҜҸ")
# Russian letters that Azerbaijani Cyrillic, as customers write it, never uses (none in our data).
_RU_ONLY = frozenset("яюёэщъьйцЯЮЁЭЩЪЬЙЦ")
_RU_WORDS = frozenset(
    "и в во не на что как это я мы вы мне меня мой моя мои но по за из от для уже так же нет все всё "
    "был была было только очень если когда или вас вам у с со об ещё еще".split()
)
_RU_LETTERS = frozenset("абвгдеёжзийклмнопрстуфхцчшщъыьэюя")
_AZ_CYRILLIC_ALPHABET = _RU_LETTERS | {c.lower() for c in AZ_CYRILLIC_LETTERS}
_LETTERS = re.compile(r"[^\W\d_]+")

_AZ_CYR_TO_LAT = {
    "а": "a", "б": "b", "в": "v", "г": "q", "ғ": "ğ", "д": "d", "е": "e", "ә": "ə", "ж": "j",
    "з": "z", "и": "i", "ы": "ı", "ј": "y", "й": "y", "к": "k", "ҝ": "g", "л": "l", "м": "m",
    "н": "n", "о": "o", "ө": "ö", "п": "p", "р": "r", "с": "s", "т": "t", "у": "u", "ү": "ü",
    "ф": "f", "х": "x", "һ": "h", "ч": "ç", "ҹ": "c", "ш": "ş", "я": "ya", "ю": "yu", "ё": "yo",
    "э": "e", "ц": "ts", "щ": "şç", "ь": "", "ъ": "",
}
_AZ_TABLE = str.maketrans(
    {**_AZ_CYR_TO_LAT, **{k.upper(): v.capitalize() for k, v in _AZ_CYR_TO_LAT.items() if v}}
)
_SPACE = re.compile(r"\s+")
_URL = re.compile(r"https?://\S+|www\.\S+")


def is_azerbaijani_cyrillic(text: str) -> bool:
    """True if the text is mostly Azerbaijani in Cyrillic script, judged from its Cyrillic words.

    One letter such as ә or ј is no proof: a Russian message signed "Әлијев", Serbian (ј),
    Kazakh or Uzbek (ә ғ ө ү һ), a Latin "h" typed as Cyrillic "һ" all have them. So it takes:
    no letter of another Cyrillic alphabet (Kazakh қ ң і, Uzbek ў ҳ, Serbian љ њ, …); ә, ҝ or ҹ,
    or two different Azerbaijani letters (ј with ы counts); more words with Azerbaijani letters than words that are
    Russian (a letter Azerbaijani never uses, or a common Russian word); and no more words in
    Latin letters than in Cyrillic. Words mixing scripts (homoglyphs) count as neither.
    """
    if AZ_CYRILLIC_LETTERS.isdisjoint(text):
        return False
    cyrillic, latin = [], 0
    for word in _LETTERS.findall(text):
        if all(_is_cyrillic(c) for c in word):
            cyrillic.append(word.lower())
        elif not any(_is_cyrillic(c) for c in word):
            latin += 1
    used = {c for w in cyrillic for c in w}
    if not used <= _AZ_CYRILLIC_ALPHABET:
        return False
    az_letters = used & AZ_CYRILLIC_LETTERS
    if "ј" in az_letters and "ы" in used:  # Serbian and Macedonian, the other ј alphabets, lack ы
        az_letters |= {"ы"}
    if not (az_letters & _AZ_DISTINCT or len(az_letters) >= 2):
        return False
    russian = sum(1 for w in cyrillic if w in _RU_WORDS or not _RU_ONLY.isdisjoint(w))
    azerbaijani = sum(1 for w in cyrillic if not AZ_CYRILLIC_LETTERS.isdisjoint(w) and _RU_ONLY.isdisjoint(w))
    return azerbaijani > russian and len(cyrillic) >= latin


def _is_cyrillic(char: str) -> bool:
    return "\u0400" <= char <= "\u052f"


def transliterate_az_cyrillic(text: str) -> str:
    """Azerbaijani Cyrillic → Latin (the e5 tokenizer maps ҝ to UNK). Other text is unchanged."""
    return text.translate(_AZ_TABLE) if is_azerbaijani_cyrillic(text) else text


def compose(subject: str, text: str, max_chars: int = 2000) -> str:
    """The single string a classifier reads: subject and clean text, normalised and bounded.

    URLs are shortened to their host (their paths carry no meaning for triage but many tokens).
    Only the first ``2 * max_chars`` characters left after that are NFC-normalised: NFC sorts a run
    of combining marks by insertion, quadratic in its length (100,000 marks: seconds).
    """
    body = f"{subject.strip()}\n{text.strip()}" if subject.strip() else text.strip()
    body = _URL.sub(lambda m: "URL:" + m.group(0).split("/")[2 if "://" in m.group(0) else 0][:40], body)
    return unicodedata.normalize("NFC", _SPACE.sub(" ", body).strip()[: 2 * max_chars])[:max_chars]


def model_input(subject: str, text: str, max_chars: int = 2000) -> str:
    """What the transformer encodes: composed, Azerbaijani Cyrillic transliterated."""
    return transliterate_az_cyrillic(compose(subject, text, max_chars))
