"""Collection and curation through Dagster (`dg.materialize`) over the real client and the sample site."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg

from cv_pipeline.defs.collection.assets import raw_question_batches
from cv_pipeline.defs.curation import checks as curation_checks
from cv_pipeline.curation import cleaner
from cv_pipeline.defs.curation.assets import CLEANER_ACCELERATED, CLEANER_PURE_PYTHON, cleaned_qa_pairs
from cv_pipeline.defs.resources import DataDirResource, StackExchangeResource
from cv_pipeline.sources.sample_site import SampleSite

PARTITION = "00000-04999"


def materialize(site_url: str, data_dir: Path, *, site: str = "stats", with_cleaning: bool = True, **resource_kw):
    assets = [raw_question_batches, cleaned_qa_pairs] if with_cleaning else [raw_question_batches]
    return dg.materialize(
        [*assets, *(dg.load_asset_checks_from_modules([curation_checks]) if with_cleaning else [])],
        partition_key=PARTITION,
        resources={
            "stackexchange": StackExchangeResource(source="api", api_base_url=site_url, site=site, **resource_kw),
            "data_dir": DataDirResource(path=str(data_dir)),
        },
        raise_on_error=False,
    )


def metadata(result, asset: str) -> dict:
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == asset]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp") or p.name.endswith(".dirtmp")]


def test_a_partition_materialises_and_rematerialises_byte_identically(tmp_path):
    with SampleSite(n_questions=700, seed=3) as site:
        first = materialize(site.base_url, tmp_path)
        assert first.success
        raw_file = tmp_path / "raw" / f"questions_{PARTITION}.json"
        cleaned_file = tmp_path / "cleaned" / f"pairs_{PARTITION}.parquet"
        raw_bytes, cleaned_bytes = raw_file.read_bytes(), cleaned_file.read_bytes()
        md = metadata(first, "raw_question_batches")
        assert md["questions"] == 700 and md["dagster/row_count"] == 700
        assert 0 < md["answers"] <= 700
        assert md["requests"] == 8  # 7 pages of 100 + the filter
        assert md["quota_remaining"] == site.quota_remaining()
        assert "| rank | score |" in md["preview"]
        cleaned = metadata(first, "cleaned_qa_pairs")
        assert cleaned["rule/input"] == 700
        assert cleaned["rule/kept"] == cleaned["dagster/row_count"] > 0
        assert cleaned["rule/dropped_code_block"] > 0  # the corpus has <pre> blocks, the rule drops them
        assert cleaned["cleaner"] == (CLEANER_ACCELERATED if cleaner.accelerated() else CLEANER_PURE_PYTHON)
        assert all(c.passed for c in first.get_asset_check_evaluations())

        second = materialize(site.base_url, tmp_path)
        assert second.success
    assert raw_file.read_bytes() == raw_bytes
    assert cleaned_file.read_bytes() == cleaned_bytes
    ids = [q["question_id"] for q in json.loads(raw_bytes)["questions"]]
    assert len(ids) == len(set(ids))
    assert leftovers(tmp_path) == []


def test_a_fault_injected_run_still_completes_without_duplicates(tmp_path):
    with SampleSite(n_questions=600, seed=1) as site:
        site.faults.update(unavailable_next=2, truncate_next=1, malformed_next=1, drop_next=1)
        result = materialize(site.base_url, tmp_path, with_cleaning=False)
        assert result.success
        assert site.requests > 7  # the faults cost retries
    batch = json.loads((tmp_path / "raw" / f"questions_{PARTITION}.json").read_text())
    ids = [q["question_id"] for q in batch["questions"]]
    assert len(ids) == 600 == len(set(ids))
    assert [q["rank"] for q in batch["questions"]] == list(range(600))


def test_a_failed_run_keeps_the_earlier_good_batch(tmp_path):
    with SampleSite(n_questions=300, seed=2) as site:
        assert materialize(site.base_url, tmp_path, with_cleaning=False).success
        raw_file = tmp_path / "raw" / f"questions_{PARTITION}.json"
        good = raw_file.read_bytes()
        site.faults.update(fail_next=1, fail_error_id=403)
        failed = materialize(site.base_url, tmp_path, with_cleaning=False)
    assert not failed.success
    assert raw_file.read_bytes() == good
    assert leftovers(tmp_path) == []


def test_an_unknown_site_fails_with_a_message_naming_it(tmp_path):
    with SampleSite(n_questions=100) as site:
        result = materialize(site.base_url, tmp_path, site="nosuchsite", with_cleaning=False)
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.error
    assert "nosuchsite" in str(failure)
    assert not (tmp_path / "raw" / f"questions_{PARTITION}.json").exists()


def test_quota_exhaustion_stops_cleanly_and_the_next_run_resumes(tmp_path):
    with SampleSite(n_questions=1_000, seed=4, quota_max=6) as site:
        stopped = materialize(site.base_url, tmp_path, with_cleaning=False)
        assert not stopped.success
        error = str(stopped.get_step_failure_events()[0].step_failure_data.error)
        assert "quota" in error.lower() and "UTC" in error
        raw_file = tmp_path / "raw" / f"questions_{PARTITION}.json"
        assert not raw_file.exists()
        saved = sorted((tmp_path / "raw" / ".checkpoints" / PARTITION).glob("page-*.json"))
        assert len(saved) == 5  # 6 requests: the filter + 5 pages, all kept

        site.reset_quota()
        before = site.requests
        resumed = materialize(site.base_url, tmp_path, with_cleaning=False)
        assert resumed.success
        assert site.requests - before == 1 + 5  # filter + only the 5 missing pages
    md = metadata(resumed, "raw_question_batches")
    assert md["pages_resumed"] == 5
    ids = [q["question_id"] for q in json.loads(raw_file.read_text())["questions"]]
    assert len(ids) == 1000 == len(set(ids))
