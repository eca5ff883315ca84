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
4. a known declared charset is used, except that Cyrillic text labelled cp1251 but written in
   KOI8-R (or the reverse, or labelled Latin-1/UTF-8) is recognised by its letter case;
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
    "ks_c_5601-1987": "cp949",
    "gb2312": "gb18030",
}
_UNUSABLE_CHARSETS = {"unknown-8bit", "x-unknown", "unknown", "8bit", "default", "x-user-defined", "binary"}
_ESCAPE_CODECS = {"unicode-escape", "raw-unicode-escape", "punycode", "idna"}  # Python notations, not charsets
_LATIN_LABELS = {"ascii", "iso8859-1", "cp1252", "iso8859-15", "iso8859-9", "cp1254"}
_HIGH_BYTES = bytes(range(0xC0, 0x100))
_LETTER_BYTES = bytes(range(0x80, 0x100)) + b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_CYRILLIC_CODECS = ("cp1251", "koi8-r")
_CYRILLIC_LOWER = re.compile("[а-яё]")
_SAMPLE_BYTES = 64 * 1024
_FALLBACK_CODEC = "cp1254"

_ENCODED_WORD = re.compile(r"=\?([^?\s]{0,64})\?([bBqQ])\?([^?\s]*)\?=")
_ENCODED_RUN = re.compile(r"(?:=\?[^?\s]{0,64}\?[bBqQ]\?[^?\s]*\?=)+")
_VALID_NON_ASCII = re.compile(r"[^\x00-\x7f\ufffd]")
_BETWEEN_ENCODED_WORDS = re.compile(r"(\?=)[ \t\r\n]+(?==\?)")
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufeff\ufffe\uffff]")
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
    codec = codec_for(declared)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    if codec in (None, "utf-8") or codec in _LATIN_LABELS:
        replaced = data.decode("utf-8", "replace")
        valid = len(replaced) - len(_VALID_NON_ASCII.sub("", replaced))
        # UTF-8 with a few broken bytes; real 8-bit text almost never forms valid sequences
        if valid and (codec == "utf-8" or valid >= 2 * replaced.count("\ufffd")):
            return replaced
        if codec == "utf-8":
            codec = None
    if codec is not None and codec not in _CYRILLIC_CODECS and codec not in _LATIN_LABELS:
        return data.decode(codec, "replace")
    cyrillic = _cyrillic_guess(data)
    if cyrillic is not None:
        return cyrillic
    return data.decode(codec or _FALLBACK_CODEC, "replace")


def _cyrillic_guess(data: bytes) -> str | None:
    """Decode 8-bit Cyrillic by letter case: KOI8-R read as cp1251 comes out mostly upper case."""
    sample = data[:_SAMPLE_BYTES]
    high = len(sample) - len(sample.translate(None, _HIGH_BYTES))
    letters = len(sample) - len(sample.translate(None, _LETTER_BYTES))
    if letters == 0 or high / letters < 0.5:
        return None

    def lower_case_letters(codec: str) -> int:
        text = sample.decode(codec, "replace")
        return len(text) - len(_CYRILLIC_LOWER.sub("", text))

    return data.decode(max(_CYRILLIC_CODECS, key=lower_case_letters), "replace")


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
