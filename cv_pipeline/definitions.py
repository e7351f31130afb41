"""The Dagster code location: `dagster dev` and `workspace.yaml` load `defs` from here."""

from cv_pipeline.defs.project import build_definitions

defs = build_definitions()
