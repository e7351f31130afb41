"""cv_pipeline: Cross Validated -> cleaned Q&A pairs -> chat dataset -> LoRA adapters, as Dagster assets."""

__version__ = "0.1.0"
