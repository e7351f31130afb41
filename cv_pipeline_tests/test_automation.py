"""Declarative automation, evaluated with Dagster's own test helper over a real instance."""

from __future__ import annotations

import dagster as dg

from cv_pipeline.curation.validate import CHAT_RULES
from cv_pipeline.defs.collection.assets import raw_question_batches
from cv_pipeline.defs.project import build_definitions
from cv_pipeline.defs.resources import DataDirResource, StackExchangeResource
from cv_pipeline.profiles import get_profile
from cv_pipeline.sources.sample_site import SampleSite

PARTITION = "05000-09999"
CLEANED, CHAT = dg.AssetKey("cleaned_qa_pairs"), dg.AssetKey("chat_dataset")
EVAL, EXPORTS = dg.AssetKey("adapter_evaluation"), dg.AssetKey("adapter_exports")
ADAPTERS = [dg.AssetKey("lora_adapter_all_pairs"), dg.AssetKey("lora_adapter_top_10k")]


def test_curation_follows_a_rescrape_and_training_never_starts_by_itself(tmp_path):
    defs = build_definitions(get_profile("demo"), data_dir=tmp_path)
    instance = dg.DagsterInstance.ephemeral()

    first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    assert first.total_requested == 0  # nothing collected yet: nothing to clean

    with SampleSite(n_questions=5_300) as site:  # partition 05000-09999 holds ranks 5000-5299
        resources = {
            "stackexchange": StackExchangeResource(source="api", api_base_url=site.base_url),
            "data_dir": DataDirResource(path=str(tmp_path)),
        }
        assert dg.materialize([raw_question_batches], partition_key=PARTITION, resources=resources, instance=instance).success

    second = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
    assert second.get_requested_partitions(CLEANED) == {PARTITION}  # only the re-scraped partition
    assert second.get_num_requested(CHAT) == 0  # waits for the cleaning it depends on
    assert all(second.get_num_requested(a) == 0 for a in ADAPTERS)

    third = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=second.cursor)
    assert third.get_num_requested(CLEANED) == 0  # requested once, not again on every tick

    # the requested cleaning ran: now the dataset has a partition it has not read
    everything = [*defs.assets, *defs.asset_checks]
    assert dg.materialize(everything, selection=[CLEANED], partition_key=PARTITION, resources=defs.resources,
                          instance=instance).success
    fourth = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=third.cursor)
    assert fourth.get_num_requested(CHAT) == 1 and fourth.get_num_requested(CLEANED) == 0
    assert dg.materialize(everything, selection=[CHAT], resources=defs.resources, instance=instance).success
    fifth = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=fourth.cursor)
    assert fifth.total_requested == 0  # the dataset read it; the adapters wait for a person (auto_retrain off)


def test_opted_in_adapters_retrain_only_when_the_data_version_changes(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    defs = build_definitions(get_profile("demo").model_copy(update={"auto_retrain": True}), data_dir=tmp_path)
    instance = dg.DagsterInstance.ephemeral()
    rows = [
        {"question_id": q, "answer_id": q + 10_000, "rank": q, "question_score": 100 - q, "answer_score": 1,
         "tags": ["t"], "question": f"How do I read question {q}?", "answer": f"Carefully, answer {q}.",
         "link": f"https://stats.stackexchange.com/q/{q}", "license": "CC BY-SA 4.0",
         "answer_license": "CC BY-SA 4.0"}
        for q in range(1, 80)
    ]
    (tmp_path / "cleaned").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "cleaned" / "pairs_00000-04999.parquet")
    instance.report_runless_asset_event(dg.AssetMaterialization("base_model"))  # stands in for the 135M model

    def dataset(top_n: int) -> None:  # with its blocking checks, as every run of chat_dataset has them
        run_config = {"ops": {"chat_dataset": {"config": {"top_n": top_n}}}}
        result = dg.materialize([*defs.assets, *defs.asset_checks], selection=[CHAT], resources=defs.resources,
                                instance=instance, run_config=run_config)
        assert result.success and len(result.get_asset_check_evaluations()) == len(CHAT_RULES)

    def requested(cursor):
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance, asset_selection=dg.AssetSelection.assets(*ADAPTERS), cursor=cursor)
        return {a for a in ADAPTERS if result.get_num_requested(a)}, result.cursor

    now, cursor = requested(None)
    assert now == set()
    dataset(20)
    now, cursor = requested(cursor)
    assert now == set(ADAPTERS)  # a new data version: retrain
    dataset(20)
    now, cursor = requested(cursor)
    assert now == set()  # the same data again: nothing to retrain
    dataset(10)
    now, cursor = requested(cursor)
    assert now == set(ADAPTERS)  # the top subset changed: retrain

    # New data whose dataset would fail a blocking check: chat_dataset refuses to write it (the same rules), so
    # there is no new data version and nothing to retrain until a dataset that passes.
    bad = [dict(r, answer=r["answer"] + " <div>left over</div>") if r["question_id"] == 7 else r for r in rows]
    pq.write_table(pa.Table.from_pylist(bad), tmp_path / "cleaned" / "pairs_00000-04999.parquet")
    result = dg.materialize([*defs.assets, *defs.asset_checks], selection=[CHAT], resources=defs.resources,
                            instance=instance, raise_on_error=False)
    assert not result.success and not result.get_asset_materialization_events()
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "chat_has_no_markup" in failure.event_specific_data.error.message
    now, cursor = requested(cursor)
    assert now == set()
    pq.write_table(pa.Table.from_pylist(rows[:-1]), tmp_path / "cleaned" / "pairs_00000-04999.parquet")
    dataset(10)
    now, cursor = requested(cursor)
    assert now == set(ADAPTERS)  # fixed data, checks passed: retrain

    # A re-scrape under way (a partition's collection running, two levels above the dataset): new data waits
    # until it is over, so that training happens once, on the dataset the re-scrape ends with.
    from dagster._core.events import DagsterEvent, DagsterEventType

    for adapter in ADAPTERS:  # the adapters have read the current dataset
        instance.report_runless_asset_event(dg.AssetMaterialization(adapter))
    dataset(15)
    collecting = _start_run(instance, defs, "collect_raw_batches", partition="05000-09999")
    now, cursor = requested(cursor)
    assert now == set()
    instance.report_dagster_event(DagsterEvent(event_type_value=DagsterEventType.RUN_SUCCESS.value,
                                               job_name="collect_raw_batches"), run_id=collecting.run_id)
    now, cursor = requested(cursor)
    assert now == set(ADAPTERS)


def test_opted_in_evaluation_and_exports_follow_retrained_adapters(tmp_path):
    """With auto_retrain, the report and the exports must not go on describing the previous adapters: the
    evaluation follows once every adapter has a version it has not read, the exports follow the evaluation.
    Without auto_retrain neither starts by itself."""
    from dagster._core.definitions.data_version import DATA_VERSION_TAG

    plain = build_definitions(get_profile("demo"), data_dir=tmp_path)
    assert all(plain.resolve_assets_def(k).automation_conditions_by_key.get(k) is None for k in (EVAL, EXPORTS))
    defs = build_definitions(get_profile("demo").model_copy(update={"auto_retrain": True}), data_dir=tmp_path)
    instance = dg.DagsterInstance.ephemeral()

    def made(key: str, version: str) -> None:
        instance.report_runless_asset_event(dg.AssetMaterialization(key, tags={DATA_VERSION_TAG: version}))

    def requested(cursor):
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor,
                                                   asset_selection=dg.AssetSelection.assets(EVAL, EXPORTS))
        return {a for a in (EVAL, EXPORTS) if result.get_num_requested(a)}, result.cursor

    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {"question_id": q, "answer_id": q + 10_000, "rank": q, "question_score": 100 - q, "answer_score": 1,
         "tags": ["t"], "question": f"How do I read question {q}?", "answer": f"Carefully, answer {q}.",
         "link": f"https://stats.stackexchange.com/q/{q}", "license": "CC BY-SA 4.0", "answer_license": "CC BY-SA 4.0"}
        for q in range(1, 80)
    ]
    (tmp_path / "cleaned").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "cleaned" / "pairs_00000-04999.parquet")
    # the real dataset with its blocking checks, which the evaluation (reading its test split) waits for
    assert dg.materialize([*defs.assets, *defs.asset_checks], selection=[CHAT], resources=defs.resources,
                          instance=instance).success
    made("base_model", "b1")
    made(ADAPTERS[0], "a1")
    now, cursor = requested(None)
    assert now == set()  # an adapter is missing
    made(ADAPTERS[1], "t1")
    now, cursor = requested(cursor)
    assert now == {EVAL}  # the exports wait for the evaluation
    now, cursor = requested(cursor)
    assert now == set()  # requested once for these versions, not on every tick
    made(EVAL, "e1")
    now, cursor = requested(cursor)
    assert EXPORTS in now

    # Retrained again, and this time the evaluation's run fails: the exports never ship unmeasured adapters.
    from dagster._core.events import DagsterEvent, DagsterEventType

    made(ADAPTERS[0], "a2")
    made(ADAPTERS[1], "t2")
    now, cursor = requested(cursor)
    assert now == {EVAL}
    evaluating = _start_run(instance, defs, "train_and_evaluate")  # the run it requested...
    instance.report_dagster_event(DagsterEvent(event_type_value=DagsterEventType.RUN_FAILURE.value,
                                               job_name="train_and_evaluate"), run_id=evaluating.run_id)
    now, cursor = requested(cursor)  # ...failed: the evaluation is not requested again for these versions,
    assert now == set()  # and the exports, with nothing running upstream, still wait for a successful one


def _start_run(instance: dg.DagsterInstance, defs: dg.Definitions, job: str, partition: str | None = None):
    """A run of ``job`` (for ``partition``) in progress (STARTED), as the daemon would have launched it."""
    from dagster._core.events import DagsterEvent, DagsterEventType

    job_def = defs.resolve_job_def(job)
    run = instance.create_run_for_job(job_def, asset_selection=frozenset(job_def.asset_layer.selected_asset_keys),
                                      tags={"dagster/partition": partition} if partition else None)
    instance.report_dagster_event(DagsterEvent(event_type_value=DagsterEventType.RUN_START.value, job_name=job),
                                  run_id=run.run_id)
    return run


def test_an_update_that_lands_while_the_asset_runs_is_picked_up_after_the_run():
    """A re-scrape cleans partitions one by one: the last can land while chat_dataset is still running on
    the first. So can a new dataset version while an adapter trains. Neither may be forgotten."""
    from cv_pipeline.defs.operations.automation import (
        FOLLOW_ANY_PARTITION,
        RETRAIN_ON_NEW_DATA,
        partition_versions,
        read_partitions_metadata,
    )

    parts = dg.StaticPartitionsDefinition(["00000-04999", "05000-09999"])
    version = {"chat": "A", "00000-04999": "a1", "05000-09999": "b1"}

    @dg.asset(partitions_def=parts)
    def cleaned_qa_pairs(context) -> dg.Output:
        return dg.Output(None, data_version=dg.DataVersion(version[context.partition_key]))

    @dg.asset(deps=[cleaned_qa_pairs], automation_condition=FOLLOW_ANY_PARTITION)
    def chat_dataset(context) -> dg.Output:  # records what it reads, as the real asset does
        read = read_partitions_metadata(cleaned_qa_pairs.key,
                                        partition_versions(context.instance, cleaned_qa_pairs.key, parts.get_partition_keys()))
        return dg.Output(None, data_version=dg.DataVersion(version["chat"]), metadata=read)

    @dg.asset(deps=[chat_dataset], automation_condition=RETRAIN_ON_NEW_DATA)
    def lora_adapter() -> None: ...

    defs = dg.Definitions(assets=[cleaned_qa_pairs, chat_dataset, lora_adapter],
                          jobs=[dg.define_asset_job("chat", [chat_dataset]), dg.define_asset_job("train", [lora_adapter])])
    instance = dg.DagsterInstance.ephemeral()
    for key in parts.get_partition_keys():
        dg.materialize([cleaned_qa_pairs], instance=instance, partition_key=key)
    dg.materialize([cleaned_qa_pairs, chat_dataset, lora_adapter], instance=instance,
                   selection=[chat_dataset, lora_adapter])
    cursor = None

    def tick() -> dict[str, int]:
        nonlocal cursor
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
        cursor = result.cursor
        return {a.key.path[-1]: result.get_num_requested(a.key) for a in (chat_dataset, lora_adapter)}

    assert tick() == {"chat_dataset": 0, "lora_adapter": 0}  # all fresh
    dg.materialize([cleaned_qa_pairs], instance=instance, partition_key="00000-04999")
    assert tick()["chat_dataset"] == 0  # re-cleaned to the same data version: nothing new to read
    version["00000-04999"] = "a2"
    dg.materialize([cleaned_qa_pairs], instance=instance, partition_key="00000-04999")
    assert tick()["chat_dataset"] == 1  # the first re-cleaned partition
    assert tick()["chat_dataset"] == 0  # requested: not again
    chat_run = _start_run(instance, defs, "chat")
    version["05000-09999"] = "b2"
    dg.materialize([cleaned_qa_pairs], instance=instance, partition_key="05000-09999")  # lands mid-run
    assert tick()["chat_dataset"] == 0  # waits for the run in progress...
    instance.report_run_failed(chat_run)
    assert tick()["chat_dataset"] == 1  # ...then builds again with the second partition
    assert tick()["chat_dataset"] == 0
    dg.materialize([cleaned_qa_pairs, chat_dataset], instance=instance, selection=[chat_dataset])
    assert tick()["chat_dataset"] == 0  # built from both: nothing unread
    instance.wipe_assets([cleaned_qa_pairs.key])  # the cleaned partitions are wiped; one is made again
    dg.materialize([cleaned_qa_pairs], instance=instance, partition_key="00000-04999")
    assert tick()["chat_dataset"] == 1  # a partition it read is gone from Dagster: rebuilt (once, see below)
    assert tick()["chat_dataset"] == 0
    dg.materialize([cleaned_qa_pairs], instance=instance, partition_key="05000-09999")
    dg.materialize([cleaned_qa_pairs, chat_dataset], instance=instance, selection=[chat_dataset])

    train_run = _start_run(instance, defs, "train")  # an adapter is training
    version["chat"] = "B"
    dg.materialize([cleaned_qa_pairs, chat_dataset], instance=instance, selection=[chat_dataset])
    assert tick()["lora_adapter"] == 0  # a new data version, but the adapter is in progress
    instance.report_run_failed(train_run)
    assert tick()["lora_adapter"] == 1  # retrained on the new version once the run is over
    assert tick()["lora_adapter"] == 0

    # A manual run (say `cv-pipeline demo`) re-cleans a partition, builds a new dataset and trains the adapter
    # on it: the dataset has read the partition and the adapter the new version, so nothing is left to do.
    version["00000-04999"], version["chat"] = "a3", "C"
    dg.materialize([cleaned_qa_pairs], instance=instance, partition_key="00000-04999")
    dg.materialize([cleaned_qa_pairs, chat_dataset, lora_adapter], instance=instance,
                   selection=[chat_dataset, lora_adapter])
    assert tick() == {"chat_dataset": 0, "lora_adapter": 0}
    assert tick() == {"chat_dataset": 0, "lora_adapter": 0}
