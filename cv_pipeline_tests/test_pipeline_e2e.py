"""The whole graph through Dagster on a tiny corpus, then staleness after a cleaning change.

Trains both adapters for a few steps on the CPU (SmolLM2-135M), so this module takes minutes.
"""

from __future__ import annotations

import json

import dagster as dg
import pytest
from dagster._core.definitions.data_version import StaleStatus
from dagster._utils.test.data_versions import get_stale_status_resolver

from cv_pipeline.defs.project import build_definitions
from cv_pipeline.profiles import get_profile

pytestmark = pytest.mark.slow

PARTITION = "00000-04999"
TINY = {
    "ops": {
        **{name: {"config": {"max_steps": 2, "max_seq_length": 128, "save_steps": 1}}
           for name in ("lora_adapter_all_pairs", "lora_adapter_top_10k")},
        "adapter_evaluation": {"config": {"n_loss_examples": 6, "n_generation_examples": 2, "max_new_tokens": 8}},
        "chat_dataset": {"config": {"top_n": 100}},
    }
}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    profile = get_profile("demo").model_copy(update={"sample_site_questions": 400})
    defs = build_definitions(profile, data_dir=data)
    instance = dg.DagsterInstance.ephemeral()
    everything = [*defs.assets, *defs.asset_checks]
    collect = dg.materialize(everything, selection="raw_question_batches cleaned_qa_pairs".split(),
                             partition_key=PARTITION, resources=defs.resources, instance=instance)
    rest = dg.materialize(everything, selection=dg.AssetSelection.all() - dg.AssetSelection.assets("raw_question_batches", "cleaned_qa_pairs"),
                          resources=defs.resources, instance=instance, run_config=TINY)
    return defs, instance, data, collect, rest


def _md(result, asset):
    [e] = [e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == asset]
    return {k: v.value for k, v in e.materialization.metadata.items()}


def test_every_asset_materialises_and_every_check_passes(pipeline):
    defs, _, data, collect, rest = pipeline
    done = {e.asset_key.to_user_string() for r in (collect, rest) for e in r.get_asset_materialization_events()}
    assert done == {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    checks = {c.check_name: c.passed for r in (collect, rest) for c in r.get_asset_check_evaluations()}
    assert all(v for k, v in checks.items() if k != "adapters_beat_base"), checks  # 2 steps cannot promise that
    assert {"chat_roles_alternate", "chat_splits_disjoint", "cleaned_has_no_markup"} <= set(checks)

    # one of the demo's two partitions was collected: the dataset says which one is missing
    assert _md(rest, "chat_dataset")["partitions_missing"] == ["05000-09999"]

    adapter = _md(rest, "lora_adapter_top_10k")
    assert adapter["steps"] == 2 and adapter["train_tokens"] > 0 and adapter["tokens_per_s"] > 0
    assert adapter["loss_curve"].startswith("![loss.png](data:image/png;base64,")
    assert (data / "adapters" / "top_10k" / "adapter" / "adapter_model.safetensors").exists()

    metrics = json.loads((data / "evaluation" / "metrics.json").read_text())
    assert set(metrics["models"]) == {"base", "all_pairs", "top_10k"}
    ev = _md(rest, "adapter_evaluation")
    assert ev["loss/base"] == pytest.approx(metrics["models"]["base"]["loss"], abs=1e-4)
    assert (data / "evaluation" / "report.html").stat().st_size > 10_000  # plots embedded
    # Trained on this dataset, so no test row is a question the adapters learnt; each records what it learnt.
    assert metrics["excluded_trained_rows"] == 0 and metrics["adapters_without_record"] == []
    exports = _md(rest, "adapter_exports")
    for name in ("all_pairs", "top_10k"):
        modelfile = (data / "exports" / name / "Modelfile").read_text()
        assert "FROM" in modelfile and "ADAPTER" in modelfile
        assert (data / "adapters" / name / "adapter" / "trained_questions.json").is_file()
        # the export is of the adapter the report measured (as the run recorded it: a later test re-exports)
        assert exports[f"{name}/adapter_version"] == metrics["adapter_versions"][name]
        assert exports[f"{name}/evaluated"] is True


def test_retraining_with_other_settings_marks_evaluation_and_exports_stale(pipeline):
    """Run config is not part of what Dagster hashes: the adapter's data version is its weights', so an
    adapter retrained at another learning rate makes what was measured and exported from it stale."""
    from cv_pipeline.defs.operations.automation import _latest_version as latest_data_version
    from cv_pipeline.training.records import adapter_version

    defs, instance, data, *_ = pipeline
    everything = [*defs.assets, *defs.asset_checks]
    key = dg.AssetKey("lora_adapter_top_10k")
    before = latest_data_version(instance, key)
    assert before == adapter_version(data / "adapters" / "top_10k" / "adapter")
    resolver = get_stale_status_resolver(instance, list(defs.resolve_asset_graph().assets_defs))
    assert resolver.get_status(dg.AssetKey("adapter_evaluation")) == StaleStatus.FRESH
    assert resolver.get_status(dg.AssetKey("adapter_exports")) == StaleStatus.FRESH

    config = {**TINY["ops"]["lora_adapter_top_10k"]["config"], "learning_rate": 3e-3}
    dg.materialize(everything, selection=[key.to_user_string()], resources=defs.resources, instance=instance,
                   run_config={"ops": {key.to_user_string(): {"config": config}}})
    after = latest_data_version(instance, key)
    assert after != before and after == adapter_version(data / "adapters" / "top_10k" / "adapter")
    resolver = get_stale_status_resolver(instance, list(defs.resolve_asset_graph().assets_defs))
    assert resolver.get_status(dg.AssetKey("adapter_evaluation")) == StaleStatus.STALE
    assert resolver.get_status(dg.AssetKey("adapter_exports")) == StaleStatus.STALE
    causes = resolver.get_stale_causes(dg.AssetKey("adapter_exports"))  # direct ones, not through the evaluation
    assert any(c.dependency_asset_key == key and "new dependency data version" in c.reason for c in causes), causes
    assert resolver.get_status(dg.AssetKey("lora_adapter_all_pairs")) == StaleStatus.FRESH

    # Exported before it is measured again: the export says so, and which adapter it holds.
    exported = dg.materialize(everything, selection=["adapter_exports"], resources=defs.resources, instance=instance)
    assert _md(exported, "adapter_exports")["top_10k/evaluated"] is False
    assert _md(exported, "adapter_exports")["all_pairs/evaluated"] is True
    record = json.loads((data / "exports" / "top_10k" / "export.json").read_text())
    assert record["evaluated"] is False and record["adapter_version"] == after


def test_a_cleaning_change_marks_cleaning_stale_and_leaves_raw_batches_fresh(pipeline, monkeypatch):
    from cv_pipeline.curation import cleaner

    defs, instance, data, *_ = pipeline
    assets = list(defs.resolve_asset_graph().assets_defs)
    fresh = get_stale_status_resolver(instance, assets)
    assert fresh.get_status(dg.AssetKey("cleaned_qa_pairs"), PARTITION) == StaleStatus.FRESH
    assert fresh.get_status(dg.AssetKey("chat_dataset")) == StaleStatus.FRESH
    assert fresh.get_status(dg.AssetKey("lora_adapter_top_10k")) == StaleStatus.FRESH

    # the definitions as a new version of the cleaning rules makes them (cleaned_qa_pairs is defined at import,
    # chat_dataset when the definitions are built)
    monkeypatch.setattr(cleaner, "CLEANER_VERSION", "cleaning-rules-changed")
    profile = get_profile("demo").model_copy(update={"sample_site_questions": 400})
    bumped = [
        a.map_asset_specs(lambda s: s.replace_attributes(code_version=cleaner.CLEANER_VERSION))
        if dg.AssetKey("cleaned_qa_pairs") in a.keys else a
        for a in build_definitions(profile, data_dir=data).resolve_asset_graph().assets_defs
    ]
    stale = get_stale_status_resolver(instance, bumped)
    assert stale.get_status(dg.AssetKey("cleaned_qa_pairs"), PARTITION) == StaleStatus.STALE
    causes = stale.get_stale_root_causes(dg.AssetKey("cleaned_qa_pairs"), PARTITION)
    assert any("code version" in c.reason for c in causes)
    # the dataset (an unpartitioned node, so the graph shows it) too; the adapters only once the data differs
    assert stale.get_status(dg.AssetKey("chat_dataset")) == StaleStatus.STALE
    assert any("code version" in c.reason for c in stale.get_stale_causes(dg.AssetKey("chat_dataset")))
    assert stale.get_status(dg.AssetKey("lora_adapter_top_10k")) == StaleStatus.FRESH
    # raw batches are upstream of the change and stay fresh
    assert stale.get_status(dg.AssetKey("raw_question_batches"), PARTITION) == StaleStatus.FRESH


def test_an_identical_rerun_of_the_dataset_does_not_make_the_adapters_stale(pipeline):
    defs, instance, *_ = pipeline
    everything = [*defs.assets, *defs.asset_checks]
    dg.materialize(everything, selection=["chat_dataset"], resources=defs.resources, instance=instance, run_config={"ops": {"chat_dataset": TINY["ops"]["chat_dataset"]}})
    resolver = get_stale_status_resolver(instance, list(defs.resolve_asset_graph().assets_defs))
    assert resolver.get_status(dg.AssetKey("lora_adapter_top_10k")) == StaleStatus.FRESH
    assert resolver.get_status(dg.AssetKey("lora_adapter_all_pairs")) == StaleStatus.FRESH

    # a real change of the data (a different top-N subset) does
    dg.materialize(everything, selection=["chat_dataset"], resources=defs.resources, instance=instance, run_config={"ops": {"chat_dataset": {"config": {"top_n": 50}}}})
    resolver = get_stale_status_resolver(instance, list(defs.resolve_asset_graph().assets_defs))
    assert resolver.get_status(dg.AssetKey("lora_adapter_top_10k")) == StaleStatus.STALE

    # and the data the adapter was trained on, rebuilt, makes it fresh again (which also leaves this module's
    # shared pipeline as the other tests expect it, whatever their order)
    dg.materialize(everything, selection=["chat_dataset"], resources=defs.resources, instance=instance, run_config={"ops": {"chat_dataset": TINY["ops"]["chat_dataset"]}})
    resolver = get_stale_status_resolver(instance, list(defs.resolve_asset_graph().assets_defs))
    assert resolver.get_status(dg.AssetKey("lora_adapter_top_10k")) == StaleStatus.FRESH


def test_the_ask_command_streams_an_answer_from_a_trained_adapter(pipeline, monkeypatch, capsys, tmp_path):
    from cv_pipeline import cli

    _, _, data, *_ = pipeline
    monkeypatch.setenv("CV_PIPELINE_DATA_DIR", str(data))
    assert cli.main(["ask", "What is a p-value?", "--adapter", "top_10k", "--max-new-tokens", "12", "--device", "cpu"]) == 0
    answer = capsys.readouterr().out.strip()
    assert len(answer.split()) >= 2
    with pytest.raises(SystemExit) as exited:  # argparse: an adapter name that does not exist
        cli.main(["ask", "What is a p-value?", "--adapter", "nonexistent"])
    assert exited.value.code == 2 and "invalid choice: 'nonexistent'" in capsys.readouterr().err
    monkeypatch.setenv("CV_PIPELINE_DATA_DIR", str(tmp_path))  # a data folder where nothing was trained yet
    with pytest.raises(SystemExit, match=r"no adapter 'all_pairs'.*cv-pipeline demo.*\*lora_adapter_all_pairs"):
        cli.main(["ask", "What is a p-value?", "--adapter", "all_pairs"])
