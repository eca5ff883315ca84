"""Hostile HTML → canonical HTML that html2text converts in linear time without leaking script text.

html2text rides on the stdlib ``html.parser``, which (Python 3.11) takes quadratic time on
unterminated tags, comments and declarations (``"<a" * 200_000``: minutes), raises on ``<![x[``,
writes the rest of the document out as text after a ``&#`` that starts no reference, and
takes ``<script/>`` for an empty element so the script after it becomes text; html2text itself
writes output quadratic in the nesting depth of lists and blockquotes.

:func:`canonical_html` therefore tokenises the document once, left to right, with the HTML5
tokenizer's rules where they decide what is markup (tag and attribute syntax, comments, bogus
comments, raw-text elements), and writes back only what html2text needs: text, and start and end
tags with well-formed names and double-quoted attributes. Script, style, title, template, iframe
and the other elements whose content is never shown are dropped with their content (ending at
their end tag, as in HTML5, so ``<script/>`` hides what follows), comments and declarations are
dropped, lists and blockquotes deeper than ``max_depth`` lose their extra levels. Outside
``<pre>`` every whitespace run of the text becomes one space, as html2text makes it anyway, but
before html2text's Markdown escaping, whose line-start patterns are quadratic in a run of line
breaks. A ``<`` or ``&`` that starts no markup becomes a placeholder character (a Unicode
noncharacter, removed from the input first) that :func:`restore` turns back after the
conversion. Pure; linear in the input.
"""

from __future__ import annotations

import re

LT, AMP = "\ufdd0", "\ufdd1"
MAX_DEPTH = 10
_NONCHARACTERS = re.compile("[\ufdd0-\ufdef]")
_WS = "\t\n\f\r "
_TEXT = re.compile(r"[^<]+")
_TAG_NAME = re.compile(rf"[^{_WS}/>]*")
_ATTRIBUTE = re.compile(  # name, then = and a value: "quoted" (2, 3: the closing quote), 'quoted' (4, 5) or bare (6)
    rf"""([^{_WS}/>][^{_WS}/>=]*)(?:[{_WS}]*=[{_WS}]*(?:"([^"]*)(")?|'([^']*)(')?|([^{_WS}>]*)))?""")
_BETWEEN_ATTRIBUTES = re.compile(rf"[{_WS}/]*")
_SAFE_NAME = re.compile(r"[a-z][a-z0-9]*(?:[-:_.][a-z0-9]+)*")
_COMMENT_END = re.compile(r"--!?>")
_SPACE_RUN = re.compile(r"\s+")  # html2text's own collapsing of text outside <pre>
# html.parser stops at a "&#" that is not a whole reference and writes the rest out as text
_STRAY_AMP = re.compile(r"&(?!#[0-9]+(?![0-9A-Fa-f])|#[xX][0-9A-Fa-f]+(?![0-9A-Fa-f])|[A-Za-z])")
_DROPPED = {"script", "style", "template", "title", "iframe", "noembed", "noframes", "xmp"}
_NESTING = {"ol": "list", "ul": "list", "blockquote": "quote"}


def canonical_html(html: str, max_depth: int = MAX_DEPTH) -> str:
    """``html`` as canonical HTML (contract: module docstring)."""
    html = _NONCHARACTERS.sub("", html)
    out: list[str] = []
    depth = {"list": 0, "quote": 0, "pre": 0}
    i, n = 0, len(html)
    while i < n:
        if html[i] != "<":
            end = _TEXT.match(html, i).end()  # type: ignore[union-attr]
            text = html[i:end] if depth["pre"] else _SPACE_RUN.sub(" ", html[i:end])
            out.append(_STRAY_AMP.sub(AMP, text))
            i = end
            continue
        nxt = html[i + 1 : i + 2]
        if nxt.isascii() and nxt.isalpha():
            i = _start_tag(html, i + 1, out, depth, max_depth)
        elif nxt == "/" and html[i + 2 : i + 3].isascii() and html[i + 2 : i + 3].isalpha():
            i = _end_tag(html, i + 2, out, depth, max_depth)
        elif html.startswith("!--", i + 1):
            i = _comment_end(html, i + 4)
        elif nxt in ("!", "?", "/"):
            close = html.find(">", i + 2)  # a bogus comment (or "</>"): up to the first '>'
            i = n if close < 0 else close + 1
        else:
            out.append(LT)
            i += 1
    return "".join(out)


def restore(text: str) -> str:
    """Converted text with the placeholders of :func:`canonical_html` turned back into ``<`` and ``&``."""
    return text.replace(LT, "<").replace(AMP, "&")


def _comment_end(html: str, start: int) -> int:
    """Where the comment whose body begins at ``start`` ends: after ``-->``/``--!>``, or at the end."""
    if html.startswith(">", start) or html.startswith("->", start):  # "<!-->" and "<!--->"
        return html.index(">", start) + 1
    match = _COMMENT_END.search(html, start)
    return len(html) if match is None else match.end()


def _attributes(html: str, i: int) -> tuple[list[tuple[str, str]], int]:
    """The attributes from ``i`` up to the tag's ``>``: (name, raw value) pairs and the index after
    the ``>``, or ``-1`` when the input ends inside the tag (HTML5 then drops the tag)."""
    attrs: list[tuple[str, str]] = []
    n = len(html)
    while True:
        i = _BETWEEN_ATTRIBUTES.match(html, i).end()  # type: ignore[union-attr]
        if i >= n:
            return attrs, -1
        if html[i] == ">":
            return attrs, i + 1
        match = _ATTRIBUTE.match(html, i)  # matches: html[i] is none of whitespace, '/', '>'
        if (match.group(2) is not None and match.group(3) is None) or (
                match.group(4) is not None and match.group(5) is None):
            return attrs, -1  # an unclosed quote runs to the end of the input
        value = next((v for v in (match.group(2), match.group(4), match.group(6)) if v is not None), "")
        attrs.append((match.group(1).lower(), value))
        i = match.end()


def _start_tag(html: str, i: int, out: list[str], depth: dict[str, int], max_depth: int) -> int:
    end = _TAG_NAME.match(html, i).end()  # type: ignore[union-attr]
    name = html[i:end].lower()
    attrs, after = _attributes(html, end)
    if after < 0:
        return len(html)
    if name in _DROPPED:
        close = re.compile(rf"</{re.escape(name)}[{_WS}/>]", re.IGNORECASE).search(html, after)
        return len(html) if close is None else _end_tag(html, close.start() + 2, [], {}, max_depth)
    if name == "pre":  # html2text keeps the text's whitespace from <pre> to the first </pre>
        depth["pre"] = 1
    kind = _NESTING.get(name)
    if kind is not None:
        depth[kind] += 1
        if depth[kind] > max_depth:
            return after
    if _SAFE_NAME.fullmatch(name):
        quoted = "".join(f' {a}="{v.replace(chr(34), "&quot;")}"' for a, v in attrs if _SAFE_NAME.fullmatch(a))
        out.append(f"<{name}{quoted}>")
    return after


def _end_tag(html: str, i: int, out: list[str], depth: dict[str, int], max_depth: int) -> int:
    end = _TAG_NAME.match(html, i).end()  # type: ignore[union-attr]
    name = html[i:end].lower()
    _, after = _attributes(html, end)
    if after < 0:
        return len(html)
    if name == "pre" and "pre" in depth:
        depth["pre"] = 0
    kind = _NESTING.get(name)
    if kind is not None and kind in depth:
        depth[kind] = max(depth[kind] - 1, 0)
        if depth[kind] >= max_depth:
            return after
    if _SAFE_NAME.fullmatch(name):
        out.append(f"</{name}>")
    return after
