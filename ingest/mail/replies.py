"""The customer's own words: quoted history, reply headers and signatures removed (``clean_text``).

mail-parser-reply knows English (and languages we do not need) but not Russian, Turkish or
Azerbaijani; its English signature and disclaimer lists cut customer sentences ("Thanks, but
...", "CAUTION: ... email ..."). Its regex table is overridden in a subclass rather than by
mutating the library's module globals. Total like :mod:`ingest.mail.text`: any text gives a
``str``.
"""

from __future__ import annotations

import re
from re import Pattern
from typing import ClassVar

from mailparser_reply.constants import MAIL_LANGUAGES
from mailparser_reply.parser import EmailMessage

from ingest.mail.text import MANY_BLANK_LINES, normalise_text

_Q = r"(?:> ?)*+"
_WROTE = r"(?:wrote|пишет|писал\(а\)|написал\(а\)|написала?|писала?|(?:şunu )?yazdı|yazıb)"
_SEPARATORS = (
    r"Original Message|Исходное сообщение|Оригинальное сообщение|Orijinal [Mm]esaj|Özgün [İi]leti"
    r"|Orijinal məktub|Forwarded [Mm]essage|Пересылаемое сообщение|Пересланное сообщение"
    r"|İletilen [İi]leti|Yönləndirilmiş məktub"
)
_EMAIL_IN_BRACKETS = r"<[^<>\s@]+@[^<>\s]+>"
_CLOSINGS = (
    r"Best regards|Kind regards|Warm regards|Regards|Best wishes|Sincerely"
    r"|Yours (?:sincerely|faithfully)|С уважением|С наилучшими пожеланиями|Saygılarımla|Saygılar"
    r"|İyi çalışmalar|Hörmətlə"
)
_SENT_FROM = (
    r"Отправлено (?:с|из|со) [^\n]{1,60}"
    r"|[^\n]{1,40}(?:'[uıüi]m(?:dan|den)|'dan|'den|dan|den) gönderildi\.?"
    r"|[^\n]{1,40}(?:-dan|-dən|'dan|'dən|dan|dən) göndərildi\.?"
)


def _outlook_block(names: str) -> str:
    """An Outlook-style header block (two or more ``Name: value`` lines), as the library builds them."""
    return r"((?:(?:^|\n|\n" + _Q + r")[* ]*(?:" + names + r"):[ *]*(?:\s{,2}).*){2,}(?:\n.*){,1})"


_EXTRA_LANGUAGES: dict[str, dict[str, str]] = {
    "en": {
        # the library's own "On ... wrote:" pattern is quadratic in the line length
        "wrote_header": r"^(" + _Q + r"On\s[^\n]*(?:\n" + _Q + r"[^\n]*)?\s?wrote:)$",
        "signatures": "",  # the x-generic entry has line-anchored closings for all languages
        # "CAUTION: someone uses my email" is a customer's sentence, not a disclaimer; an empty
        # pattern would make the library drop every sentence that mentions mail, hence (?!)
        "disclaimers": r"(?!)",
    },
    "ru": {"from_header": _outlook_block("От|Отправлено|Кому|Тема|Дата|Копия")},
    "tr": {"from_header": _outlook_block("Kimden|Gönderildi|Gönderilme Tarihi|Kime|Konu|Tarih|Bilgi")},
    "az": {"from_header": _outlook_block("Kimdən|Göndərildi|Göndərilib|Kimə|Mövzu|Tarix|Surət")},
    "x-generic": {
        "wrote_header": (
            r"^(" + _Q + r"(?=[^\n]*[\d@])[^\n]{0,300}?\s" + _WROTE + r"\s?:"  # "..., 12:00, X yazdı:"
            r"|" + _Q + r"[^\n]{0,300}?" + _EMAIL_IN_BRACKETS + r"\s?:"  # "..., X <x@y>:" (Gmail ru)
            r"|" + _Q + r"[^\n]{0,300}?" + _EMAIL_IN_BRACKETS + r"\s?\n" + _Q + _WROTE + r"\s?:"  # wrapped
            r"|" + _Q + r"-{2,}\s?(?:" + _SEPARATORS + r")\s?-{2,}"
            r"|" + _Q + r"Begin forwarded message:)$"
        ),
        "signatures": r"(?:" + _CLOSINGS + r")[ \t]*[,.!]?[ \t]*$|(?:" + _SENT_FROM + r")[ \t]*$",
    },
}
_LANGUAGES = ["en", "ru", "tr", "az", "x-generic"]
_MAX_LINE = 1000
_QUOTE_PREFIX = re.compile(r"^(?:> ?)+")
_HEADER_NEEDS = (":", "--")
_UNUSUAL_SPACE = re.compile(r"[^\S \n]| (?=\s)| \Z")  # where \s*^ could start mid-line


class _LineAnchored:
    """``findall`` / ``search`` of a MULTILINE pattern whose every alternative starts at a line
    start (``^``), at a newline, or with ``\\s*^``, tried only at line starts and newlines: the
    same matches as the pattern's own methods (tested), but with mail-parser-reply's header and
    signature patterns (a dozen alternatives each) 3-6x faster than trying them at every
    character. The library calls nothing else on these two patterns.

    ``\\s*^`` can also match from a space that only whitespace separates from the next line; text
    with such a space (or with whitespace other than single spaces and newlines) is searched the
    slow way. ``clean_text`` prepares its text so that this does not happen.

    ``needs``: strings of which every match holds at least one; a text holding none has no match,
    and is not tried at all. The header pattern's alternatives all end in a colon ("... wrote:",
    "From: ...") or are dashed separators ("-----Original Message-----"), so it needs ":" or "--";
    four customer mails in ten have neither."""

    def __init__(self, pattern: Pattern[str], needs: tuple[str, ...] = ()) -> None:
        self.pattern = pattern
        self.needs = needs

    def _hopeless(self, text: str) -> bool:
        return bool(self.needs) and not any(need in text for need in self.needs)

    def search(self, text: str) -> re.Match[str] | None:
        if self._hopeless(text):
            return None
        if _UNUSUAL_SPACE.search(text) is not None:
            return self.pattern.search(text)
        pos, end = 0, len(text)
        while pos <= end:
            match = self.pattern.match(text, pos)
            if match is not None:
                return match
            if pos < end and text[pos] == "\n":
                pos += 1
            else:
                pos = text.find("\n", pos)
                if pos < 0:
                    return None
        return None

    def findall(self, text: str) -> list[tuple[str, ...]]:
        found: list[tuple[str, ...]] = []
        if self._hopeless(text):
            return found
        pos, end = 0, len(text)
        while pos <= end:
            match = self.pattern.match(text, pos)
            if match is not None:
                found.append(tuple(group or "" for group in match.groups()))
                pos = match.end() if match.end() > pos else pos + 1
            elif pos < end and text[pos] == "\n":
                pos += 1  # the line that starts after it
            else:
                pos = text.find("\n", pos)
                if pos < 0:
                    break
        return found


class _NoMatch:
    """A pattern whose required group is ``(?!)`` (it can never match), answering at once: the
    library's disclaimer pattern once our languages' entries are all "no disclaimers"."""

    def __init__(self, pattern: Pattern[str]) -> None:
        self.pattern = pattern

    def findall(self, text: str) -> list[str]:
        return []


class _ReplyMessage(EmailMessage):
    """mail-parser-reply's message with our extra languages and a conservative signature list.

    The library builds and compiles its three regexes per message; they depend only on the
    languages, the fallback language and ``keep_hyphen_lists``, so they are built once per process
    for each such setting and shared."""

    _shared: ClassVar[dict[tuple[object, ...], tuple[Pattern[str], Pattern[str], Pattern[str]]]] = {}

    def __post_init__(self) -> None:
        super().__post_init__()  # adds "en" to the languages (include_english)
        key = (tuple(self.languages), self.default_language, self.keep_hyphen_lists)
        shared = self._shared.get(key)
        if shared is None:
            needs = _HEADER_NEEDS if set(self.languages) <= set(_LANGUAGES) else ()  # proven for ours only
            disclaimers = self.DISCLAIMERS_REGEX
            wanted = [self._get_language_regex(language, "disclaimers") for language in self.languages]
            if "|".join(w for w in wanted if w) == "(?!)":  # nothing but our "no disclaimers" entry
                disclaimers = _NoMatch(disclaimers)
            shared = self._shared[key] = (_LineAnchored(self.HEADER_REGEX, needs),  # type: ignore[assignment]
                                          disclaimers,
                                          _LineAnchored(self.SIGNATURE_REGEX))
        self._header_regex, self._disclaimers_regex, self._signature_regex = shared  # type: ignore[assignment]

    def _get_language_regex(self, language: str, regex_key: str) -> str:
        override = _EXTRA_LANGUAGES.get(language, {})
        if regex_key in override:
            return override[regex_key]
        if language not in MAIL_LANGUAGES:
            return ""
        return super()._get_language_regex(language, regex_key)


def clean_text(full_text: str) -> str:
    """The customer's own words: quoted history, reply headers and signatures removed.

    Uses mail-parser-reply to split the text at reply/forward headers (en/ru/tr/az attribution
    lines, Outlook header blocks, "Original/Forwarded message" separators) and to drop
    signatures ("-- ", closings, "Sent from my iPhone" and its ru/tr/az forms); ``>``-quoted
    lines are dropped too. If nothing is left above the first header (a bare forward, or
    bottom-posting), the first fragment that still has own text is used instead.
    """
    prepared = _prepare(full_text)
    if not prepared:
        return ""
    message = _ReplyMessage(text=prepared, languages=list(_LANGUAGES), keep_hyphen_lists=True).read()
    for reply in message.replies:
        own = _drop_quoted_lines(reply.body)
        if own:
            return own
    return _drop_quoted_lines(prepared)


def _prepare(text: str) -> str:
    """Collapse whitespace runs and split very long lines: the library's regexes backtrack on them."""
    lines = []
    for line in normalise_text(text).split("\n"):
        line = " ".join(line.split())
        if line.startswith(">"):  # the only lines _QUOTE_PREFIX can change (no leading blanks left)
            line = _QUOTE_PREFIX.sub("> ", line)
        while len(line) > _MAX_LINE:
            cut = line.rfind(" ", 0, _MAX_LINE)
            cut = cut if cut > 0 else _MAX_LINE
            lines.append(line[:cut])
            line = line[cut:].lstrip()
        lines.append(line)
    return MANY_BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def _drop_quoted_lines(text: str) -> str:
    kept = [line for line in text.split("\n") if not line.lstrip().startswith(">")]
    return MANY_BLANK_LINES.sub("\n\n", "\n".join(kept)).strip()
