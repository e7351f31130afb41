"""Training hyperparameters and the table of adapter specs.

Defaults follow the report (lr 2e-4, batch 4, gradient accumulation 4, LoRA r=16 on every
projection). Both adapters come from one factory over ``ADAPTER_SPECS``; nothing is copied per
adapter.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

DEFAULT_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# Bump on any change to what training learns from the same chats and settings (labels, masking, formatting):
# Dagster then shows the adapters as unsynced, and a re-run trains afresh instead of keeping the adapter or
# resuming checkpoints the older code wrote (the version is part of the trainer's run fingerprint).
# 2: each answer is learnt up to its end-of-turn marker, not only up to EOS.
TRAINING_VERSION = "2"


class LoraHyperparams(BaseModel):
    """Shape of the LoRA adapter that is trained on top of the frozen base model."""

    r: int = Field(16, ge=1, description="LoRA rank: width of the low-rank update matrices.")
    alpha: int = Field(16, ge=1, description="LoRA alpha: the update is scaled by alpha / r.")
    dropout: float = Field(
        0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA input; 0 lets Unsloth use its fast path."
    )
    target_modules: list[str] = Field(
        default_factory=lambda: list(DEFAULT_TARGET_MODULES),
        description="Names of the linear layers that get a LoRA update (attention and MLP projections).",
    )


class TrainingHyperparams(BaseModel):
    """Optimiser, batching and checkpointing settings for one supervised fine-tuning run."""

    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate of the AdamW optimiser.")
    per_device_batch: int = Field(4, ge=1, description="Sequences per forward/backward pass.")
    grad_accum: int = Field(
        4, ge=1, description="Passes accumulated per optimiser step (effective batch = batch x this)."
    )
    epochs: float = Field(1.0, gt=0, description="Passes over the training split; ignored when max_steps is set.")
    max_steps: int | None = Field(
        None, ge=1, description="Cap on optimiser steps (the demo uses a small cap); None = run all epochs."
    )
    max_seq_length: int = Field(
        1024, ge=16, description="Tokens per example; longer chats are truncated. Must not exceed the model's context."
    )
    warmup_steps: int = Field(5, ge=0, description="Linear warm-up steps before the schedule starts.")
    seed: int = Field(3407, description="Seed for data order, LoRA initialisation and dropout (reproducible resumes).")
    save_steps: int = Field(50, ge=1, description="Write a resumable checkpoint every this many optimiser steps.")
    save_total_limit: int = Field(2, ge=1, description="Checkpoints kept on disk; older ones are deleted.")
    logging_steps: int = Field(1, ge=1, description="Report the training loss every this many optimiser steps.")
    eval_steps: int | None = Field(
        None, ge=1, description="Evaluate on the validation split every this many steps; None = only at the end."
    )
    packing: bool = Field(
        False,
        description=(
            "Pack several chats into one sequence. Off by default: with the assistant-only loss mask the "
            "trainer tokenises itself, and packing without flash-attention varlen kernels (CPU) would let "
            "examples attend to each other."
        ),
    )
    gradient_checkpointing: Literal["unsloth", "recompute", "off"] = Field(
        "unsloth",
        description=(
            "How activations are kept for the backward pass on CUDA (a CPU run never checkpoints): "
            "'unsloth' recomputes them and offloads what it keeps to CPU memory (least GPU memory), "
            "'recompute' is the standard recompute (faster, a little more memory), 'off' keeps them all "
            "(fastest, most memory). Measured figures: benchmarks/gpu/README.md."
        ),
    )
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        "linear", description="Learning-rate schedule after warm-up."
    )
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    optimizer: str = Field(
        "adamw_torch", description="transformers optimiser name; 'adamw_8bit' saves memory on CUDA with bitsandbytes."
    )

    def resume_key(self) -> dict:
        """The settings a checkpoint must share to be resumed: those that change what is learnt.

        How often to checkpoint, log or evaluate and how activations are kept do not, and the batch counts
        only as the effective batch: per_device_batch 4 x grad_accum 4 resumes as 2 x 8 (the advice when
        the GPU runs out of memory), since the Trainer skips the steps done in examples, not in batches."""
        key = self.model_dump(exclude=set(RESUME_NEUTRAL) | {"per_device_batch", "grad_accum"})
        return {**key, "effective_batch": self.per_device_batch * self.grad_accum}


# Settings that never change the adapter a run produces (see TrainingHyperparams.resume_key).
RESUME_NEUTRAL = ("save_steps", "save_total_limit", "logging_steps", "eval_steps", "gradient_checkpointing")


class AdapterSpec(BaseModel):
    """One adapter to train: which subset of the chat dataset and for how many epochs."""

    name: str = Field(description="Adapter name; also the asset suffix (lora_adapter_<name>).")
    description: str = Field(description="One line for the UI and the report.")
    subset: Literal["all", "top_10k"] = Field(
        description="'all' = the whole train split; 'top_10k' = the 10,000 highest-voted train pairs."
    )
    epochs: float = Field(
        gt=0, description="Passes over the subset (the report's: 1 for all pairs, 3 for the top 10k)."
    )


ADAPTER_SPECS: dict[str, AdapterSpec] = {
    spec.name: spec
    for spec in (
        AdapterSpec(
            name="all_pairs",
            description="Every cleaned pair of the train split, 1 epoch (the report's first adapter).",
            subset="all",
            epochs=1,
        ),
        AdapterSpec(
            name="top_10k",
            description="The 10,000 highest-voted train pairs, 3 epochs (the report's second adapter).",
            subset="top_10k",
            epochs=3,
        ),
    )
}


class UnknownAdapterSpecError(KeyError, ValueError):
    """An adapter name that is not in ``ADAPTER_SPECS`` (a KeyError whose message reads plainly)."""

    def __str__(self) -> str:
        return str(self.args[0])


def get_spec(name: str) -> AdapterSpec:
    """The adapter spec called ``name``; a clear error listing the known names otherwise."""
    try:
        return ADAPTER_SPECS[name]
    except KeyError:
        known = ", ".join(sorted(ADAPTER_SPECS))
        raise UnknownAdapterSpecError(
            f"unknown adapter spec {name!r}: known specs are {known} (add one to ADAPTER_SPECS in "
            "cv_pipeline/training/config.py)"
        ) from None
