"""Shared fixtures. Real Stack Exchange samples live in ../shared/realdata beside the checkout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
REALDATA = Path(os.environ.get("CV_PIPELINE_REALDATA", REPO_ROOT.parent / "shared" / "realdata"))


@pytest.fixture(scope="session")
def realdata() -> Path:
    """The folder of real Stack Exchange samples; tests that need it skip with the reason."""
    if not REALDATA.is_dir():
        pytest.skip(
            f"real Stack Exchange samples not found at {REALDATA}: they ship in ../shared/realdata "
            "beside the checkout (set CV_PIPELINE_REALDATA to point elsewhere)"
        )
    return REALDATA
