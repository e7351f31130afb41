"""Declarative automation: curation follows new raw batches; training follows only real data changes."""

import json
import warnings
from collections.abc import Iterator
from typing import Any

import dagster as dg

_AC = dg.AutomationCondition

# Both conditions below ask what the asset was built from instead of remembering an event ("a dependency
# updated"): a signal is true on one evaluation only, and if the asset is in progress then it cannot start,
# while a run that started before the update may not have read it. Comparing what the asset read with what
# is there now needs no memory of events: an update that lands while the asset runs is still unread
# afterwards, and a manual run that already read it leaves nothing to do.


def _latest_version(instance: dg.DagsterInstance, key: dg.AssetKey, partition_key: str | None = None) -> str | None:
    from dagster._core.definitions.data_version import extract_data_version_from_entry

    record = instance.get_latest_data_version_record(key, is_source=False, partition_key=partition_key)
    version = extract_data_version_from_entry(record.event_log_entry) if record is not None else None
    return version.value if version is not None else None


READ_PARTITION_VERSIONS = "read_partition_versions"


def partition_versions(instance: dg.DagsterInstance, key: dg.AssetKey, partition_keys: list[str]) -> dict[str, str]:
    """The latest data version of each materialised partition of ``key``."""
    versions = {pk: _latest_version(instance, key, pk) for pk in partition_keys}
    return {pk: v for pk, v in versions.items() if v is not None}


def _qualified(key: dg.AssetKey, versions: dict[str, str]) -> dict[str, str]:
    return {f"{key.to_user_string()}[{pk}]": v for pk, v in versions.items()}


def read_partitions_metadata(key: dg.AssetKey, versions: dict[str, str]) -> dict:
    """Metadata for an asset that reads every partition of ``key``: the data version of each partition it
    read (``{partition: version}``, the versions those partitions' materialisations report)."""
    return {READ_PARTITION_VERSIONS: dg.MetadataValue.json(_qualified(key, versions))}


class _UnreadData(dg.AutomationCondition):
    """True while the dependencies' latest data versions are not the ones this asset's latest materialisation
    read, unless a run was already requested for exactly these versions. Those are kept in the cursor, so a
    run that failed is not requested again on every tick: new data, or a manual run, tries again."""

    def versions(self, context: dg.AutomationContext) -> tuple[dict[str, str], dict[str, str]]:
        """(the dependencies' data versions now, the ones the latest materialisation read)."""
        raise NotImplementedError

    def unread(self, current: dict[str, str], read: dict[str, str]) -> bool:
        return any(read.get(dep) != version for dep, version in current.items())

    def evaluate(self, context: dg.AutomationContext) -> dg.AutomationResult:
        current, read = self.versions(context)
        unread = self.unread(current, read)
        previous = json.loads(context.cursor) if context.cursor else {}
        requested_for = previous.get("requested_for")
        last_request = context.get_previous_requested_subset(context.root_context.key)
        if last_request is not None and not last_request.is_empty:  # the last tick requested a run
            requested_for = previous.get("seen")
        true = unread and current != requested_for
        cursor = json.dumps({"seen": current, "requested_for": requested_for}, sort_keys=True)
        return dg.AutomationResult(context, context.candidate_subset if true else context.get_empty_subset(), cursor=cursor)


class NewDataToRead(_UnreadData):
    """For an unpartitioned asset over unpartitioned dependencies: what it read is Dagster's data provenance,
    recorded with every materialisation (an asset never made has read nothing). An adapter that a manual run
    trained on the new dataset (or the run that built the dataset) has read it; one whose run started before
    the dataset changed has not."""

    @property
    def name(self) -> str:
        return "new_data_to_read"

    def versions(self, context: dg.AutomationContext) -> tuple[dict[str, str], dict[str, str]]:
        from dagster._core.definitions.data_version import extract_data_provenance_from_entry

        instance = context.asset_graph_view.instance
        current = {}
        for dep in sorted(context.asset_graph.get(context.key).parent_keys):
            version = _latest_version(instance, dep)
            if version is not None:
                current[dep.to_user_string()] = version
        latest = instance.get_latest_materialization_event(context.key)
        provenance = extract_data_provenance_from_entry(latest) if latest is not None else None
        read = {k.to_user_string(): v.value for k, v in provenance.input_data_versions.items()} if provenance else {}
        return current, read


class NewPartitionsToRead(_UnreadData):
    """For an asset that reads every partition of its partitioned dependencies: true while a partition's latest
    data version is not the one the asset recorded reading (``read_partitions_metadata``), or one it read is
    gone. Dagster's provenance folds all partitions into one value that cannot be recomputed outside a run, so
    the asset records them itself. A partition re-made with the same content (the same data version) is not
    new."""

    @property
    def name(self) -> str:
        return "new_partitions_to_read"

    def versions(self, context: dg.AutomationContext) -> tuple[dict[str, str], dict[str, str]]:
        instance = context.asset_graph_view.instance
        current: dict[str, str] = {}
        for dep in sorted(context.asset_graph.get(context.key).parent_keys):
            node = context.asset_graph.get(dep)
            if node.partitions_def is not None:
                keys = node.partitions_def.get_partition_keys(dynamic_partitions_store=instance)
                current.update(_qualified(dep, partition_versions(instance, dep, keys)))
        latest = instance.get_latest_materialization_event(context.key)
        recorded = latest.asset_materialization.metadata.get(READ_PARTITION_VERSIONS) if latest is not None else None
        read = recorded.value if recorded is not None and isinstance(recorded.value, dict) else {}
        return current, read

    def unread(self, current: dict[str, str], read: dict[str, str]) -> bool:
        return read != current  # a new or changed partition, or one that was wiped


_PAGE, _PAGES = 10, 10  # check records read per page, newest first; one page nearly always decides


def blocking_check_states(
    instance: dg.DagsterInstance, asset: dg.AssetKey, check_keys: list[dg.AssetCheckKey]
) -> dict[str, str]:
    """Each check's verdict on the asset as it is now (its latest materialisation): "passed", "failed" (a
    failing result, or a check whose step failed without one: it raised) or "pending" (not judged yet).

    Judged from each check's history, not only its latest record (which is what Dagster's own
    check_passed() reads): a later run that planned the checks but never materialised the asset (refused by
    its own gate, cancelled, still running) judged nothing, so the verdict before it still stands; a
    checks-only run (*Execute checks*) judges what is there now, unless it was cancelled or never started
    (Dagster plans checks when it creates a run).
    """
    from dagster._core.events import DagsterEventType
    from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus as Status

    found = instance.fetch_materializations(asset, limit=1).records
    if not found:
        return {key.name: "pending" for key in check_keys}
    latest = found[0]  # storage ids order events exactly (check records' timestamps are whole seconds)
    runs: dict[str, tuple[bool, dict[str, tuple[int, str | None]], set[str | None]]] = {}

    def planned(run_id: str) -> tuple[bool, dict[str, tuple[int, str | None]], set[str | None]]:
        """Whether the run planned to materialise the asset; the storage id and step of each check it planned;
        the steps that failed in it."""
        if run_id not in runs:
            kinds = {DagsterEventType.ASSET_MATERIALIZATION_PLANNED, DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED,
                     DagsterEventType.STEP_FAILURE}
            build, checks, failed_steps = False, {}, set()
            for record in instance.get_records_for_run(run_id, of_type=kinds).records:
                event = record.event_log_entry.dagster_event
                if event.event_type == DagsterEventType.ASSET_MATERIALIZATION_PLANNED:
                    build = build or event.asset_key == asset
                elif event.event_type == DagsterEventType.STEP_FAILURE:
                    failed_steps.add(event.step_key)
                else:
                    checks[event.event_specific_data.asset_check_key.name] = (record.storage_id, event.step_key)
            runs[run_id] = (build, checks, failed_steps)
        return runs[run_id]

    def history(key: dg.AssetCheckKey) -> Iterator[Any]:
        cursor = None
        for _ in range(_PAGES):
            page = instance.event_log_storage.get_asset_check_execution_history(key, limit=_PAGE, cursor=cursor)
            yield from page
            if len(page) < _PAGE:
                return
            cursor = page[-1].id

    def verdict(key: dg.AssetCheckKey) -> str:
        for record in history(key):
            if record.status == Status.PLANNED:
                run = instance.get_run_by_id(record.run_id)
                if run is None:
                    continue
                build, checks, failed_steps = planned(record.run_id)
                storage_id, step = checks.get(key.name, (0, None))
                raised = run.is_finished and step in failed_steps  # its step failed without a result
                if record.run_id == latest.run_id:  # the run that made it
                    return "failed" if raised else "pending"
                if storage_id < latest.storage_id:  # planned for an older materialisation
                    return "pending"
                if raised and not build:  # a checks-only run whose check raised on what is there now
                    return "failed"
                continue  # a rebuild that did not land, a run still going, cancelled or never started
            evaluation = record.event.dagster_event.event_specific_data if record.event is not None else None
            target = getattr(evaluation, "target_materialization_data", None)
            if target is not None and target.storage_id == latest.storage_id:
                return "passed" if record.status == Status.SUCCEEDED else "failed"
        return "pending"

    return {key.name: verdict(key) for key in check_keys}


class BlockingChecksPassed(dg.AutomationCondition):
    """True while every blocking check of every dependency passed on what that dependency is now.

    Dagster's all_deps_blocking_checks_passed() reads each check's latest record, so a later rebuild of
    chat_dataset refused by its own gate (its checks planned, never run) would hide the verdict on the
    dataset still on disk, and the adapters would wait for a person. blocking_check_states reads the
    history, as the adapters' own guard does (failed_dataset_checks), so both agree; a check that failed
    on the files now on disk (changed since, judged by *Execute checks*) keeps the adapters waiting."""

    @property
    def name(self) -> str:
        return "all_deps_blocking_checks_passed_on_disk"

    def evaluate(self, context: dg.AutomationContext) -> dg.AutomationResult:
        if context.candidate_subset.is_empty:  # Dagster evaluates every operand of an "&": skip the reads
            return dg.AutomationResult(context, context.get_empty_subset())
        graph, instance = context.asset_graph, context.asset_graph_view.instance
        passed = True
        for dep in sorted(graph.get(context.key).parent_keys):
            blocking = sorted((k for k in graph.get(dep).check_keys if graph.get(k).blocking), key=lambda k: k.name)
            if blocking and any(v != "passed" for v in blocking_check_states(instance, dep, blocking).values()):
                passed = False
                break
        return dg.AutomationResult(context, context.candidate_subset if passed else context.get_empty_subset())


# Eager per partition: run once the partition's raw batch updated, never while an upstream or this
# asset is in progress.
FOLLOW_UPSTREAM = _AC.eager()

# For an asset over *all* partitions: eager() would wait for every one of the 8 partitions to exist,
# which a demo (2 partitions) never has; follow any partition it has not read instead.
FOLLOW_ANY_PARTITION = (
    NewPartitionsToRead()
    & ~_AC.any_deps_in_progress()
    & ~_AC.in_progress()
).with_label("follow_any_partition")


# A re-scrape rebuilds the dataset once per partition it re-cleans: training waits until nothing upstream
# (the dataset, cleaning, collection: up to three levels) is running or about to be requested, so that it
# trains once, on the dataset the whole re-scrape ends with, not on each one on the way.
_BUSY = _AC.in_progress() | _AC.will_be_requested()
UPSTREAM_BUSY = _AC.any_deps_match(_BUSY | _AC.any_deps_match(_BUSY | _AC.any_deps_match(_BUSY))).with_label(
    "upstream_busy"
)

# Adapters cost GPU hours: retrain only when the chat dataset's *data version* (its content hash) is one
# the adapter has not read, never because code was refactored or an identical dataset was
# re-materialised; and only once the dataset passed its blocking checks (those stop later steps of the
# same run only, and this request starts a new run).
RETRAIN_ON_NEW_DATA = (
    NewDataToRead()
    & BlockingChecksPassed()
    & ~_AC.any_deps_missing()
    & ~_AC.in_progress()
    & ~UPSTREAM_BUSY
).with_label("retrain_on_new_data")

# With auto_retrain, what is measured and exported from the adapters follows them: once an adapter (or the
# dataset, whose test split the evaluation reads) has a data version it has not read, nothing upstream is
# running or about to be, and the dataset passed its blocking checks. The exports follow the evaluation, and
# only one that succeeded: never adapters that were not measured.
FOLLOW_RETRAINED_ADAPTERS = (
    NewDataToRead()
    & BlockingChecksPassed()
    & ~_AC.any_deps_missing()
    & ~_AC.in_progress()
    & ~UPSTREAM_BUSY
).with_label("follow_retrained_adapters")
FOLLOW_EVALUATION = (FOLLOW_RETRAINED_ADAPTERS & ~_AC.any_deps_match(_AC.execution_failed())).with_label(
    "follow_a_successful_evaluation"
)

with warnings.catch_warnings():
    # use_user_code_server is in beta: chosen knowingly (and tested under `dagster dev`), so its warning is
    # not printed by every process that loads these definitions.
    warnings.simplefilter("ignore", dg.BetaWarning)
    automation_sensor = dg.AutomationConditionSensorDefinition(
        name="cv_pipeline_automation",
        target=dg.AssetSelection.all(),
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=30,
        description="Evaluates every asset's automation condition each 30 s: cleaning follows a new raw batch, the "
        "chat dataset any cleaned partition it has not read, and the adapters (only with auto_retrain) a new dataset "
        "version once nothing upstream is running, then the evaluation and the exports the new adapters.",
        # NewDataToRead is Python the daemon cannot deserialise: the code location evaluates the conditions.
        use_user_code_server=True,
    )
