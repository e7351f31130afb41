"""Asset checks on the cleaned pairs and the chat dataset.

One `multi_asset_check` per asset: each reads the asset's files once and reports every check on
them (the UI still lists, runs and shows each check on its own; `can_subset` lets one be run
alone). The chat_dataset checks are blocking: a dataset that fails any of them stops the run
before training spends GPU time on it. chat_dataset applies the same rules (validate.CHAT_RULES)
to what it built before it replaces the dataset on disk, so a failing rebuild keeps the last
dataset that passed; the checks judge the files as written (and whatever happens to them later).
"""

import json
from collections.abc import Callable, Iterator

import dagster as dg

from cv_pipeline.curation import validate
from cv_pipeline.curation.dataset import SPLITS, load_split, read_cleaned
from cv_pipeline.defs.curation.assets import cleaned_qa_pairs
from cv_pipeline.defs.curation.raw_pairs import chat_problems, code_block_questions, raw_pair_html
from cv_pipeline.defs.operations.k8s import CPU_STEP
from cv_pipeline.defs.resources import DataDirResource

chat_dataset = dg.AssetKey("chat_dataset")


def _result(asset: dg.AssetKey, name: str, bad: list[int], what: str, extra: dict | None = None) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        asset_key=asset,
        check_name=name,
        passed=not bad,
        metadata={"failing_rows": len(bad), "example_question_ids": dg.MetadataValue.json(bad[:20]), "rule": what,
                  **(extra or {})},
    )


def _run_selected(
    context: dg.AssetCheckExecutionContext,
    asset: dg.AssetKey,
    checks: dict[str, tuple[str, Callable[[], list[int]]]],
    extra: dict | None = None,
) -> Iterator[dg.AssetCheckResult]:
    for name, (rule, find_bad) in checks.items():
        if dg.AssetCheckKey(asset, name) in context.selected_asset_check_keys:
            yield _result(asset, name, find_bad(), rule, extra)


# ---------------------------------------------------------------------------------------------
# cleaned_qa_pairs

_CLEANED_ASSET = cleaned_qa_pairs.key


@dg.multi_asset_check(
    specs=[
        dg.AssetCheckSpec("cleaned_has_no_markup", asset=_CLEANED_ASSET,
                          description="No HTML tags or post-notice text left in any pair."),
        dg.AssetCheckSpec("cleaned_has_no_code_block_posts", asset=_CLEANED_ASSET,
                          description="No kept pair comes from a post with a code block."),
        dg.AssetCheckSpec("cleaned_rows_complete", asset=_CLEANED_ASSET,
                          description="Every pair has a question, an answer, both licences, the question's link "
                                      "and the answer's id."),
        dg.AssetCheckSpec("cleaned_has_pairs", asset=_CLEANED_ASSET,
                          description="The partition holds pairs (a warning only: a rank range past the end of the "
                                      "source, such as the demo's partitions after 10,000 questions, holds none)."),
    ],
    can_subset=True,
    name="cleaned_qa_pairs_checks",
    op_tags=CPU_STEP,
)
def cleaned_qa_pairs_checks(
    context: dg.AssetCheckExecutionContext, data_dir: DataDirResource
) -> Iterator[dg.AssetCheckResult]:
    # The run's partition when it has one (a partition's run judges that partition only), else every partition.
    # (Not partitioned checks: Dagster 1.13 cannot run partitioned checks without their asset.)
    judged = context.partition_key if context.has_partition_key else "all"
    if context.has_partition_key:
        cleaned, raw = [data_dir.cleaned_file(context.partition_key)], [data_dir.raw_batch_file(context.partition_key)]
    else:
        cleaned, raw = sorted(data_dir.sub("cleaned").glob("pairs_*.parquet")), None
    rows = read_cleaned(f for f in cleaned if f.exists())  # read once for all checks
    yield from _run_selected(
        context,
        _CLEANED_ASSET,
        {
            "cleaned_has_no_markup": (
                "no markup or notice text",
                lambda: validate.rows_with_markup(rows, raw_html=lambda ids: raw_pair_html(data_dir, ids, raw)),
            ),
            "cleaned_has_no_code_block_posts": (
                "no pair from a <pre> post",
                lambda: code_block_questions(data_dir, [r["question_id"] for r in rows], raw),
            ),
            "cleaned_rows_complete": (
                "non-empty, licensed, linked",
                lambda: sorted(set(validate.rows_with_empty_text(rows) + validate.rows_without_attribution(
                    rows, ("license", "answer_license", "link", "answer_id")))),
            ),
        },
        {"partition": judged},
    )
    if dg.AssetCheckKey(_CLEANED_ASSET, "cleaned_has_pairs") in context.selected_asset_check_keys:
        yield dg.AssetCheckResult(
            asset_key=_CLEANED_ASSET, check_name="cleaned_has_pairs", passed=bool(rows),
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"pairs": len(rows), "partition": judged},
        )


# ---------------------------------------------------------------------------------------------
# chat_dataset (blocking)


def _copies(data_dir: DataDirResource) -> dict[str, tuple[dict[str, list[dict]], list[dict]]]:
    """Each copy of the dataset on disk, as its splits and its top subset: the Hugging Face one training loads,
    and the JSONL one people read and load elsewhere."""
    root = data_dir.published("chat_dataset")

    def jsonl(name: str) -> list[dict]:
        return [json.loads(line) for line in (root / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()]

    return {
        "hf": ({s: load_split(root, s).to_list() for s in SPLITS}, load_split(root, "top_10k").to_list()),
        "jsonl": ({s: jsonl(s) for s in SPLITS}, jsonl("top_10k")),
    }


@dg.multi_asset_check(
    specs=[
        dg.AssetCheckSpec("chat_roles_alternate", asset=chat_dataset, blocking=True,
                          description="Messages alternate user/assistant and none is empty."),
        dg.AssetCheckSpec("chat_splits_disjoint", asset=chat_dataset, blocking=True,
                          description="No question id appears in two splits."),
        dg.AssetCheckSpec("chat_rows_licensed", asset=chat_dataset, blocking=True,
                          description="Every row carries the question's and the answer's licence and link."),
        dg.AssetCheckSpec("chat_has_no_markup", asset=chat_dataset, blocking=True,
                          description="No HTML or notice text in any message."),
        dg.AssetCheckSpec("chat_no_code_block_posts", asset=chat_dataset, blocking=True,
                          description="No pair comes from a post with a code block (rule 1)."),
    ],
    can_subset=True,
    name="chat_dataset_checks",
    op_tags=CPU_STEP,
)
def chat_dataset_checks(
    context: dg.AssetCheckExecutionContext, data_dir: DataDirResource
) -> Iterator[dg.AssetCheckResult]:
    copies = _copies(data_dir)  # read once for all checks
    selected = [name for name in validate.CHAT_RULES if dg.AssetCheckKey(chat_dataset, name) in context.selected_asset_check_keys]
    found: dict[str, dict[str, list[int]]] = {}
    for copy, (splits, top) in copies.items():  # judged once when the copies agree, as the writer leaves them
        same = next((other for other in found if copies[other] == (splits, top)), None)
        found[copy] = found[same] if same else chat_problems(data_dir, splits, top, selected)
    for name in selected:
        bad = sorted({q for problems in found.values() for q in problems[name]})
        yield _result(chat_dataset, name, bad, validate.CHAT_RULES[name],
                      {"copies_failing": dg.MetadataValue.json([copy for copy in found if found[copy][name]])})


def dataset_check_states(instance: dg.DagsterInstance) -> dict[str, str]:
    """Each blocking chat_dataset check's verdict on the dataset now on disk: see blocking_check_states."""
    from cv_pipeline.defs.operations.automation import blocking_check_states

    return blocking_check_states(instance, chat_dataset, [s.key for s in chat_dataset_checks.check_specs if s.blocking])


def failed_dataset_checks(instance: dg.DagsterInstance) -> list[str]:
    """The blocking chat_dataset checks that failed (or crashed) on the dataset now on disk.

    Blocking checks stop the rest of the run they ran in; this lets a later run that does not include
    them (*Materialize* on an adapter alone) refuse the same data.
    """
    return sorted(name for name, state in dataset_check_states(instance).items() if state == "failed")
