"""The real Dagster webserver and daemon on loopback: the whole demo through the GraphQL API, then a browser.

Runs the `demo` profile exactly as a user would from the UI, so it is the slowest module (minutes).
The browser test drives Debian's Chromium through Playwright and saves a screenshot to
`artifacts/ui/` (kept by CI as an artifact).
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest

from cv_pipeline.profiles import get_profile
from cv_pipeline_tests.dagster_server import REPO, DagsterServer

pytestmark = [pytest.mark.ui, pytest.mark.slow, pytest.mark.timeout(3600)]

ASSETS = [
    "raw_question_batches", "cleaned_qa_pairs", "chat_dataset", "base_model",
    "lora_adapter_all_pairs", "lora_adapter_top_10k", "adapter_evaluation", "adapter_exports",
]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = REPO / "artifacts" / "ui"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("ui")
    with DagsterServer(root / "dagster_home", root / "data", profile="demo") as srv:
        yield srv


@pytest.fixture(scope="module")
def demo_done(server):
    """The whole demo, launched through the GraphQL API the UI uses, and run by the daemon."""
    for key in get_profile("demo").demo_partitions:
        run_id = server.launch_job("collect_and_clean", partition=key)
        assert server.wait_for_run(run_id, timeout=600) == "SUCCESS", server.tail_logs()
    run_id = server.launch_job("train_and_evaluate")
    assert server.wait_for_run(run_id, timeout=1500) == "SUCCESS", server.tail_logs()
    return server


def test_the_demo_runs_through_the_ui_api(demo_done):
    srv = demo_done
    data = srv.data_dir
    for key in get_profile("demo").demo_partitions:
        assert (data / "raw" / f"questions_{key}.json").exists()
        assert (data / "cleaned" / f"pairs_{key}.parquet").exists()
    assert (data / "chat_dataset" / "hf").is_dir()
    for name in ("all_pairs", "top_10k"):
        assert (data / "adapters" / name / "adapter" / "adapter_model.safetensors").exists()
        assert (data / "exports" / name / "Modelfile").exists()
    metrics = json.loads((data / "evaluation" / "metrics.json").read_text())
    assert set(metrics["models"]) == {"base", "all_pairs", "top_10k"}
    # metadata as the UI shows it
    raw = srv.latest_metadata("raw_question_batches")
    assert raw["questions"] > 0 and raw["requests"] > 0
    chat = srv.latest_metadata("chat_dataset")
    assert chat["split/train"] > 0 and len(chat["data_version"]) == 16
    adapter = srv.latest_metadata("lora_adapter_top_10k")
    assert adapter["steps"] > 0 and adapter["tokens_per_s"] > 0
    evaluation = srv.latest_metadata("adapter_evaluation")
    assert "| model |" in evaluation["metrics"]
    # The daemon judged the raw batches' freshness policy (the weekly re-scrape's) against the runs above.
    query = """{ assetNodeOrError(assetKey: {path: ["raw_question_batches"]}) { ... on AssetNode {
        internalFreshnessPolicy { ... on TimeWindowFreshnessPolicy { warnWindowSeconds failWindowSeconds } }
        freshnessStatusInfo { freshnessStatus } } } }"""
    deadline = time.monotonic() + 120
    while (node := srv.gql(query)["assetNodeOrError"])["freshnessStatusInfo"]["freshnessStatus"] == "UNKNOWN":
        assert time.monotonic() < deadline, f"the daemon never judged the freshness policy: {node}"
        time.sleep(5)
    assert node["freshnessStatusInfo"]["freshnessStatus"] == "HEALTHY", node
    assert node["internalFreshnessPolicy"] == {"warnWindowSeconds": 8 * 86400, "failWindowSeconds": 15 * 86400}


def dismiss_newsletter_dialog(page) -> None:
    """A fresh instance greets the first visits with a community/newsletter dialog that covers the page."""
    skip = page.get_by_role("button", name="Skip")
    try:
        skip.wait_for(timeout=5_000)
    except Exception:  # noqa: BLE001 - the dialog is optional: nothing to dismiss
        return
    skip.click()
    skip.wait_for(state="hidden", timeout=10_000)


def shown(label: str, name: str) -> bool:
    """A node label is the name, or the name shortened in the middle ("lora_ad…_all_pairs") when zoomed out."""
    if "…" not in label:
        return label == name
    head, tail = label.split("…", 1)
    return name.startswith(head) and name.endswith(tail) and len(head) + len(tail) < len(name)


@pytest.mark.parametrize(
    "label, name, expected",
    [("chat_dataset", "chat_dataset", True), ("lora_ad…_all_pairs", "lora_adapter_all_pairs", True),
     ("lora_ad…_all_pairs", "lora_adapter_top_10k", False), ("base", "base_model", False)],
)
def test_shown_matches_shortened_labels(label, name, expected):
    assert shown(label, name) is expected


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (.ci/run installs it)")
def test_the_asset_graph_in_a_browser_and_a_launch_from_the_page(demo_done):
    from playwright.sync_api import sync_playwright

    srv = demo_done
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    before = srv.gql('{ runsOrError(limit: 50) { ... on Runs { results { runId } } } }')["runsOrError"]["results"]
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"],
        )
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.goto(f"{srv.url}/assets/adapter_exports?view=lineage&lineageScope=upstream&lineageDepth=10", wait_until="networkidle")
        page.get_by_text("adapter_evaluation", exact=True).first.wait_for(timeout=30_000)
        dismiss_newsletter_dialog(page)
        page.screenshot(path=str(ARTIFACTS / "asset-graph.png"))
        labels = page.locator("[class*='AssetNode_assetName']").all_inner_texts()
        missing = [a for a in ASSETS if not any(shown(label, a) for label in labels)]
        assert missing == [], f"not on the asset graph: {missing} (nodes: {labels})"
        assert len(labels) == len(ASSETS)
        page.goto(f"{srv.url}/assets", wait_until="networkidle")
        page.get_by_text("raw_question_batches").first.wait_for(timeout=30_000)
        catalog = page.inner_text("body")
        assert [a for a in ASSETS if a not in catalog] == []

        page.goto(f"{srv.url}/assets/chat_dataset", wait_until="networkidle")
        dismiss_newsletter_dialog(page)
        page.get_by_role("button").filter(has_text=re.compile(r"^\s*Materialize\s*$")).first.click()
        deadline = time.monotonic() + 60
        new: list = []
        while not new and time.monotonic() < deadline:
            runs = srv.gql('{ runsOrError(limit: 50) { ... on Runs { results { runId } } } }')["runsOrError"]["results"]
            new = [r["runId"] for r in runs if r not in before]
            time.sleep(1)
        page.screenshot(path=str(ARTIFACTS / "launched.png"))
        browser.close()
    assert new, "clicking Materialize launched no run"
    assert srv.wait_for_run(new[0], timeout=300) == "SUCCESS", srv.tail_logs()
