"""Clean 40,000 question/answer pairs (80,000 bodies) of the sample-site corpus with our cleaner
(selectolax/lexbor) and with an equivalent BeautifulSoup cleaner, in the same run, on one core.
Reports bodies/s for each (CPU time and wall time), the ratio, and how often the two produce the
same text. Goals: >= 10,000 bodies/s and >= 15x BeautifulSoup (CPU time; the machine is shared).

    .venv/bin/python benchmarks/bench_cleaner.py [--pairs 40000] [--out benchmarks/results/cleaner.json]

What the BeautifulSoup cleaner (bs4_html_to_text) does, per body:
1. strips NUL, parses with BeautifulSoup (lxml when installed, else Python's html.parser) and,
   as the HTML standard's parser does, drops a newline right after a <pre> start tag;
2. walks the bs4 tree once with bs4's own API (iteratively, so deep input cannot hit the
   recursion limit), skipping comments, notices (the same class-token test, and the same
   test of each blockquote's text for the old duplicate notice) and the same
   dropped elements, and writes the text with the same layout markers our cleaner uses
   (cleaner._mark's "\x00" + code letter at block, list, table, <br> and <pre> boundaries, and
   around <code> holding "$" in a body with "$$");
3. applies rule 4 with the cleaner's public `normalize_chars` (the rule's definition);
4. lays the marked text out with the cleaner's general marker layout, `_collapse` + `_layout`
   (straightforward str.replace/regex passes and one Python loop over the markers).
It does not use our cleaner's shortcut for paragraph-only bodies (`_lay_out`), which exists only
to make ours fast. For transparency the run also times a variant that does use it
("beautifulsoup_with_our_layout_shortcut"), so the ratio for parse + tree walk alone can be read
off as well. The outputs of both bs4 variants must equal ours on every body (asserted).
Rule 4 runs through the same `normalize_chars` on both sides, so its fast path (_FastAscii)
speeds up both cleaners alike.

Ours is the cleaner the pipeline runs: with its C accelerator (cleaner._ACCEL, _fastclean.c) where it
was built, which cleans most bodies in one C call and hands the rest to the Python passes. Steps 3
and 4 above are Python on the BeautifulSoup side. For transparency the same run also times:
- "beautifulsoup_with_c_layout": bs4's parse and walk, then the accelerator's rule 4 and layout
  (`_fastclean.lay_out` on bs4's marked text), so only the parse + walk differs between the sides;
- "pure_python": our cleaner with the accelerator switched off (`_convert(..., fast=False)`);
- parsing and plain text extraction alone, no rules: lexbor into the cleaner's reused container +
  `text()`, against `BeautifulSoup(...).get_text()` (what the issue's quick probe compared).
The cleaners are run chunk by chunk, interleaved (see `timed_interleaved`), because this host's
speed drifts within a run. bs4 is used only here.

"breakdown" in the JSON: microseconds per body for each of these, the share of bodies the
accelerator hands back, and ours and bs4 again on each kind of body separately ("paragraphs": the
runs pass finds only paragraph-like blocks; "structured": lists, tables, line breaks, <pre>, or
the general pass), with each kind's share of the bodies and of our time.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

from bs4 import BeautifulSoup, NavigableString, Tag
from bs4.element import CData, Script, Stylesheet, TemplateString

from cv_pipeline.atomic import write_json
from cv_pipeline.curation import cleaner
from cv_pipeline.sources.sample_site.corpus import SampleCorpus

GOAL_BODIES_PER_S = 10_000
GOAL_RATIO = 15.0

# ---------------------------------------------------------------------------------------------
# The BeautifulSoup cleaner: same rules, same markers as cleaner._mark


def _bs4_parser_name() -> str:
    try:
        import lxml  # noqa: F401
    except ImportError:
        return "html.parser"
    return "lxml"


# The strings lexbor's text() includes (script and style text too, not comments), for the notice test.
_LEXBOR_TEXT_TYPES = (NavigableString, CData, Script, Stylesheet, TemplateString)


def bs4_html_to_text(
    html: str,
    parser: str = "html.parser",
    normalization: str = "ascii",
    our_layout_shortcut: bool = False,
    c_layout: bool = False,
) -> str:
    if not html:
        return ""
    if "\x00" in html:
        html = html.replace("\x00", "")
    dollars = "$$" in html
    soup = BeautifulSoup(html, parser)
    out: list[str] = []
    stack: list[object] = [soup]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            if type(node) is str or type(node) is NavigableString:  # closing markers, text; no comments
                out.append(node)
            continue
        assert isinstance(node, Tag)
        tag = node.name
        classes = node.get("class") or ()
        if "js-post-notice" in classes or "post-notice" in classes or (tag == "aside" and "s-notice" in classes):
            continue
        if (tag == "blockquote" and cleaner._is_duplicate_notice(node.get_text(types=_LEXBOR_TEXT_TYPES))
                and getattr(node.find(True, recursive=False), "name", None) != "blockquote"):
            continue
        if tag in cleaner._DROP_TAGS:
            continue
        opening = closing = ""
        if tag in cleaner._BLOCK_TAGS:
            opening = closing = "\x00P"
        elif tag == "li":
            opening, closing = "\x00I", "\x00i"
        elif tag == "br":
            closing = "\x00B"
        elif tag in ("ul", "ol", "menu", "dir"):
            start = 1
            if tag == "ol":
                try:
                    start = max(-(10**9), min(10**9, int(str(node.get("start") or "1").strip())))
                except ValueError:
                    start = 1
                opening = f"\x00O{start};"
            else:
                opening = "\x00U"
            closing = "\x00E"
        elif tag in ("td", "th"):
            opening = "\x00C"
        elif tag in ("tr", "caption"):
            opening = "\x00R"
        elif tag == "table":
            opening, closing = "\x00T", "\x00t"
        elif tag in ("pre", "listing"):
            opening, closing = "\x00X", "\x00x"
            first = node.contents[0] if node.contents else None
            if type(first) is NavigableString and first.startswith("\n"):
                # The HTML parsing algorithm drops a newline right after <pre>; html.parser keeps it.
                first.replace_with(NavigableString(first[1:]))
        elif tag == "code" and dollars and "$" in node.get_text():
            opening = closing = "\x00c"  # no $$...$$ span starts or ends inside code
        if opening:
            out.append(opening)
        if closing:
            stack.append(closing)
        stack.extend(reversed(node.contents))
    marked = "".join(out)
    if c_layout and cleaner._ACCEL is not None:  # the accelerator's rule 4 and layout (None: it hands back)
        done = cleaner._ACCEL.lay_out(marked, normalization == "ascii")
        if done is not None:
            return done[0]
    marked, _ = cleaner.normalize_chars(marked, normalization)  # type: ignore[arg-type]
    if our_layout_shortcut:
        return cleaner._lay_out(marked)
    return cleaner._layout(cleaner._collapse(marked))


# ---------------------------------------------------------------------------------------------
# Where the time goes

_DEFAULT = cleaner.CleaningConfig()


def pure_python(html: str) -> str:
    """Our cleaner with the C accelerator switched off: the Python passes alone."""
    return cleaner._convert(html, _DEFAULT, fast=False).text


def handed_back(html: str) -> bool:
    """Does the accelerator hand this body to the Python passes (or is there no accelerator)?"""
    if cleaner._ACCEL is None:
        return True
    return bool(html) and not cleaner._too_deep(html) and cleaner._ACCEL.clean(html, True) is None


def body_kind(html: str) -> str:
    """'paragraphs' when the runs pass finds paragraph-like blocks only, else 'structured'."""
    runs = cleaner._tree_pass(html)[3]
    return "paragraphs" if runs is not None and not runs[3] else "structured"


def by_kind(bodies: list[str], parser: str) -> dict:
    """Ours and bs4 on each kind of body on its own: how the bodies and our time split."""
    kinds: dict[str, list[str]] = {"paragraphs": [], "structured": []}
    for body in bodies:
        kinds[body_kind(body)].append(body)
    timed = {
        kind: timed_interleaved({"ours": cleaner.html_to_text, "bs4": lambda b: bs4_html_to_text(b, parser=parser)}, part)
        for kind, part in kinds.items()
        if part
    }
    ours_total = sum(runs["ours"][2] for runs in timed.values())
    out = {}
    for kind, runs in timed.items():
        n, ours_cpu, bs_cpu = len(kinds[kind]), runs["ours"][2], runs["bs4"][2]
        out[kind] = {
            "bodies": n,
            "share_of_bodies": round(n / len(bodies), 3),
            "share_of_our_time": round(ours_cpu / ours_total, 3),
            "ours_us_per_body": round(ours_cpu / n * 1e6, 1),
            "bs4_us_per_body": round(bs_cpu / n * 1e6, 1),
            "speedup_cpu": round(bs_cpu / ours_cpu, 2),
        }
    return out


# ---------------------------------------------------------------------------------------------


def load_bodies(pairs: int) -> tuple[list[str], int]:
    """Question and top-answer bodies of the first `pairs` answered questions, in rank order."""
    corpus = SampleCorpus(n_questions=min(int(pairs * 1.25) + 100, 100_003), seed=0)
    bodies: list[str] = []
    got = 0
    for rank in range(len(corpus)):
        if got == pairs:
            break
        item = corpus.question(rank)
        answers = item.get("answers") or []
        if not answers:
            continue
        top = max(answers, key=lambda a: (a["score"], a.get("is_accepted", False), -a["answer_id"]))
        bodies += [item["body"], top["body"]]
        got += 1
    if got < pairs:
        raise SystemExit(f"the sample corpus gave only {got} answered questions; ask for fewer with --pairs")
    return bodies, got


def timed_interleaved(
    cleaners: dict[str, Callable[[str], str]], bodies: list[str], chunk: int = 2_000
) -> dict[str, tuple[list[str], float, float, list[float]]]:
    """Run every cleaner on every body, chunk by chunk, rotating which goes first.

    This host is shared and its speed drifts by tens of percent within a minute; interleaving
    gives every cleaner the same mix of slow and fast moments, so the ratio of totals holds
    even when the absolute figures move. Returns, per cleaner: outputs, wall s, CPU s, and the
    CPU seconds of each chunk (for the spread of the per-chunk ratios).
    """
    names = list(cleaners)
    outs: dict[str, list[str]] = {n: [] for n in names}
    wall = dict.fromkeys(names, 0.0)
    cpu = dict.fromkeys(names, 0.0)
    per_chunk: dict[str, list[float]] = {n: [] for n in names}
    for i, start in enumerate(range(0, len(bodies), chunk)):
        part = bodies[start : start + chunk]
        for name in names[i % len(names) :] + names[: i % len(names)]:
            fn = cleaners[name]
            gc.collect()
            w, c = time.perf_counter(), time.process_time()
            outs[name] += [fn(b) for b in part]
            c = time.process_time() - c
            wall[name] += time.perf_counter() - w
            cpu[name] += c
            per_chunk[name].append(c)
    return {n: (outs[n], wall[n], cpu[n], per_chunk[n]) for n in names}


REALDATA = Path(os.environ.get("CV_PIPELINE_REALDATA", Path(__file__).resolve().parents[2] / "shared" / "realdata"))


def load_real_bodies(realdata: Path) -> list[str]:
    """Every post body in the real samples: bodies/ and cv/ files, then the dump rows' Body fields."""
    import xml.etree.ElementTree as ET

    bodies = [p.read_text(encoding="utf-8") for p in sorted((realdata / "bodies").glob("*.html"))]
    bodies += [p.read_text(encoding="utf-8") for p in sorted((realdata / "cv").glob("*.html"))]
    for dump in sorted(realdata.glob("posts_sample_*.xml")):
        bodies += [row.get("Body") for row in ET.parse(dump).getroot().iter("row") if row.get("Body")]
    return bodies


def real_bodies_run(parser: str, rounds: int = 20) -> dict | None:
    """The same comparison on the real Stack Exchange bodies in ../shared/realdata (longer, with
    code, line breaks and loose lists), each cleaned `rounds` times; None when they are absent."""
    if not REALDATA.is_dir():
        print(f"real bodies: skipped, {REALDATA} not found", flush=True)
        return None
    bodies = load_real_bodies(REALDATA)
    runs = timed_interleaved(
        {"ours": cleaner.html_to_text, "bs4": lambda b: bs4_html_to_text(b, parser=parser)}, bodies * rounds, len(bodies)
    )
    ours_cpu, bs_cpu = runs["ours"][2], runs["bs4"][2]
    same = sum(a == b for a, b in zip(runs["ours"][0], runs["bs4"][0])) / (len(bodies) * rounds)
    n = len(bodies) * rounds
    print(f"real bodies ({len(bodies)}, {sum(map(len, bodies)) / len(bodies):.0f} chars/body): ours "
          f"{n / ours_cpu:,.0f} bodies/s, bs4 {n / bs_cpu:,.0f} bodies/s ({bs_cpu / ours_cpu:.1f}x)", flush=True)
    return {
        "bodies": len(bodies),
        "rounds": rounds,
        "mean_chars_per_body": round(sum(map(len, bodies)) / len(bodies), 1),
        "selectolax_bodies_per_s_cpu": round(n / ours_cpu),
        "beautifulsoup_bodies_per_s_cpu": round(n / bs_cpu),
        "speedup_cpu": round(bs_cpu / ours_cpu, 2),
        "same_output_fraction": round(same, 5),
    }


def _report(name: str, n: int, wall: float, cpu: float) -> None:
    print(f"{name:20s} {n / wall:9,.0f} bodies/s wall {n / cpu:9,.0f} bodies/s CPU", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=40_000)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "cleaner.json")
    ap.add_argument("--real-rounds", type=int, default=20, help="times each real body is cleaned (0: skip them)")
    args = ap.parse_args()

    pinned = None
    if hasattr(os, "sched_setaffinity"):  # one core, as the goal is stated per core
        pinned = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {pinned})
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None

    t0 = time.perf_counter()
    bodies, pairs = load_bodies(args.pairs)
    generate_s = time.perf_counter() - t0
    parser = _bs4_parser_name()
    print(f"{pairs:,} pairs, {len(bodies):,} bodies, {sum(map(len, bodies)) / len(bodies):.0f} chars/body "
          f"(generated in {generate_s:.1f}s); bs4 parser: {parser}", flush=True)

    for body in bodies[:200]:  # warm the per-character tables and the fast encoder
        cleaner.html_to_text(body)
    runs = timed_interleaved(
        {
            "ours": cleaner.html_to_text,
            "bs4": lambda b: bs4_html_to_text(b, parser=parser),
            "bs4_shortcut": lambda b: bs4_html_to_text(b, parser=parser, our_layout_shortcut=True),
            # For scale: parsing and plain text extraction alone, no rules (as in the probe).
            "lexbor_parse_text": lambda b: cleaner._parse_into_container(b).text(),
            "bs4_parse_text": lambda b: BeautifulSoup(b, parser).get_text(),
            # Where the time goes: the sides with the same rule 4 and layout; ours without the accelerator.
            "bs4_c_layout": lambda b: bs4_html_to_text(b, parser=parser, c_layout=True),
            "ours_pure_python": pure_python,
        },
        bodies,
    )
    ours, ours_wall, ours_cpu, ours_chunks = runs["ours"]
    theirs, bs_wall, bs_cpu, bs_chunks = runs["bs4"]
    shared, sh_wall, sh_cpu, _ = runs["bs4_shortcut"]
    _report("selectolax cleaner", len(bodies), ours_wall, ours_cpu)
    _report("bs4 cleaner", len(bodies), bs_wall, bs_cpu)
    _report("bs4 + our shortcut", len(bodies), sh_wall, sh_cpu)
    _report("bs4 + C layout", len(bodies), runs["bs4_c_layout"][1], runs["bs4_c_layout"][2])
    _report("ours, pure Python", len(bodies), runs["ours_pure_python"][1], runs["ours_pure_python"][2])
    if shared != theirs or runs["bs4_c_layout"][0] != theirs:
        raise SystemExit("the bs4 variants disagree: a bug in cleaner._lay_out or the accelerator's layout")
    if runs["ours_pure_python"][0] != ours:
        raise SystemExit("the accelerator and the Python passes disagree")
    chunk_ratios = sorted(b / o for b, o in zip(bs_chunks, ours_chunks))
    lexbor_text_cpu, bs4_text_cpu = runs["lexbor_parse_text"][2], runs["bs4_parse_text"][2]
    print(f"parse + text() only: lexbor {len(bodies) / lexbor_text_cpu:,.0f} bodies/s, "
          f"bs4 {len(bodies) / bs4_text_cpu:,.0f} bodies/s ({bs4_text_cpu / lexbor_text_cpu:.1f}x)", flush=True)

    differ = [i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b]
    result = {
        "pairs": pairs,
        "bodies": len(bodies),
        "mean_chars_per_body": round(sum(map(len, bodies)) / len(bodies), 1),
        "selectolax": {
            "wall_s": round(ours_wall, 3),
            "cpu_s": round(ours_cpu, 3),
            "bodies_per_s_wall": round(len(bodies) / ours_wall),
            "bodies_per_s_cpu": round(len(bodies) / ours_cpu),
        },
        "beautifulsoup": {
            "parser": parser,
            "wall_s": round(bs_wall, 3),
            "cpu_s": round(bs_cpu, 3),
            "bodies_per_s_wall": round(len(bodies) / bs_wall),
            "bodies_per_s_cpu": round(len(bodies) / bs_cpu),
        },
        "beautifulsoup_with_our_layout_shortcut": {
            "wall_s": round(sh_wall, 3),
            "cpu_s": round(sh_cpu, 3),
            "bodies_per_s_wall": round(len(bodies) / sh_wall),
            "bodies_per_s_cpu": round(len(bodies) / sh_cpu),
            "speedup_cpu": round(sh_cpu / ours_cpu, 2),
            "speedup_wall": round(sh_wall / ours_wall, 2),
        },
        "beautifulsoup_with_c_layout": {
            "what": "bs4 parse + walk, then the accelerator's rule 4 and layout (_fastclean.lay_out)",
            "cpu_s": round(runs["bs4_c_layout"][2], 3),
            "bodies_per_s_cpu": round(len(bodies) / runs["bs4_c_layout"][2]),
            "speedup_cpu": round(runs["bs4_c_layout"][2] / ours_cpu, 2),
        },
        "pure_python": {
            "what": "our cleaner without its C accelerator (the Python passes alone)",
            "cpu_s": round(runs["ours_pure_python"][2], 3),
            "bodies_per_s_cpu": round(len(bodies) / runs["ours_pure_python"][2]),
            "speedup_cpu": round(bs_cpu / runs["ours_pure_python"][2], 2),
        },
        "accelerated": cleaner.accelerated(),
        "speedup_wall": round(bs_wall / ours_wall, 2),
        "speedup_cpu": round(bs_cpu / ours_cpu, 2),
        "parse_and_text_only": {
            "what": "lexbor parse into the reused container + text() vs BeautifulSoup(...).get_text(); no rules",
            "lexbor_bodies_per_s_cpu": round(len(bodies) / lexbor_text_cpu),
            "bs4_bodies_per_s_cpu": round(len(bodies) / bs4_text_cpu),
            "speedup_cpu": round(bs4_text_cpu / lexbor_text_cpu, 2),
        },
        "speedup_cpu_per_chunk": {
            "chunks": len(chunk_ratios),
            "min": round(chunk_ratios[0], 2),
            "median": round(chunk_ratios[len(chunk_ratios) // 2], 2),
            "max": round(chunk_ratios[-1], 2),
        },
        "same_output_fraction": round(1 - len(differ) / len(bodies), 5),
        "different_output_examples": [
            {"body": bodies[i][:400], "ours": ours[i][:300], "bs4": theirs[i][:300]} for i in differ[:3]
        ],
        "goal_bodies_per_s": GOAL_BODIES_PER_S,
        "goal_speedup": GOAL_RATIO,
        "goal_met_bodies_per_s": len(bodies) / ours_cpu >= GOAL_BODIES_PER_S,
        "goal_met_speedup": bs_cpu / ours_cpu >= GOAL_RATIO,
        "pinned_cpu": pinned,
        "load_average_before": [round(x, 2) for x in load_before] if load_before else None,
        "python": sys.version.split()[0],
        "selectolax_version": version("selectolax"),
        "beautifulsoup4_version": version("beautifulsoup4"),
        "machine": platform.machine(),
        "cleaner_version": cleaner.CLEANER_VERSION,
    }
    print(f"speedup: {result['speedup_cpu']}x CPU, {result['speedup_wall']}x wall; "
          f"same output on {result['same_output_fraction']:.2%} of bodies", flush=True)
    us = 1e6 / len(bodies)
    result["breakdown"] = {
        "what": "CPU microseconds per body in the same interleaved run",
        "us_per_body": {
            "ours": round(ours_cpu * us, 2),
            "ours_pure_python": round(runs["ours_pure_python"][2] * us, 2),
            "lexbor_parse_text": round(lexbor_text_cpu * us, 2),
            "bs4_cleaner": round(bs_cpu * us, 2),
            "bs4_cleaner_with_c_layout": round(runs["bs4_c_layout"][2] * us, 2),
        },
        "handed_back_fraction": round(sum(map(handed_back, bodies)) / len(bodies), 5),
        "by_kind": by_kind(bodies[:20_000], parser),
    }
    breakdown = result["breakdown"]
    print(f"breakdown (us/body): {breakdown['us_per_body']}; the accelerator handed back "
          f"{breakdown['handed_back_fraction']:.2%} of the bodies; bs4 with the C layout "
          f"{result['beautifulsoup_with_c_layout']['speedup_cpu']}x, ours in pure Python "
          f"{result['pure_python']['speedup_cpu']}x", flush=True)
    for kind, row in breakdown["by_kind"].items():
        print(f"  {kind}: {row['share_of_bodies']:.0%} of bodies, {row['share_of_our_time']:.0%} of our time, "
              f"ours {row['ours_us_per_body']} us, bs4 {row['bs4_us_per_body']} us ({row['speedup_cpu']}x)", flush=True)
    result["real_bodies"] = real_bodies_run(parser, args.real_rounds) if args.real_rounds > 0 else None
    write_json(args.out, result)
    print(f"wrote {args.out}")
    if differ:
        raise SystemExit(f"{len(differ)} bodies cleaned differently by the two cleaners (examples in {args.out})")


if __name__ == "__main__":
    main()
