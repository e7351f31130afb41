"""The cleaner: the report's cleaning rules on real Stack Exchange bodies, tables of cases, hostile input."""

from __future__ import annotations

import html as html_lib
import json
import re
import time
import unicodedata
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from selectolax.lexbor import LexborHTMLParser

from cv_pipeline.curation import cleaner
from cv_pipeline.curation.cleaner import (
    COUNT_KEYS,
    CleaningConfig,
    clean_batch,
    clean_pair,
    clean_title,
    has_code_block,
    html_to_text,
    infer_license,
    normalize_chars,
)
from cv_pipeline.sources.models import RawAnswer, RawQuestion
from cv_pipeline_tests.conftest import real_bodies, sample_bodies

GOLDEN = Path(__file__).parent / "golden"
UNICODE = CleaningConfig(normalization="unicode")
LONG = "This sentence is comfortably longer than twenty characters."


# ---------------------------------------------------------------------------------------------
# Golden files: real bodies, expected text written by hand from the HTML.


def _golden_cases() -> list[str]:
    return sorted(p.name for p in GOLDEN.glob("*.txt"))


def _source_of(golden_name: str) -> tuple[str, CleaningConfig]:
    stem = golden_name.removesuffix(".txt")
    config = CleaningConfig()
    if stem.endswith(".unicode"):
        stem, config = stem.removesuffix(".unicode"), UNICODE
    folder = "cv" if stem.startswith("cv_post_") else "bodies"
    return f"{folder}/{stem}.html", config


def test_enough_golden_files() -> None:
    assert len(_golden_cases()) >= 15


@pytest.mark.parametrize("golden_name", _golden_cases())
def test_golden(realdata: Path, golden_name: str) -> None:
    source, config = _source_of(golden_name)
    expected = (GOLDEN / golden_name).read_text(encoding="utf-8").removesuffix("\n")
    got = html_to_text((realdata / source).read_text(encoding="utf-8"), config)
    assert got == expected


def _post_body_of_closed_page(realdata: Path) -> str:
    page_file = realdata / "pages" / "question_page_fragment_stackoverflow_49345858_closed.html"
    page = page_file.read_text(encoding="utf-8")
    body = LexborHTMLParser(page).css_first("div.js-post-body")
    assert body is not None, "the page fragment should hold the post body div"
    return body.inner_html


def test_closed_page_notice_removed(realdata: Path) -> None:
    body_html = _post_body_of_closed_page(realdata)
    assert "s-notice" in body_html  # the notice really is inside the post body
    assert html_to_text(body_html) == (
        "I need to have a circular progress bar which I can use to show a user what percent they got in a test. "
        "Ideally, there would be some fixed HTML and then change the value in the JavaScript or jQuery. "
        "They could look like any of the circles below.\n\nThank you in advance."
    )
    result = clean_pair("Circular percent progress bar", body_html, f"<p>{LONG}</p>")
    assert result.kept
    assert result.changed_by["notices_removed"] == 1
    for notice_text in ("Closed", "Want to improve", "focused", "Improve this question", "3 years ago"):
        assert notice_text not in result.question


def _manifest(realdata: Path) -> list[dict]:
    return json.loads((realdata / "manifest_posts_samples.json").read_text(encoding="utf-8"))


def test_real_bodies_code_block_matches_pre_tags(realdata: Path) -> None:
    """Rule 1 on every sampled body: a body is a code-block body exactly when it has a <pre> element."""
    bodies = sorted((realdata / "bodies").glob("*.html")) + sorted((realdata / "cv").glob("*.html"))
    assert len(bodies) > 70
    flagged = 0
    for path in bodies:
        raw = path.read_text(encoding="utf-8")
        assert has_code_block(raw) == ("<pre" in raw), path.name
        flagged += has_code_block(raw)
        for config in (CleaningConfig(), UNICODE):
            text = html_to_text(raw, config)
            assert not re.search(r"</?[a-zA-Z][a-zA-Z0-9]*[\s/>]", text), path.name
            assert text == text.strip() and "\n\n\n" not in text
        assert html_to_text(raw).isascii(), path.name
    assert flagged >= 5


def test_real_batch_counts(realdata: Path) -> None:
    questions = []
    for rank, entry in enumerate(_manifest(realdata)):
        answer = None
        if entry.get("top_answer_body_file"):
            answer = RawAnswer(
                answer_id=entry["top_answer_id"],
                score=entry["top_answer_score"],
                body_html=(realdata / entry["top_answer_body_file"]).read_text(encoding="utf-8"),
            )
        questions.append(
            RawQuestion(
                question_id=rank + 1,  # ids repeat across the sampled sites; keep them distinct here
                rank=rank,
                title=entry["title"],
                body_html=(realdata / entry["question_body_file"]).read_text(encoding="utf-8"),
                score=entry["score"],
                link=entry["url"],
                top_answer=answer,
            )
        )
    rows, counts = clean_batch(questions, CleaningConfig())
    with_pre = sum(
        1
        for q in questions
        if q.top_answer is not None and ("<pre" in q.body_html or "<pre" in q.top_answer.body_html)
    )
    assert counts["no_answer"] == sum(q.top_answer is None for q in questions) == 3
    assert counts["dropped_code_block"] == with_pre
    assert counts["kept"] == len(rows) > 20
    _assert_counts_add_up(counts)
    titles = {q.question_id: q.title for q in questions}
    for row in rows:
        assert row["license"] == "unknown"  # no licence and no creation date given above
        assert row["question"].startswith(clean_title(titles[row["question_id"]]) + "\n\n")
        assert row["question"].isascii() and row["answer"].isascii()


# ---------------------------------------------------------------------------------------------
# Tables of html_to_text cases


CASES_BOTH_MODES = [
    # (html, expected in both modes)
    ("<p>a &amp; b &lt; c &gt; d &quot;e&quot; &#39;f&#39;</p>", "a & b < c > d \"e\" 'f'"),
    ("a&nbsp;b&nbsp;&nbsp;c\u00a0d", "a b c d"),
    ("\u201ca\u201d \u2018b\u2019 \u201ec\u201c", "\"a\" 'b' \"c\""),
    ("a\u2013b\u2014c\u2010d\u2011e", "a-b--c-d-e"),
    ("wait\u2026 &hellip;", "wait... ..."),
    ("soft\u00adhyphen zero\u200bwidth", "softhyphen zerowidth"),
    ("bell\x07 and\x1b escape", "bell and escape"),
    ("<ul><li>a<ul><li>b</li><li>c</li></ul></li><li>d</li></ul>", "- a\n  - b\n  - c\n- d"),
    ("<ol><li>x</li><li>y</li></ol>", "1. x\n2. y"),
    ('<ol start="3"><li>x</li><li>y</li></ol>', "3. x\n4. y"),
    ("<ol><li>a<ol><li>b</li></ol></li></ol>", "1. a\n  1. b"),
    ("<ul><li><p>first</p><p>second</p></li><li>next</li></ul>", "- first\n  second\n- next"),
    # An item whose first content is a list (Markdown "2. - x") keeps its bullet or number on a line
    # of its own, so the nested items stay under it.
    ("<p>i</p><ol><li>a</li><li><ul><li>x</li></ul></li><li>c</li></ol>", "i\n\n1. a\n2.\n  - x\n3. c"),
    ("<ul><li><ul><li>x</li><li>y</li></ul></li><li>a</li></ul>", "-\n  - x\n  - y\n- a"),
    ("<ol><li><img src=x><ol><li>x</li></ol></li><li>a</li></ol>", "1.\n  1. x\n2. a"),
    ("<ul><li><p></p><ol><li>x</li></ol>tail</li></ul>", "-\n  1. x\n  tail"),
    ("<ul><li><ul></ul>text</li></ul>", "- text"),  # an empty nested list leaves the item as it was
    ("<li><ul><li>a</li></ul></li>", "- a"),  # a stray item outside any list has no level to keep
    ("<p>intro</p><ul><li>a</li></ul><p>outro</p>", "intro\n\n- a\n\noutro"),
    ("<ul><li>a<br>b</li></ul>", "- a\n  b"),
    ("a<br>b<br/>c", "a\nb\nc"),
    ("a<br><br><br><br>b", "a\n\nb"),
    ("<p>a<br></p><p>b</p>", "a\n\nb"),
    ("<p>use <code>x &lt;- c(1, 2)</code> here</p>", "use x <- c(1, 2) here"),
    ('<aside class="s-notice s-notice__info js-post-notice"><b>Closed</b>. Off-topic.</aside><p>Body</p>', "Body"),
    ('<div class="js-post-notice">Notice text</div><p>Body</p>', "Body"),
    ('<p>Body</p><div class="post-notice">Notice text</div>', "Body"),
    # The duplicate notice Stack Exchange edited into old closed questions (cstheory_meta_1448 has one).
    ('<blockquote>\n  <p><strong>Possible Duplicate:</strong><br>\n  <a href="/q/1">Mean vs median</a></p>\n</blockquote>'
     "\n\n<p>Body</p>", "Body"),
    ("<blockquote><p><strong>Possible Duplicates:</strong><br><a href=/q/1>A</a><br><a href=/q/2>B</a></p></blockquote>"
     "<p>Body</p>", "Body"),
    ("<blockquote><p><strong>This question already has an answer here:</strong></p><ul><li><a href=/q/1>A</a>"
     "</li></ul></blockquote><p>Body</p>", "Body"),
    # ...only that notice: other quotes stay, even ones that mention it or start like it in lower case.
    ("<blockquote><p>The FAQ says: Possible Duplicate: questions get closed</p></blockquote><p>Body</p>",
     "The FAQ says: Possible Duplicate: questions get closed\n\nBody"),
    ("<blockquote><p>Possible duplicate: ask first</p></blockquote>", "Possible duplicate: ask first"),
    # A user's quote of an old question, notice and all: only the inner quote is the notice.
    ("<blockquote>\n<blockquote><p><b>Possible Duplicate:</b><br><a href=/q/1>A</a></p></blockquote>\n"
     "<p>Quoted question</p></blockquote><p>Body</p>", "Quoted question\n\nBody"),
    ("<p><strong>Possible Duplicate:</strong> not in a quote</p>", "Possible Duplicate: not in a quote"),
    ("<p>a</p><script>alert('x')</script><style>p { color: red }</style><p>b</p>", "a\n\nb"),
    ("<p>a<noscript>ns</noscript><template>tpl</template><iframe>frame</iframe>b</p>", "ab"),
    ("<p>$a &lt; b$ and $x &amp; y$ and $p<0.05$</p>", "$a < b$ and $x & y$ and $p<0.05$"),
    # A raw "<" before a letter opens a tag for every HTML parser, browsers included (the site
    # itself stores "&lt;"), so the rest of this math is gone, as it is on the rendered page.
    ("<p>$x<y$ rest</p>", "$x"),
    (
        "<p>$$\n\\begin{align} a &amp;= b \\\\\n  c &amp;= d \\end{align}\n$$</p>",
        "$$\n\\begin{align} a &= b \\\\\n  c &= d \\end{align}\n$$",
    ),
    ("<p>inline $x_1 +   x_2$ collapses</p>", "inline $x_1 + x_2$ collapses"),
    # MathJax does not read code: a "$$" in <code> never opens or closes a display-math span.
    ("<p>Use <code>$$</code> for the PID.\nThen   run\n<code>kill $$</code> later.</p>",
     "Use $$ for the PID. Then run kill $$ later."),
    ("<ul><li>PHP <code>$$name</code>\n  and\n  <code>$$x</code></li></ul>", "- PHP $$name and $$x"),
    ("<p>$$a\n  b$$ then <code>x$y</code>   z</p>", "$$a\n  b$$ then x$y z"),
    ("<p>$$a <code>q</code>\n  b$$</p>", "$$a q\n  b$$"),
    ("<p><Code>$$ a</Code>  b \n  c $$</p>", "$$ a b c $$"),
    ('<p>see <img src="x.png" alt="enter image description here"> it</p>', "see it"),
    ("<blockquote><p>quoted</p></blockquote><p>after</p>", "quoted\n\nafter"),
    ("<h2>Title</h2><p>text</p><h3>Sub</h3>", "Title\n\ntext\n\nSub"),
    ("<p>a</p><hr><p>b</p>", "a\n\nb"),
    ("  <p>  a \n\t b  </p>  ", "a b"),
    ("H<sub>2</sub>O x<sup>2</sup> <s>old</s> <strike>older</strike> <mark>m</mark> <small>s</small> <u>u</u>",
     "H2O x2 old older m s u"),
    ("<p><a href='https://example.org'>a link</a> <b>b</b><strong>s</strong> <i>i</i><em>e</em></p>", "a link bs ie"),
    (
        "<table><thead><tr><th>h1</th><th>h2</th></tr></thead><tbody><tr><td>1</td><td>2</td></tr></tbody></table>",
        "h1 | h2\n1 | 2",
    ),
    ("<p>before</p><table><tr><td>a</td><td></td><td>c</td></tr></table><p>after</p>", "before\n\na | | c\n\nafter"),
    ("<table><tr><td><p>p1</p><p>p2</p></td><td>x<br>y</td></tr></table>", "p1 p2 | x y"),
    # A list or a table inside a cell stays on the row's line; the lists around the table keep their numbering.
    ("<table><tr><td><ol start=3><li>x</li><li>y</li></ol></td><td>c</td></tr><tr><td>d</td><td>e</td></tr></table>"
     "<p>after</p>", "x y | c\nd | e\n\nafter"),
    ("<table><tr><td><table><tr><td>i1</td><td>i2</td></tr><tr><td>r2</td></tr></table></td><td>c</td></tr></table>",
     "i1 i2 r2 | c"),
    ("<ol><li>a</li><li>b<table><tr><td>c1</td><td><ul><li>z</li></ul></td></tr></table></li><li>c</li></ol>",
     "1. a\n2. b\n  c1 | z\n3. c"),
    # Display math is MathJax source, kept verbatim even in a table cell.
    ("<table><tr><td>a</td><td>$$x\n  y$$</td></tr></table>", "a | $$x\n  y$$"),
    ("<pre>  indented\n    code</pre><p>after</p>", "indented\n    code\n\nafter"),
    ("<p>x</p><pre>  kept  as   is</pre>", "x\n\n  kept  as   is"),
    ("<div><p>a</p>tail</div>", "a\n\ntail"),
    ("<li>stray item</li>", "- stray item"),
    ("<p><!-- a comment --> text</p>", "text"),
    ("", ""),
    ("<p> </p><img src='x'>", ""),
    ("plain text, no tags", "plain text, no tags"),
]


@pytest.mark.parametrize("config", [CleaningConfig(), UNICODE], ids=["ascii", "unicode"])
@pytest.mark.parametrize(("html", "expected"), CASES_BOTH_MODES)
def test_html_to_text_both_modes(html: str, expected: str, config: CleaningConfig) -> None:
    assert html_to_text(html, config) == expected


CASES_BY_MODE = [
    # (html, expected ascii, expected unicode)
    ("σ α Ω μ", "&sigma; &alpha; &Omega; &mu;", "σ α Ω μ"),
    ("café naïve Ångström", "cafe naive Angstrom", "café naïve Ångström"),
    ("cafe\u0301", "cafe", "cafe\u0301"),  # decomposed accent
    ("q\u0301 e\u0323\u0304", "q e", "q\u0301 e\u0323\u0304"),  # accents no precomposed letter absorbs
    ("x\u20d7", "x&#8407;", "x\u20d7"),  # but a combining mark for symbols (a vector arrow) means something
    ("Straße, æ, ø, ł", "Strasse, ae, o, l", "Straße, æ, ø, ł"),
    ("2×3 ≤ 7 ≥ 1 ≠ 0 ±1 a→b", "2x3 <= 7 >= 1 != 0 +/-1 a->b", "2×3 ≤ 7 ≥ 1 ≠ 0 ±1 a→b"),
    ("x² ½ ¹", "x&sup2; &frac12; &sup1;", "x² ½ ¹"),  # not "x2": superscripts keep their meaning
    ("ﬁne Ａ", "fine A", "ﬁne Ａ"),
    ("😀 ∑ 中", "&#128512; &sum; &#20013;", "😀 ∑ 中"),
    ("&sigma;&amp;&lt;", "&sigma;&<", "σ&<"),
    ("«quoted»", '"quoted"', '"quoted"'),
]


@pytest.mark.parametrize(("html", "ascii_expected", "unicode_expected"), CASES_BY_MODE)
def test_html_to_text_normalization(html: str, ascii_expected: str, unicode_expected: str) -> None:
    assert html_to_text(html) == ascii_expected
    assert html_to_text(html, UNICODE) == unicode_expected


@pytest.mark.parametrize(
    ("text", "mode", "expected", "changed"),
    [
        ("plain ascii", "ascii", "plain ascii", 0),
        ("é and σ", "ascii", "e and &sigma;", 2),
        ("é and σ", "unicode", "é and σ", 0),
        ("\u201cq\u201d", "unicode", '"q"', 2),
        ("tab\tand\nnewline stay", "ascii", "tab\tand\nnewline stay", 0),
        ("ctl\x01", "unicode", "ctl", 1),
    ],
)
def test_normalize_chars(text: str, mode: str, expected: str, changed: int) -> None:
    assert normalize_chars(text, mode) == (expected, changed)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("html", "expected"),
    [
        ("<pre><code>x = 1</code></pre>", True),
        ('<pre class="lang-r prettyprint-override"><code>x</code></pre>', True),
        ("<PRE>x</PRE>", True),
        ("<listing>x = 1</listing>", True),  # the obsolete spelling of <pre>
        ("<p>text</p><pre>\n</pre>", True),
        ("<p>inline <code>x</code> only</p>", False),
        ("<p>&lt;pre&gt; is escaped</p>", False),
        ('<p title="<pre>">attribute only</p>', False),
        ("<p>preformatted <prelude>is not pre</prelude></p>", False),
        ("", False),
    ],
)
def test_has_code_block(html: str, expected: bool) -> None:
    assert has_code_block(html) is expected


# ---------------------------------------------------------------------------------------------
# Pairs, licences and batches


def test_clean_pair_kept_with_title() -> None:
    result = clean_pair("Why is \u201cp < 0.05\u201d special?", f"<p>{LONG}</p>", f"<p>{LONG} Really.</p>")
    assert result.kept and result.dropped_reason is None
    assert result.title == 'Why is "p < 0.05" special?'
    assert result.question == f'Why is "p < 0.05" special?\n\n{LONG}'
    assert result.answer == f"{LONG} Really."
    assert result.changed_by == dict.fromkeys(
        ("notices_removed", "chars_normalized", "elements_dropped", "images_dropped"), 0
    )


def test_clean_pair_without_title() -> None:
    result = clean_pair("A title", f"<p>{LONG}</p>", f"<p>{LONG}</p>", CleaningConfig(include_title=False))
    assert result.question == LONG


@pytest.mark.parametrize(
    ("question_html", "answer_html", "config", "reason"),
    [
        (f"<p>{LONG}</p><pre><code>x</code></pre>", f"<p>{LONG}</p>", CleaningConfig(), "code_block"),
        (f"<p>{LONG}</p>", f"<p>{LONG}</p><pre>x</pre>", CleaningConfig(), "code_block"),
        ("<p> </p>", f"<p>{LONG}</p>", CleaningConfig(), "empty"),
        (f"<p>{LONG}</p>", "<img src='only-an-image.png'>", CleaningConfig(), "empty"),
        (f"<p>{LONG}</p>", "<p>Yes.</p>", CleaningConfig(), "too_short"),
        ("<p>Why?</p>", f"<p>{LONG}</p>", CleaningConfig(), "too_short"),
        ("<p>Why?</p>", "<p>Yes.</p>", CleaningConfig(min_question_chars=0, min_answer_chars=0), None),
        (f"<p>{LONG}</p>", "<p>Yes.</p>", CleaningConfig(min_answer_chars=4), None),
    ],
)
def test_clean_pair_drops(question_html: str, answer_html: str, config: CleaningConfig, reason: str | None) -> None:
    result = clean_pair("A long enough title", question_html, answer_html, config)
    assert result.dropped_reason == reason
    assert result.kept is (reason is None)
    if reason is not None:
        assert result.question is None and result.answer is None


def test_clean_pair_counts_changes() -> None:
    question = f'<aside class="s-notice">Closed.</aside><p>{LONG} σ</p><script>x()</script>'
    answer = f"<p>{LONG} \u2014 done <img src='a.png'></p>"
    result = clean_pair("T", question, answer)
    assert result.changed_by == {
        "notices_removed": 1, "chars_normalized": 2, "elements_dropped": 1, "images_dropped": 1
    }


@pytest.mark.parametrize(
    ("content_license", "creation_date", "expected"),
    [
        ("CC BY-SA 4.0", 0, "CC BY-SA 4.0"),
        (None, 1279569586, "CC BY-SA 2.5"),  # 2010-07-19, CV's first posts
        (None, 1302220799, "CC BY-SA 2.5"),
        (None, 1302220800, "CC BY-SA 3.0"),  # 2011-04-08 00:00 UTC
        (None, 1525219199, "CC BY-SA 3.0"),
        (None, 1525219200, "CC BY-SA 4.0"),  # 2018-05-02 00:00 UTC
        ("  ", 1525219200, "CC BY-SA 4.0"),
        (None, None, "unknown"),
        ("", None, "unknown"),
    ],
)
def test_infer_license(content_license: str | None, creation_date: int | None, expected: str) -> None:
    assert infer_license(content_license, creation_date) == expected


def _question(qid: int, body: str = f"<p>{LONG}</p>", answer: str | None = f"<p>{LONG}</p>", **kw) -> RawQuestion:
    top = None
    if answer is not None:
        top = RawAnswer(answer_id=qid * 10, score=3, body_html=answer, content_license="CC BY-SA 4.0")
    fields = dict(question_id=qid, rank=qid, title=f"Question number {qid}", body_html=body, score=100 - qid,
                  tags=["r", "regression"], link=f"https://stats.stackexchange.com/q/{qid}", top_answer=top)
    fields.update(kw)
    return RawQuestion(**fields)


def _assert_counts_add_up(counts: dict[str, int]) -> None:
    assert set(counts) == set(COUNT_KEYS)
    drops = ("no_answer", "dropped_duplicate", "dropped_code_block", "dropped_empty", "dropped_too_short",
             "dropped_duplicate_text", "kept")
    assert counts["input"] == sum(counts[k] for k in drops)


def test_clean_batch_rows_and_counts() -> None:
    questions = [
        _question(1, creation_date=1279569586),
        _question(1),  # same id again
        _question(2, answer=None),
        _question(3, body=f"<p>{LONG}</p><pre>code</pre>"),
        _question(4, answer="<p></p>"),
        _question(5, answer="<p>short</p>"),
        _question(6, body=f'<div class="js-post-notice">Closed</div><p>{LONG} é</p>', content_license="CC BY-SA 3.0"),
        _question(7, title="Question number 6", body=f"<p>{LONG} e</p>"),  # same text as 6 after cleaning
        _question(8, answer=None, answers=[RawAnswer(answer_id=81, score=1, body_html=f"<p>{LONG}</p>"),
                                           RawAnswer(answer_id=82, score=5, body_html=f"<p>{LONG} Best.</p>")]),
    ]
    rows, counts = clean_batch(questions, CleaningConfig())
    assert counts == {
        "input": 9, "no_answer": 1, "dropped_duplicate": 1, "dropped_code_block": 1, "dropped_empty": 1,
        "dropped_too_short": 1, "dropped_duplicate_text": 1, "kept": 3, "notices_removed": 1,
        "chars_normalized": 1, "pairs_normalized": 1, "elements_dropped": 0, "images_dropped": 0,
    }
    _assert_counts_add_up(counts)
    assert [r["question_id"] for r in rows] == [1, 6, 8]
    first = rows[0]
    assert first == {
        "question_id": 1, "answer_id": 10, "accepted_answer_id": None, "rank": 1, "question_score": 99,
        "answer_score": 3, "tags": ["r", "regression"], "title": "Question number 1",
        "question": f"Question number 1\n\n{LONG}", "answer": LONG, "link": "https://stats.stackexchange.com/q/1",
        "license": "CC BY-SA 2.5", "answer_license": "CC BY-SA 4.0", "creation_date": 1279569586,
    }
    assert rows[1]["license"] == "CC BY-SA 3.0" and rows[1]["question"].endswith(f"{LONG} e")
    assert rows[2]["answer_id"] == 82 and rows[2]["license"] == "unknown"
    # the rows are what the cleaned-pairs Parquet schema describes, column for column
    import pyarrow as pa

    from cv_pipeline.curation.dataset import CLEANED_SCHEMA

    assert list(first) == CLEANED_SCHEMA.names
    assert pa.Table.from_pylist(rows, schema=CLEANED_SCHEMA).to_pylist() == rows


def test_clean_batch_empty() -> None:
    rows, counts = clean_batch([], CleaningConfig())
    assert rows == [] and counts == dict.fromkeys(COUNT_KEYS, 0)


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="normalization"):
        CleaningConfig(normalization="latin1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="min_answer_chars"):
        CleaningConfig(min_answer_chars=-1)
    with pytest.raises(ValueError, match="extra"):
        CleaningConfig(min_chars=3)  # type: ignore[call-arg]
    assert all(f.description for f in CleaningConfig.model_fields.values())


# ---------------------------------------------------------------------------------------------
# Hostile input: never raises, never leaves markup, bounded time (hypothesis deadline)

HOSTILE = settings(
    max_examples=150, deadline=timedelta(seconds=3), suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
_TAGS = ["p", "div", "span", "ul", "ol", "li", "table", "tr", "td", "th", "pre", "code", "b", "i", "a", "em",
         "blockquote", "h1", "h3", "sup", "sub", "s", "strike", "br", "hr", "img", "script", "style", "aside", "svg",
         "math", "template", "textarea", "title", "select", "option", "noscript", "iframe", "xmp", "body", "html",
         "head", "table", "caption", "dl", "dd", "frameset", "form", "button", "listing"]
_ATTR_VALUES = st.sampled_from(['"s-notice"', "'x y'", "post-notice", '"a>b"', '""', '"<p>"', '"&amp;"'])
_ENTITIES = sorted(
    name for name, value in html_lib.entities.html5.items() if "<" not in value and name.endswith(";")
)
_SAFE_TEXT = st.text(st.characters(blacklist_characters="<&", blacklist_categories=("Cs",)), max_size=30)


@st.composite
def _token(draw: st.DrawFn) -> str:
    kind = draw(st.integers(0, 5))
    tag = draw(st.sampled_from(_TAGS))
    if kind == 0:
        attr = draw(st.one_of(st.just(""), _ATTR_VALUES.map(lambda v: f" class={v}")))
        return f"<{tag}{attr}>"
    if kind == 1:
        return f"</{tag}>"
    if kind == 2:
        return draw(_SAFE_TEXT)
    if kind == 3:
        return "&" + draw(st.sampled_from(_ENTITIES))
    if kind == 4:
        cp = draw(st.integers(0, 0x10FFFF + 10).filter(lambda n: n != 60))
        return draw(st.sampled_from([f"&#{cp};", f"&#x{cp:x};", f"&#{cp}"]))
    return draw(st.sampled_from(["<!-- c -->", "<!DOCTYPE html>", "<![CDATA[x]]>", "&" + "a" * 300 + ";", "<br/>"]))


_TAG_SOUP = st.lists(_token(), max_size=40).map("".join)
_MARKUP = re.compile(r"<[a-zA-Z/!?]")


@HOSTILE
@given(_TAG_SOUP, st.sampled_from(["ascii", "unicode"]))
def test_tag_soup_leaves_no_markup(html: str, mode: str) -> None:
    text = html_to_text(html, CleaningConfig(normalization=mode))  # type: ignore[arg-type]
    assert not _MARKUP.search(text)
    assert text == text.strip()
    assert "\n\n\n" not in text and "\x00" not in text
    if mode == "ascii":
        assert text.isascii()
    text.encode("utf-8")  # no lone surrogates: the text must survive Parquet/JSON


@HOSTILE
@given(_TAG_SOUP, _TAG_SOUP)
def test_notice_and_script_text_never_survive(before: str, after: str) -> None:
    html = f'{before}<aside class="s-notice">NOTICEXYZ</aside><script>SCRIPTXYZ</script><style>STYLEXYZ</style>{after}'
    text = html_to_text(html)
    for secret in ("NOTICEXYZ", "SCRIPTXYZ", "STYLEXYZ"):
        assert secret not in text


@HOSTILE
@given(st.text(max_size=300))
def test_arbitrary_text_never_raises(html: str) -> None:
    for config in (CleaningConfig(), UNICODE):
        text = html_to_text(html, config)
        assert text == text.strip()
        text.encode("utf-8")
    has_code_block(html)
    clean_pair(html, html, html, UNICODE)


@HOSTILE
@given(st.binary(max_size=300))
def test_invalid_utf8_never_raises(raw: bytes) -> None:
    html = raw.decode("utf-8", errors="surrogateescape")
    text = html_to_text(html)
    assert text.isascii()
    html_to_text(html, UNICODE).encode("utf-8")
    assert clean_title(html, UNICODE).encode("utf-8") is not None


@pytest.mark.parametrize(
    "html",
    [
        "<div>" * 10_000 + "deep" + "</div>" * 10_000,
        "<ul><li>" * 10_000 + "deep",
        "<b><i>" * 10_000 + "deep",
        '<ol start="2"><li>a' * 900,
        "<table><tr><td>" * 3_000 + "deep",
        "&" + "a" * 200_000 + ";",
        "&#99999999999999999999;&#x110000;&#0;&#xD800;" * 1_000,
        "<br>" * 20_000,
        "$$ a" * 20_000,
        '<ol start="' + "9" * 5_000 + '"><li>x</li></ol>',
        "\x00<p>\x00P\x00X</p>" * 1_000,
        "<frameset><frame></frameset>",
        "<script>" + "x" * 100_000,
        # The deep-input fallback's notice search: a long tag name, and a tag of many class attributes, no ">"
        # (a lazy regex once took seconds on 28 KB of this and minutes on the sizes here).
        "<div>" * 1_001 + "<b>" * 999 + "notice<" + "a" * 300_000 + " class=x",
        "<div>" * 2_100 + "notice <a" + " class=x" * 40_000,
    ],
    ids=["div10k", "ul-li10k", "b-i10k", "ol900", "table3k", "huge-entity", "bad-numeric", "br20k", "dollars",
         "huge-start", "nul", "frameset", "unclosed-script", "fallback-long-name", "fallback-many-classes"],
)
def test_hostile_documents(html: str) -> None:
    started = time.perf_counter()
    text = html_to_text(html)
    assert time.perf_counter() - started < 10, "hostile input must stay linear"  # quadratic here takes minutes
    assert not _MARKUP.search(text)
    assert text.isascii()
    # Output stays linear in the input (list indentation is capped).
    assert len(text) <= 8 * len(html) + 100


def test_deep_input_fallback_keeps_the_rules() -> None:
    """Bodies nested too deeply for the tree builder go through a linear fallback: same rules, less layout."""
    deep = "<div>" * 3_000
    text = html_to_text(deep + "<p>one</p><script>SECRET()</script><p>two &amp; \u03c3</p><!-- hidden -->")
    assert text == "one\n\ntwo & &sigma;"
    # Notices (nested elements of their own kind included), dropped elements such as <svg>, and
    # display math kept verbatim while whitespace elsewhere collapses, as in the tree passes.
    notices = (
        '<aside class="s-notice s-notice__info"><p>Closed. notice</p></aside>'
        "<div class='x post-notice'><div>inner</div>still notice</div>"
        "<div class=js-post-notice>third</div>"
    )
    body = "<p>Body $$a\n  b$$\n  x</p><svg><text>SVGTEXT</text></svg><object>obj</object><ul><li>i1</li><li>i2</li></ul>"
    expected = "Body $$a\n  b$$ x\n\ni1\n\ni2\n\nend"
    assert html_to_text(notices + body + "<span>" * 2_100 + "end") == expected
    assert html_to_text(deep + notices + body + "end") == expected
    assert html_to_text(deep + '<div class="post-notice">never closed' + "<p>gone</p>") == ""
    # A <pre> only inside what is removed is no code block, and what is removed is counted, as in the tree passes.
    for removed in ('<div class="js-post-notice"><pre>x</pre> closed</div>', "<script><pre>x</pre></script>",
                    "<!-- <pre>x</pre> -->"):
        body = removed + "<p>text</p><script>s()</script>"
        assert not has_code_block(body) and not has_code_block(deep + body)
        tree, fallback = cleaner._convert(body, CleaningConfig()), cleaner._convert(deep + body, CleaningConfig())
        assert tree.text == fallback.text == "text"
        assert (fallback.notices_removed, fallback.elements_dropped) == (tree.notices_removed, tree.elements_dropped)
    assert has_code_block(deep + "<pre>x</pre>")
    assert not has_code_block(deep + "<p>&lt;pre&gt;</p>")
    # A notice inside a notice, or anything dropped inside one, goes with it: counted once, as the fallback does.
    for body in ("<blockquote><blockquote><p>Possible Duplicate:</p><p>A</p></blockquote></blockquote><p>text</p>",
                 "<div class=post-notice><div class=post-notice>n</div><script>s</script><img src=x></div><p>text</p>"):
        tree, fallback = cleaner._convert(body, CleaningConfig()), cleaner._convert(deep + body, CleaningConfig())
        assert tree.text == fallback.text == "text"
        assert (tree.notices_removed, tree.elements_dropped, tree.images_dropped) == (1, 0, 0)
        assert (fallback.notices_removed, fallback.elements_dropped) == (1, 0)
    # The fallback looks for the notice's words inside the quote only, as the tree passes do.
    for body in ("<blockquote>Possible</blockquote> Duplicate: a<p>text</p>", "<blockquote></blockquote><p>Possible Duplicate: a</p>"):
        tree, fallback = cleaner._convert(body, CleaningConfig()), cleaner._convert(deep + body, CleaningConfig())
        assert (tree.text, tree.notices_removed) == (fallback.text, fallback.notices_removed) and tree.notices_removed == 0
    # A quote that opens with the notice (a user quoting an old question) keeps the rest, in both.
    for before in (" ", "<!-- c -->\n", "&nbsp;"):
        body = f"<blockquote>{before}<blockquote>Possible Duplicate: x</blockquote>quoted</blockquote><p>text</p>"
        tree, fallback = cleaner._convert(body, CleaningConfig()), cleaner._convert(deep + body, CleaningConfig())
        assert (tree.text, tree.notices_removed) == (fallback.text, fallback.notices_removed) == ("quoted\n\ntext", 1)
    # The old duplicate notice, a blockquote, goes too (only that one), and is counted as a notice.
    duplicate = "<blockquote>\n <p><strong>Possible Duplicate:</strong><br>\n <a href=/q/1>A &amp; B</a></p></blockquote>"
    quote = "<blockquote><p>a quote</p></blockquote>"
    for body in (duplicate + quote + "<p>text</p>", "<p>text</p>" + quote + duplicate):
        tree, fallback = cleaner._convert(body, CleaningConfig()), cleaner._convert(deep + body, CleaningConfig())
        assert tree.text == fallback.text and "a quote" in tree.text and "A & B" not in tree.text
        assert tree.notices_removed == fallback.notices_removed == 1


# ---------------------------------------------------------------------------------------------
# The fast paths give exactly what the general ones give

_RUNS_TAGS = ["p", "div", "blockquote", "h2", "dl", "dd", "em", "strong", "a", "code", "span", "b", "i", "sup",
              "math", "mi", "u", "abbr", "ul", "ol", "li", "pre", "menu", "listing", "table", "tr", "td", "th",
              "caption", "thead", "tbody"]


@st.composite
def _runs_token(draw: st.DrawFn) -> str:
    """Bodies the runs pass takes or hands on: blocks, lists, <pre>, inline markup, images, math."""
    kind = draw(st.integers(0, 5))
    if kind == 0:
        return f"<{draw(st.sampled_from(_RUNS_TAGS))}>"
    if kind == 1:
        return f"</{draw(st.sampled_from(_RUNS_TAGS))}>"
    if kind == 2:
        return draw(st.sampled_from(["<img src='x.png' alt='enter image description here'>", "<hr>", "<em></em>",
                                     "<a href='https://x'></a>", "<span> </span>", "<ol start=' 7'>",
                                     "<ol start='x'>", "<li></li>", "<li> </li>", "<pre>\n  x  \n</pre>",
                                     "<pre> </pre>", "<pre><code>a\n\n b</code></pre>", "<br>", "<br><br>",
                                     "<br/> <br>", "<table><tr><td>a</td><td></td><td> b </td></tr></table>",
                                     "<table><tr><td>$$a\n b$$</td></tr></table>", "<code>$$</code>",
                                     "<code> $ </code>", "<blockquote>", "<blockquote> Possible Duplicate: ",
                                     "<blockquote><p><b>This question already has an answer here:</b>",
                                     "Possible Duplicates:"]))
    if kind == 3:
        return draw(st.sampled_from(["$$", "$$a\n  b$$", " ", "\n", "\n\n", "\t", "&nbsp;", "&#12;", "&#160;",
                                     "\u2014", "\u03c3", "e\u0301", "\u00a0", "\x0b", "&amp;", "&lt;p&gt;", "\r"]))
    return draw(st.text(st.characters(blacklist_characters="<&", blacklist_categories=("Cs",)), max_size=12))


_RUNS_SOUP = st.lists(_runs_token(), max_size=30).map("".join)


def _both_passes(html: str, config: CleaningConfig) -> tuple[cleaner._Converted, cleaner._Converted]:
    # The Python passes themselves (test_fastclean.py compares the C accelerator with them).
    return cleaner._convert(html, config, fast=False), cleaner._convert(html, config, runs_pass=False, fast=False)


@settings(HOSTILE, max_examples=400)
@given(st.one_of(_RUNS_SOUP, _TAG_SOUP), st.sampled_from(["ascii", "unicode"]))
def test_runs_pass_matches_general_pass(html: str, mode: str) -> None:
    fast, general = _both_passes(html, CleaningConfig(normalization=mode))  # type: ignore[arg-type]
    assert fast == general  # text and every count


def _runs_pass_lays_out(html: str) -> bool:
    """Does the runs pass take this body all the way (no hand-over to the general pass)?"""
    runs = cleaner._runs_text(cleaner._parse_into_container(html), html)
    return "notice" not in html and runs is not None and (not runs[3] or cleaner._join_runs(cleaner.normalize_chars(runs[0])[0]) is not None)


def test_runs_pass_matches_general_pass_on_bodies(realdata: Path) -> None:
    bodies = real_bodies(realdata) + sample_bodies(600, seed=3)
    taken = [body for body in bodies if _runs_pass_lays_out(body)]
    assert len(taken) > 0.8 * len(bodies), "the runs pass should take most bodies, or this test checks little"
    assert any("<li>" in body for body in taken) and any("<pre" in body for body in taken)
    for config in (CleaningConfig(), UNICODE):
        for body in bodies:
            fast, general = _both_passes(body, config)
            assert fast == general, body[:300]


@pytest.mark.parametrize(
    ("html", "expected", "images"),
    [
        ("<p>a<img src=x>b <em></em>c<a href='y'><b>d</b></a>e</p>\n<blockquote><p>f</p>g</blockquote>h",
         "ab cde\n\nf\n\ng\n\nh", 1),
        ("<p>x</p><ol start='3'>\n<li>a <em>b</em></li>\n<li></li>\n<li>c</li></ol><ul><li>d</li></ul>",
         "x\n\n3. a b\n5. c\n\n- d", 0),
        ("<p>Run:</p><pre><code>  x = 1\n\ny  =  2\n</code></pre><p>done</p>", "Run:\n\n  x = 1\n\ny  =  2\n\ndone", 0),
        ("<p><br>a <br> b<br><br><br>c<br></p><p>d</p>", "a\nb\n\nc\n\nd", 0),
        ("<div class='s-table-container'><table><thead><tr><th>k</th><th>v</th></tr></thead>\n<tbody>"
         "<tr><td></td><td><em>1</em><br>2</td></tr><tr><td>x</td><td></td><td><p>y</p><p>z</p></td></tr>"
         "</tbody></table></div><p>after</p>", "k | v\n| 1 2\nx | | y z\n\nafter", 0),
    ],
)
def test_runs_pass_layouts(html: str, expected: str, images: int) -> None:
    assert _runs_pass_lays_out(html)
    conv, general = _both_passes(html, CleaningConfig())
    assert (conv.text, conv.images_dropped, conv.has_pre) == (expected, images, "<pre>" in html)
    assert conv == general


@pytest.mark.parametrize(
    "html",
    ["<p>a<!-- c -->b</p>", "<aside class='s-notice'>n</aside><p>a</p>", "<p>a</p><script>x</script>",  # never taken
     "<ul><li>a<ul><li>b</li></ul></li></ul>", "<ul><li><br>a</li></ul>", "<li>stray</li>",  # handed over
     "<ul>text<li>a</li></ul>", "<ul><li>a<br>b</li></ul>", "<pre> </pre>", "<pre><p>a</p><p>b</p></pre>",
     "<pre>a<br>b</pre>", "<table><tr><td><ul><li>a</li></ul></td></tr></table>",
     "<ul><li><table><tr><td>a</td></tr></table></li></ul>", "<table><caption><p>a</p><p>b</p></caption></table>",
     "<table><tr><td><table><tr><td>a</td></tr></table></td></tr></table>",
     "<table><tr><td>x</td><td>$$a\n b$$</td></tr></table>", "<table><caption>$$a\tb$$</caption></table>",
     # a block in a <caption> or <pre>, even an empty or blank one (its runs cannot show it)
     "<table><caption><p>Title</p></caption><tr><td>x</td></tr></table>",
     "<table><caption>a<p></p></caption><tr><td>b</td></tr></table>", "<pre>a\n<p>\n</p>\n</pre>b",
     "<pre>x<div>\x0c</pre>y", "<listing>a<dt>\r</listing>b"],
)
def test_runs_pass_hands_over_what_it_cannot_lay_out(html: str) -> None:
    assert not _runs_pass_lays_out(html)
    fast, general = _both_passes(html, CleaningConfig())
    assert fast == general


# Characters to build texts from: ASCII with controls, what the fast encoder knows, what it has to
# learn or can never take (combining marks, singletons that NFC changes, astral, unassigned).
_NORMALIZE_CHARS = st.one_of(
    st.characters(max_codepoint=0x7F),
    st.sampled_from(sorted(cleaner._FAST_ASCII.known)),
    st.sampled_from(["\u0301", "\u0308", "\u212b", "\u2126", "\u00c5", "\ufb01", "\u00b2", "\u2460", "\u0391",
                     "\u0436", "\u1e9e", "\U0001d70e", "\U0001f600", "\u0378", "\x85", "\x9f", "\u00ad"]),
    st.characters(blacklist_categories=("Cs",)),
)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(st.text(_NORMALIZE_CHARS, max_size=60))
def test_fast_ascii_normalization_matches_the_definition(text: str) -> None:
    fresh = cleaner._FastAscii(cleaner._FAST_SEED)  # learns from the texts it fails on
    for _ in range(2):  # before and after learning
        got = fresh.encode(text)
        assert got is None or got == cleaner._normalize_ascii_slow(text)
    assert normalize_chars(text) == cleaner._normalize_ascii_slow(text)


def test_fast_ascii_learns_then_stops_at_its_byte_budget() -> None:
    fast = cleaner._FastAscii("")
    assert fast.encode("caf\u00e9") is None  # unknown: the slow path, and now learnt
    assert fast.encode("caf\u00e9") == ("cafe", 1)
    assert fast.encode("\u0301") is None and "\u0301" not in fast.known  # combining: never taken on
    greek_and_cyrillic = "".join(chr(cp) for cp in range(0x391, 0x3A0)) + "".join(chr(cp) for cp in range(0x410, 0x4A0))
    fast.learn(greek_and_cyrillic)
    assert len(fast.known) == 128
    late = "\u0175"  # ŵ: eligible, but no byte left for it
    assert fast.encode(late) is None and late not in fast.known
    assert normalize_chars(late) == ("w", 1)


def test_fast_ascii_characters_are_already_nfc_in_any_text() -> None:
    """No character the fast encoder may take on combines with a neighbour under NFC.

    Every such character is NFC-stable and not combining; this checks that none is the second
    half of a canonical composition either, so text of ASCII and these characters is NFC."""
    seconds = set()
    for cp in range(0x110000):
        parts = unicodedata.decomposition(chr(cp)).split()
        if len(parts) == 2 and not parts[0].startswith("<"):
            seconds.add(chr(int(parts[1], 16)))
    eligible = [chr(cp) for lo, hi in cleaner._FAST_RANGES for cp in range(lo, hi) if cleaner._fast_eligible(chr(cp))]
    assert len(eligible) > 2000
    assert not seconds.intersection(eligible)
    text = "a" + "e".join(eligible) + "z"
    assert unicodedata.normalize("NFC", text) == text
