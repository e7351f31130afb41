"""Chat dataset: stable hash split, de-duplication, top-N subset, content version, on-disk formats."""

from __future__ import annotations

import ast
import json
import os

import pytest

from cv_pipeline.curation import validate
from cv_pipeline.curation.dataset import (
    SPLITS,
    SplitFractions,
    build_chat_dataset,
    load_split,
    save_chat_dataset,
    split_of,
)


def pair(qid: int, score: int, rank: int = 0, question: str | None = None) -> dict:
    return {
        "question_id": qid,
        "answer_id": qid + 1_000_000,
        "rank": rank,
        "question_score": score,
        "answer_score": score // 2,
        "tags": ["regression"],
        "question": question or f"Question {qid}: how do I interpret a p-value?",
        "answer": f"Answer {qid}: it is the probability of data at least this extreme under the null.",
        "link": f"https://stats.stackexchange.com/questions/{qid}",
        "license": "CC BY-SA 4.0",
        "answer_license": "CC BY-SA 4.0",
    }


def test_split_is_stable_when_partitions_are_added():
    first = build_chat_dataset([pair(q, 1000 - q) for q in range(1, 2001)], top_n=100)
    more = build_chat_dataset([pair(q, 1000 - q) for q in range(1, 4001)], top_n=100)
    where_first = {r["question_id"]: s for s, rows in first.splits.items() for r in rows}
    where_more = {r["question_id"]: s for s, rows in more.splits.items() for r in rows}
    assert all(where_more[q] == s for q, s in where_first.items())
    # and the split sizes follow the fractions roughly (5% / 5% by default)
    assert 0.03 < len(more.splits["test"]) / 4000 < 0.07
    assert 0.03 < len(more.splits["validation"]) / 4000 < 0.07


@pytest.mark.parametrize("qid", [1, 17, 123456, 99999999])
def test_split_of_is_deterministic_and_valid(qid):
    assert split_of(qid) == split_of(qid)
    assert split_of(qid) in {"train", "validation", "test"}


def test_split_of_is_the_same_in_every_process():
    """A pair's split must not depend on the process (Python's str hash is salted per process): another process,
    with another hash seed, puts every id where this one does."""
    import subprocess
    import sys

    ids = list(range(1, 400))
    code = f"from cv_pipeline.curation.dataset import split_of; print([split_of(q) for q in {ids!r}])"
    other = {}
    for seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONHASHSEED": seed}).stdout
        other[seed] = ast.literal_eval(out.strip())
    here = [split_of(q) for q in ids]
    assert other["1"] == other["2"] == here
    assert {"train", "validation", "test"} == set(here)  # the ids reach every split: a real comparison


def test_all_test_fraction_puts_everything_in_test():
    assert {split_of(q, SplitFractions(validation=0.0, test=0.999999)) for q in range(200)} == {"test"}


def test_bad_fractions_are_refused():
    with pytest.raises(ValueError, match="split fractions"):
        SplitFractions(validation=0.6, test=0.5)


def test_duplicates_keep_the_highest_scored_copy_and_are_counted():
    rows = [pair(5, 10, question="old copy of the question"), pair(5, 40, question="new copy"), pair(6, 3)]
    ds = build_chat_dataset(rows, top_n=10)
    kept = [r for rows in ds.splits.values() for r in rows]
    assert ds.duplicates_dropped == 1
    assert sorted(r["question_id"] for r in kept) == [5, 6]
    five = next(r for r in kept if r["question_id"] == 5)
    assert five["messages"][0]["content"] == "new copy"


def test_two_copies_of_a_question_tied_on_votes_and_rank_resolve_the_same_in_any_order():
    """Files read in another order (a stale file of another partitioning beside the current ones) give the same data."""
    a = pair(5, 10, rank=3) | {"answer_id": 77, "answer_score": 4, "answer": "An older answer that was edited since."}
    b = pair(5, 10, rank=3) | {"answer_id": 78, "answer_score": 9, "answer": "The answer with more votes now."}
    first, second = build_chat_dataset([a, b, pair(6, 1)]), build_chat_dataset([b, a, pair(6, 1)])
    assert first.data_version == second.data_version
    kept = next(r for rows in first.splits.values() for r in rows if r["question_id"] == 5)
    assert kept["answer_id"] == 78


def test_top_subset_is_the_highest_voted_train_pairs():
    ds = build_chat_dataset([pair(q, q * 3 % 1000) for q in range(1, 1001)], top_n=50)
    train_scores = sorted((r["question_score"] for r in ds.splits["train"]), reverse=True)
    assert sorted((r["question_score"] for r in ds.top), reverse=True) == train_scores[:50]
    assert {r["question_id"] for r in ds.top} <= {r["question_id"] for r in ds.splits["train"]}


def test_the_data_version_follows_the_top_subset_as_well_as_the_splits():
    """The top_10k adapter trains on the top subset alone: a new top_n is new data for it, with the same splits."""
    rows = [pair(q, q) for q in range(1, 200)]
    small, large = build_chat_dataset(rows, top_n=10), build_chat_dataset(rows, top_n=20)
    assert small.splits == large.splits and small.top != large.top
    assert small.data_version != large.data_version
    assert build_chat_dataset(list(reversed(rows)), top_n=10).data_version == small.data_version


def test_votes_that_only_reshuffle_the_top_pairs_leave_what_training_reads_unchanged():
    """The top subset is kept in question-id order, like the splits: a re-scrape where two top questions swap
    places changes the scores (a new data version) but not the chats in their order, which is what the
    trainer's fingerprint reads, so the published top_10k adapter is kept instead of retrained."""
    rows = [pair(q, 1000 - q) for q in range(1, 400)]
    before = build_chat_dataset(rows, top_n=30)
    a, b = (r["question_id"] for r in sorted(before.top, key=lambda r: -r["question_score"])[:2])
    swapped = [dict(r, question_score={a: 1000 - b, b: 1000 - a}.get(r["question_id"], r["question_score"])) for r in rows]
    after = build_chat_dataset(swapped, top_n=30)
    assert [r["question_id"] for r in before.top] == sorted(r["question_id"] for r in before.top)
    assert after.data_version != before.data_version  # the scores did change
    assert [r["messages"] for r in after.top] == [r["messages"] for r in before.top]


def test_messages_alternate_and_splits_are_disjoint():
    ds = build_chat_dataset([pair(q, q) for q in range(1, 300)], top_n=20)
    assert validate.ids_in_two_splits(ds.splits) == []
    for rows in ds.splits.values():
        assert validate.bad_roles(rows) == []


def test_chat_dataset_problems_finds_each_rules_rows_and_only_the_rules_asked():
    """The blocking checks' rules, shared by the checks and chat_dataset's gate before it writes."""
    ds = build_chat_dataset([pair(q, q) for q in range(1, 300)], top_n=20)
    no_code = {"code_block_posts": lambda ids: []}
    assert validate.chat_dataset_problems(ds.splits, top=ds.top, **no_code) == dict.fromkeys(validate.CHAT_RULES, [])
    splits = {name: [json.loads(json.dumps(r)) for r in rows] for name, rows in ds.splits.items()}
    train, test = splits["train"], splits["test"]
    top = [json.loads(json.dumps(r)) for r in ds.top]
    train[0]["messages"][1]["content"] = "  "
    train[1]["messages"][1]["content"] += " <div>left</div>"
    train[2]["answer_license"] = "unknown"
    test.append(dict(train[3]))
    train[4]["messages"] = train[4]["messages"][:1]  # no assistant turn: nothing to learn
    train[5]["messages"].append({"role": "user", "content": "and then?"})  # ends on the user
    train[6]["messages"] += [{"role": "user", "content": "<p>more"}, {"role": "assistant", "content": "sure"}]
    train[7]["answer_link"] = ""
    train[8]["link"] = "/questions/9"  # not a web address
    top.append(dict(test[0]))  # the top subset is drawn from train only
    code_posts = [train[9]["question_id"], 10**9]  # what the raw posts say (an id not in the dataset changes nothing)
    problems = validate.chat_dataset_problems(splits, top=top, code_block_posts=lambda ids: [i for i in code_posts if i in ids])
    assert problems == {
        "chat_roles_alternate": sorted(train[i]["question_id"] for i in (0, 4, 5)),
        "chat_splits_disjoint": sorted([train[3]["question_id"], test[0]["question_id"]]),
        "chat_rows_licensed": sorted(train[i]["question_id"] for i in (2, 7, 8)),
        # the middle message too; the user-only row's answer is its question, which has none
        "chat_has_no_markup": sorted(train[i]["question_id"] for i in (1, 6)),
        "chat_no_code_block_posts": [train[9]["question_id"]],
    }
    # Markup the raw HTML writes escaped is the post's own text, not a leftover.
    excused = validate.chat_dataset_problems(
        splits, raw_html=lambda ids: {i: "<p>&lt;div&gt;left&lt;/div&gt; and &lt;p&gt;</p>" for i in ids},
        rules=["chat_has_no_markup"])
    assert excused == {"chat_has_no_markup": []}
    # ... as often as the text shows it: one escaped "<div>" does not excuse a "</div>" beside it
    half = validate.chat_dataset_problems(
        splits, raw_html=lambda ids: {i: "<p>&lt;div&gt; and &lt;p&gt;</p>" for i in ids}, rules=["chat_has_no_markup"])
    assert half == {"chat_has_no_markup": [train[1]["question_id"]]}
    with pytest.raises(ValueError, match="code_block_posts"):
        validate.chat_dataset_problems(splits, rules=["chat_no_code_block_posts"])


def test_data_version_changes_with_content_only():
    rows = [pair(q, q) for q in range(1, 100)]
    a = build_chat_dataset(rows, top_n=10).data_version
    assert build_chat_dataset(list(reversed(rows)), top_n=10).data_version == a
    changed = [dict(r) for r in rows]
    changed[3]["answer"] += " (edited)"
    assert build_chat_dataset(changed, top_n=10).data_version != a


def test_saved_dataset_loads_back_with_every_split(tmp_path):
    ds = build_chat_dataset([pair(q, q) for q in range(1, 200)], top_n=25)
    out = save_chat_dataset(ds, tmp_path / "chat", source="unit test")
    for split in ("train", "validation", "test", "top_10k"):
        loaded = load_split(out, split)
        expected = ds.top if split == "top_10k" else ds.splits[split]
        assert len(loaded) == len(expected)
        jsonl = [json.loads(line) for line in open(out / f"{split}.jsonl")]
        assert [r["question_id"] for r in jsonl] == [r["question_id"] for r in expected]
    assert loaded[0]["messages"][0]["role"] == "user"
    assert (out / "README.md").read_text().count("CC BY-SA") >= 1
    assert (out / "lengths.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(KeyError, match="no split 'dev'"):
        load_split(out, "dev")


def test_empty_splits_are_saved_loadable(tmp_path):
    """A zero fraction (or a corpus too small to reach a split) leaves splits empty; every split, the
    empty ones included, must still load back with the chat features."""
    ds = build_chat_dataset([pair(q, q) for q in range(1, 60)], top_n=0, fractions=SplitFractions(validation=0.0))
    assert not ds.splits["validation"] and not ds.top and ds.splits["train"]
    out = save_chat_dataset(ds, tmp_path / "chat", source="unit test")
    for split in ("train", "validation", "test", "top_10k"):
        loaded = load_split(out, split)
        assert len(loaded) == len(ds.top if split == "top_10k" else ds.splits[split])
        assert set(loaded.features) >= {"question_id", "messages", "license"}


def test_loading_a_missing_dataset_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="materialise chat_dataset"):
        load_split(tmp_path / "nowhere", "train")


@pytest.mark.parametrize(
    "text, has_markup",
    [
        ("plain text", False),
        ("if $a<b$ then", False),
        ("x < y and y > z", False),
        ("<p>left over</p>", True),
        ("a <br/> b", True),
        ("<!-- comment", True),
        ("Closed. This question needs details", True),
        # The duplicate notice's later wordings (the cleaner removes the blockquote that holds one), in each form
        ("This question already has an answer here: Mean vs median", True),
        ("Title?\n\nThis question already has answers here:\n- A", True),
        ("This question may already have an answer here:", True),
        ("As I said, this question already has an answer here: see the FAQ", False),  # in passing: no notice
        ("My last question was closed. This question asks about variance instead.", False),
        ("Title\n\nWant to improve this question? Update the question so it focuses on one problem.", True),
        # MathJax is text: comparisons inside it, even across two spans, are no tag
        (r"Reject when $T<c \mid H_0$ is false, i.e. when $T>c$.", False),
        (r"We need $P(a<X \le b)$ for $b>a$.", False),
        ("$$x<y$$ and then <div class='x'>", True),
        ("Java's List<String> or Map<K, V>", False),  # not HTML element names
        ("if a<b and c>d", True),  # looks like a <b> tag: only the raw HTML can excuse it (next test)
        # An inline span stays in its paragraph and "\\$" is a dollar sign: neither hides a tag
        ("Income in \\$ per year.\n\n<p>left over</p>\n\nTable in $.", True),
        ("It cost $5.\n\n<div>left</div>\n\nThen $6.", True),
        ("Over two lines: $a<b\nand c>d$", False),
        # The other notices Stack Exchange puts in a post
        ("Title\n\nPossible Duplicate:\nIs logistic regression a GLM?", True),
        ("Possible Duplicates:\nA\nB", True),
        ("Locked. This question and its answers are locked because the question is off-topic", True),
        ("Locked. Comments on this question have been disabled", True),
        ("Migrated. This question was migrated from Stack Overflow because it can be answered on Cross Validated.", True),
        ("Title\n\nThis question was migrated from Mathematics Stack Exchange because it can be answered on Cross "
         "Validated.", True),
        # an author's own words that begin like a page notice
        ("This question was migrated from math.SE, where nobody answered it.", False),
        ("Locked. This door stays locked: the key is in the prior.", False),
        ("Want to improve this post? Add citations from reputable sources", True),
        ("A possible duplicate: see the earlier thread", False),
    ],
)
def test_markup_detector(text, has_markup):
    assert bool(validate.rows_with_markup([{"question_id": 1, "question": text, "answer": "ok"}])) is has_markup


@pytest.mark.parametrize(
    "text, raw, flagged",
    [
        ("Use <br> for a line break", "<p>Use <code>&lt;br&gt;</code> for a line break</p>", False),
        ("if a<b and c>d", "<p>if a&lt;b and c&gt;d</p>", False),
        ("if a<b and c>d", "<p>if a&#60;b and c&#62;d</p>", False),
        ("left <p>over", "<p>left</p><p>over</p>", True),  # a real tag the cleaner missed
        ("Use <br> and <p>", "<p>Use <code>&lt;br&gt;</code> and</p><p></p>", True),  # one excused, one not
        ("Use <br> here", None, True),  # no raw HTML found for the pair: not excused
        ("Write <!-- to open a comment", "<p>Write <code>&lt;!--</code> to open a comment</p>", False),
        ("What does <b> mean in a formula?", "What does &lt;b&gt; mean in a formula?<p>body</p>", False),  # the title
        # Each token must be written as text as often as the text shows it, and as that tag: "$n&lt;p$" writes
        # no <p>, "a&lt;b" or "&lt;blockquote" no <b>
        ("left <p>over when $n<p$", "<p>left</p><p>over when $n&lt;p$</p>", True),
        ("Use <b>, not <b>", "<p>Use <code>&lt;b&gt;</code>, not</p><b></b>", True),
        ("Use <b>x</b>", "<p>Use &lt;blockquote and a&lt;bb</p>", True),
        ("Use <b>x</b>", "<p>Use <code>&lt;b&gt;x&lt;/b&gt;</code></p>", False),
        ("Use <P> or <p >", "<p>Use <code>&LT;P&GT;</code> or <code>&#x3C;p &gt;</code></p>", False),
        ("A <b> in fullwidth", "<p>A \uff1cb\uff1e in fullwidth</p>", False),  # the ASCII mode maps it to "<b>"
        # "n<p" where markup follows in the HTML: the end of a paragraph, of the title
        ("OLS when n<p\n\nI know what happens when n>p.", "OLS when n&lt;p<p>I know what happens when n&gt;p.</p>", False),
        ("i.e. n<p\n\nand when n>p?", "<p>i.e. n&lt;p</p><p>and when n&gt;p?</p>", False),
        # MathJax, with the raw HTML of this row not found: math is text, and only math holds tag-like text
        ("$0<p \\le 1$ and $n>0$", None, False),
        ("$0<p$ then <div>x</div>", None, True),
        # the duplicate notice in the author's own words (not in a quote) is the author's; quoted, it is the notice
        ("Possible Duplicate: see below.", "<p>Possible Duplicate: see below.</p>", False),
        ("Possible Duplicate:\nOther question", "<blockquote><p><strong>Possible Duplicate:</strong><br>"
         "<a href='/q/1'>Other question</a></p></blockquote><p>Body</p>", True),
    ],
)
def test_markup_written_as_text_in_the_post_is_excused_by_the_raw_html(text, raw, flagged):
    asked: list[list[int]] = []

    def raw_html(ids: list[int]) -> dict[int, str]:
        asked.append(ids)
        return {} if raw is None else {7: raw}

    rows = [{"question_id": 7, "question": text, "answer": "ok"}, {"question_id": 8, "question": "clean", "answer": "ok"}]
    assert validate.rows_with_markup(rows, raw_html=raw_html) == ([7] if flagged else [])
    assert asked == [[7]]  # only suspects are looked up


def test_math_does_not_pair_across_the_question_and_the_answer():
    """Without raw HTML to judge by, a "$$" in the question and one in the answer are no display-math span."""
    rows = [{"question_id": 7, "question": "Costs $$ more <div>left over", "answer": "and $$ less"}]
    assert validate.rows_with_markup(rows, raw_html=lambda ids: {}) == [7]
    assert validate.rows_with_markup(rows) == [7]


def test_a_question_collected_twice_is_excused_by_the_copy_it_was_cleaned_from():
    """Two partitions can hold a question (the ranking moved), edited in between: either copy may be the kept one."""
    rows = [{"question_id": 7, "question": "Use <br> for a break", "answer": "ok"}]
    old, new = "<p>Use a line break</p>", "<p>Use <code>&lt;br&gt;</code> for a break</p>"
    assert validate.rows_with_markup(rows, raw_html=lambda ids: {7: [old, new]}) == []
    assert validate.rows_with_markup(rows, raw_html=lambda ids: {7: [old]}) == [7]


def test_the_same_question_under_two_ids_is_kept_once_across_partitions():
    """Text de-duplication spans all partitions (the cleaner's only sees one), so a copy cannot land in another split."""
    text = "How do I interpret a p-value? I read the definition twice."
    qids = [q for q in range(1000, 1200) if split_of(q) == "train"][:1] + [
        q for q in range(1000, 1200) if split_of(q) == "test"][:1]
    copies = [pair(qids[0], 50, rank=10, question=text), pair(qids[1], 40, rank=5003, question=text)]
    for rows in (copies + [pair(3, 1)], copies[::-1] + [pair(3, 1)]):  # whichever is read first
        ds = build_chat_dataset(rows, top_n=10)
        kept = [r for rows in ds.splits.values() for r in rows]
        assert sorted(r["question_id"] for r in kept) == sorted([qids[0], 3])  # the higher-voted copy stays
        assert ds.duplicate_texts_dropped == 1 == ds.counts["duplicate_texts_dropped"]
        assert ds.duplicates_dropped == 0


def test_each_row_carries_the_answer_licence_and_link_for_attribution():
    row = pair(784, 12) | {"license": "CC BY-SA 2.5", "answer_license": "CC BY-SA 3.0", "answer_id": 795,
                           "link": "https://cstheory.meta.stackexchange.com/questions/784/some-title"}
    (rec,) = [r for rows in build_chat_dataset([row]).splits.values() for r in rows]
    assert (rec["license"], rec["answer_license"]) == ("CC BY-SA 2.5", "CC BY-SA 3.0")
    assert rec["answer_link"] == "https://cstheory.meta.stackexchange.com/a/795"


@pytest.mark.parametrize(("licence", "answer_licence", "flagged"), [
    ("CC BY-SA 4.0", "CC BY-SA 3.0", False), ("", "CC BY-SA 3.0", True), ("CC BY-SA 4.0", "  ", True),
    ("unknown", "CC BY-SA 3.0", True), ("CC BY-SA 4.0", "Unknown", True), (None, "CC BY-SA 3.0", True),
])
def test_a_row_without_a_known_licence_fails_the_licence_checks(licence, answer_licence, flagged):
    """'unknown' (a post with neither a licence nor a creation date) cannot be attributed as CC BY-SA asks."""
    row = pair(7, 1) | {"license": licence, "answer_license": answer_licence}
    assert validate.rows_without_attribution([row]) == ([7] if flagged else [])


def test_a_partition_that_kept_no_pair_does_not_break_the_dataset(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cv_pipeline.curation.dataset import CLEANED_SCHEMA, read_cleaned

    full = [pair(q, q) | {"accepted_answer_id": None, "title": "t", "creation_date": 1} for q in range(1, 4)]
    pq.write_table(pa.Table.from_pylist(full, schema=CLEANED_SCHEMA), tmp_path / "pairs_00000-04999.parquet")
    pq.write_table(pa.Table.from_pylist([], schema=CLEANED_SCHEMA), tmp_path / "pairs_05000-09999.parquet")
    pq.write_table(pa.Table.from_pylist([]), tmp_path / "pairs_10000-14999.parquet")  # as older versions wrote it
    rows = read_cleaned(sorted(tmp_path.glob("*.parquet")))
    assert [r["question_id"] for r in rows] == [1, 2, 3]
    pq.write_table(pa.Table.from_pylist([{"question_id": 1}]), tmp_path / "pairs_15000-19999.parquet")
    with pytest.raises(ValueError, match="pairs_15000-19999.parquet is not a cleaned-pairs file .*answer_license"):
        read_cleaned(sorted(tmp_path.glob("*.parquet")))


def test_concurrent_writers_of_one_folder_take_turns(tmp_path):
    """Two processes (say a scheduled run and a manual one) writing the same dataset folder never race."""
    import subprocess
    import sys

    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from cv_pipeline.atomic import atomic_dir\n"
        "for i in range(15):\n"
        "    with atomic_dir(Path(sys.argv[1])) as tmp:\n"
        "        for j in range(20):\n"
        "            (tmp / f'part{j}.txt').write_text(sys.argv[2])\n"
        "        time.sleep(0.01)\n"
    )
    target = tmp_path / "chat_dataset"
    procs = [subprocess.Popen([sys.executable, "-c", script, str(target), tag]) for tag in ("A", "B")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    contents = {(target / f"part{j}.txt").read_text() for j in range(20)}
    assert len(contents) == 1  # one writer's complete folder, never a mix
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == ["chat_dataset"]


def question(qid: int, body: str, title: str | None = None):
    """A raw question with a kept answer, as a collected batch holds it."""
    from cv_pipeline.sources.models import RawAnswer, RawQuestion

    return RawQuestion(
        question_id=qid, rank=qid, title=title or f"How do I show line breaks, case {qid}?", body_html=body,
        score=50 - qid,
        link=f"https://stats.stackexchange.com/questions/{qid}", creation_date=1_500_000_000,
        top_answer=RawAnswer(answer_id=qid + 100, score=3, creation_date=1_500_000_000,
                             body_html="<p>Put each value on its own line and check the plot again.</p>"),
    )


def test_an_empty_partition_and_a_post_about_html_pass_through_the_assets_and_their_checks(tmp_path):
    """Dagster run: one partition with pairs quoting `&lt;br&gt;` (in inline code, in a title), one empty partition."""
    import dagster as dg

    from cv_pipeline.atomic import write_json
    from cv_pipeline.defs.curation.assets import build_chat_dataset_asset, cleaned_qa_pairs
    from cv_pipeline.defs.curation.checks import chat_dataset_checks, cleaned_qa_pairs_checks
    from cv_pipeline.defs.resources import DataDirResource
    from cv_pipeline.profiles import get_profile
    from cv_pipeline.sources.models import BatchStats, RawBatch

    batches = {
        "00000-04999": [question(q, f"<p>In my R Markdown table I typed <code>&lt;br&gt;</code> in row {q}.</p>")
                        for q in range(1, 40)]
        + [question(40, "<p>My table shows the literal tag instead of a break.</p>", title="Why is <br> shown as text?")],
        "05000-09999": [],
    }
    for key, questions in batches.items():
        start, stop = (int(x) for x in key.split("-"))
        write_json(tmp_path / "raw" / f"questions_{key}.json", RawBatch(
            partition_key=key, source="unit test", site="stats", start_rank=start, stop_rank=stop + 1,
            questions=questions, stats=BatchStats()).model_dump(mode="json"))
    resources = {"data_dir": DataDirResource(path=str(tmp_path))}
    for key in batches:
        result = dg.materialize([cleaned_qa_pairs, cleaned_qa_pairs_checks], partition_key=key, resources=resources)
        failed = {e.check_name: e.severity for e in result.get_asset_check_evaluations() if not e.passed}
        # The empty partition only warns that it holds no pairs: a warning, which blocks nothing.
        assert failed == ({"cleaned_has_pairs": dg.AssetCheckSeverity.WARN} if not batches[key] else {}), key
    chat = build_chat_dataset_asset(get_profile("demo"))
    result = dg.materialize([chat, chat_dataset_checks], resources=resources)
    evaluations = result.get_asset_check_evaluations()
    assert len(evaluations) == len(validate.CHAT_RULES) and all(e.passed for e in evaluations)
    train = load_split(tmp_path / "chat_dataset", "train")
    assert "<br>" in train[0]["messages"][0]["content"] and train[0]["answer_license"] == "CC BY-SA 3.0"
    assert "Source: unit test; partitions pairs_00000-04999, pairs_05000-09999." in (
        tmp_path / "chat_dataset" / "README.md").read_text()

    # A partition re-collected from another source (say the demo's sample site, then the real API in the same
    # data folder) is not merged with the rest: chat_dataset fails, naming the files, and keeps the old dataset.
    write_json(tmp_path / "raw" / "questions_05000-09999.json", RawBatch(
        partition_key="05000-09999", source="another source", site="stats", start_rank=5000, stop_rank=10000,
        questions=[question(5001, "<p>A question from the other source, long enough to be kept.</p>")],
        stats=BatchStats()).model_dump(mode="json"))
    dg.materialize([cleaned_qa_pairs], partition_key="05000-09999", resources=resources)
    result = dg.materialize([chat], resources=resources, raise_on_error=False)
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.event_specific_data.error.message
    assert "pairs_00000-04999.parquet from unit test" in message
    assert "pairs_05000-09999.parquet from another source" in message and "CV_PIPELINE_DATA_DIR" in message
    assert len(load_split(tmp_path / "chat_dataset", "train")) == len(train)

    # A partition's run judges that partition: a row of 00000-04999 that lost its licence does not fail the
    # checks of a run for another partition (the whole-dataset checks are chat_dataset's).
    import pyarrow as pa
    import pyarrow.parquet as pq

    first = tmp_path / "cleaned" / "pairs_00000-04999.parquet"
    table = pq.read_table(first)
    broken = table.to_pylist()
    broken[0]["license"] = ""
    pq.write_table(pa.Table.from_pylist(broken, schema=table.schema), first)
    result = dg.materialize([cleaned_qa_pairs, cleaned_qa_pairs_checks], partition_key="05000-09999", resources=resources)
    assert len(result.get_asset_check_evaluations()) == 4 and all(e.passed for e in result.get_asset_check_evaluations())


def test_a_code_block_pair_that_got_past_the_cleaner_stops_the_dataset_before_training(tmp_path):
    """Rule 1 is among chat_dataset's blocking rules, judged against the raw posts: a cleaned partition holding a
    pair from a post with a code block (a cleaner regression, a file from elsewhere) fails the rebuild, which
    keeps the last dataset; the cleaned check flags it, and one flags a row without its link or answer id."""
    import dagster as dg
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cv_pipeline.atomic import write_json
    from cv_pipeline.defs.curation.assets import build_chat_dataset_asset, cleaned_qa_pairs
    from cv_pipeline.defs.curation.checks import chat_dataset_checks, cleaned_qa_pairs_checks
    from cv_pipeline.defs.resources import DataDirResource
    from cv_pipeline.profiles import get_profile
    from cv_pipeline.sources.models import BatchStats, RawBatch

    key = "00000-04999"
    raw_file = tmp_path / "raw" / f"questions_{key}.json"

    def write_raw(code_in: int | None) -> None:
        write_json(raw_file, RawBatch(
            partition_key=key, source="unit test", site="stats", start_rank=0, stop_rank=5000,
            questions=[question(q, f"<p>A question {q} long enough to be kept in the dataset.</p>"
                                + ("<pre><code>lm(y ~ x)</code></pre>" if q == code_in else "")) for q in range(1, 30)],
            stats=BatchStats()).model_dump(mode="json"))

    resources = {"data_dir": DataDirResource(path=str(tmp_path))}
    chat = build_chat_dataset_asset(get_profile("demo"))
    write_raw(code_in=None)
    dg.materialize([cleaned_qa_pairs], partition_key=key, resources=resources)
    result = dg.materialize([chat, chat_dataset_checks], resources=resources)
    assert all(e.passed for e in result.get_asset_check_evaluations())
    before = (tmp_path / "chat_dataset" / "data_version.txt").read_text()

    write_raw(code_in=7)  # the post as it is: question 7 has a code block, yet its pair is in the cleaned file
    result = dg.materialize([chat], resources=resources, raise_on_error=False)
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "chat_no_code_block_posts" in failure.event_specific_data.error.message
    assert "question ids [7]" in failure.event_specific_data.error.message
    assert (tmp_path / "chat_dataset" / "data_version.txt").read_text() == before
    result = dg.materialize([cleaned_qa_pairs_checks], resources=resources,
                            selection=dg.AssetSelection.checks_for_assets(cleaned_qa_pairs))
    verdicts = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert not verdicts["cleaned_has_no_code_block_posts"].passed
    assert verdicts["cleaned_has_no_code_block_posts"].metadata["example_question_ids"].value == [7]
    assert verdicts["cleaned_rows_complete"].passed

    path = tmp_path / "cleaned" / f"pairs_{key}.parquet"
    table = pq.read_table(path)
    rows = table.to_pylist()
    rows[0]["link"], rows[1]["answer_id"] = "", None
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), path)
    result = dg.materialize([cleaned_qa_pairs_checks], resources=resources,
                            selection=dg.AssetSelection.checks_for_assets(cleaned_qa_pairs))
    (complete,) = [e for e in result.get_asset_check_evaluations() if e.check_name == "cleaned_rows_complete"]
    assert complete.metadata["example_question_ids"].value == sorted([rows[0]["question_id"], rows[1]["question_id"]])


def test_a_partition_check_says_which_partition_it_judged(tmp_path):
    """The cleaned checks are not partitioned (Dagster 1.13 cannot run partitioned checks without their asset): each
    result names the partition it judged, and run on its own a check judges every partition."""
    import dagster as dg
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cv_pipeline.atomic import write_json
    from cv_pipeline.defs.curation.assets import cleaned_qa_pairs
    from cv_pipeline.defs.curation.checks import cleaned_qa_pairs_checks
    from cv_pipeline.defs.resources import DataDirResource
    from cv_pipeline.sources.models import BatchStats, RawBatch

    resources = {"data_dir": DataDirResource(path=str(tmp_path))}
    keys = ("00000-04999", "05000-09999")
    for key in keys:
        start, stop = (int(x) for x in key.split("-"))
        write_json(tmp_path / "raw" / f"questions_{key}.json", RawBatch(
            partition_key=key, source="unit test", site="stats", start_rank=start, stop_rank=stop + 1,
            questions=[question(start + q + 1, f"<p>A question {q} long enough to be kept in the dataset.</p>")
                       for q in range(5)], stats=BatchStats()).model_dump(mode="json"))
        result = dg.materialize([cleaned_qa_pairs, cleaned_qa_pairs_checks], partition_key=key, resources=resources)
        assert {e.metadata["partition"].value for e in result.get_asset_check_evaluations()} == {key}

    path = tmp_path / "cleaned" / f"pairs_{keys[0]}.parquet"
    table = pq.read_table(path)
    rows = table.to_pylist()
    rows[0]["license"] = ""
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), path)
    result = dg.materialize([cleaned_qa_pairs_checks], resources=resources,
                            selection=dg.AssetSelection.checks_for_assets(cleaned_qa_pairs))
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert not evaluations["cleaned_rows_complete"].passed and evaluations["cleaned_has_no_markup"].passed
    assert {e.metadata["partition"].value for e in evaluations.values()} == {"all"}


def test_a_question_collected_in_two_partitions_is_kept_once_and_warns_of_a_moved_ranking(tmp_path):
    """Offset paging over live scores: a question that moved across a partition boundary between two partitions'
    collections can land in both (another may then have slipped past both). chat_dataset keeps one copy and says so."""
    import logging

    import dagster as dg
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cv_pipeline.defs.curation.assets import build_chat_dataset_asset
    from cv_pipeline.defs.resources import DataDirResource
    from cv_pipeline.profiles import get_profile

    (tmp_path / "cleaned").mkdir()
    first = [pair(q, 100 - q) for q in range(1, 30)]
    second = [pair(29, 40), *(pair(q, 100 - q) for q in range(30, 60))]  # collected later: 29 lost votes, moved down
    for key, rows in (("00000-04999", first), ("05000-09999", second)):
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / "cleaned" / f"pairs_{key}.parquet")
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([build_chat_dataset_asset(get_profile("demo"))], instance=instance,
                            resources={"data_dir": DataDirResource(path=str(tmp_path))})
    [materialization] = result.get_asset_materialization_events()
    assert materialization.materialization.metadata["split/duplicates_dropped"].value == 1
    warnings = [e.user_message for e in instance.all_logs(result.run_id)
                if e.level == logging.WARNING and "two partitions" in e.user_message]
    assert len(warnings) == 1 and warnings[0].startswith("1 question(s) were collected in two partitions")
    rows = [r for split in ("train", "validation", "test") for r in load_split(tmp_path / "chat_dataset", split)]
    assert [r["question_score"] for r in rows if r["question_id"] == 29] == [71]  # the highest-voted copy


def test_the_data_card_names_the_site_counts_each_licence_and_says_the_text_was_modified(tmp_path):
    """What CC BY-SA asks of a republisher: the source, the licence (with its text's address) and the changes made."""
    from cv_pipeline.curation.datacard import write_datacard

    rows = [pair(q, q) | {"license": "CC BY-SA 2.5" if q < 5 else "CC BY-SA 4.0", "answer_license": "CC BY-SA 3.0"}
            for q in range(1, 41)]
    ds = build_chat_dataset(rows, top_n=5)
    card = write_datacard(ds, tmp_path, source="unit test")[0].read_text()
    assert card.startswith("# Cross Validated chat dataset")
    assert "user content from Cross Validated (stats.stackexchange.com)" in card
    kept = sum(ds.counts[s] for s in SPLITS)
    assert "| CC BY-SA 2.5 | 4 | https://creativecommons.org/licenses/by-sa/2.5/ |" in card
    assert f"| CC BY-SA 3.0 | {kept} | https://creativecommons.org/licenses/by-sa/3.0/ |" in card
    assert f"| CC BY-SA 4.0 | {kept - 4} | https://creativecommons.org/licenses/by-sa/4.0/ |" in card
    assert "**The text is modified**" in card

    other = [r | {"link": f"https://cstheory.meta.stackexchange.com/questions/{r['question_id']}"} for r in rows]
    card = write_datacard(build_chat_dataset(other, top_n=5), tmp_path, source="a dump")[0].read_text()
    assert card.startswith("# cstheory.meta.stackexchange.com chat dataset") and "Cross Validated" not in card
    assert "Generated data" not in card


def test_the_data_card_of_generated_sample_site_data_says_it_is_not_real_posts(tmp_path):
    """The demo's rows carry real-looking stats.stackexchange.com links; the card must not pass them off as posts."""
    from cv_pipeline.curation.datacard import write_datacard

    ds = build_chat_dataset([pair(q, q) for q in range(1, 41)], top_n=5)
    card = write_datacard(ds, tmp_path, source="sample_site n=10000 seed=0 http://127.0.0.1/2.3 site=stats")[0].read_text()
    assert card.startswith("# Cross Validated chat dataset (generated demo data)\n")
    assert "**Generated data.** The embedded sample site wrote these questions and answers" in card
    assert "they are not posts from Cross Validated (stats.stackexchange.com)" in card
    assert "**The text is modified**" in card  # what real data requires still follows


def test_a_saved_dataset_records_its_source_for_the_evaluation(tmp_path):
    """The report follows the data, not the profile: a full-profile evaluation of the demo's data says it is generated."""
    from cv_pipeline.curation.dataset import dataset_source, generated_source

    label = "sample_site n=10000 seed=0 http://127.0.0.1/2.3 site=stats; partitions pairs_00000-04999"
    save_chat_dataset(build_chat_dataset([pair(q, q) for q in range(1, 41)], top_n=5), tmp_path / "cd", source=label)
    assert dataset_source(tmp_path / "cd") == label and generated_source(label)
    assert dataset_source(tmp_path / "missing") is None and not generated_source(None)
    assert not generated_source("api https://api.stackexchange.com/2.3 site=stats")


@pytest.mark.parametrize("asset, field", [("chat_dataset", "top_n"), ("cleaned_qa_pairs", "min_question_chars"),
                                          ("cleaned_qa_pairs", "min_answer_chars")])
def test_a_negative_count_in_the_launchpad_is_refused_naming_the_field(tmp_path, asset, field):
    """top_n=-1 would have sliced the train split to all pairs but one; a negative minimum would keep empty pairs."""
    import dagster as dg

    from cv_pipeline.defs.curation.assets import build_chat_dataset_asset, cleaned_qa_pairs
    from cv_pipeline.defs.resources import DataDirResource
    from cv_pipeline.profiles import get_profile

    target = build_chat_dataset_asset(get_profile("demo")) if asset == "chat_dataset" else cleaned_qa_pairs
    result = dg.materialize(
        [target], resources={"data_dir": DataDirResource(path=str(tmp_path))}, raise_on_error=False,
        partition_key=None if asset == "chat_dataset" else "00000-04999",
        run_config={"ops": {asset: {"config": {field: -1}}}},
    )
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert field in str(failure.event_specific_data.error) and "greater than or equal to 0" in str(failure.event_specific_data.error)
    assert not any(tmp_path.rglob("*.parquet")) and not (tmp_path / "chat_dataset").exists()


def test_the_blocking_checks_judge_the_copy_training_loads_and_the_jsonl(tmp_path):
    """Training reads the Hugging Face copy, people the JSONL: a row broken in either one fails the check, which
    names the copy; the top subset is judged too."""
    import shutil

    import dagster as dg
    import datasets

    from cv_pipeline.defs.curation.checks import chat_dataset_checks
    from cv_pipeline.defs.resources import DataDirResource

    out = tmp_path / "chat_dataset"
    save_chat_dataset(build_chat_dataset([pair(q, q) for q in range(1, 60)], top_n=10), out)
    resources = {"data_dir": DataDirResource(path=str(tmp_path))}

    def verdicts() -> dict[str, tuple[bool, list]]:
        result = dg.materialize([chat_dataset_checks], resources=resources, raise_on_error=False,
                                selection=dg.AssetSelection.checks_for_assets("chat_dataset"))
        found = {e.check_name: (e.passed, e.metadata["copies_failing"].value) for e in result.get_asset_check_evaluations()}
        assert set(found) == set(validate.CHAT_RULES)
        return found

    assert all(passed for passed, _ in verdicts().values())
    hf = datasets.load_from_disk(str(out / "hf"))
    top = hf["top_10k"].to_list()
    top[0]["messages"][1]["content"] = "See <div>the table</div>."
    hf["top_10k"] = datasets.Dataset.from_list(top, features=hf["top_10k"].features)
    hf.save_to_disk(str(tmp_path / "hf_new"))
    del hf
    shutil.rmtree(out / "hf")
    (tmp_path / "hf_new").rename(out / "hf")
    found = verdicts()
    assert found["chat_has_no_markup"] == (False, ["hf"])
    assert all(passed for name, (passed, _) in found.items() if name != "chat_has_no_markup")

    lines = (out / "train.jsonl").read_text(encoding="utf-8").splitlines()
    row = json.loads(lines[0])
    row["messages"] = row["messages"][:1]
    (out / "train.jsonl").write_text("\n".join([json.dumps(row), *lines[1:]]) + "\n", encoding="utf-8")
    assert verdicts()["chat_roles_alternate"] == (False, ["jsonl"])
