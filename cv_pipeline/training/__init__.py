"""LoRA training: base model preparation, hyperparameters, device detection and the trainer.

``trainer`` imports Unsloth, which patches transformers on import and takes seconds; it is loaded
lazily so that importing the configs (e.g. for Dagster definitions) stays cheap.
"""

from __future__ import annotations

from typing import Any

from cv_pipeline.training.config import (
    ADAPTER_SPECS,
    AdapterSpec,
    LoraHyperparams,
    TrainingHyperparams,
    UnknownAdapterSpecError,
    get_spec,
)

_LAZY = {
    "train_adapter": "trainer",
    "TrainResult": "trainer",
    "TrainingError": "trainer",
    "TrainingOOMError": "trainer",
    "tokenize_chat": "trainer",
    "prepare_base_model": "base_model",
    "validate_model_dir": "base_model",
    "BaseModelInfo": "base_model",
    "BaseModelError": "base_model",
    "DeviceInfo": "device",
    "detect_device": "device",
}

__all__ = [
    "ADAPTER_SPECS",
    "AdapterSpec",
    "LoraHyperparams",
    "TrainingHyperparams",
    "UnknownAdapterSpecError",
    "get_spec",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"cv_pipeline.training.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'cv_pipeline.training' has no attribute {name!r}")
