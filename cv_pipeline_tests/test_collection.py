"""The partition collector: checkpoints, resume after a quota stop, de-duplication, atomic output."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from cv_pipeline.collection import collect_batch, load_batch, pages_for, stats_path
from cv_pipeline.partitions import RankRange
from cv_pipeline.sources.api import StackExchangeAPISource
from cv_pipeline.sources.base import QuestionSource, QuotaExhausted, SourceError
from cv_pipeline.sources.models import RawAnswer, RawQuestion, SourcePage
from cv_pipeline.sources.ratelimit import FakeClock
from cv_pipeline.sources.sample_site import SampleSite


def raw_question(qid: int, rank: int) -> RawQuestion:
    return RawQuestion(
        question_id=qid, rank=rank, title=f"Q{qid}", body_html=f"<p>{qid}</p>", score=1_000 - rank,
        link=f"https://stats.stackexchange.com/q/{qid}",
        top_answer=RawAnswer(answer_id=qid * 10, score=3, body_html="<p>a</p>"),
    )


class ListSource(QuestionSource):
    """An in-memory ranking; ``fail_at`` makes one page raise once; ``shift`` moves ids between pages."""

    def __init__(self, n: int, page_size: int = 10, *, site: str = "stats"):
        self.page_size = page_size
        self.ids = [5_000 + i for i in range(n)]
        self.fetched: list[int] = []
        self.fail_at: dict[int, Exception] = {}
        self._site = site

    def site(self) -> str:
        return self._site

    def describe(self) -> str:
        return f"list source of {len(self.ids)} ({self._site})"

    def fetch_page(self, page: int) -> SourcePage:
        if page in self.fail_at:
            raise self.fail_at.pop(page)
        self.fetched.append(page)
        start = (page - 1) * self.page_size
        ids = self.ids[start : start + self.page_size]
        return SourcePage(
            page=page, page_size=self.page_size, has_more=start + self.page_size < len(self.ids), requests=1,
            questions=[raw_question(qid, start + i) for i, qid in enumerate(ids)], quota_remaining=100 - page,
        )


def run(source: QuestionSource, tmp_path: Path, rank_range: RankRange = RankRange(0, 50), name: str = "00000-00049.json"):
    return collect_batch(source, rank_range, tmp_path / "raw" / name, tmp_path / "checkpoints" / name)


@pytest.mark.parametrize(
    ("start", "stop", "size", "pages"),
    [(0, 5_000, 100, range(1, 51)), (5_000, 10_000, 100, range(51, 101)), (15, 35, 10, range(2, 5)), (0, 1, 100, range(1, 2))],
)
def test_pages_for(start: int, stop: int, size: int, pages: range) -> None:
    assert pages_for(RankRange(start, stop), size) == pages


def test_pages_for_rejects_an_empty_range() -> None:
    with pytest.raises(ValueError, match="empty"):
        pages_for(RankRange(10, 10), 100)


def test_collects_the_range_and_cleans_up(tmp_path: Path) -> None:
    source = ListSource(200)
    batch = run(source, tmp_path)
    assert source.fetched == [1, 2, 3, 4, 5]
    assert [q.rank for q in batch.questions] == list(range(50))
    assert (batch.partition_key, batch.start_rank, batch.stop_rank, batch.site) == ("00000-00049", 0, 50, "stats")
    assert (batch.stats.pages, batch.stats.pages_resumed, batch.stats.requests, batch.stats.quota_remaining) == (5, 0, 5, 95)
    out = tmp_path / "raw" / "00000-00049.json"
    assert load_batch(out) == batch
    assert not (tmp_path / "checkpoints" / "00000-00049.json").exists()
    assert sorted(p.name for p in out.parent.iterdir()) == ["00000-00049.json", "00000-00049.stats.json"]


def test_unaligned_range_keeps_only_its_ranks(tmp_path: Path) -> None:
    source = ListSource(100)
    batch = run(source, tmp_path, RankRange(15, 35))
    assert source.fetched == [2, 3, 4]
    assert [q.rank for q in batch.questions] == list(range(15, 35))


def test_stops_when_the_source_runs_out(tmp_path: Path) -> None:
    source = ListSource(23)
    batch = run(source, tmp_path)
    assert source.fetched == [1, 2, 3]
    assert len(batch.questions) == 23


def test_range_past_the_end_gives_an_empty_batch(tmp_path: Path) -> None:
    batch = run(ListSource(10), tmp_path, RankRange(50, 100))
    assert batch.questions == []


def test_resume_after_quota_stop_refetches_no_saved_page(tmp_path: Path) -> None:
    source = ListSource(200)
    source.fail_at[4] = QuotaExhausted("quota spent", resume_at=1.0)
    with pytest.raises(QuotaExhausted):
        run(source, tmp_path)
    assert not (tmp_path / "raw" / "00000-00049.json").exists()
    assert sorted(p.name for p in (tmp_path / "checkpoints" / "00000-00049.json").glob("page-*.json")) == [
        "page-00001.json", "page-00002.json", "page-00003.json"]
    # The ranking moves a little before the re-run: the top of page 4 was already seen on page 3.
    source.ids[30] = source.ids[29]
    batch = run(source, tmp_path)
    assert source.fetched == [1, 2, 3, 4, 5]  # pages 1-3 once only
    assert (batch.stats.pages, batch.stats.pages_resumed, batch.stats.requests) == (5, 3, 2)
    ids = [q.question_id for q in batch.questions]
    assert len(ids) == len(set(ids)) == 49
    assert batch.questions[29].rank == 29  # the first (higher-ranked) sighting is kept


@pytest.mark.parametrize("differs", ["site", "keep_all_answers"])
def test_checkpoints_of_another_source_are_not_reused(tmp_path: Path, differs: str) -> None:
    """Pages saved by another site, or with other answers kept, would mix two shapes of page in one batch."""
    first = ListSource(200, site="stats")
    first.fail_at[3] = QuotaExhausted("spent")
    with pytest.raises(QuotaExhausted):
        run(first, tmp_path)
    other = ListSource(200, site="math" if differs == "site" else "stats")
    other.keep_all_answers = differs == "keep_all_answers"
    batch = run(other, tmp_path)
    assert other.fetched == [1, 2, 3, 4, 5] and batch.stats.pages_resumed == 0


def test_checkpoints_of_another_snapshot_or_days_old_are_not_reused(tmp_path: Path) -> None:
    """A newer dump at the same path (its snapshot changes), or pages saved days ago (the ranking has moved since:
    a batch would mix score snapshots), start over; pages from yesterday's quota stop still resume."""
    import os
    import time

    from cv_pipeline.collection import CHECKPOINT_MAX_AGE_S

    def stopped_at_page_3(snapshot: str) -> ListSource:
        source = ListSource(200)
        source.snapshot = lambda: snapshot  # type: ignore[method-assign]
        source.fail_at[3] = QuotaExhausted("spent")
        with pytest.raises(QuotaExhausted):
            run(source, tmp_path)
        return source

    stopped_at_page_3("v1")
    newer = ListSource(200)
    newer.snapshot = lambda: "v2"  # type: ignore[method-assign]
    assert run(newer, tmp_path).stats.pages_resumed == 0 and newer.fetched == [1, 2, 3, 4, 5]

    owner = tmp_path / "checkpoints" / "00000-00049.json" / "source.json"
    for age_h, resumed in ((20, 2), (CHECKPOINT_MAX_AGE_S / 3600 + 1, 0)):
        stopped_at_page_3("v1")
        then = time.time() - age_h * 3600
        os.utime(owner, (then, then))
        again = ListSource(200)
        again.snapshot = lambda: "v1"  # type: ignore[method-assign]
        assert run(again, tmp_path).stats.pages_resumed == resumed, age_h


def test_corrupt_checkpoint_is_fetched_again(tmp_path: Path) -> None:
    source = ListSource(200)
    source.fail_at[3] = QuotaExhausted("spent")
    with pytest.raises(QuotaExhausted):
        run(source, tmp_path)
    (tmp_path / "checkpoints" / "00000-00049.json" / "page-00002.json").write_text("{not json")
    batch = run(source, tmp_path)
    assert source.fetched == [1, 2, 2, 3, 4, 5]
    assert batch.stats.pages_resumed == 1 and len(batch.questions) == 50


def test_failure_keeps_the_older_file_and_leaves_no_partial_one(tmp_path: Path) -> None:
    run(ListSource(200), tmp_path)
    out = tmp_path / "raw" / "00000-00049.json"
    before = out.read_bytes()
    failing = ListSource(300)
    failing.fail_at[5] = SourceError("the API is down")
    with pytest.raises(SourceError, match="down"):
        run(failing, tmp_path)
    assert out.read_bytes() == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["00000-00049.json", "00000-00049.stats.json"]


def test_an_empty_answer_does_not_replace_a_batch_that_holds_questions(tmp_path: Path) -> None:
    run(ListSource(200), tmp_path)
    out = tmp_path / "raw" / "00000-00049.json"
    before = out.read_bytes()
    with pytest.raises(SourceError, match=r"returned no questions for ranks 0-49, but .*00000-00049.json holds 50; it was kept"):
        run(ListSource(0), tmp_path)  # e.g. a wrong site or filter: a valid, empty ranking
    assert out.read_bytes() == before
    assert not (tmp_path / "checkpoints" / "00000-00049.json").exists()  # its empty pages are not resumed
    out.unlink()  # what the message says to do when the site really has none there now
    assert run(ListSource(0), tmp_path).questions == []
    assert run(ListSource(0), tmp_path).questions == []  # an empty batch may replace an empty one


def test_a_failure_between_the_batch_and_its_statistics_leaves_no_stale_statistics(tmp_path: Path, monkeypatch) -> None:
    import cv_pipeline.collection as collection

    run(ListSource(200, page_size=25), tmp_path)
    out = tmp_path / "raw" / "00000-00049.json"
    assert load_batch(out).stats.pages == 2
    real_write_json = collection.write_json

    def failing_second_write(path, obj):
        if path.name.endswith(".stats.json"):
            raise OSError("disk full")
        return real_write_json(path, obj)

    monkeypatch.setattr(collection, "write_json", failing_second_write)
    with pytest.raises(OSError, match="disk full"):
        run(ListSource(200, page_size=10), tmp_path)
    batch = load_batch(out)
    assert batch.stats.pages == 5 and batch.stats.requests == 0  # the file's own numbers, no other run's


def test_failure_with_no_earlier_file_leaves_none(tmp_path: Path) -> None:
    failing = ListSource(300)
    failing.fail_at[1] = SourceError("bad site")
    with pytest.raises(SourceError):
        run(failing, tmp_path)
    assert not (tmp_path / "raw").exists() or list((tmp_path / "raw").iterdir()) == []


def test_two_collections_are_byte_identical(tmp_path: Path) -> None:
    run(ListSource(200), tmp_path / "a")
    interrupted = ListSource(200)
    interrupted.fail_at[2] = QuotaExhausted("spent")
    with pytest.raises(QuotaExhausted):
        run(interrupted, tmp_path / "b")
    run(interrupted, tmp_path / "b")  # a resumed run must not differ either
    a, b = (tmp_path / d / "raw" / "00000-00049.json" for d in ("a", "b"))
    assert a.read_bytes() == b.read_bytes()
    # the run-dependent numbers differ, and live only in the sidecar
    assert json.loads(stats_path(a).read_text())["pages_resumed"] == 0
    assert json.loads(stats_path(b).read_text())["pages_resumed"] == 1


def _api_handler(request: httpx.Request) -> httpx.Response:
    if request.url.path.endswith("/filters/create"):
        return httpx.Response(200, json={"items": [{"filter": "!f"}], "quota_max": 300, "quota_remaining": 299})
    page = int(request.url.params["page"])
    items = [{"question_id": 900 + page * 10 + i, "score": 100 - page * 10 - i, "title": f"Q &amp; {i}", "body": "<p>b</p>",
              "link": f"https://stats.stackexchange.com/q/{i}", "tags": ["r"], "owner": {"user_id": 1, "display_name": "N"},
              "answers": [{"answer_id": page * 100 + i, "score": 2, "body": "<p>a</p>"}]} for i in range(10)]
    return httpx.Response(200, json={"items": items, "has_more": page < 3, "quota_max": 300, "quota_remaining": 299 - page})


def test_api_source_collections_are_byte_identical(tmp_path: Path) -> None:
    files = []
    for name in ("a", "b"):
        source = StackExchangeAPISource(base_url="http://127.0.0.1:1/2.3", page_size=10, clock=FakeClock(), transport=httpx.MockTransport(_api_handler))
        with source:
            batch = run(source, tmp_path / name)
        files.append((tmp_path / name / "raw" / "00000-00049.json").read_bytes())
        assert len(batch.questions) == 30 and batch.questions[0].title == "Q & 0"
    assert files[0] == files[1]
    assert b"display_name" not in files[0]


@pytest.mark.parametrize(
    ("content", "fragment"),
    [('{"questions": []}', "is not a raw question batch"), ("not json at all", "is not a raw question batch"), ("[]", "is not a raw question batch")],
)
def test_load_batch_rejects_other_files(tmp_path: Path, content: str, fragment: str) -> None:
    path = tmp_path / "x.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=fragment) as err:
        load_batch(path)
    assert str(path) in str(err.value)


def test_load_batch_of_a_missing_file_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="materialise raw_question_batches"):
        load_batch(tmp_path / "missing.json")


# -- over the real sample site ---------------------------------------------------------------------


def _site_source(site: SampleSite, clock: FakeClock, **kwargs) -> StackExchangeAPISource:
    return StackExchangeAPISource(base_url=site.base_url, clock=clock, **kwargs)


def test_sample_site_collection_resumes_after_quota_and_is_byte_identical(tmp_path: Path) -> None:
    clock = FakeClock(start=time.time())
    rank_range = RankRange(0, 500)
    with SampleSite(n_questions=450, clock=clock.now, quota_max=4, valid_keys={"k"}) as site:
        with _site_source(site, clock, key="k") as source, pytest.raises(QuotaExhausted):
            run(source, tmp_path / "a", rank_range)  # filter + pages 1-3, then the quota is spent
        site.reset_quota()
        with _site_source(site, clock, key="k") as source:
            batch = run(source, tmp_path / "a", rank_range)
        pages = [int(params["page"]) for path, params in site.request_log if path.endswith("/questions")]
    assert pages == [1, 2, 3, 4, 5]  # no saved page fetched twice
    assert batch.stats.pages_resumed == 3 and len(batch.questions) == 450
    assert len({q.question_id for q in batch.questions}) == 450
    # A second, uninterrupted collection from another sample site instance (another port).
    with SampleSite(n_questions=450, clock=clock.now) as other, _site_source(other, clock) as source:
        run(source, tmp_path / "b", rank_range)
    a, b = (tmp_path / d / "raw" / "00000-00049.json" for d in ("a", "b"))
    assert a.read_bytes() == b.read_bytes()
