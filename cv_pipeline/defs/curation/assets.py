from typing import Literal

import dagster as dg
from pydantic import Field

from cv_pipeline.atomic import atomic_path
from cv_pipeline.curation import cleaner, validate
from cv_pipeline.curation.dataset import (
    CLEANED_SCHEMA,
    build_chat_dataset,
    check_one_source,
    cleaned_sources,
    read_cleaned,
    save_chat_dataset,
    with_source,
)
from cv_pipeline.defs.collection.assets import raw_question_batches
from cv_pipeline.defs.collection.partitions import question_ranges
from cv_pipeline.defs.curation.raw_pairs import chat_problems
from cv_pipeline.defs.operations.automation import FOLLOW_ANY_PARTITION, FOLLOW_UPSTREAM, read_partitions_metadata
from cv_pipeline.defs.metadata import file_hash, image, md_table
from cv_pipeline.defs.operations.k8s import CPU_STEP
from cv_pipeline.defs.resources import DataDirResource
from cv_pipeline.profiles import Profile


class CleaningSettings(dg.Config):
    normalization: Literal["ascii", "unicode"] = Field(
        "ascii", description="'ascii' (the report's: ASCII or an HTML entity) or 'unicode'."
    )
    include_title: bool = Field(True, description="Start the question text with its title.")
    min_question_chars: int = Field(20, ge=0, description="Drop pairs whose question body (title excluded) is shorter.")
    min_answer_chars: int = Field(20, ge=0, description="Drop pairs whose answer text is shorter.")

    def to_cleaning_config(self) -> cleaner.CleaningConfig:
        return cleaner.CleaningConfig(**self.model_dump())


# Which implementation cleaned a partition (the same rules and text either way; see cleaner.py).
CLEANER_ACCELERATED = "selectolax/Lexbor with the C accelerator"
CLEANER_PURE_PYTHON = "selectolax, pure Python (the C accelerator was not built)"


@dg.asset(
    partitions_def=question_ranges,
    deps=[raw_question_batches],
    code_version=cleaner.CLEANER_VERSION,
    automation_condition=FOLLOW_UPSTREAM,
    op_tags=CPU_STEP,
    group_name="curation",
    kinds={"python", "parquet"},
    description="Plain-text question/answer pairs after the report's cleaning rules, with per-rule counts.",
)
def cleaned_qa_pairs(
    context: dg.AssetExecutionContext, config: CleaningSettings, data_dir: DataDirResource
) -> dg.MaterializeResult:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cv_pipeline.collection import load_batch

    key = context.partition_key
    raw_file = data_dir.raw_batch_file(key)
    if not raw_file.exists():
        raise dg.Failure(f"no raw batch for partition {key} at {raw_file}: materialise raw_question_batches[{key}] first")
    batch = load_batch(raw_file)
    rows, counts = cleaner.clean_batch(batch.questions, config.to_cleaning_config())
    out = data_dir.cleaned_file(key)
    with atomic_path(out, suffix=".parquet") as tmp:
        pq.write_table(pa.Table.from_pylist(rows, schema=with_source(CLEANED_SCHEMA, batch.source)), tmp)
    how = CLEANER_ACCELERATED if cleaner.accelerated() else CLEANER_PURE_PYTHON
    context.log.info(f"partition {key}: kept {len(rows)} of {len(batch.questions)} pairs ({how}); counts {counts}")
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(rows),
            "cleaner": how,
            **{f"rule/{name}": int(n) for name, n in sorted(counts.items())},
            "path": dg.MetadataValue.path(str(out)),
            "preview": dg.MetadataValue.md(md_table(rows[:5], ["question_id", "question_score", "question", "answer"])),
        },
        data_version=dg.DataVersion(file_hash(out)),
    )


def build_chat_dataset_asset(profile: Profile) -> dg.AssetsDefinition:
    class DatasetSettings(dg.Config):
        top_n: int = Field(profile.top_n, ge=0, description="How many of the highest-voted train pairs form the top subset.")
        validation_fraction: float = Field(0.05, description="Share of question ids hashed into validation.")
        test_fraction: float = Field(0.05, description="Share of question ids hashed into test.")

    @dg.asset(
        deps=[cleaned_qa_pairs],
        # The cleaner's version is part of it: a new one shows the dataset as unsynced on the graph, which shows no
        # badge for a partitioned asset as a whole. The adapters stay fresh unless the rebuilt data differs.
        # 3: the top subset stored in question-id order; 2: de-duplication by question text across partitions.
        code_version=f"4+cleaner{cleaner.CLEANER_VERSION}",  # 4: the data card says when the rows are generated
        automation_condition=FOLLOW_ANY_PARTITION,
        op_tags=CPU_STEP,
        group_name="curation",
        kinds={"python", "huggingface"},
        description="All cleaned partitions merged into chat messages, split train/validation/test, plus the top-N subset.",
    )
    def chat_dataset(context: dg.AssetExecutionContext, config: DatasetSettings,
                     data_dir: DataDirResource) -> dg.MaterializeResult:
        from cv_pipeline.curation.dataset import SplitFractions

        files = sorted(data_dir.sub("cleaned").glob("pairs_*.parquet"))
        # What is read, by each file's hash (a cleaned partition's data version), taken before reading: the
        # automation rebuilds when a partition's version is not one of these.
        read = read_partitions_metadata(cleaned_qa_pairs.key, {f.stem.removeprefix("pairs_"): file_hash(f) for f in files})
        if not files:
            raise dg.Failure("no cleaned pairs found: materialise cleaned_qa_pairs for at least one partition first")
        try:
            source = check_one_source(cleaned_sources(files))
        except ValueError as exc:
            raise dg.Failure(description=str(exc), allow_retries=False) from None
        missing = [k for k in profile.demo_partitions if not data_dir.cleaned_file(k).exists()]
        if missing:
            context.log.warning(
                f"building from {len(files)} cleaned partition(s): the {profile.name} profile's partition(s) {', '.join(missing)} are "
                "not cleaned yet; materialise cleaned_qa_pairs for them (and this asset again) to include them"
            )
        ds = build_chat_dataset(read_cleaned(files), top_n=config.top_n, fractions=SplitFractions(config.validation_fraction, config.test_fraction))
        out = data_dir.published("chat_dataset")
        # The blocking checks' rules, on what was built, before it replaces the dataset on disk: a failing
        # rebuild leaves the last dataset that passed in place (and its data version, so nothing retrains).
        problems = {
            name: bad
            for name, bad in chat_problems(data_dir, ds.splits, ds.top).items()
            if bad
        }
        if problems:
            found = "; ".join(f"{name} ({validate.CHAT_RULES[name]}): {len(bad)} row(s), question ids {bad[:10]}"
                              for name, bad in problems.items())
            raise dg.Failure(
                description=(
                    f"the rebuilt chat dataset breaks the rules of its blocking checks, so it was not written and the "
                    f"dataset at {out} is still the last one that passed. {found}. These rows come from the cleaned "
                    "partitions: the cleaned_qa_pairs checks of those partitions name the cause; fix it (a cleaning "
                    "rule or the source data), re-materialise cleaned_qa_pairs, then this asset."
                ),
                metadata={f"failing/{name}": dg.MetadataValue.json(bad[:20]) for name, bad in problems.items()},
                allow_retries=False,
            )
        save_chat_dataset(ds, out, source=f"{source}; partitions {', '.join(f.stem for f in files)}")
        if ds.counts["duplicates_dropped"]:  # each partition is de-duplicated already: these are in two partitions
            context.log.warning(
                f"{ds.counts['duplicates_dropped']} question(s) were collected in two partitions (the highest-voted copy "
                "is kept): the ranking moved between those partitions' collections, so other questions may have "
                "slipped past both; collect the partitions together (as the weekly re-scrape does) to close the gap"
            )
        best = sorted(ds.top, key=lambda r: (-r["question_score"], r["question_id"]))[:5]  # the top is in id order
        preview = [{"question": r["messages"][0]["content"], "answer": r["messages"][1]["content"]} for r in best]
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": sum(len(v) for v in ds.splits.values()),
                **{f"split/{k}": v for k, v in ds.counts.items()},
                "partitions": len(files),
                "partitions_missing": dg.MetadataValue.json(missing),
                **read,
                "data_version": ds.data_version,
                "path": dg.MetadataValue.path(str(out)),
                "lengths": image(out / "lengths.png"),
                "data_card": dg.MetadataValue.path(str(out / "README.md")),
                "preview": dg.MetadataValue.md(md_table(preview, ["question", "answer"])),
            },
            # Training re-runs only when this hash changes, not when code is refactored.
            data_version=dg.DataVersion(ds.data_version),
        )

    return chat_dataset
