"""The `cv-pipeline` entry point, as a user runs it."""

from __future__ import annotations

import subprocess
import sys

import pytest


def run_cli(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "cv_pipeline.cli", *args], capture_output=True, text=True, timeout=300, env=env)


def test_list_shows_every_asset():
    out = run_cli("list").stdout
    for name in ("raw_question_batches", "cleaned_qa_pairs", "chat_dataset", "base_model",
                 "lora_adapter_all_pairs", "lora_adapter_top_10k", "adapter_evaluation", "adapter_exports"):
        assert name in out


def test_an_unknown_profile_is_a_clear_error():
    proc = run_cli("--profile", "huge", "list")
    assert proc.returncode != 0
    assert "unknown profile 'huge'" in proc.stderr and "demo" in proc.stderr


def test_materialize_one_partition_from_the_command_line(tmp_path):
    proc = run_cli(
        "materialize", "raw_question_batches", "--partition", "05000-09999",
        env_extra={"CV_PIPELINE_DATA_DIR": str(tmp_path / "data"), "DAGSTER_HOME": str(tmp_path / "home")},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "data" / "raw" / "questions_05000-09999.json").exists()
    assert (tmp_path / "home" / "dagster.yaml").exists()  # the project's instance settings were used


@pytest.mark.parametrize("bad", ["99999-99999", "5000-9999"])
def test_materialize_with_a_bad_partition_names_it(tmp_path, bad):
    proc = run_cli("materialize", "raw_question_batches", "--partition", bad,
                   env_extra={"CV_PIPELINE_DATA_DIR": str(tmp_path), "DAGSTER_HOME": str(tmp_path / "home")})
    assert proc.returncode != 0
    assert bad in proc.stderr


def test_materialize_without_a_partition_runs_each_of_the_profiles_partitions(tmp_path):
    """`raw_question_batches++` = raw, cleaned (both partitioned) and chat_dataset (over all partitions)."""
    proc = run_cli(
        "materialize", "raw_question_batches++",
        env_extra={"CV_PIPELINE_DATA_DIR": str(tmp_path / "data"), "DAGSTER_HOME": str(tmp_path / "home")},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for key in ("00000-04999", "05000-09999"):  # the demo profile's two partitions
        assert (tmp_path / "data" / "raw" / f"questions_{key}.json").exists()
        assert (tmp_path / "data" / "cleaned" / f"pairs_{key}.parquet").exists()
    assert (tmp_path / "data" / "chat_dataset" / "hf").is_dir()  # built once, after both partitions


def test_ui_started_from_another_folder_uses_the_data_folder_of_that_folder(tmp_path, monkeypatch):
    """`dagster dev` runs in the repository; the data folder must still be the one `demo` would use here."""
    from cv_pipeline import cli

    seen: dict = {}

    def fake_call(cmd, cwd):  # stands in for starting the webserver and daemon
        import os

        seen.update(cwd=cwd, data=os.environ["CV_PIPELINE_DATA_DIR"], home=os.environ["DAGSTER_HOME"])
        return 0

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CV_PIPELINE_DATA_DIR", "mydata")
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.setattr(cli.subprocess, "call", fake_call)
    assert cli.main(["ui"]) == 0
    assert seen["cwd"] == cli.REPO_ROOT
    assert seen["data"] == str(tmp_path / "mydata") and seen["home"] == str(tmp_path / ".dagster_home")
