"""Explicit urgency rules layered on the model, each kept only if it measurably helps.

A rule can only *raise* urgency (never lower it): the cost of under-triaging a hacked account or
a self-exclusion request is far higher than an extra high-priority case. ``frontdesk eval``
reports the scores with and without the rules, so their effect stays visible.

A rule must be precise; the model handles everything vaguer. The rules read a folded copy of the
text (lower case, Azerbaijani and Turkish letters without their marks: ``özümü`` → ``ozumu``,
``ё`` → ``е``), so one pattern covers the spellings with and without diacritics; Azerbaijani
Cyrillic reaches them transliterated (the model passes both renderings, see :func:`apply_rules`).
Patterns cover az, tr, en, ru and Russian in Latin letters:

- self-exclusion → critical, unless clearly negated near the match ("I do not want
  self-exclusion", "не хочу самоисключение", "özümü bloklamayın") or describing what someone
  else did ("why did you block me");
- self-harm → critical, even when denied: "I'm not going to kill myself, but…" still deserves a
  person's eyes;
- closing the account together with a first-person statement of gambling addiction → critical
  (closing an account because of gambling harm is a self-exclusion); addiction denied ("oyun
  asılılığım yoxdur") does not match;
- a gambler's age under 18 stated with its unit ("16 yaşlı oğlum", "my 15 year old son",
  "ему 14 лет") → critical, the taxonomy's "a minor gambling";
- security → at least high; large amounts in payments/security, repeated follow-ups → high.

A hacked account is critical in the taxonomy, but no rule makes it so: the words ("hacked",
"взломали", "sındırıblar") come as often in denials, guesses and thanks ("nobody hacked me", "am I
hacked?") as in reports, so the model, trained on those contrasts, decides.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from frontdesk.messages import URGENCY_ORDER

_FOLD = str.maketrans({"ə": "e", "ö": "o", "ü": "u", "ı": "i", "ş": "s", "ç": "c", "ğ": "g", "â": "a",
                       "î": "i", "û": "u", "ё": "е", "\u0307": None, "’": "'", "`": "'"})


def fold(text: str) -> str:
    """What the rules read: lower case, az/tr letters without marks (ş → s), ё → е, one apostrophe."""
    return text.replace("İ", "i").lower().translate(_FOLD)


@dataclass(frozen=True, slots=True)
class UrgencyRule:
    """Raises urgency to ``floor`` when ``pattern`` matches (and ``also``, if given, matches too)
    in a message of one of ``categories`` (any if empty). ``excluded(text, match)`` can veto a
    match (a negation next to it); the rule fires if any match of ``pattern`` survives."""

    name: str
    floor: str
    pattern: re.Pattern[str]
    categories: frozenset[str] = frozenset()
    also: re.Pattern[str] | None = None
    excluded: Callable[[str, re.Match[str]], bool] | None = None

    def applies(self, text: str, category: str) -> bool:
        """``text`` must be folded (:func:`fold`)."""
        if self.categories and category not in self.categories:
            return False
        if self.also is not None and not self.also.search(text):
            return False
        return any(self.excluded is None or not self.excluded(text, m) for m in self.pattern.finditer(text))


_AMOUNT = (
    r"(?:(?:[1-9]\d{3,}|[1-9]\d{0,2}[ .,]\d{3})(?:[.,]\d+)?\s*(?:azn|manat|азн|манат|ман\b|₼|usd|\$|eur|€|usdt))"
    r"|(?:(?:[1-9]\d{4,}|[1-9]\d{1,2}[ .,]\d{3})\s*(?:tl|try|₺|lira|rub|руб|₽))"
)
_REPEAT = (
    r"\b(?:3rd|third|4th|fourth|5th|fifth)\s+(?:time|email|message|reminder)"
    r"|(?:ucuncu|dorduncu|besinci)\s+(?:defe|kez|kere)"
    r"|(?:трет|четверт|пят)\w*\s+раз|(?:tret|chetvert|pyat)\w*\s+raz"
)
_SELF_EXCLUSION = (
    r"self[- ]?exclu|\b(?:block|ban|exclude)\s+me\b"
    r"|самоисключ|(?:за)?блокир(?:уйте|уй|овать)\s+меня|меня\s+(?:за)?блокир(?:уйте|уй|овать)\b"
    r"|samoiskl[yji]?u(?:ch|c|4)|(?:za)?blokir(?:uyte|ujte|uite|uy|uj|ovat)\s+men(?:ya|ja|ia|a)\b"
    r"|ozumu\s+(?:blok|bagla|istisna)|kendimi\s+(?:engel|blok|bloke|kapat|disla)"
)
_SELF_HARM = (
    r"suicid|\bkill(?:ing)?\s+myself|\bend\s+my\s+(?:own\s+)?life|\bend\s+it\s+all\b|\btake\s+my\s+own\s+life"
    r"|\b(?:harm|hurt)\s+myself|self[- ]harm"
    r"|поконч\w*\s+с\s+собой|поконч\w*\s+с\s+жизнью|\bуб(?:ью|ить)\s+себя|самоубийств|суицид"
    r"|не\s+хочу\s+(?:больше\s+)?жить"
    r"|pokon(?:ch|c)\w*\s+s\s+sob(?:oj|oy|oi)\b|\bub(?:yu|ju|iu|it)\s+seb(?:ya|ja|ia)\b|samoubi[jy]?stv"
    r"|intihar|ozumu\s+oldur|kendimi\s+oldur|canima\s+(?:qesd|kiy)|yasamaq\s+istemirem|yasamak\s+istemiyorum"
)
_CLOSE_ACCOUNT = (
    r"\bclose\s+(?:my|this)\s+account|\bdelete\s+my\s+account"
    r"|закр(?:ойте|ыть)\s+(?:мне\s+)?(?:мой\s+)?(?:аккаунт|сч[её]т|учетн|профиль|доступ)"
    r"|zakr(?:ojte|oyte|oite|yt)\s+(?:moj\s+|moy\s+)?(?:akkaunt|schet|profil|dostup)"
    r"|hesab(?:imi|i)\s+(?:\w+\s+)?(?:bagla|kapat|sil)"
)
_ADDICTED = (
    r"\bi'?m\s+(?:a\s+)?(?:gambling\s+)?addict|\bi\s+am\s+(?:a\s+)?(?:gambling\s+)?addict|\bmy\s+(?:gambling\s+)?addiction"
    r"|\bi\s+(?:can'?t|cannot)\s+stop"
    r"|у\s+меня\s+(?:игровая\s+)?(?:зависимость|лудомания)|\bя\s+(?:игро)?зависим|\bя\s+лудоман"
    r"|не\s+могу\s+остановиться"
    r"|u\s+menya\s+(?:igrovaya\s+)?zavisimost|ne\s+mogu\s+ostanovit"
    r"|asililigim\s+var|asiliyam|asili\s+olmusam|dayana\s+bilmirem|ozumu\s+saxlaya\s+bilmirem"
    r"|bagimlisiyim|bagimliyim|bagimli\s+oldum|bagimliligim\s+var|duramiyorum|kendimi\s+durduramiyorum"
)
_AGE = r"(?:1[0-7]|[6-9])"
_KIN = r"(?:son|daughter|brother|sister|nephew|niece|cousin|kid|child|boy|girl)"
_MINOR = (
    rf"\b{_AGE}[- ]?(?:years?|yrs?)[- ]old\s+{_KIN}|\b(?:i'?m|i\s+am)\s+(?:only\s+)?{_AGE}\b(?![.,]\d)"
    rf"|\b{_KIN}\s+(?:is|was)\s+(?:only\s+)?{_AGE}\b(?![.,]\d)"
    rf"|\b(?:ему|ей|мне)\s+(?:только\s+)?{_AGE}\b(?![.,]\d)"
    rf"|(?:сыну?|дочери|дочь|брату?|сестре?|племяннику?|ребенку?|ученик\w*)\W+(?:\w+\W+)?{_AGE}\s*(?:лет|года)\b"
    rf"|\b{_AGE}-?летн\w*\s+(?:сын|доч|брат|сестр|племян|ребен|ученик)"
    rf"|\b(?:mne|emu|ej|ey)\s+{_AGE}\s*(?:let|goda)\b"
    rf"|\b{_AGE}\s*(?:-\s*)?(?:yasli|yasinda\w*|yasi\s+var|yasim\s+var)\b"
)

# Negation or someone else's act right before a self-exclusion match, in the same clause.
_NOT_A_REQUEST_BEFORE = re.compile(
    r"(?:\b(?:not|never|no|don'?t|didn'?t|doesn'?t|won'?t)\s+"
    r"(?:(?:want|wish|need|ask|asked|asking|request|requested|mean|meant|to|a|an|any|for|be|get|apply)\s+){0,3}"
    r"|\basked\s+(?:you|them)\s+to\s+|\b(?:cancel|lift|remove|end)\s+(?:my\s+|the\s+)?"
    r"|\bwhy\b.*|(?<!can )(?<!could )(?<!would )(?<!will )(?<!please )\b(?:you|u|they)\s+(?:(?:have|had|did|just)\s+)?"
    r"|\bне\s+(?:(?:хочу|хотел|хотела|нужно|надо|нужна|нужен|прошу|собираюсь|планирую|буду|стоит|мне)\s+){0,2}"
    r"|(?:почему|зачем)\b.*|\b(?:отменить|отмените|снять|снимите)\s+(?:мо[её]\s+)?"
    r"|\bne\s+(?:(?:hochu|khochu|xochu|nuzhno|nado|proshu|nuzhna|nuzhen)\s+){0,2})$"
)
# Negative or past forms of the matched az/tr stem ("bloklaMAyın", "engelleMEsin", "kapatTIM",
# "bloklatMIŞam"): not a request, or a report of an exclusion already in place.
_NOT_A_REQUEST_SUFFIX = re.compile(r"(?:ma|me)(?:yin|sin)|mis|[dt][iu](?:m|k|n|niz)\b")
_NOT_WANTED_AFTER = re.compile(
    r"\w*\s+(?:\w+\s+)?(?:istemirem|istemirik|istemir|istemiyorum|istemiyoruz|istemem|lazim\s+deyil|lazim\s+degil"
    r"|gerek\s+yok|gerekmiyor|не\s+(?:нужн|надо|хочу|состою)|ne\s+(?:nuzhn|nado|hochu|khochu)"
    r"|ended|expired|is\s+over|bitdi|bitib|bitti|sona\s+erdi|закончил\w*|истек\w*)"
)
_CLAUSE_END = re.compile(r"[.,;:!?\n]")


def _negated(text: str, match: re.Match[str]) -> bool:
    """True if the clause around ``match`` clearly says the writer does not ask for it."""
    start = max((m.end() for m in _CLAUSE_END.finditer(text, 0, match.start())), default=0)
    if _NOT_A_REQUEST_BEFORE.search(text[start:match.start()].lstrip()):
        return True
    after = _CLAUSE_END.split(text[match.end():], maxsplit=1)[0]
    word_end = re.match(r"\w*", after)
    return bool(_NOT_A_REQUEST_SUFFIX.search(word_end.group() if word_end else "") or _NOT_WANTED_AFTER.match(after))


DEFAULT_RULES: tuple[UrgencyRule, ...] = (
    UrgencyRule("self-exclusion", "critical", re.compile(_SELF_EXCLUSION), excluded=_negated),
    UrgencyRule("self-harm", "critical", re.compile(_SELF_HARM)),
    UrgencyRule("gambling-harm-closure", "critical", re.compile(_CLOSE_ACCOUNT), also=re.compile(_ADDICTED)),
    UrgencyRule("minor-gambling", "critical", re.compile(_MINOR)),
    UrgencyRule("security-at-least-high", "high", re.compile(r"."), frozenset({"security"})),
    UrgencyRule("large-amount", "high", re.compile(_AMOUNT), frozenset({"payments", "security"})),
    UrgencyRule("repeated-follow-up", "high", re.compile(_REPEAT)),
)


def apply_rules(text: str | Sequence[str], category: str, urgency: str,
                rules: tuple[UrgencyRule, ...] = DEFAULT_RULES) -> tuple[str, tuple[str, ...]]:
    """Raise ``urgency`` to the floor of every matching rule; returns (urgency, rule names).

    ``text``: the message, or several renderings of it (as written and transliterated); a rule
    fires if it matches any. Only rules that raised the urgency are named.
    """
    texts = list(dict.fromkeys(fold(t) for t in ([text] if isinstance(text, str) else text)))  # most are one
    fired = []
    for rule in rules:
        if URGENCY_ORDER[rule.floor] > URGENCY_ORDER[urgency] and any(rule.applies(t, category) for t in texts):
            urgency = rule.floor
            fired.append(rule.name)
    return urgency, tuple(fired)
