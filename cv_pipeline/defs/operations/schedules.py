"""Scheduled re-scrapes: every partition of raw_question_batches, weekly by default."""

import dagster as dg

from cv_pipeline.defs.collection.assets import raw_question_batches
from cv_pipeline.defs.collection.partitions import question_ranges
from cv_pipeline.defs.operations.cadence import RESCRAPE_CRON

collect_job = dg.define_asset_job(
    "collect_raw_batches",
    selection=[raw_question_batches],
    partitions_def=question_ranges,
    description="Collect one 5,000-question partition from the configured source.",
)


def build_rescrape_schedule(partition_keys: list[str], cron: str = RESCRAPE_CRON) -> dg.ScheduleDefinition:
    """One run per partition per tick; the `stackexchange_api` pool (limit 1) makes them queue politely."""

    @dg.schedule(
        name="weekly_rescrape",
        cron_schedule=cron,
        job=collect_job,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description=f"Re-collect every partition of the active profile ({', '.join(partition_keys)}); "
        "cleaning and the chat dataset follow by automation, training only with auto_retrain.",
    )
    def weekly_rescrape(context: dg.ScheduleEvaluationContext):
        tick = context.scheduled_execution_time.strftime("%Y%m%dT%H%M")
        for key in partition_keys:
            yield dg.RunRequest(run_key=f"rescrape-{key}-{tick}", partition_key=key, tags={"cv_pipeline/trigger": "rescrape"})

    return weekly_rescrape
