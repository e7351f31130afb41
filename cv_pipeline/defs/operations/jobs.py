"""The two halves of the main job: per-partition collection+cleaning, then everything over all partitions.

Dagster runs one partition per run for partitioned assets; the CLI's `demo` (and a UI backfill of
"Materialize all") runs the first job for each partition, then the second once.
"""

import dagster as dg

from cv_pipeline.defs.collection.partitions import question_ranges

PARTITIONED = dg.AssetSelection.assets("raw_question_batches", "cleaned_qa_pairs")

collect_and_clean_job = dg.define_asset_job(
    "collect_and_clean",
    selection=PARTITIONED,
    partitions_def=question_ranges,
    description="Collect one 5,000-question partition and clean it.",
)

train_and_evaluate_job = dg.define_asset_job(
    "train_and_evaluate",
    selection=dg.AssetSelection.all() - PARTITIONED,
    description="Chat dataset (with its blocking checks), base model, both adapters, evaluation and exports.",
)
