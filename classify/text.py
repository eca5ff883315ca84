"""Text preparation shared by every classifier: what the model sees of a message.

Pure Python; no heavy imports.
"""

from __future__ import annotations

import re
import unicodedata

AZ_CYRILLIC_LETTERS = frozenset("әғҝјөүһҹӘҒҜЈӨҮҺҸ")

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
    """True if the text uses a letter only Azerbaijani Cyrillic has (ә ғ ҝ ј ө ү һ ҹ)."""
    return not AZ_CYRILLIC_LETTERS.isdisjoint(text)


def transliterate_az_cyrillic(text: str) -> str:
    """Azerbaijani Cyrillic → Latin (the e5 tokenizer maps ҝ to UNK). Other text is unchanged."""
    return text.translate(_AZ_TABLE) if is_azerbaijani_cyrillic(text) else text


def compose(subject: str, text: str, max_chars: int = 2000) -> str:
    """The single string a classifier reads: subject and clean text, normalised and bounded.

    URLs are shortened to their host (their paths carry no meaning for triage but many tokens).
    """
    body = f"{subject.strip()}\n{text.strip()}" if subject.strip() else text.strip()
    body = unicodedata.normalize("NFC", body)
    body = _URL.sub(lambda m: "URL:" + m.group(0).split("/")[2 if "://" in m.group(0) else 0][:40], body)
    return _SPACE.sub(" ", body).strip()[:max_chars]


def model_input(subject: str, text: str, max_chars: int = 2000) -> str:
    """What the transformer encodes: composed, Azerbaijani Cyrillic transliterated."""
    return transliterate_az_cyrillic(compose(subject, text, max_chars))
