"""Shared fixtures. Real Stack Exchange samples live in ../shared/realdata beside the checkout."""

from __future__ import annotations

import os
import signal
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


def real_bodies(realdata: Path) -> list[str]:
    """Every real post body: the bodies/ and cv/ files, then the dump samples' Body fields."""
    from xml.etree import ElementTree

    bodies = [path.read_text(encoding="utf-8") for path in sorted((realdata / "bodies").glob("*.html"))]
    bodies += [path.read_text(encoding="utf-8") for path in sorted((realdata / "cv").glob("*.html"))]
    for dump in sorted(realdata.glob("posts_sample_*.xml")):
        bodies += [row.get("Body") or "" for row in ElementTree.parse(dump).getroot().iter("row")]
    return bodies


def sample_bodies(n_questions: int, seed: int) -> list[str]:
    """Every question and answer body of a generated sample-site corpus."""
    from cv_pipeline.sources.sample_site.corpus import SampleCorpus

    corpus = SampleCorpus(n_questions=n_questions, seed=seed)
    bodies: list[str] = []
    for rank in range(len(corpus)):
        item = corpus.question(rank)
        bodies += [item["body"], *(a["body"] for a in item.get("answers") or [])]
    return bodies


@pytest.fixture(autouse=True)
def keep_sigterm_disposition():
    """Undo what Dagster's in-process execution does to SIGTERM, after every test.

    Dagster maps SIGTERM to SIGINT's handler (`setup_interrupt_handlers`). A shell that starts the tests as a
    background job ignores SIGINT for them, so SIGTERM would stay ignored in this process and in every child
    a later test starts (an ignored signal survives exec): `terminate()` would no longer stop a server.
    """
    before = signal.getsignal(signal.SIGTERM)
    yield
    if signal.getsignal(signal.SIGTERM) is not before and before is not None:
        signal.signal(signal.SIGTERM, before)


@pytest.fixture(autouse=True)
def keep_environment():
    """Put os.environ back as it was after every test: the command line sets DAGSTER_HOME and
    CV_PIPELINE_PROFILE for its own process, so an in-process `cli` call would leave them to later tests and
    every child process they start (monkeypatch only restores what it was told about)."""
    before = dict(os.environ)
    yield
    if os.environ != before:
        os.environ.clear()
        os.environ.update(before)
