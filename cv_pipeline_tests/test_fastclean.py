"""The cleaner's C accelerator (_fastclean.c) against the pure-Python cleaner, which defines the rules.

Every body the accelerator cleans must come out exactly as cleaner.py's own passes make it (text,
<pre> flag and every count), in both normalisation modes; what it is not sure of it hands back (None)
and cleaner.py cleans. Without a C compiler at install time the accelerator is absent and these tests
skip (CI sets CV_PIPELINE_REQUIRE_ACCELERATOR=1, so there it must have been built).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cv_pipeline.curation import cleaner
from cv_pipeline.curation.cleaner import CleaningConfig, html_to_text
from cv_pipeline_tests.conftest import real_bodies, sample_bodies
from cv_pipeline_tests.test_cleaner import _RUNS_SOUP, _TAG_SOUP, HOSTILE

ASCII, UNICODE = CleaningConfig(), CleaningConfig(normalization="unicode")


@pytest.fixture(scope="module")
def fast():
    if cleaner._ACCEL is None:
        if os.environ.get("CV_PIPELINE_REQUIRE_ACCELERATOR", "") not in ("", "0"):
            pytest.fail("the C accelerator was not built or did not load, and CV_PIPELINE_REQUIRE_ACCELERATOR is set")
        pytest.skip("the cleaner's C accelerator is not built (no C compiler at install?): the pure-Python cleaner runs")
    return cleaner._ACCEL


def _python(html: str, config: CleaningConfig) -> tuple:
    conv = cleaner._convert(html, config, fast=False)
    return conv.text, conv.has_pre, conv.images_dropped, conv.chars_normalized


def _same(fast, html: str, config: CleaningConfig) -> bool:
    """Asserts the accelerator's answer equals the Python cleaner's; returns whether it answered."""
    got = fast.clean(html, config.normalization == "ascii")
    if got is not None:
        assert tuple(got) == _python(html, config), html[:300]
    conv = cleaner._convert(html, config)  # what the pipeline runs, whichever path takes the body
    assert (conv.text, conv.has_pre, conv.images_dropped, conv.chars_normalized) == _python(html, config)
    return got is not None


def test_accelerator_is_used(fast) -> None:
    assert cleaner.accelerated()
    assert fast.clean("<p>a <b>b</b></p><ul><li>c</li></ul>", True) == ("a b\n\n- c", False, 0, 0)


@pytest.mark.parametrize("config", [ASCII, UNICODE], ids=["ascii", "unicode"])
def test_same_as_python_on_sample_site_bodies(fast, config: CleaningConfig) -> None:
    bodies = sample_bodies(700, seed=5)  # > 256 bodies: the accelerator's document is renewed on the way
    taken = sum(_same(fast, body, config) for body in bodies)
    assert taken > 0.95 * len(bodies), f"the accelerator took only {taken} of {len(bodies)} bodies"


@pytest.mark.parametrize("config", [ASCII, UNICODE], ids=["ascii", "unicode"])
def test_same_as_python_on_real_bodies(fast, realdata: Path, config: CleaningConfig) -> None:
    bodies = real_bodies(realdata)
    taken = sum(_same(fast, body, config) for body in bodies)
    assert taken > 0.8 * len(bodies), f"the accelerator took only {taken} of {len(bodies)} real bodies"


@settings(HOSTILE, max_examples=500)
@given(st.one_of(_RUNS_SOUP, _TAG_SOUP), st.sampled_from([ASCII, UNICODE]))
def test_same_as_python_on_generated_html(fast, html: str, config: CleaningConfig) -> None:
    _same(fast, html, config)


# Hand-written bodies at the edges of what the accelerator takes.
TAKEN = [
    "<p>a  <b>b</b>\n c</p><p></p><div> d </div>",
    "<ul><li>a<ul><li>b</li><li></li></ul></li><li><ol start='0'><li>c</li></ol></li></ul>text",
    "<ol start=' 7 '><li>a</li></ol>", "<ol start='+3'><li>a</li></ol>", "<ol start='-2'><li>a</li><li>b</li></ol>",
    "<ol start='x'><li>a</li></ol>", "<ol start=''><li>a</li></ol>", "<ol start='99999999999'><li>a</li></ol>",
    "<ol start='0x5'><li>a</li></ol>", "<ol start=' '><li>a</li></ol>", "<ol start='1 2'><li>a</li></ol>",
    "<table><caption>cap</caption><tr><th>k</th><th>v</th></tr><tr><td><p>a</p><p>b</p></td><td>x<br>y</td>"
    "<td><ul><li>i</li></ul><table><tr><td>in</td></tr></table></td></tr></table>after",
    "<p>a<br>b<br><br><br>c</p><br><li>stray</li>",
    "<pre>  x  \n\n  y </pre><listing>z</listing><pre><p>in</p>pre</pre>",
    "<p>$$a\n  b$$ and <code>$x$</code> $$c\n$$ <code>$$</code></p>", "$$$a$$ $$ $$ $$\x0b$$",
    "<p>a<!-- comment -->b</p>", "<p>a<img src=x alt='enter image description here'>b<img></p>",
    "<blockquote><p>quoted</p></blockquote><blockquote>  Possibly not</blockquote>",
    "<math><mi>x</mi><section>s</section></math><custom-tag>c</custom-tag><o:p>o</o:p>",
    "caf\u00e9 \u2014 \u201cq\u201d \u00a0\u2009 \u03c3\u00b2 \u2264 \u00bd \u2026 \ufb01 \u00ad\u200b x\x01\x7f\x0c y",
    "&#160;&nbsp;&#x2014;&#0;&#12;&#13;&#x85;&amp;&lt;p&gt;",
    "\u4e2d\u6587 <p>\U0001f600</p>",  # "ascii" hands these back (NFC, beyond the BMP), "unicode" keeps the BMP ones
    "<p>e\u0301 and a\u030a</p>",  # combining marks: "ascii" needs NFC, hands back
    "<table><caption><p>Title</p></caption><tr><td>x</td></tr></table>", "<pre>a\n<p>\n</p>\n</pre>b",
    "<ol start='000000000000000005'><li>a</li></ol>",
    "<math><![CDATA[x < y]]></math>",  # a text node (the HTML parser's CDATA in foreign content)
    "<hr><h1>t</h1><dl><dt>k</dt><dd>v</dd></dl><details><summary>s</summary>d</details>",
]


@pytest.mark.parametrize("config", [ASCII, UNICODE], ids=["ascii", "unicode"])
@pytest.mark.parametrize("html", TAKEN)
def test_same_as_python_on_edge_cases(fast, html: str, config: CleaningConfig) -> None:
    _same(fast, html, config)


HANDED_BACK = [
    ("<aside class='s-notice'>closed</aside><p>body</p>", "notice"),
    ("<p>the notice board</p>", "the word 'notice' (the Python pass looks for notices)"),
    ("<p>a</p><script>x</script>", "a dropped element"),
    ("<p>a</p><svg><text>x</text></svg>", "a dropped element"),
    ("<blockquote><p><b>Possible Duplicate:</b> <a href='q'>x</a></p></blockquote><p>body</p>", "duplicate notice"),
    ("<blockquote>This question already has an answer here:</blockquote>", "duplicate notice"),
    ("<blockquote>\u00a0Possible Duplicate:</blockquote>", "non-ASCII space before a quote's text"),
    ("<p>a\x00b</p>", "NUL"),
    ("<p>a\ud800b</p>", "a lone surrogate"),
    ("<ol start='1_0'><li>a</li></ol>", "an <ol start> only Python's int() reads"),
    ("<ol start='\u0663'><li>a</li></ol>", "an <ol start> only Python's int() reads"),
    ("<ol start='%s5'><li>a</li></ol>" % ("0" * 4300), "more digits than Python's int() reads (it says 1)"),
]


@pytest.mark.parametrize(("html", "why"), HANDED_BACK, ids=[f"{i}-{w}" for i, (_, w) in enumerate(HANDED_BACK)])
def test_hands_back_what_it_is_not_sure_of(fast, html: str, why: str) -> None:
    assert fast.clean(html, True) is None, why
    assert fast.clean(html, False) is None, why
    _same(fast, html, ASCII)


def test_ascii_mode_hands_back_characters_that_need_nfc(fast) -> None:
    for html in ("<p>e\u0301</p>", "<p>\u4e2d</p>", "<p>\U0001f600</p>"):
        assert fast.clean(html, True) is None, html
    assert fast.clean("<p>\u4e2d</p>", False) == ("\u4e2d", False, 0, 0)
    assert fast.clean("<p>caf\u00e9 \u03c3</p>", True) == ("cafe &sigma;", False, 0, 2)


def test_lay_out_matches_python_on_marked_text(fast) -> None:
    """lay_out (what the benchmark offers BeautifulSoup's cleaner) on _mark's output."""
    for html in [*TAKEN, *sample_bodies(60, seed=9)]:
        root = cleaner._parse_into_container(html.replace("\x00", ""))
        marked = cleaner._mark(root, cleaner._Converted(""), "notice" in html, "$$" in html)
        for mode in ("ascii", "unicode"):
            got = fast.lay_out(marked, mode == "ascii")
            if got is None:
                continue
            normalized, changed = cleaner.normalize_chars(marked, mode)  # type: ignore[arg-type]
            assert got == (cleaner._layout(cleaner._collapse(normalized)), changed), html


@pytest.mark.parametrize("marked", ["\x00O99999999999999999999;\x00Ia", "\x00O 5;\x00Ia", "\x00Ox", "\x00O+5;\x00Ia"])
def test_lay_out_hands_back_numbers_only_python_reads(fast, marked: str) -> None:
    assert fast.lay_out(marked, True) is None


def test_a_disagreeing_accelerator_stays_off(fast, monkeypatch) -> None:
    """The canaries at import: if this selectolax's Lexbor made the C code differ from the Python passes, the
    accelerator is not used (here the Python side is made to differ)."""
    real_convert = cleaner._convert

    def convert(html, config, runs_pass=True, fast=True):
        conv = real_convert(html, config, runs_pass, fast)
        conv.text += "!"
        return conv

    assert cleaner._load_accelerator() is not None
    monkeypatch.setattr(cleaner, "_convert", convert)
    assert cleaner._load_accelerator() is None


def test_large_body_and_many_documents(fast) -> None:
    """A body past the document's renewal size, and the bodies around it, still come out right."""
    big = "".join(f"<p>paragraph {i} with <em>some</em> text</p><ul><li>item {i}</li></ul>" for i in range(60_000))
    assert len(big) > 4 << 20
    for html in ["<p>before</p>", big, "<p>after</p>", big[:5000]]:
        assert _same(fast, html, ASCII)


def test_threads_get_the_same_text(fast) -> None:
    bodies = sample_bodies(150, seed=11) + TAKEN * 4
    expected = [html_to_text(b) for b in bodies]
    results: dict[int, list[str]] = {}

    def work(k: int) -> None:
        results[k] = [html_to_text(b) for b in (bodies if k % 2 else bodies[::-1])]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k, texts in results.items():
        assert texts == (expected if k % 2 else expected[::-1])


def test_switched_off_the_python_passes_clean_alike() -> None:
    """CV_PIPELINE_PURE_PYTHON_CLEANER=1 (or no compiler at install): the whole cleaner in Python, same text."""
    import json
    import subprocess
    import sys

    from cv_pipeline_tests.conftest import REPO_ROOT

    bodies = TAKEN + [h for h, _ in HANDED_BACK if "\ud800" not in h]
    code = (
        "import json, sys\nfrom cv_pipeline.curation import cleaner\n"
        "bodies = json.load(sys.stdin)\n"
        "print(json.dumps([cleaner.accelerated(), [cleaner.html_to_text(b) for b in bodies]]))"
    )
    env = {**os.environ, "CV_PIPELINE_PURE_PYTHON_CLEANER": "1"}
    proc = subprocess.run([sys.executable, "-c", code], input=json.dumps(bodies), capture_output=True, text=True,
                          env=env, cwd=REPO_ROOT, timeout=300, check=True)
    accelerated, texts = json.loads(proc.stdout)
    assert accelerated is False
    assert texts == [html_to_text(b) for b in bodies]
