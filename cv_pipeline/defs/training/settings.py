"""Run-time settings of the training assets, with the profile's values as defaults (editable in the launchpad)."""

from typing import Literal

import dagster as dg
from pydantic import Field

from cv_pipeline.profiles import Profile


def training_settings_for(profile: Profile) -> type[dg.Config]:
    class TrainingSettings(dg.Config):
        learning_rate: float = Field(profile.learning_rate, description="Peak AdamW learning rate (the report's 2e-4).")
        warmup_steps: int = Field(profile.warmup_steps, description="Linear warm-up steps.")
        per_device_batch: int = Field(
            profile.per_device_batch, description="Chats per forward/backward pass (the report's 4; full: 16)."
        )
        grad_accum: int = Field(
            profile.grad_accum,
            description="Passes per optimiser step; batch x this = chats per step (the report's 4 x 4 = 16).",
        )
        packing: bool = Field(
            profile.packing,
            description="Pack chats into full rows (CUDA only; Unsloth keeps them apart in attention): more tokens "
            "per step and fewer steps than the report's 16 chats per step.",
        )
        gradient_checkpointing: Literal["unsloth", "recompute", "off"] = Field(
            "unsloth",
            description="CUDA only. 'unsloth': least GPU memory; 'recompute': 1.12x the tokens/s for 1.7x the memory; "
            "'off': 1.48x for 11x (H200, 16 chats of 2048 tokens: 6.5, 11.0 and 72.6 GB; benchmarks/gpu/README.md).",
        )
        max_steps: int | None = Field(profile.max_steps, description="Cap on optimizer steps; null trains full epochs.")
        max_seq_length: int = Field(profile.max_seq_length, description="Longest sequence in tokens.")
        save_steps: int = Field(profile.save_steps, description="Checkpoint every N optimizer steps (resumable).")
        lora_r: int = Field(16, description="LoRA rank (the report's 16).")
        lora_alpha: int = Field(16, description="LoRA alpha.")
        seed: int = Field(3407, description="Seed for data order and LoRA initialisation.")

    return TrainingSettings
