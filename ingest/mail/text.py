"""Bytes to readable text: charsets, RFC 2047 headers and HTML (the clean, unquoted text is
:mod:`ingest.mail.replies`).

Everything here is total: any input gives a ``str`` (possibly with U+FFFD replacement
characters) and nothing raises, because mail from the internet is routinely mislabelled.

Charset policy, in order:

1. pure ASCII is ASCII;
2. bytes that are valid UTF-8 (and not ASCII) are UTF-8 whatever the label says — valid UTF-8
   is almost never an accident, while "iso-8859-1" / "koi8-r" labels on UTF-8 text are common;
3. UTF-8 with a few broken bytes (labelled UTF-8 or Latin, or unlabelled) keeps its valid
   characters and gets U+FFFD for the broken bytes;
4. a known declared charset is used, with three exceptions that each need evidence, so that a
   short name or subject keeps its label:

   * text labelled cp1251 but written in KOI8-R (or the reverse) is recognised by its letter case
     (KOI8-R read as cp1251 gives "зДРАВСТВУЙТЕ") or, in text of one case, by clearly more of the
     common Russian letters in the other reading; a correct all-caps "ОЛЕГ" stays as it is;
   * Russian labelled Latin-1 / cp1252 / ISO-8859-15 (a frequent mislabel), or UTF-8 / ASCII that
     is neither, is recognised by its words: at least four letters in words made only of bytes
     >= 0xC0, which is how every Cyrillic word looks in both charsets and almost no Latin word
     does ('Şükrü' has ASCII letters among them), at least three times the high bytes in words
     with ASCII letters, and a reading with more common than rare Russian letters. A Turkish label
     (ISO-8859-9, windows-1254) is never overridden;
   * Latin-1 / cp1252 text with bytes that are Icelandic ÐÝÞðýþ there and Turkish ĞİŞğış in
     ISO-8859-9 / windows-1254 (the only letters in which those differ) is read as Turkish;
5. no usable label: Cyrillic by the same test, otherwise windows-1254 (Turkish, a superset of
   ISO-8859-9 in the printable range).
"""

from __future__ import annotations

import binascii
import codecs
import re
from email import quoprimime

import html2text

from ingest.mail.html import canonical_html, restore

_CHARSET_ALIASES = {
    "utf8": "utf-8",
    "utf-8": "utf-8",
    "unicode-1-1-utf-8": "utf-8",
    "cp-1251": "cp1251",
    "win-1251": "cp1251",
    "windows1251": "cp1251",
    "x-cp1251": "cp1251",
    "koi8r": "koi8-r",
    "latin5": "iso-8859-9",
    "iso8859-9": "iso-8859-9",
    "cp-1254": "cp1254",
    "win-1254": "cp1254",
    "windows1254": "cp1254",
    "x-cp1254": "cp1254",
    "ks_c_5601-1987": "cp949",
    "gb2312": "gb18030",
}
_UNUSABLE_CHARSETS = {"unknown-8bit", "x-unknown", "unknown", "8bit", "default", "x-user-defined", "binary"}
_ESCAPE_CODECS = {"unicode-escape", "raw-unicode-escape", "punycode", "idna"}  # Python notations, not charsets
_WESTERN_CODECS = {"iso8859-1", "cp1252", "iso8859-15"}
_TURKISH_CODECS = {"iso8859-9", "cp1254"}
_TURKISH_READING = {"iso8859-1": "iso8859-9", "cp1252": "cp1254"}
_TURKISH_ONLY = re.compile(rb"[\xd0\xdd\xde\xf0\xfd\xfe]")
_CYRILLIC_CODECS = ("cp1251", "koi8-r")
_HIGH_BYTES = bytes(range(0xC0, 0x100))  # the Cyrillic letters in both (but Ёё)
_CP1251_LOWER = bytes(range(0xE0, 0x100))  # lower case in cp1251, upper case in KOI8-R
_HIGH_WORD = re.compile(rb"(?<![A-Za-z\xc0-\xff])[\xc0-\xff]{2,}(?![A-Za-z\xc0-\xff])")
_CASE_FLIP = {"cp1251": re.compile(rb"[\xe0-\xff][\xc0-\xdf]"), "koi8-r": re.compile(rb"[\xc0-\xdf][\xe0-\xff]")}
# the ten commonest letters are ~2/3 of Russian text, the nine rarest ~1/20; far from it when misread
_COMMON_RUSSIAN = {codec: "оеаинтсрвлОЕАИНТСРВЛ".encode(codec) for codec in _CYRILLIC_CODECS}
_RARE_RUSSIAN = {codec: "щъэфцюшжхЩЪЭФЦЮШЖХ".encode(codec) for codec in _CYRILLIC_CODECS}
_MIN_CYRILLIC_LETTERS = 4
_LABEL_MARGIN = 2  # letter-score points the other Cyrillic reading must win by to override the label
_SAMPLE_BYTES = 64 * 1024
_FALLBACK_CODEC = "cp1254"

_ENCODED_WORD = re.compile(r"=\?([^?\s]{0,64})\?([bBqQ])\?([^?\s]*)\?=")
_ENCODED_RUN = re.compile(r"(?:=\?[^?\s]{0,64}\?[bBqQ]\?[^?\s]*\?=)+")
_VALID_NON_ASCII = re.compile(r"[^\x00-\x7f\ufffd]")
_BETWEEN_ENCODED_WORDS = re.compile(r"(\?=)[ \t\r\n]+(?==\?)")
_CONTROLS = r"\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufeff\ufffe\uffff"
_CONTROL_CHARS = re.compile(f"[{_CONTROLS}]")
_VISIBLE_CHAR = re.compile(rf"[^\s{_CONTROLS}]")
_FOLD = re.compile(r"\r?\n(?=[ \t])")
_HEADER_BREAKS = re.compile(r"[\x00-\x1f\x7f\u2028\u2029\u0085]+")
_DATA_URI = re.compile(r"data:[\w/+.-]+;base64,[A-Za-z0-9+/=\s]{100,}")
_MD_ESCAPE = re.compile(r"\\([-\\`*_{}\[\]()#+.!>])")
MANY_BLANK_LINES = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)+")


def codec_for(label: str | None) -> str | None:
    """The Python codec name for a MIME charset label, or None when it is unusable/unknown."""
    if not label:
        return None
    name = label.strip().strip("\"'").lower().split("*", 1)[0]
    name = _CHARSET_ALIASES.get(name, name)
    if not name or name in _UNUSABLE_CHARSETS:
        return None
    try:
        codec = codecs.lookup(name).name
        b"a".decode(codec, "replace")  # zlib, base64, rot13 & co. are no text charsets
    except (LookupError, UnicodeError, ValueError):
        return None
    return None if codec in _ESCAPE_CODECS else codec


def decode_bytes(data: bytes, declared: str | None) -> str:
    """Decode ``data`` following the module's charset policy; never raises."""
    if data.isascii():
        return data.decode("ascii")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    codec = codec_for(declared)
    if codec in (None, "utf-8", "ascii") or codec in _WESTERN_CODECS or codec in _TURKISH_CODECS:
        replaced = data.decode("utf-8", "replace")
        valid = len(replaced) - len(_VALID_NON_ASCII.sub("", replaced))
        # UTF-8 with a few broken bytes; real 8-bit text almost never forms valid sequences
        if valid and (codec == "utf-8" or valid >= 2 * replaced.count("\ufffd")):
            return replaced
    if codec in _CYRILLIC_CODECS:
        return data.decode(_cyrillic_reading(data[:_SAMPLE_BYTES], codec), "replace")
    if codec in ("utf-8", "ascii"):
        codec = None  # 8-bit bytes that are not UTF-8: the label is wrong
    if codec is None or codec in _WESTERN_CODECS:
        sample = data[:_SAMPLE_BYTES]
        cyrillic = _cyrillic_guess(sample)
        if cyrillic is not None:
            return data.decode(cyrillic, "replace")
        codec = _FALLBACK_CODEC if codec is None else _western_or_turkish(codec, sample)
    return data.decode(codec, "replace")


def _cyrillic_reading(sample: bytes, declared: str) -> str:
    """``declared`` (cp1251 or KOI8-R), or the other one when its reading is clearly better: fewer
    lower-to-upper case flips inside words, or as many and more common Russian letters by
    :data:`_LABEL_MARGIN` (all-caps text has no flips in either reading)."""
    other = _CYRILLIC_CODECS[declared == "cp1251"]
    if (_case_flips(sample, other), -_letter_score(sample, other)) < (
        _case_flips(sample, declared), -_letter_score(sample, declared) - _LABEL_MARGIN
    ):
        return other
    return declared


def _cyrillic_guess(sample: bytes) -> str | None:
    """cp1251 or KOI8-R when ``sample`` (unlabelled or labelled Latin) is evidently Russian, else
    None. The evidence (module docstring, 4.) is counted on whole words, so that short Latin
    words, whose accented letters stand between ASCII ones, never qualify."""
    high = _count(sample, _HIGH_BYTES)
    in_high_words = len(b"".join(_HIGH_WORD.findall(sample)))
    if in_high_words < _MIN_CYRILLIC_LETTERS or in_high_words < 3 * (high - in_high_words):
        return None
    lower = _count(sample, _CP1251_LOWER)
    lower_case = {"cp1251": lower, "koi8-r": high - lower}
    codec = max(_CYRILLIC_CODECS, key=lambda c: (-_case_flips(sample, c), _letter_score(sample, c), lower_case[c]))
    return codec if _letter_score(sample, codec) > 0 else None


def _western_or_turkish(codec: str, sample: bytes) -> str:
    """A Latin-1 / cp1252 label, or its Turkish twin when ``sample`` has one of the letters they
    differ in: Turkish ĞİŞğış is far likelier in this mail than Icelandic ÐÝÞðýþ."""
    turkish = _TURKISH_READING.get(codec)
    return turkish if turkish is not None and _TURKISH_ONLY.search(sample) else codec


def _count(data: bytes, byte_values: bytes) -> int:
    return len(data) - len(data.translate(None, byte_values))


def _case_flips(sample: bytes, codec: str) -> int:
    """Lower-case letters directly followed by upper-case ones in the ``codec`` reading."""
    return len(_CASE_FLIP[codec].findall(sample))


def _letter_score(sample: bytes, codec: str) -> int:
    return _count(sample, _COMMON_RUSSIAN[codec]) - _count(sample, _RARE_RUSSIAN[codec])


def decode_header_value(value: str) -> str:
    """Decode a raw header value: raw 8-bit bytes and RFC 2047 encoded-words, any charset.

    ``value`` is what the stdlib parser stores: str with undecodable bytes as surrogate escapes.
    Adjacent encoded-words in the same charset are joined before decoding (encoders split
    multi-byte characters across them); one that cannot be decoded is kept literally.
    """
    text = value if value.isascii() else decode_bytes(value.encode("utf-8", "surrogateescape"), None)
    text = unfold(text)
    if "=?" not in text:
        return text
    text = _BETWEEN_ENCODED_WORDS.sub(r"\1", text)
    return _ENCODED_RUN.sub(_decode_run, text)


def unfold(value: str) -> str:
    """A header value without its folding line breaks (RFC 5322 2.2.3)."""
    return _FOLD.sub("", value) if "\n" in value else value


def _decode_run(run: re.Match[str]) -> str:
    pieces: list[tuple[str | None, bytes | str]] = []
    for word in _ENCODED_WORD.finditer(run.group(0)):
        charset, data = word.group(1).lower(), _word_bytes(word.group(2).lower(), word.group(3))
        if data is None:
            pieces.append((None, word.group(0)))
        elif pieces and pieces[-1][0] == charset and isinstance(pieces[-1][1], bytes):
            pieces[-1] = (charset, pieces[-1][1] + data)
        else:
            pieces.append((charset, data))
    return "".join(data if isinstance(data, str) else decode_bytes(data, charset) for charset, data in pieces)


def _word_bytes(encoding: str, payload: str) -> bytes | None:
    try:
        if encoding == "b":
            return binascii.a2b_base64((payload + "=" * (-len(payload) % 4)).encode("ascii"))
        return quoprimime.header_decode(payload).encode("latin-1")
    except (binascii.Error, UnicodeError, ValueError):
        return None


def single_line(text: str, limit: int) -> str:
    """``text`` as one line (header-injection safe: no CR/LF/NUL/controls), at most ``limit`` chars."""
    flat = _HEADER_BREAKS.sub(" ", text)
    return " ".join(flat.split())[:limit]


def normalise_text(text: str) -> str:
    """Unix newlines, no NUL/control characters, no runs of blank lines, no outer blank lines."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL_CHARS.sub("", text)
    text = MANY_BLANK_LINES.sub("\n\n", text)
    return text.strip("\n").rstrip()


def has_visible_text(text: str) -> bool:
    """Whether :func:`normalise_text` would leave anything of ``text`` (without building it)."""
    return _VISIBLE_CHAR.search(text) is not None


def html_to_text(html: str, limit: int) -> str:
    """Readable text of an HTML body via html2text.

    Scripts, styles and other raw-text elements, comments and the head are dropped (nothing is
    executed or fetched; :mod:`ingest.mail.html` first rewrites hostile markup into canonical HTML,
    so the time is linear in ``limit``); links keep their text, images are dropped, blockquotes
    become ``> `` lines so the quote remover sees them. Markdown escapes html2text adds are undone.
    Only the first ``limit`` characters are converted, after dropping inline ``data:`` images that
    would fill them.
    """
    html = canonical_html(_DATA_URI.sub("data:", html)[:limit])
    converter = html2text.HTML2Text()
    converter.body_width = 0
    converter.unicode_snob = True
    converter.ignore_images = True
    converter.ignore_links = True
    converter.ignore_emphasis = True
    converter.ignore_tables = True
    try:
        markdown = converter.handle(html)
    except Exception:  # html2text is a best-effort parser; never lose the mail over its bugs
        markdown = re.sub(r"<[^>]*>", " ", html)
    lines = (line.rstrip() for line in restore(_MD_ESCAPE.sub(r"\1", markdown)).split("\n"))
    return "\n".join(line for line in lines if line.strip() != "* * *")  # html2text's <hr>
