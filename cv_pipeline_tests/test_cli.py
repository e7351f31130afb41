"""The `cv-pipeline` entry point, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cv_pipeline.curation.validate import CHAT_RULES


def run_cli(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "cv_pipeline.cli", *args], capture_output=True, text=True, timeout=300, env=env)


def test_list_shows_every_asset_in_graph_order_and_the_profiles_partitions():
    proc = run_cli("list")
    names = [line.split()[0] for line in proc.stdout.splitlines() if line and not line.startswith("partitions")]
    assert set(names) == {"raw_question_batches", "cleaned_qa_pairs", "chat_dataset", "base_model",
                          "lora_adapter_all_pairs", "lora_adapter_top_10k", "adapter_evaluation", "adapter_exports"}
    order = names.index
    assert order("raw_question_batches") < order("cleaned_qa_pairs") < order("chat_dataset") < order("lora_adapter_top_10k")
    assert order("base_model") < order("lora_adapter_all_pairs") < order("adapter_evaluation") < order("adapter_exports")
    assert "raw_question_batches [partitioned]" in proc.stdout and "chat_dataset [partitioned]" not in proc.stdout
    assert "partitions of the demo profile (--partition): 00000-04999, 05000-09999" in proc.stdout
    assert "Warning" not in proc.stderr, proc.stderr  # no beta or deprecation notice on every command


@pytest.mark.parametrize("how", ["flag", "flag after the command", "environment", "ask"])
def test_an_unknown_profile_is_a_clear_error(how):
    if how == "flag":
        proc = run_cli("--profile", "huge", "list")
    elif how == "flag after the command":
        proc = run_cli("list", "--profile", "huge")
    elif how == "ask":  # it reads the data folder, not the profile, but a misspelt one is still named
        proc = run_cli("ask", "q", "--adapter", "base", "--profile", "huge")
    else:
        proc = run_cli("list", env_extra={"CV_PIPELINE_PROFILE": "huge"})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "unknown profile 'huge'" in proc.stderr and "demo" in proc.stderr


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["materialize", "nosuch_asset"], 1, ["'nosuch_asset' is not an asset selection", "Assets: adapter_evaluation",
                                              '"chat_dataset*"']),
        (["materialize", "raw_question_batches cleaned_qa_pairs"], 1, ["is not an asset selection", "several assets"]),
        (["materialize", "cleaned_qa_pairs", "--partition", "5000-9999"], 1, ["--partition: partition key '5000-9999'"]),
        (["ask", "q", "--adapter", "base", "--max-new-tokens", "0"], 2, ["--max-new-tokens: must be at least 1, got 0"]),
        (["ask", "q", "--adapter", "base", "--max-new-tokens", "ten"], 2, ["--max-new-tokens: 'ten' is not a whole number"]),
        (["ask", "q", "--adapter", "base", "--device", "gpu0"], 2, ["'gpu0' is not auto, cpu, mps, cuda or cuda:N"]),
        (["ask", "q", "--adapter", "base"], 1, ["no base model at", "cv-pipeline materialize base_model"]),
        (["ask", "q", "--adapter", "all_pairs"], 1, ["no adapter 'all_pairs'", 'materialize "*lora_adapter_all_pairs"']),
        (["ui", "--port", "99999"], 2, ["--port: must be at most 65535, got 99999"]),
    ],
)
def test_a_mistake_is_one_clear_message_not_a_traceback(tmp_path, args, code, says):
    proc = run_cli(*args, env_extra={"CV_PIPELINE_DATA_DIR": str(tmp_path / "data"), "DAGSTER_HOME": str(tmp_path / "home")})
    assert proc.returncode == code, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    for text in says:
        assert text in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "data" / "raw").exists()  # refused before anything ran


@pytest.mark.parametrize("value", ["K8s", "kubernetes"])
def test_a_misspelt_executor_is_named_instead_of_running_everything_locally(value):
    proc = run_cli("list", env_extra={"CV_PIPELINE_EXECUTOR": value})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"CV_PIPELINE_EXECUTOR={value!r}: use 'k8s'" in proc.stderr
    assert run_cli("list", env_extra={"CV_PIPELINE_EXECUTOR": "local"}).returncode == 0


def test_asking_for_a_gpu_that_is_not_there_says_so(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU: --device cuda is valid here")
    proc = run_cli("ask", "q", "--adapter", "base", "--device", "cuda", env_extra={"CV_PIPELINE_DATA_DIR": str(tmp_path)})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "--device: device 'cuda' requested but torch sees no CUDA GPU; use 'auto' or 'cpu'" in proc.stderr


def test_a_failed_run_ends_with_the_steps_own_message(tmp_path):
    """The reason a step failed is the last thing printed, not somewhere in the middle of Dagster's log."""
    proc = run_cli("materialize", "chat_dataset",
                   env_extra={"CV_PIPELINE_DATA_DIR": str(tmp_path / "data"), "DAGSTER_HOME": str(tmp_path / "home")})
    assert proc.returncode == 1
    tail = proc.stderr.strip().splitlines()[-2:]
    assert tail[0] == "chat_dataset failed (the Dagster log above has the details):", proc.stderr[-2000:]
    assert tail[1].startswith("  no cleaned pairs found: materialise cleaned_qa_pairs")
    assert "STEP_START" not in proc.stderr  # Dagster's DEBUG events only with --verbose


def test_a_step_that_raises_an_error_of_its_own_ends_with_that_error(tmp_path):
    """Not only dg.Failure: any exception a step raises is what the command ends with (here the full profile's
    base model, which cannot be downloaded offline)."""
    proc = run_cli("--profile", "full", "materialize", "base_model",
                   env_extra={"CV_PIPELINE_DATA_DIR": str(tmp_path / "data"), "DAGSTER_HOME": str(tmp_path / "home"),
                              "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 1
    tail = proc.stderr[proc.stderr.rindex("base_model failed"):]
    assert "BaseModelError: could not download base model 'unsloth/Llama-3.2-3B-Instruct'" in tail, proc.stderr[-2000:]


def test_a_step_whose_retries_ran_out_ends_with_its_own_error():
    """Behind a RetryPolicy Dagster raises 'Exceeded max_retries': the command names the error of the last try."""
    import dagster as dg

    from cv_pipeline import cli

    @dg.asset(retry_policy=dg.RetryPolicy(max_retries=1, delay=0))
    def collect():
        raise ValueError("HTTP 503 from the API")

    with pytest.raises(SystemExit) as stop:
        cli._run(lambda **kw: dg.materialize([collect], instance=dg.DagsterInstance.ephemeral(), **kw), "collect", verbose=False)
    lines = str(stop.value).splitlines()
    assert lines == ["collect failed (the Dagster log above has the details):", "  ValueError: HTTP 503 from the API",
                     "  (the step's RetryPolicy gave up: Exceeded max_retries of 1)"]  # no stack trace fragment


def test_an_interrupt_outside_the_steps_own_handling_exits_130_without_a_traceback(monkeypatch, capsys):
    """Dagster's DagsterExecutionInterruptedError is a BaseException, not an Exception or a KeyboardInterrupt."""
    from dagster._core.errors import DagsterExecutionInterruptedError

    from cv_pipeline import cli

    def interrupted(args):
        raise DagsterExecutionInterruptedError()

    monkeypatch.setattr(cli, "_dispatch", interrupted)
    assert cli.main(["list"]) == 130
    assert "interrupted" in capsys.readouterr().err


def test_an_interrupt_stops_the_whole_run_not_only_its_step(tmp_path):
    """Ctrl-C while one adapter trains must not go on to train the other (they do not depend on each other)."""
    import os
    import signal
    import threading
    import time

    import dagster as dg

    from cv_pipeline import cli
    from cv_pipeline.defs.operations.interrupts import stop_when_interrupted

    training = threading.Event()

    @dg.asset
    def a_training(context):  # no annotations: this module has `from __future__ import annotations`
        with stop_when_interrupted(context, "its checkpoints are kept"):
            training.set()
            time.sleep(30)

    @dg.asset
    def b_training():
        (tmp_path / "b_ran").touch()

    finished = threading.Event()

    def press_ctrl_c():  # once the step is in its body: a SIGINT before the run started would stop pytest itself
        if training.wait(120) and not finished.is_set():
            os.kill(os.getpid(), signal.SIGINT)

    presser = threading.Thread(target=press_ctrl_c, daemon=True)
    presser.start()
    try:
        with pytest.raises(SystemExit) as stop:
            cli._run(lambda **kw: dg.materialize([a_training, b_training], instance=dg.DagsterInstance.ephemeral(),
                                                 tags=cli._cli_tags(), **kw), "train", verbose=False)
    finally:  # a run that failed before the step: the presser must not fire into the next test
        finished.set()
        training.set()
        presser.join()
    assert "train failed" in str(stop.value) and "interrupted" in str(stop.value) and "its checkpoints are kept" in str(stop.value)
    assert not (tmp_path / "b_ran").exists()


def test_a_run_left_by_a_killed_command_is_failed_and_its_gpu_slot_freed(tmp_path, capsys):
    """`cv-pipeline` killed outright (out of memory, SIGKILL) leaves its run STARTED holding the `gpu` slot; the
    next command would wait for that slot for ever without a word. It fails such runs of dead processes, frees
    their slots, leaves live runs alone, and names who holds a slot it has to wait for."""
    import os

    import dagster as dg
    from dagster._core.test_utils import create_run_for_test

    from cv_pipeline import cli

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:  # sqlite storage, where pools are enforced
        storage = instance.event_log_storage
        storage.set_concurrency_slots("gpu", 1)
        killed = create_run_for_test(instance, job_name="train_and_evaluate", status=dg.DagsterRunStatus.STARTED,
                                     tags={**cli._cli_tags(), cli.CLI_PID_TAG: str(dead.pid)})
        live = create_run_for_test(instance, job_name="collect_and_clean", status=dg.DagsterRunStatus.STARTED,
                                   tags=cli._cli_tags())  # this process's
        elsewhere = create_run_for_test(  # a dead pid here, but a run of another container's pid namespace
            instance, job_name="train_and_evaluate", status=dg.DagsterRunStatus.STARTED,
            tags={**cli._cli_tags(), cli.CLI_HOST_TAG: cli._process_space() + "-other", cli.CLI_PID_TAG: str(dead.pid)})
        garbled = create_run_for_test(instance, job_name="train_and_evaluate", status=dg.DagsterRunStatus.STARTED,
                                      tags={**cli._cli_tags(), cli.CLI_PID_TAG: "not-a-pid"})
        assert storage.claim_concurrency_slot("gpu", killed.run_id, "lora_adapter_all_pairs").is_claimed

        cli._release_dead_runs(instance)
        assert instance.get_run_by_id(killed.run_id).status == dg.DagsterRunStatus.FAILURE
        for untouched in (live, elsewhere, garbled):
            assert instance.get_run_by_id(untouched.run_id).status == dg.DagsterRunStatus.STARTED
        assert not storage.get_concurrency_info("gpu").claimed_slots
        assert storage.claim_concurrency_slot("gpu", live.run_id, "lora_adapter_top_10k").is_claimed  # free again
        err = capsys.readouterr().err
        assert f"run {killed.run_id[:8]} (train_and_evaluate) was left running by a killed cv-pipeline (pid {dead.pid})" in err

        cli._release_dead_runs(instance)  # a live holder: named, left alone
        assert f"pool 'gpu' is held by run {live.run_id[:8]} (pid {os.getpid()})" in capsys.readouterr().err
        assert storage.get_concurrency_info("gpu").claimed_slots


def test_materialize_one_partition_from_the_command_line(tmp_path):
    """Assets named with commas (as `dagster asset materialize --select` takes them), one partition: the
    partitioned assets run for it, then the dataset over what is there; --config settings reach each run."""
    config = tmp_path / "settings.json"
    config.write_text(json.dumps({"ops": {"cleaned_qa_pairs": {"config": {"min_answer_chars": 400}},
                                          "chat_dataset": {"config": {"top_n": 7}},
                                          "lora_adapter_top_10k": {"config": {"per_device_batch": 2}}}}))
    proc = run_cli(
        "materialize", "raw_question_batches,cleaned_qa_pairs,chat_dataset", "--partition", "05000-09999",
        "--config", str(config),
        env_extra={"CV_PIPELINE_DATA_DIR": str(tmp_path / "data"), "DAGSTER_HOME": str(tmp_path / "home")},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    import pyarrow.parquet as pq

    answers = pq.read_table(tmp_path / "data" / "cleaned" / "pairs_05000-09999.parquet").column("answer").to_pylist()
    assert answers and min(map(len, answers)) >= 400
    assert len((tmp_path / "data" / "chat_dataset" / "top_10k.jsonl").read_text().splitlines()) == 7
    assert "note: --config settings for lora_adapter_top_10k were not used" in proc.stderr
    # the sample site's rows are generated, and the data card says so (the resource's real source label)
    assert "(generated demo data)" in (tmp_path / "data" / "chat_dataset" / "README.md").read_text().splitlines()[0]
    data = tmp_path / "data"
    raw, cleaned = data / "raw" / "questions_05000-09999.json", data / "cleaned" / "pairs_05000-09999.parquet"
    assert raw.exists() and cleaned.exists() and (data / "chat_dataset" / "hf").is_dir()
    assert (tmp_path / "home" / "dagster.yaml").exists()  # the project's instance settings were used
    # what was made and where, and the checks, printed at the end
    assert proc.stdout.splitlines() == [
        f"materialised raw_question_batches [05000-09999] -> {raw}",
        f"materialised cleaned_qa_pairs [05000-09999] -> {cleaned}",
        "checks: 4 of 4 passed",
        f"materialised chat_dataset -> {data / 'chat_dataset'}, {data / 'chat_dataset' / 'README.md'}",  # + data card
        f"checks: {len(CHAT_RULES)} of {len(CHAT_RULES)} passed",
    ]
    # the dataset says that the demo's other partition is not in it
    assert "partition(s) 00000-04999 are not cleaned yet" in proc.stderr


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

        seen.update(cmd=cmd, cwd=cwd, data=os.environ["CV_PIPELINE_DATA_DIR"], home=os.environ["DAGSTER_HOME"])
        return 0

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CV_PIPELINE_DATA_DIR", "mydata")
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.setattr(cli.subprocess, "call", fake_call)
    # A run a killed `cv-pipeline materialize` left STARTED, holding the gpu slot the UI's runs would queue behind.
    import dagster as dg
    from dagster._core.test_utils import create_run_for_test

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    cli.dagster_home()
    with dg.DagsterInstance.get() as instance:
        instance.event_log_storage.set_concurrency_slots("gpu", 1)
        killed = create_run_for_test(instance, job_name="train_and_evaluate", status=dg.DagsterRunStatus.STARTED,
                                     tags={**cli._cli_tags(), cli.CLI_PID_TAG: str(dead.pid)})
        assert instance.event_log_storage.claim_concurrency_slot("gpu", killed.run_id, "lora_adapter_top_10k").is_claimed
    monkeypatch.delenv("DAGSTER_HOME")

    assert cli.main(["ui", "--port", "3321"]) == 0
    assert seen["cwd"] == cli.REPO_ROOT and seen["cmd"][-2:] == ["-p", "3321"]
    assert seen["data"] == str(tmp_path / "mydata") and seen["home"] == str(tmp_path / ".dagster_home")
    with dg.DagsterInstance.get() as instance:
        assert instance.get_run_by_id(killed.run_id).status == dg.DagsterRunStatus.FAILURE
        assert not instance.event_log_storage.get_concurrency_info("gpu").claimed_slots


def test_cv_pipeline_ui_serves_the_project_with_its_daemon(tmp_path):
    """The real `cv-pipeline ui` (dagster dev), started from another folder: the webserver answers on the port
    given, the code location loads with every asset, the daemon reports in, and the instance lives in that folder."""
    import os
    import signal
    import time

    import httpx

    from cv_pipeline_tests.dagster_server import BIN, free_port

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "CV_PIPELINE_PROFILE")}
    env["CV_PIPELINE_DATA_DIR"] = "mydata"
    log = open(tmp_path / "ui.log", "wb")
    proc = subprocess.Popen([str(BIN / "cv-pipeline"), "ui", "--port", str(port)], cwd=tmp_path, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def gql(query: str) -> dict:
        r = httpx.post(f"http://127.0.0.1:{port}/graphql", json={"query": query}, timeout=30)
        r.raise_for_status()
        return r.json()["data"]

    assets, daemons = [], []
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None and not (assets and "SCHEDULER" in daemons):
            time.sleep(2)
            try:
                assets = [n["assetKey"]["path"][-1] for n in gql("{ assetNodes { assetKey { path } } }")["assetNodes"]]
                health = gql("{ instance { daemonHealth { allDaemonStatuses { daemonType healthy } } } }")
                daemons = [d["daemonType"] for d in health["instance"]["daemonHealth"]["allDaemonStatuses"] if d["healthy"]]
            except (httpx.HTTPError, KeyError, TypeError):
                continue
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # dagster dev stops the webserver and the daemon it started
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    output = (tmp_path / "ui.log").read_text(errors="replace")[-3000:]
    assert {"raw_question_batches", "chat_dataset", "lora_adapter_top_10k", "adapter_exports"} <= set(assets), output
    assert "SCHEDULER" in daemons and "SENSOR" in daemons, (daemons, output)
    assert (tmp_path / ".dagster_home" / "dagster.yaml").is_file()  # the instance of the folder it started in


def test_partition_for_a_selection_without_partitioned_assets_says_to_drop_it(tmp_path):
    proc = run_cli("materialize", "chat_dataset", "--partition", "00000-04999",
                   env_extra={"CV_PIPELINE_DATA_DIR": str(tmp_path), "DAGSTER_HOME": str(tmp_path / "home")})
    assert proc.returncode != 0
    assert "'chat_dataset' has no partitioned asset" in proc.stderr and "drop --partition" in proc.stderr
    assert "raw_question_batches" in proc.stderr and "Traceback" not in proc.stderr


def test_demo_with_a_bad_partition_names_it_and_the_ranges(tmp_path):
    proc = run_cli("demo", "--partition", "5000-9999",
                   env_extra={"CV_PIPELINE_DATA_DIR": str(tmp_path), "DAGSTER_HOME": str(tmp_path / "home")})
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "'5000-9999' is not one of the 8 ranges" in proc.stderr and "00000-04999" in proc.stderr
    assert not (tmp_path / "raw").exists()  # refused before anything ran


def test_a_misspelt_adapter_lists_the_choices(tmp_path):
    proc = run_cli("ask", "What is a p-value?", "--adapter", "top10k", env_extra={"CV_PIPELINE_DATA_DIR": str(tmp_path)})
    assert proc.returncode == 2
    assert "invalid choice: 'top10k'" in proc.stderr and "top_10k" in proc.stderr and "all_pairs" in proc.stderr


def test_sigterm_stops_a_run_started_in_the_background_by_a_script(tmp_path):
    """`kill` stops `cv-pipeline materialize` at once, also as the background job of a script (which starts with
    SIGINT ignored): the interrupted step is not retried by its RetryPolicy, as Dagster would do for a preempted
    worker, and nothing after it runs."""
    import os
    import signal
    import time

    log = tmp_path / "cli.log"
    env = {**os.environ, "CV_PIPELINE_DATA_DIR": str(tmp_path / "data"), "DAGSTER_HOME": str(tmp_path / "home")}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "cv_pipeline.cli", "materialize", "raw_question_batches", "--verbose"],
                                stdout=out, stderr=subprocess.STDOUT, env=env,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        deadline = time.monotonic() + 240
        while "STEP_START" not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "STEP_START" in log.read_text(), log.read_text()[-2000:]
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=20)  # the step's RetryPolicy would have waited 30 s, then fetched both partitions
    finally:
        proc.kill()
    text = log.read_text()
    assert code != 0 and "STEP_UP_FOR_RETRY" not in text, text[-2000:]
    assert "interrupted (the run was stopped, or the process got SIGINT/SIGTERM), so not retried" in text
    assert not (tmp_path / "data" / "raw" / "questions_05000-09999.json").exists()


def test_dagster_home_copy_follows_the_projects_dagster_yaml(tmp_path, monkeypatch):
    """Edits to the project's dagster.yaml (pools, retries) reach the copy; a file of the user's own does not change."""
    from cv_pipeline import cli

    project = tmp_path / "project"
    project.mkdir()
    (project / "dagster.yaml").write_text("run_queue:\n  max_concurrent_runs: 1\n")
    monkeypatch.setattr(cli, "REPO_ROOT", project)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)

    copy = cli.dagster_home() / "dagster.yaml"
    assert copy == tmp_path / ".dagster_home" / "dagster.yaml"
    assert copy.read_text().endswith("max_concurrent_runs: 1\n") and copy.read_text().startswith("#")
    (project / "dagster.yaml").write_text("run_queue:\n  max_concurrent_runs: 2\n")
    assert cli.dagster_home() / "dagster.yaml" == copy
    assert copy.read_text().endswith("max_concurrent_runs: 2\n")
    # The default home is this command's own: a copy written before the header existed is refreshed too, the
    # earlier file (perhaps edited) kept beside it.
    copy.write_text("run_queue:\n  max_concurrent_runs: 1\n")
    cli.dagster_home()
    assert copy.read_text().endswith("max_concurrent_runs: 2\n")
    assert (copy.parent / "dagster.yaml.bak").read_text() == "run_queue:\n  max_concurrent_runs: 1\n"

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(mine))
    cli.dagster_home()
    assert (mine / "dagster.yaml").read_text() == "telemetry:\n  enabled: false\n"
    theirs = tmp_path / "theirs"  # a home of the user's choice, first filled by us, then refreshed
    monkeypatch.setenv("DAGSTER_HOME", str(theirs))
    cli.dagster_home()
    (project / "dagster.yaml").write_text("run_queue:\n  max_concurrent_runs: 3\n")
    cli.dagster_home()
    assert (theirs / "dagster.yaml").read_text().endswith("max_concurrent_runs: 3\n")


def test_on_a_gpu_the_demo_trains_and_evaluates_in_fresh_processes(tmp_path, monkeypatch):
    """Unsloth patches transformers for its whole process, only on a GPU, and fully only when imported first: there
    `cv-pipeline demo` runs train_and_evaluate as three fresh `cv-pipeline materialize` processes (what precedes
    the adapters, the adapters, what reads them), which together cover the job. On the CPU it is one run here."""
    import dagster as dg

    from cv_pipeline import cli

    monkeypatch.setenv("CV_PIPELINE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    ran: list[tuple[str, list[str]]] = []
    in_process: list[str] = []
    monkeypatch.setattr(cli, "_run", lambda execute, what, verbose, settings=None: in_process.append((what, settings)))
    monkeypatch.setattr(cli, "_report", lambda result: None)
    stage_settings = []

    def fresh(profile, args, verbose):  # reads a stage's --config file while it exists
        ran.append((profile, args[:2]))
        stage_settings.append(json.loads(Path(args[3]).read_text())["ops"] if args[2:3] == ["--config"] else None)

    monkeypatch.setattr(cli, "_run_in_fresh_process", fresh)
    settings = {"cleaned_qa_pairs": {"config": {"min_answer_chars": 40}},
                "lora_adapter_top_10k": {"config": {"per_device_batch": 2}}}
    (tmp_path / "settings.yaml").write_text(json.dumps({"ops": settings}))

    monkeypatch.setattr(cli, "_gpu_visible", lambda: True)
    cli.run_pipeline("demo", config=str(tmp_path / "settings.yaml"))
    cleaning = {"cleaned_qa_pairs": settings["cleaned_qa_pairs"]}
    assert in_process == [("collect_and_clean [00000-04999]", cleaning), ("collect_and_clean [05000-09999]", cleaning)]
    assert ran == [("demo", ["materialize", "base_model,chat_dataset"]),
                   ("demo", ["materialize", "lora_adapter_all_pairs,lora_adapter_top_10k"]),
                   ("demo", ["materialize", "adapter_evaluation,adapter_exports"])]
    assert stage_settings == [None, {"lora_adapter_top_10k": settings["lora_adapter_top_10k"]}, None]
    _, defs = cli._definitions("demo")
    job = defs.resolve_job_def("train_and_evaluate").asset_layer.selected_asset_keys
    assert {dg.AssetKey(name) for _, (_, select) in ran for name in select.split(",")} == set(job)

    ran.clear(), in_process.clear()
    monkeypatch.setattr(cli, "_gpu_visible", lambda: False)
    cli.run_pipeline("demo", config=str(tmp_path / "settings.yaml"))
    assert ran == [] and in_process[-1] == ("train_and_evaluate", {"lora_adapter_top_10k": settings["lora_adapter_top_10k"]})


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("resources: {}\n", ["expected a mapping with one key, ops:", "(got ['resources'])"]),
        ("ops:\n  chat_datasett: {config: {top_n: 3}}\n", ["no asset named chat_datasett; the assets are adapter_evaluation"]),
        ("ops: [\n", ["not YAML or JSON"]),
        ("- 1\n", ["expected a mapping", "(got list)"]),
        # checked against each asset's settings before anything runs, not when its run starts
        ("ops:\n  chat_dataset: {config: {top_nn: 3}}\n", ["the settings of chat_dataset do not fit it", '"top_nn"']),
        ("ops:\n  chat_dataset:\n", ["the settings of chat_dataset do not fit it", "must not be None"]),
        ("ops:\n  lora_adapter_top_10k: {config: {packing: yes}}\n", ['Value "yes"', '"Bool"']),  # YAML 1.2: a string
        ('{"ops": {"base_model": {"config": {"source": 3}}}}', ["the settings of base_model do not fit it", '"String"']),
        (b"ops: {chat_dataset: {config: {top_n: \xff}}}", ["not UTF-8 text"]),
    ],
)
def test_a_bad_config_file_is_named_with_what_it_should_hold(tmp_path, text, says):
    from cv_pipeline import cli

    (tmp_path / "c.yaml").write_bytes(text if isinstance(text, bytes) else text.encode())
    _, defs = cli._definitions("demo")
    with pytest.raises(SystemExit) as stop:
        cli._settings_file(str(tmp_path / "c.yaml"), defs)
    message = str(stop.value)
    assert message.startswith(f"--config {tmp_path / 'c.yaml'}: ")
    for piece in says:
        assert piece in message, message
    with pytest.raises(SystemExit, match="No such file"):
        cli._settings_file(str(tmp_path / "missing.yaml"), defs)
    assert cli._settings_file(None, defs) == {}


def test_config_yaml_is_read_as_the_launchpad_reads_it(tmp_path):
    """YAML 1.2, as the launchpad's editor: an exponent without a dot is a number (PyYAML's YAML 1.1 made '2e-5' a
    string, and the learning rate then failed in the training stage), and off/yes stay strings (1.1 made `off`
    False, which gradient_checkpointing refuses); JSON is read as JSON."""
    from cv_pipeline import cli

    _, defs = cli._definitions("demo")
    (tmp_path / "c.yaml").write_text("ops:\n  lora_adapter_top_10k:\n    config: {learning_rate: 2e-5, warmup_steps: 3,"
                                     " gradient_checkpointing: off, packing: true}\n")
    settings = cli._settings_file(str(tmp_path / "c.yaml"), defs)
    assert settings == {"lora_adapter_top_10k": {"config": {"learning_rate": 2e-5, "warmup_steps": 3,
                                                            "gradient_checkpointing": "off", "packing": True}}}
    (tmp_path / "c.json").write_text(json.dumps({"ops": settings}))
    assert cli._settings_file(str(tmp_path / "c.json"), defs) == settings


def test_a_stage_run_in_a_fresh_process_ends_this_command_as_it_ended(tmp_path, monkeypatch):
    from cv_pipeline import cli

    monkeypatch.setenv("CV_PIPELINE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    cli._run_in_fresh_process("demo", ["list"], verbose=False)  # succeeds: returns
    with pytest.raises(SystemExit, match=r"cv-pipeline materialize nosuch_asset failed \(exit 1;"):
        cli._run_in_fresh_process("demo", ["materialize", "nosuch_asset"], verbose=False)


def test_ctrl_c_stops_a_stage_in_a_fresh_process_once_and_it_is_not_retried(tmp_path):
    """The child runs in its own process group and gets exactly one interrupt from this process (a second one,
    arriving while the step turns the first into a failure that is not retried, could make Dagster retry it)."""
    import os
    import signal
    import time

    log = tmp_path / "cli.log"
    env = {**os.environ, "CV_PIPELINE_DATA_DIR": str(tmp_path / "data"), "DAGSTER_HOME": str(tmp_path / "home")}
    script = (
        "import sys\n"
        "from cv_pipeline import cli\n"
        "try:\n"
        "    cli._run_in_fresh_process('demo', ['materialize', 'raw_question_batches'], verbose=True)\n"
        "except KeyboardInterrupt:\n"
        "    print('parent interrupted', flush=True)\n"
        "    sys.exit(130)\n"
    )
    with open(log, "w") as out:
        parent = subprocess.Popen([sys.executable, "-c", script], stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 240
        while "STEP_START" not in log.read_text() and parent.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "STEP_START" in log.read_text(), log.read_text()[-2000:]
        os.kill(parent.pid, signal.SIGINT)  # as a terminal's Ctrl-C would reach it (the child is in its own group)
        code = parent.wait(timeout=60)
    finally:
        parent.kill()
    text = log.read_text()
    assert code == 130 and "parent interrupted" in text, text[-2000:]
    assert "interrupted (the run was stopped, or the process got SIGINT/SIGTERM), so not retried" in text
    assert "STEP_UP_FOR_RETRY" not in text, text[-2000:]
    assert not (tmp_path / "data" / "raw" / "questions_05000-09999.json").exists()  # nothing after it ran
