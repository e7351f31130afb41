"""Declarative automation: curation follows new raw batches; training follows only real data changes."""

import json
import warnings

import dagster as dg

_AC = dg.AutomationCondition

# Eager per partition: run once the partition's raw batch updated, never while an upstream or this
# asset is in progress.
FOLLOW_UPSTREAM = _AC.eager()

# A signal such as "a dependency updated" is true on one evaluation only. If the asset is in progress
# on that evaluation it cannot start, so the condition below remembers the signal until the asset is
# next requested: a partition re-cleaned (or a new dataset version written) while the asset runs is
# picked up once that run is over. The memory is reset by the request, not by the run's result,
# because a run that started before the update may not have read it.

# For an asset over *all* partitions: eager() would wait for every one of the 8 partitions to exist,
# which a demo (2 partitions) never has; follow any updated partition instead.
FOLLOW_ANY_PARTITION = (
    _AC.any_deps_updated().since(_AC.newly_requested())
    & ~_AC.any_deps_in_progress()
    & ~_AC.in_progress()
).with_label("follow_any_partition")


class NewDataToRead(dg.AutomationCondition):
    """True while a dependency's latest data version is not the one this asset's latest materialisation read
    (Dagster's data provenance, recorded with every materialisation; an asset never made has read nothing),
    unless a run was already requested for exactly these data versions.

    It asks what the asset was built from instead of remembering an event ("a dependency's data version
    changed"): an adapter that a manual run trained on the new dataset (or the run that built the dataset)
    has read it, and one whose run started before the dataset changed has not. The versions a request was
    made for are kept in the cursor, so a training that failed is not requested again on every tick: the
    next data version, or a manual run, tries again."""

    @property
    def name(self) -> str:
        return "new_data_to_read"

    def evaluate(self, context: dg.AutomationContext) -> dg.AutomationResult:
        from dagster._core.definitions.data_version import (
            extract_data_provenance_from_entry,
            extract_data_version_from_entry,
        )

        instance = context.asset_graph_view.instance
        current: dict[str, str] = {}
        for dep in sorted(context.asset_graph.get(context.key).parent_keys):
            record = instance.get_latest_data_version_record(dep)
            version = extract_data_version_from_entry(record.event_log_entry) if record is not None else None
            if version is not None:
                current[dep.to_user_string()] = version.value
        latest = instance.get_latest_materialization_event(context.key)
        provenance = extract_data_provenance_from_entry(latest) if latest is not None else None
        read = {k.to_user_string(): v.value for k, v in provenance.input_data_versions.items()} if provenance else {}
        unread = any(read.get(dep) != version for dep, version in current.items())

        previous = json.loads(context.cursor) if context.cursor else {}
        requested_for = previous.get("requested_for")
        last_request = context.get_previous_requested_subset(context.root_context.key)
        if last_request is not None and not last_request.is_empty:  # the last tick requested a run
            requested_for = previous.get("seen")
        true = unread and current != requested_for
        cursor = json.dumps({"seen": current, "requested_for": requested_for}, sort_keys=True)
        return dg.AutomationResult(context, context.candidate_subset if true else context.get_empty_subset(), cursor=cursor)


# Adapters cost GPU hours: retrain only when the chat dataset's *data version* (its content hash) is one
# the adapter has not read, never because code was refactored or an identical dataset was
# re-materialised; and only once the dataset passed its blocking checks (those stop later steps of the
# same run only, and this request starts a new run).
RETRAIN_ON_NEW_DATA = (
    NewDataToRead()
    & _AC.all_deps_blocking_checks_passed()
    & ~_AC.any_deps_missing()
    & ~_AC.in_progress()
    & ~_AC.any_deps_in_progress()
).with_label("retrain_on_new_data")

with warnings.catch_warnings():
    # use_user_code_server is in beta: chosen knowingly (and tested under `dagster dev`), so its warning is
    # not printed by every process that loads these definitions.
    warnings.simplefilter("ignore", dg.BetaWarning)
    automation_sensor = dg.AutomationConditionSensorDefinition(
        name="cv_pipeline_automation",
        target=dg.AssetSelection.all(),
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=30,
        # NewDataToRead is Python the daemon cannot deserialise: the code location evaluates the conditions.
        use_user_code_server=True,
    )
