"""`base_model` and the LoRA adapters: one factory over the table of adapter specs."""

from pathlib import Path

import dagster as dg
from pydantic import Field

from cv_pipeline.defs.metadata import image
from cv_pipeline.defs.operations.automation import RETRAIN_ON_NEW_DATA
from cv_pipeline.defs.operations.interrupts import stop_when_interrupted
from cv_pipeline.defs.operations.k8s import CPU_STEP, GPU_STEP
from cv_pipeline.defs.resources import DataDirResource, GPUResource
from cv_pipeline.defs.training.settings import training_settings_for
from cv_pipeline.profiles import Profile
from cv_pipeline.training.config import ADAPTER_SPECS, TRAINING_VERSION, AdapterSpec
from cv_pipeline.training.records import adapter_version

TRAINING_CODE_VERSION = TRAINING_VERSION


def build_base_model_asset(profile: Profile) -> dg.AssetsDefinition:
    class BaseModelSettings(dg.Config):
        source: str = Field(profile.base_model, description="'embedded', a hub id, or a local folder with the model.")

    @dg.asset(group_name="training", code_version="1", kinds={"pytorch", "safetensors"}, op_tags=CPU_STEP,
              description="The base checkpoint, made ready once as safetensors + tokenizer + chat template.")
    def base_model(context: dg.AssetExecutionContext, config: BaseModelSettings, data_dir: DataDirResource) -> dg.MaterializeResult:
        from cv_pipeline.training.base_model import prepare_base_model

        context.log.info(f"preparing the base model from {config.source!r} (a first conversion takes about a minute; "
                         "later runs check the cached copy's hashes)")
        info = prepare_base_model(config.source, data_dir.base_model_home())
        context.log.info(f"base model ready at {info.path}: {info.architecture}, {info.n_params:,} parameters")
        return dg.MaterializeResult(
            metadata={
                "path": dg.MetadataValue.path(str(info.path)),
                "architecture": info.architecture,
                "parameters": info.n_params,
                "context_length": info.max_position_embeddings,
                "source": config.source,
            },
            data_version=dg.DataVersion(info.content_hash),
        )

    return base_model


def build_adapter_asset(spec: AdapterSpec, profile: Profile, base_model: dg.AssetsDefinition) -> dg.AssetsDefinition:
    settings_cls = training_settings_for(profile)

    @dg.asset(
        name=f"lora_adapter_{spec.name}",
        deps=["chat_dataset", base_model],
        pool="gpu",
        op_tags=GPU_STEP,
        group_name="training",
        code_version=TRAINING_CODE_VERSION,
        kinds={"pytorch", "safetensors"},
        automation_condition=RETRAIN_ON_NEW_DATA if profile.auto_retrain else None,
        # A retry resumes from the last checkpoint in the adapter folder instead of starting over.
        retry_policy=dg.RetryPolicy(max_retries=1, delay=10),
        description=spec.description + _profile_note(spec, profile),
    )
    def _adapter(context: dg.AssetExecutionContext, config: settings_cls, gpu: GPUResource, data_dir: DataDirResource) -> dg.MaterializeResult:  # type: ignore[valid-type]
        from cv_pipeline.curation.dataset import load_split
        from cv_pipeline.defs.curation.checks import failed_dataset_checks
        from cv_pipeline.training.config import LoraHyperparams, TrainingHyperparams
        from cv_pipeline.training.trainer import TrainingError, train_adapter

        if failed := failed_dataset_checks(context.instance):
            raise dg.Failure(
                description=f"chat_dataset failed its blocking checks {', '.join(failed)} when it was last built: "
                "fix what they report, then materialise chat_dataset (its checks run with it) before training",
                allow_retries=False,
            )
        try:
            train = load_split(data_dir.published("chat_dataset"), "train" if spec.subset == "all" else "top_10k")
        except (FileNotFoundError, KeyError) as exc:  # no dataset yet: a retry would not find one either
            raise dg.Failure(description=str(exc).strip("'\""), allow_retries=False) from exc
        device = gpu.info()
        context.log.info(f"device: {device}")
        hparams = TrainingHyperparams(
            learning_rate=config.learning_rate, warmup_steps=config.warmup_steps, per_device_batch=config.per_device_batch, grad_accum=config.grad_accum,
            packing=config.packing, gradient_checkpointing=config.gradient_checkpointing,
            epochs=spec.epochs, max_steps=config.max_steps, max_seq_length=config.max_seq_length,
            save_steps=config.save_steps, seed=config.seed,
        )
        out_dir = data_dir.sub("adapters", spec.name)
        with stop_when_interrupted(context, "the next run resumes from the last checkpoint"):
            try:
                result = train_adapter(
                    base_model_dir=data_dir.base_model_dir(),
                    train_dataset=train,
                    eval_dataset=None,
                    out_dir=out_dir,
                    hparams=hparams,
                    lora=LoraHyperparams(r=config.lora_r, alpha=config.lora_alpha),
                    device=device,
                    log=context.log.info,
                )
            except TrainingError as exc:
                # Settings, data or memory that a retry would meet again (the message says what to change):
                # fail now instead of reloading the model under the RetryPolicy, which is for crashes.
                raise dg.Failure(description=str(exc), allow_retries=False) from exc
        return dg.MaterializeResult(
            metadata=_training_metadata(result, out_dir), data_version=dg.DataVersion(adapter_version(result.adapter_path))
        )

    return _adapter


def _profile_note(spec: AdapterSpec, profile: Profile) -> str:
    """What the profile changes in the spec's one line (the demo trains a smaller subset for a few steps)."""
    notes = []
    if spec.subset == "top_10k" and profile.top_n != 10_000:
        notes.append(f"the top subset holds the {profile.top_n:,} highest-voted train pairs")
    if profile.max_steps:
        notes.append(f"training stops after {profile.max_steps} optimizer steps")
    return f" Profile {profile.name}: {'; '.join(notes)}." if notes else ""


def _training_metadata(result, out_dir: Path) -> dict:
    from cv_pipeline.plots import curves

    plot = curves({"train loss": [(h["step"], h["loss"]) for h in result.loss_history if "loss" in h]},
                  out_dir / "loss.png", "Training loss", "optimizer step", "loss")
    return {
        "adapter_path": dg.MetadataValue.path(str(result.adapter_path)),
        "steps": result.steps,
        "train_tokens": result.train_tokens,
        "tokens_per_s": round(result.tokens_per_s, 1),
        "peak_memory_gb": round(result.peak_memory_gb, 3),
        "wall_time_s": round(result.wall_time_s, 1),
        "device": result.device,
        "final_loss": round(result.final_loss, 4) if result.final_loss is not None else float("nan"),
        "resumed_from_step": result.resumed_from_step or 0,
        "train_examples": result.n_train_examples,
        "dropped_examples": result.n_dropped_examples,
        "loss_curve": image(plot),
    }


def build_training_assets(profile: Profile) -> list[dg.AssetsDefinition]:
    base = build_base_model_asset(profile)
    return [base, *(build_adapter_asset(spec, profile, base) for spec in ADAPTER_SPECS.values())]
