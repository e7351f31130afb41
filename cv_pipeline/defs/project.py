"""Assemble every stage's Dagster objects for one profile."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from cv_pipeline.defs.collection.assets import raw_question_batches
from cv_pipeline.defs.curation import checks as curation_checks
from cv_pipeline.defs.curation.assets import build_chat_dataset_asset, cleaned_qa_pairs
from cv_pipeline.defs.evaluation.assets import build_evaluation_assets
from cv_pipeline.defs.operations.automation import automation_sensor
from cv_pipeline.defs.operations.k8s import executor
from cv_pipeline.defs.operations.jobs import collect_and_clean_job, train_and_evaluate_job
from cv_pipeline.defs.operations.schedules import build_rescrape_schedule, collect_job
from cv_pipeline.defs.resources import SECRET_ENV, DataDirResource, GPUResource, StackExchangeResource
from cv_pipeline.defs.training.assets import build_training_assets
from cv_pipeline.profiles import Profile, default_data_dir, get_profile


def build_resources(profile: Profile, data_dir: Path | None = None) -> dict:
    # Only the *presence* of a secret is checked here; its value is resolved by Dagster at run time
    # and shown in the UI as the variable's name, never its value.
    secrets = {field: dg.EnvVar(var) for field, var in SECRET_ENV.items() if os.environ.get(var)}
    return {
        "data_dir": DataDirResource(path=str(data_dir or default_data_dir())),
        "stackexchange": StackExchangeResource(
            source=profile.source,
            site=profile.site,
            api_base_url=profile.api_base_url,
            dump_path=profile.dump_path,
            sample_site_questions=profile.sample_site_questions,
            sample_site_seed=profile.sample_site_seed,
            **secrets,
        ),
        "gpu": GPUResource(),
    }


def build_definitions(profile: Profile | None = None, data_dir: Path | None = None) -> dg.Definitions:
    profile = profile or get_profile()
    training = build_training_assets(profile)
    evaluation = build_evaluation_assets(profile, training)
    checks = [d for d in evaluation if isinstance(d, dg.AssetChecksDefinition)]
    assets = [raw_question_batches, cleaned_qa_pairs, build_chat_dataset_asset(profile), *training, *(d for d in evaluation if d not in checks)]
    assets = [a.map_asset_specs(lambda spec: _for_profile(spec, profile)) for a in assets]
    return dg.Definitions(
        assets=assets,
        asset_checks=[*dg.load_asset_checks_from_modules([curation_checks]), *checks],
        jobs=[collect_job, collect_and_clean_job, train_and_evaluate_job],
        schedules=[build_rescrape_schedule(profile.demo_partitions)],
        sensors=[automation_sensor],
        resources=build_resources(profile, data_dir),
        executor=executor(),
        metadata={"profile": profile.name},
    )


def _for_profile(spec: dg.AssetSpec, profile: Profile) -> dg.AssetSpec:
    """Every asset says which profile it was built for; partitioned ones say which partitions the profile fills."""
    description = spec.description or ""
    if spec.partitions_def is not None:
        description += (
            f" Profile {profile.name}: the main job fills {', '.join(profile.demo_partitions)}"
            + (f" ({profile.sample_site_questions:,} generated questions; other partitions are collected empty)."
               if profile.source == "sample_site" else ".")
        )
    return spec.replace_attributes(description=description.strip()).merge_attributes(
        metadata={"cv_pipeline/profile": profile.name}
    )
