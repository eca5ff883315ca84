"""Training-time augmentation: Azerbaijani written without its letters ə ş ç ğ ı ö ü.

Customers often type Azerbaijani on keyboards without them ("cixaris" for "çıxarış"). The
character n-grams of the baseline and of the n-gram head overlap a lot between the two spellings;
the encoder's sub-word pieces do not, and on the dev and held-out sets the shipped encoder did
worse than the n-gram baseline on exactly those messages. :func:`augment` therefore adds, for
every Azerbaijani Latin-script training example that has those letters, a copy spelled without
them. Used by ``frontdesk train`` for the model's own encoder and heads (``--augment``, on by
default); the TF-IDF baseline is trained on the data as given. Pure, deterministic.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace

from classify.data import Example

_PLAIN = str.maketrans("əşçğıöüƏŞÇĞÖÜİ", "escgiouESCGOUI")
_AZ_LETTERS = re.compile("[əşçğıöüƏŞÇĞÖÜİ]")
_CYRILLIC = re.compile("[\u0400-\u04ff]")


def plain_azerbaijani(text: str) -> str:
    """``text`` with ə ş ç ğ ı ö ü (and capitals, dotted İ) as e s c g i o u."""
    return text.translate(_PLAIN)


def augment(examples: Sequence[Example]) -> list[Example]:
    """``examples`` followed by the plain-letter copies of the Azerbaijani Latin-script ones that
    have Azerbaijani letters (labels unchanged)."""
    copies = [replace(e, text=plain_azerbaijani(e.text), subject=plain_azerbaijani(e.subject))
              for e in examples
              if e.language == "az" and _AZ_LETTERS.search(e.subject + e.text)
              and not _CYRILLIC.search(e.subject + e.text)]
    return [*examples, *copies]
