"""Collect one partition (a range of ranks) from a `QuestionSource` into a raw batch file.

Every fetched page is checkpointed at once, so a quota stop or a crash loses no request: the next
run reuses the saved pages and fetches only the missing ones. The batch file is written only when
the whole range is in, atomically, and holds only deterministic content, so collecting the same
data twice gives byte-identical files. Run-dependent numbers (requests, time, quota) go to a small
``<name>.stats.json`` sidecar instead.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Protocol

from pydantic import ValidationError

from cv_pipeline.atomic import write_json
from cv_pipeline.partitions import RankRange
from cv_pipeline.sources.base import QuestionSource, QuotaExhausted, SourceError
from cv_pipeline.sources.models import BatchStats, RawBatch, RawQuestion, SourcePage

_log = logging.getLogger("cv_pipeline.collection")
_SOURCE_FILE = "source.json"


class Log(Protocol):
    """What we need from a logger: `logging.Logger` and Dagster's ``context.log`` both fit."""

    def info(self, msg: str, *args: object) -> object: ...

    def warning(self, msg: str, *args: object) -> object: ...


def pages_for(rank_range: RankRange, page_size: int) -> range:
    """The 1-based pages that hold ranks ``[start, stop)``."""
    if rank_range.stop <= rank_range.start:
        raise ValueError(f"rank range {rank_range} is empty: stop must be above start")
    return range(rank_range.start // page_size + 1, (rank_range.stop - 1) // page_size + 2)


def stats_path(out_file: Path) -> Path:
    """Where the run statistics of ``out_file`` go (beside it, not inside it)."""
    out_file = Path(out_file)
    return out_file.with_name(f"{out_file.stem}.stats.json")


# Saved pages older than this are not resumed: a batch would mix score snapshots days apart (the ranking moves).
# Two days covers resuming after the daily quota resets; the weekly re-scrape starts afresh.
CHECKPOINT_MAX_AGE_S = 48 * 3600


def _checkpoint_owner(source: QuestionSource) -> dict[str, object]:
    # Everything that changes what a page holds: resuming pages of another shape would mix them in one batch.
    owner: dict[str, object] = {"source": source.describe(), "site": source.site(), "page_size": source.page_size,
                                "keep_all_answers": source.keep_all_answers}
    if snapshot := source.snapshot():  # only where there is one, so that earlier API checkpoints still resume
        owner["snapshot"] = snapshot
    return owner


def _prepare_checkpoints(checkpoint_dir: Path, source: QuestionSource, log: Log, max_age_s: float) -> None:
    """Keep saved pages only if the same source (site, page size, answers kept, data version) wrote them,
    starting less than ``max_age_s`` ago."""
    owner_file = checkpoint_dir / _SOURCE_FILE
    owner = _checkpoint_owner(source)
    if owner_file.exists():
        try:
            saved = json.loads(owner_file.read_text(encoding="utf-8"))
            age = time.time() - owner_file.stat().st_mtime
        except (OSError, ValueError):
            saved, age = None, 0.0
        if saved != owner:
            log.warning("checkpoints in %s came from another source (%s); starting over", checkpoint_dir, saved)
            shutil.rmtree(checkpoint_dir)
        elif age > max_age_s:
            log.warning("checkpoints in %s were started %.0f hours ago, and the ranking has moved since; starting over",
                        checkpoint_dir, age / 3600)
            shutil.rmtree(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    if not owner_file.exists():
        write_json(owner_file, owner)


def _load_checkpoint(path: Path, page: int, log: Log) -> SourcePage | None:
    if not path.exists():
        return None
    try:
        saved = SourcePage.model_validate_json(path.read_bytes())
    except (OSError, ValidationError) as exc:
        log.warning("checkpoint %s is unreadable (%s); fetching page %d again", path, exc.__class__.__name__, page)
        return None
    return saved if saved.page == page else None


def collect_batch(
    source: QuestionSource,
    rank_range: RankRange,
    out_file: Path,
    checkpoint_dir: Path,
    log: Log | None = None,
    max_checkpoint_age_s: float = CHECKPOINT_MAX_AGE_S,
) -> RawBatch:
    """Fetch ranks ``[rank_range.start, rank_range.stop)`` from ``source`` into ``out_file``.

    Raises whatever the source raises (e.g. `QuotaExhausted`) with the finished pages saved in
    ``checkpoint_dir``; ``out_file`` is then left exactly as it was. A later call resumes from those pages
    (same source and settings, saved less than ``max_checkpoint_age_s`` ago).
    """
    log = log or _log
    out_file, checkpoint_dir = Path(out_file), Path(checkpoint_dir)
    started = time.monotonic()
    _prepare_checkpoints(checkpoint_dir, source, log, max_checkpoint_age_s)
    stats = BatchStats()
    seen: set[int] = set()
    questions: list[RawQuestion] = []
    duplicates = 0
    for page_no in pages_for(rank_range, source.page_size):
        checkpoint = checkpoint_dir / f"page-{page_no:05d}.json"
        page = _load_checkpoint(checkpoint, page_no, log)
        if page is not None:
            stats.pages_resumed += 1
        else:
            try:
                page = source.fetch_page(page_no)
            except QuotaExhausted:
                log.warning(
                    "quota spent at page %d of partition %s; %d page(s) saved in %s for the next run",
                    page_no, rank_range.key, stats.pages, checkpoint_dir,
                )
                raise
            write_json(checkpoint, page.model_dump(mode="json"))
            stats.requests += page.requests
            if page.quota_remaining is not None:
                stats.quota_remaining = page.quota_remaining
        stats.pages += 1
        for question in page.questions:
            if not rank_range.start <= question.rank < rank_range.stop:
                continue
            if question.question_id in seen:
                # A live ranking shifts while we page through it: the first sighting is the
                # higher-ranked one, keep that.
                duplicates += 1
                continue
            seen.add(question.question_id)
            questions.append(question)
        if not page.has_more:
            break
    stats.elapsed_s = round(time.monotonic() - started, 3)
    batch = RawBatch(
        partition_key=rank_range.key,
        source=source.describe(),
        site=source.site(),
        start_rank=rank_range.start,
        stop_rank=rank_range.stop,
        questions=questions,
        # Only deterministic numbers go in the file; the rest is in the sidecar.
        stats=BatchStats(pages=stats.pages),
    )
    # An empty answer does not replace a batch that holds questions: a wrong site, filter or mirror, or a server
    # having a bad day, would otherwise wipe a partition (and, through automation, what follows it).
    if not questions and (held := _questions_in(out_file)):
        shutil.rmtree(checkpoint_dir, ignore_errors=True)  # its empty pages must not be resumed next time
        raise SourceError(
            f"partition {rank_range.key}: {source.describe()} returned no questions for ranks {rank_range.start}-"
            f"{rank_range.stop - 1}, but {out_file} holds {held}; it was kept. Check the source settings (site, "
            "base URL, dump); if the site really has no questions there now, delete that file and materialise again"
        )
    # The old sidecar goes first: a failure between the two writes leaves the batch without run statistics,
    # never beside another run's.
    stats_path(out_file).unlink(missing_ok=True)
    write_json(out_file, batch.model_dump(mode="json"))
    write_json(stats_path(out_file), stats.model_dump(mode="json"))
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    if duplicates:
        log.warning("partition %s: dropped %d question(s) seen twice while paging", rank_range.key, duplicates)
    if not questions:
        log.warning("partition %s: the source has no questions in this rank range", rank_range.key)
    log.info(
        "partition %s: %d questions (%d with an answer) from %d page(s), %d resumed, %d request(s)",
        rank_range.key, len(questions), batch.answer_count, stats.pages, stats.pages_resumed, stats.requests,
    )
    return batch.model_copy(update={"stats": stats})


def _questions_in(batch_file: Path) -> int:
    """How many questions an earlier batch file holds (0 when there is none, or it is not a batch)."""
    try:
        return len(load_batch(batch_file).questions) if batch_file.is_file() else 0
    except ValueError:
        return 0


def load_batch(path: Path) -> RawBatch:
    """Read a raw batch file; its sidecar's run statistics are merged in when present."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"raw batch {path} does not exist: materialise raw_question_batches for this partition")
    try:
        batch = RawBatch.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        raise ValueError(
            f"{path} is not a raw question batch ({exc.error_count()} problem(s), first: "
            f"{exc.errors()[0]['loc']} {exc.errors()[0]['msg']}): re-materialise raw_question_batches for it"
        ) from None
    sidecar = stats_path(path)
    if sidecar.is_file():
        try:
            batch = batch.model_copy(update={"stats": BatchStats.model_validate_json(sidecar.read_bytes())})
        except ValidationError:
            pass  # statistics are informational; the batch itself is valid
    return batch
