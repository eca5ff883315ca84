"""HTML → text on hostile markup: linear time, bounded output, no script or style text, no exception."""

from __future__ import annotations

import random
import time

import pytest

from ingest.mail.html import AMP, LT, MAX_DEPTH, canonical_html, restore
from ingest.mail.text import html_to_text

LIMIT = 500_000  # what parse_mail converts at most (max_text_chars x HTML_FACTOR)
CPU_LIMIT_S = 5.0

PATHOLOGICAL = {  # each took seconds to minutes (or gigabytes) in html2text + html.parser alone
    "unterminated-start-tags": "<a" * 250_000,
    "unterminated-end-tags": "</" * 250_000,
    "unterminated-comments": "<!--" * 125_000,
    "unterminated-declarations": "<!" * 250_000,
    "unterminated-processing-instructions": "<?" * 250_000,
    "unterminated-marked-sections": "<![x" * 125_000,
    "unclosed-quotes": '<a b="' * 80_000,
    "stray-ampersands": "&" * 500_000,
    "bad-character-references": "&#" * 250_000,
    "nested-lists": "<ol><li>x" * 55_000,
    "nested-unordered-lists": "<ul><li>" * 60_000,
    "nested-blockquotes": "<blockquote>x" * 38_000,
    "nested-blockquotes-with-pre": "<blockquote><pre>x\ny\n" * 20_000,
    # html2text escapes Markdown at line starts with patterns beginning ^\s*: quadratic in a run of line breaks
    "line-break-runs": "<p>" + "\n" * 500_000,
    "blank-line-runs": " \n" * 250_000,
    "no-break-space-lines": "\xa0\n" * 250_000,
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", PATHOLOGICAL)
def test_pathological_html_costs_bounded_time_and_output(name: str) -> None:
    html = PATHOLOGICAL[name]
    started = time.thread_time()
    text = html_to_text(html, LIMIT)
    assert time.thread_time() - started < CPU_LIMIT_S
    assert len(text) < 10 * LIMIT  # linear: at most MAX_DEPTH levels of indentation per line (was quadratic)


SCRIPT_VECTORS = [
    "<script>alert('LEAK')</script>",
    "<SCRIPT type=text/javascript>alert('LEAK')</SCRIPT >",
    "<script/>alert('LEAK')</script>",
    "<script <x>alert('LEAK')</script>",
    "<script>document.write('</scr'+'ipt>LEAK')</script>",
    "<style>p{content:'LEAK'}</style>",
    "<style/>p{content:'LEAK'}</style>",
    "<![x[ ]]><script>alert('LEAK')</script><style>LEAK{}</style>",
    "&# <script>alert('LEAK')</script><style>LEAK{}</style>",
    "&#xZ; <script>alert('LEAK')</script>",
    "&#12abc <script>alert('LEAK')</script><b>bold</b>",
    "<title>LEAK</title><template>LEAK</template><iframe>LEAK</iframe><noembed>LEAK</noembed>",
    "<!-- LEAK --><!--> visible <!---> visible <!-- LEAK --!> visible",
    "<!DOCTYPE html LEAK><?xml LEAK?></ LEAK><!LEAK>",
    "<script>alert('LEAK')",
    "<svg><script>alert('LEAK')</script></svg><math><style>LEAK</style></math>",
]


@pytest.mark.parametrize("html", SCRIPT_VECTORS)
def test_script_style_comments_and_declarations_never_reach_the_text(html: str) -> None:
    text = html_to_text("<p>visible</p>" + html, LIMIT)
    assert "LEAK" not in text and "<script" not in text.lower() and "<b>" not in text
    assert "visible" in text


def test_markup_that_is_only_characters_stays_characters() -> None:
    """Entities, stray brackets and ampersands are what a browser shows: text, never markup."""
    text = html_to_text("<p>a < b && c &amp; d &lt;b&gt;bold&lt;/b&gt; <3 x>y &#60;i&#62;</p>", LIMIT)
    assert text.strip() == "a < b && c & d <b>bold</b> <3 x>y <i>"


def test_html5_tokenizer_rules_decide_what_is_a_tag() -> None:
    assert canonical_html("<scr<script>ipt>x</scr</script>ipt>") == "ipt>xipt>"  # tags "scr<script", "scr<"
    assert canonical_html('<p title="a>b" onclick=\'x"y\'>t</P>') == '<p title="a>b" onclick="x&quot;y">t</p>'
    assert canonical_html("<p>unclosed <a href='x") == "<p>unclosed "  # end of input inside a tag drops it
    assert canonical_html("<p>x</>y</ 1>z") == "<p>xyz"
    assert canonical_html("a\ufdd0b\ufdefc") == "abc"  # the placeholder characters cannot be smuggled in
    assert restore(canonical_html("1 < 2 & 3")) == "1 < 2 & 3"
    assert LT in canonical_html("<") and AMP in canonical_html("&")


def test_lists_and_blockquotes_lose_only_the_levels_beyond_the_limit() -> None:
    deep = "<blockquote>" * (MAX_DEPTH + 5) + "inner" + "</blockquote>" * (MAX_DEPTH + 5) + "after"
    canonical = canonical_html(deep)
    assert canonical.count("<blockquote>") == canonical.count("</blockquote>") == MAX_DEPTH
    text = html_to_text(deep, LIMIT)
    assert "> " * 3 in text and "inner" in text and text.strip().endswith("after")
    lists = canonical_html("<ul><li>a" * 50 + "</ul>" * 50 + "<ol><li>b</ol>")
    assert lists.count("<ul>") == MAX_DEPTH and lists.endswith("<ol><li>b</ol>")


@pytest.mark.timeout(120)
def test_random_markup_soup_never_raises_hangs_or_leaks_script_text() -> None:
    pieces = ["<", ">", "&", "&#", "&#x", "&lt;", ";", "<!--", "-->", "--!>", "<!", "<![", "<![CDATA[", "]]>", "<?",
              "</", "/>", "<script>", "<script/>", "</script>", "<SCRIPT ", "<style>", "</style >", "<title>",
              "<p>", "</p>", "<ol>", "<li>", "</ol>", "<blockquote>", "</blockquote>", "<a href=", '"', "'", "=",
              " ", "\n", "\x00", "<br/>", "<img src=x onerror=", "x", "word ", "<div", "<pre>", "</pre>", "\ufdd0"]
    rng = random.Random(20261122)
    for _ in range(2000):
        soup = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 300)))
        html = soup + "<p>end</p><script>alert('SENTINEL')</script>"
        started = time.thread_time()
        text = html_to_text(html, LIMIT)
        assert time.thread_time() - started < 1.0
        if "SENTINEL" in text:  # only when the soup itself made the script start plain text, as a browser would
            assert "SENTINEL" in canonical_html(html), html
