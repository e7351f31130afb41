"""The cleaner benchmark's comparison stays fair and runnable.

Its BeautifulSoup cleaner must give our cleaner's text on every body (else the ratio compares different
work), and the script itself must run end to end; it times nothing here (speed goals live in the
benchmark, not in tests).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from selectolax.lexbor import LexborHTMLParser

from cv_pipeline.curation import cleaner
from cv_pipeline_tests.conftest import REPO_ROOT

pytest.importorskip("bs4", reason="beautifulsoup4 is a benchmark-only dependency (the 'dev' extra)")

from benchmarks import bench_cleaner  # noqa: E402  (needs bs4)


def test_bs4_cleaner_gives_our_text_on_real_bodies(realdata: Path) -> None:
    bodies = bench_cleaner.load_real_bodies(realdata)
    assert len(bodies) > 100
    for body in bodies:
        assert bench_cleaner.bs4_html_to_text(body) == cleaner.html_to_text(body), body[:300]


@pytest.mark.parametrize(
    "html",
    [
        "<p>a<script>x()</script>b<style>p{}</style></p><!-- note --><p>c</p>",
        '<div class="js-post-notice">a</div><p>kept</p><div class="x post-notice">b</div><aside class="s-notice">c</aside>',
        "<ol start=\"3\"><li>three<ul><li>nested</li></ul></li><li>four</li></ol>",
        "<table><caption>cap</caption><tr><th>a</th><th>b</th></tr><tr><td>1<br>2</td><td>$$x\n y$$</td></tr></table>",
        "<pre>\n  code\n</pre><p>line<br><br>break</p><blockquote><p>quoted</p></blockquote>",
        "<p>caf\u00e9 \u201cquoted\u201d \u03c3\u00b2 \u2264 1 \u2014 done\u2026</p><hr><h2>Head</h2>",
        "<li>stray item</li><td>stray cell</td><object>dropped</object><img alt=x>",
        "<p>Use <code>$$</code>\n  then <code>kill $$</code></p><p>$$a\n  b$$ <code>x$</code></p>",
        "<ul><li><ol><li>nested first</li></ol></li><li>next</li></ul>",
        "<blockquote><p><strong>Possible Duplicate:</strong><br><a href=/q/1>A</a></p></blockquote><p>kept</p>"
        "<blockquote><p>a quote</p></blockquote>",
        "<blockquote><script>s()</script>Possible Duplicate: a</blockquote><p>kept</p>",  # script text counts in both
        "<blockquote> <blockquote><p>Possible Duplicate: <a href=/q/1>A</a></p></blockquote><p>q</p></blockquote>",
        "<blockquote><!-- c --><blockquote><p>Possible Duplicate: <a href=/q/1>A</a></p></blockquote><p>q</p></blockquote>",
        "<table><tr><td><ul><li>x</li><li>y</li></ul></td><td><table><tr><td>i</td><td>j</td></tr></table></td></tr></table>",
    ],
)
def test_bs4_cleaner_gives_our_text_on_structures(html: str) -> None:
    for mode in ("ascii", "unicode"):
        ours = cleaner.html_to_text(html, cleaner.CleaningConfig(normalization=mode))
        assert bench_cleaner.bs4_html_to_text(html, normalization=mode) == ours


def test_bs4_cleaner_removes_the_real_notice(realdata: Path) -> None:
    page = (realdata / "pages" / "question_page_fragment_stackoverflow_49345858_closed.html").read_text(encoding="utf-8")
    body = LexborHTMLParser(page).css_first("div.js-post-body")
    assert body is not None and "s-notice" in body.inner_html
    assert bench_cleaner.bs4_html_to_text(body.inner_html) == cleaner.html_to_text(body.inner_html)


def test_bs4_cleaner_gives_our_text_on_sample_bodies() -> None:
    bodies, pairs = bench_cleaner.load_bodies(300)
    assert pairs == 300 and len(bodies) == 600
    for body in bodies:
        assert bench_cleaner.bs4_html_to_text(body) == cleaner.html_to_text(body)
        assert bench_cleaner.bs4_html_to_text(body, our_layout_shortcut=True) == cleaner.html_to_text(body)


@pytest.mark.parametrize(
    ("html", "kind"),
    [
        ("<p>One <em>two</em>.</p><p>Three.</p>", "paragraphs"),
        ("<p>Intro</p><ul><li>a</li><li>b</li></ul>", "structured"),
        ("<p>a<br>b</p>", "structured"),
        ("<table><tr><td>1</td></tr></table>", "structured"),
        ('<p>x</p><aside class="s-notice">closed</aside>', "structured"),  # notices take the general pass
    ],
)
def test_body_kind(html: str, kind: str) -> None:
    assert bench_cleaner.body_kind(html) == kind


def test_bs4_with_c_layout_and_pure_python_give_our_text() -> None:
    # The breakdown's variants do the same work: bs4 with the accelerator's layout, ours without it.
    bodies, _ = bench_cleaner.load_bodies(100)
    for body in bodies + ["<p>caf\u00e9 \u4e2d</p>", "<ul><li>a<br>b</li></ul><p>e\u0301</p>"]:
        for mode in ("ascii", "unicode"):
            ours = cleaner.html_to_text(body, cleaner.CleaningConfig(normalization=mode))
            assert bench_cleaner.bs4_html_to_text(body, normalization=mode, c_layout=True) == ours
        assert bench_cleaner.pure_python(body) == cleaner.html_to_text(body)
    if cleaner.accelerated():
        assert not bench_cleaner.handed_back(bodies[0]) and bench_cleaner.handed_back("<p>notice</p>")


def test_benchmark_script_runs_and_records_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "cleaner.json"
    proc = subprocess.run(
        [sys.executable, "benchmarks/bench_cleaner.py", "--pairs", "40", "--out", str(out), "--real-rounds", "0"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["pairs"] == 40 and result["bodies"] == 80
    assert result["same_output_fraction"] == 1.0
    assert result["selectolax"]["bodies_per_s_cpu"] > 0 and result["beautifulsoup"]["bodies_per_s_cpu"] > 0
    assert result["goal_met_speedup"] == (result["speedup_cpu"] >= bench_cleaner.GOAL_RATIO)
    breakdown = result["breakdown"]
    assert set(breakdown["us_per_body"]) == {
        "ours", "ours_pure_python", "lexbor_parse_text", "bs4_cleaner", "bs4_cleaner_with_c_layout"
    }
    assert result["accelerated"] == cleaner.accelerated() and 0 <= breakdown["handed_back_fraction"] <= 1
    kinds = breakdown["by_kind"]
    assert sum(row["bodies"] for row in kinds.values()) == 80
    assert sum(row["share_of_our_time"] for row in kinds.values()) == pytest.approx(1.0, abs=0.01)
    assert "breakdown (us/body)" in proc.stdout
