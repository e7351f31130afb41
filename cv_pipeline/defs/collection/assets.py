import time

import dagster as dg

from cv_pipeline.collection import collect_batch
from cv_pipeline.defs.collection.partitions import question_ranges
from cv_pipeline.defs.metadata import file_hash, md_table
from cv_pipeline.defs.operations.cadence import RAW_BATCHES_FRESHNESS
from cv_pipeline.defs.operations.interrupts import stop_when_interrupted
from cv_pipeline.defs.operations.k8s import CPU_STEP
from cv_pipeline.defs.resources import DataDirResource, StackExchangeResource
from cv_pipeline.partitions import parse_partition_key
from cv_pipeline.sources.base import QuotaExhausted, SourceError, TransientSourceError


@dg.asset(
    partitions_def=question_ranges,
    pool="stackexchange_api",
    op_tags=CPU_STEP,
    group_name="collection",
    kinds={"python", "json"},
    freshness_policy=RAW_BATCHES_FRESHNESS,
    # Transient faults are retried inside the client; this covers a crashed process or host.
    retry_policy=dg.RetryPolicy(max_retries=2, delay=30, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS),
    description="The highest-voted questions of one 5,000-rank range, each with its highest-voted answer (raw HTML).",
)
def raw_question_batches(
    context: dg.AssetExecutionContext, stackexchange: StackExchangeResource, data_dir: DataDirResource
) -> dg.MaterializeResult:
    key = context.partition_key
    rank_range = parse_partition_key(key)
    out_file = data_dir.raw_batch_file(key)
    started = time.monotonic()
    try:
        with stop_when_interrupted(context, "the pages fetched so far are kept for the next run"), \
                stackexchange.open(work_dir=data_dir.sub("raw", ".dump")) as source:
            context.log.info(f"collecting ranks {rank_range.start}-{rank_range.stop - 1} from {source.describe()}")
            batch = collect_batch(source, rank_range, out_file, data_dir.sub("raw", ".checkpoints", key), log=context.log)
            extra = {}
            if (dropped := getattr(source, "invalid_chars_dropped", None)) is not None:  # a dump
                extra["invalid_xml_chars_dropped"] = dropped
                if dropped:
                    context.log.warning(f"dropped {dropped} character references XML 1.0 forbids (control characters "
                                        "the dump's exporter escaped) while reading the dump")
            if lone := getattr(source, "lone_surrogates_dropped", 0):  # the API
                extra["lone_surrogates_dropped"] = lone
                context.log.warning(f"dropped {lone} lone UTF-16 surrogates (JSON escapes of half a character) from "
                                    "API responses: no UTF-8 file can hold them")
    except QuotaExhausted as exc:
        # Waiting minutes will not help: the daily quota resets tomorrow. Pages fetched so far are kept.
        raise dg.Failure(description=str(exc), metadata={"resume_at_epoch": exc.resume_at or 0}, allow_retries=False) from exc
    except TransientSourceError:
        raise  # the run's RetryPolicy may try again later
    except SourceError as exc:
        # A bad site, key, token or parameter: the same request would fail again.
        raise dg.Failure(description=str(exc), allow_retries=False) from exc
    preview = [
        {"rank": q.rank, "score": q.score, "title": q.title, "answer score": q.top_answer.score if q.top_answer else ""}
        for q in batch.questions[:10]
    ]
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(batch.questions),
            "questions": len(batch.questions),
            "answers": batch.answer_count,
            "requests": batch.stats.requests,
            "pages_resumed": batch.stats.pages_resumed,
            "quota_remaining": batch.stats.quota_remaining if batch.stats.quota_remaining is not None else -1,
            "elapsed_s": round(time.monotonic() - started, 2),
            "source": batch.source,
            "path": dg.MetadataValue.path(str(out_file)),
            "preview": dg.MetadataValue.md(md_table(preview, ["rank", "score", "title", "answer score"])),
            **extra,
        },
        data_version=dg.DataVersion(file_hash(out_file)),
    )
