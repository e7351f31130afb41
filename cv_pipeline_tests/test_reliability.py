"""Faults, crashes and secrets across the whole pipeline (issue: reliability and security)."""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cv_pipeline.defs.collection.assets import raw_question_batches
from cv_pipeline.defs.resources import DataDirResource, StackExchangeResource
from cv_pipeline.sources.sample_site import SampleSite

PARTITION = "00000-04999"
SECRET_KEY = "sEcReT-kEy-0123456789"
SECRET_TOKEN = "tOkEn-ABCDEF-987654321"


def _scan_for_secrets(root: Path) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            if SECRET_KEY.encode() in data or SECRET_TOKEN.encode() in data:
                hits.append(str(path))
    return hits


@pytest.mark.parametrize("valid", [True, False], ids=["accepted-secrets", "rejected-key"])
def test_secrets_appear_in_no_log_metadata_config_file_or_error(tmp_path, monkeypatch, caplog, valid):
    monkeypatch.setenv("STACKEXCHANGE_KEY", SECRET_KEY)
    monkeypatch.setenv("STACKEXCHANGE_ACCESS_TOKEN", SECRET_TOKEN)
    caplog.set_level(logging.DEBUG)
    instance = dg.DagsterInstance.ephemeral()
    keys = [SECRET_KEY] if valid else ["some-other-key"]
    with SampleSite(n_questions=250, valid_keys=keys, valid_access_tokens=[SECRET_TOKEN]) as site:
        result = dg.materialize(
            [raw_question_batches],
            partition_key=PARTITION,
            instance=instance,
            resources={
                "stackexchange": StackExchangeResource(
                    source="api", api_base_url=site.base_url,
                    key=dg.EnvVar("STACKEXCHANGE_KEY"), access_token=dg.EnvVar("STACKEXCHANGE_ACCESS_TOKEN"),
                ),
                "data_dir": DataDirResource(path=str(tmp_path)),
            },
            raise_on_error=False,
        )
        # the secrets did reach the server (so the test would notice a leak if one happened)
        assert site.requests > 0
    assert result.success is valid
    events = instance.all_logs(result.run_id)
    assert events, "the run logged nothing"
    for record in events:
        text = str(record)
        assert SECRET_KEY not in text and SECRET_TOKEN not in text
    run = instance.get_run_by_id(result.run_id)
    assert SECRET_KEY not in json.dumps(run.run_config, default=str)
    for rec in caplog.records:
        assert SECRET_KEY not in rec.getMessage() and SECRET_TOKEN not in rec.getMessage()
    assert _scan_for_secrets(tmp_path) == []
    if not valid:
        error = str(result.get_step_failure_events()[0].step_failure_data.error)
        assert "key" in error.lower() and SECRET_KEY not in error and "some-other-key" not in error


COLLECT_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from cv_pipeline.collection import collect_batch
    from cv_pipeline.partitions import RankRange
    from cv_pipeline.sources.api import StackExchangeAPISource
    url, out = sys.argv[1], Path(sys.argv[2])
    with StackExchangeAPISource(base_url=url) as src:
        collect_batch(src, RankRange(0, 5000), out / "batch.json", out / "ck")
    """
)


def test_collection_killed_mid_partition_loses_nothing_and_resumes(tmp_path):
    from cv_pipeline.collection import collect_batch, load_batch
    from cv_pipeline.partitions import RankRange
    from cv_pipeline.sources.api import StackExchangeAPISource

    with SampleSite(n_questions=1_500, seed=5) as site:
        site.faults.update(slow_seconds=0.3)
        proc = subprocess.Popen([sys.executable, "-c", COLLECT_SCRIPT, site.base_url, str(tmp_path)])
        deadline = time.monotonic() + 120
        while len(list((tmp_path / "ck").glob("page-*.json"))) < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        saved = sorted((tmp_path / "ck").glob("page-*.json"))
        assert len(saved) >= 4
        assert not (tmp_path / "batch.json").exists()
        for page in saved:  # every checkpoint on disk is complete JSON
            json.loads(page.read_text())
        site.faults.update(slow_seconds=0.0)
        before = site.requests
        with StackExchangeAPISource(base_url=site.base_url) as src:
            batch = collect_batch(src, RankRange(0, 5000), tmp_path / "batch.json", tmp_path / "ck")
        assert site.requests - before <= 1 + 15 - len(saved)
    assert batch.stats.pages_resumed >= len(saved)
    ids = [q.question_id for q in load_batch(tmp_path / "batch.json").questions]
    assert len(ids) == 1_500 == len(set(ids))


WRITER_SCRIPT = textwrap.dedent(
    """
    import sys
    import pyarrow as pa, pyarrow.parquet as pq
    from cv_pipeline.atomic import atomic_path
    target, n = sys.argv[1], int(sys.argv[2])
    rows = [{"question_id": i, "text": "x" * 200 + str(n)} for i in range(200_000)]
    while True:  # keep rewriting until killed
        with atomic_path(target, suffix=".parquet") as tmp:
            pq.write_table(pa.Table.from_pylist(rows), tmp)
    """
)


def _kill_while_writing(target: Path, after_a_publish: bool) -> bool:
    """Start WRITER_SCRIPT on ``target`` and SIGKILL it while it fills a temporary file (after its first rename,
    if ``after_a_publish``); whether the kill landed before that file's rename."""
    old_inode = target.stat().st_ino
    proc = subprocess.Popen([sys.executable, "-c", WRITER_SCRIPT, str(target), "7"])
    writing: list[Path] = []
    try:
        deadline = time.monotonic() + 120
        while not writing and time.monotonic() < deadline:
            time.sleep(0.002)
            if after_a_publish and target.stat().st_ino == old_inode:
                continue
            for tmp in target.parent.glob(f".{target.name}.*.parquet.tmp"):
                with contextlib.suppress(FileNotFoundError):  # renamed meanwhile
                    if tmp.stat().st_size > 0:
                        writing.append(tmp)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        proc.kill()
    assert writing, "the writer never got to the moment"
    return any(tmp.exists() for tmp in writing)


@pytest.mark.parametrize("after_a_publish", [False, True], ids=["during_the_first_write", "during_a_rewrite"])
def test_a_writer_killed_mid_write_leaves_the_old_or_the_new_file(tmp_path, after_a_publish):
    """SIGKILL while the writer's temporary file is being filled (seen on disk, not yet renamed): the target is
    the previous complete file, the old one or the writer's own earlier output, and parses."""
    target = tmp_path / "pairs.parquet"
    old = [{"question_id": -1, "text": "old good version"}]
    for _attempt in range(5):  # a kill that came just after the rename proves nothing: try again
        pq.write_table(pa.Table.from_pylist(old), target)
        if _kill_while_writing(target, after_a_publish):
            break
    else:
        pytest.fail("five kills in a row came after the rename")
    table = pq.read_table(target).to_pylist()  # must parse: never a torn file
    if after_a_publish:
        assert len(table) == 200_000 and table[-1]["text"].endswith("7")
    else:
        assert table == old
    # the temporary file a killed writer leaves is hidden and never mistaken for output
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == ["pairs.parquet"]


def test_a_killed_writers_temporary_file_is_removed_by_a_later_write_once_stale(tmp_path):
    """A SIGKILLed writer leaves its hidden temporary file (as large as the output); the next write of the
    same target removes it once it is older than STALE_TMP_S, and never a fresh one a live writer may be filling."""
    import os

    from cv_pipeline import atomic

    target = tmp_path / "pairs.parquet"
    proc = subprocess.Popen([sys.executable, "-c", WRITER_SCRIPT, str(target), "7"])
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".pairs.parquet.*.parquet.tmp")) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = list(tmp_path.glob(".pairs.parquet.*.parquet.tmp"))
    assert killed, "the writer was killed before it created its temporary file"
    other = tmp_path / ".pairs.parquet.other.json.tmp"  # another suffix: not this writer's kind of file
    fresh = tmp_path / ".pairs.parquet.live.parquet.tmp"  # a concurrent writer's, just created
    other.write_text("x")
    fresh.write_text("x")
    old = time.time() - atomic.STALE_TMP_S - 60
    for path in [*killed, other]:
        os.utime(path, (old, old))

    with atomic.atomic_path(target, suffix=".parquet") as tmp:
        pq.write_table(pa.Table.from_pylist([{"question_id": 1}]), tmp)

    left = sorted(p.name for p in tmp_path.iterdir())
    assert not any(path.exists() for path in killed), left
    assert fresh.exists() and other.exists(), left
    assert pq.read_table(target).to_pylist() == [{"question_id": 1}]


def test_a_published_folder_s_files_are_made_durable_before_the_swap(tmp_path, monkeypatch):
    """save_pretrained and the datasets library do not fsync: atomic_dir syncs every file and folder it is
    about to publish before the rename, or a power loss right after could leave the new folder with short files."""
    import os

    from cv_pipeline import atomic

    synced: list[str] = []
    real = atomic._fsync_path
    monkeypatch.setattr(atomic, "_fsync_path", lambda path, flags: (synced.append(str(path)), real(path, flags)))
    renames: list[tuple[str, list[str]]] = []
    real_replace = atomic.os.replace

    def replace(src, dst):
        renames.append((str(src), list(synced)))
        return real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)
    target = tmp_path / "adapter"
    with atomic.atomic_dir(target) as tmp:
        (tmp / "adapter_model.safetensors").write_bytes(b"w" * 1000)
        (tmp / "nested").mkdir()
        (tmp / "nested" / "tokenizer.json").write_text("{}")
        os.symlink(tmp / "nested" / "tokenizer.json", tmp / "link.json")
        written = sorted(str(p) for p in tmp.rglob("*") if p.is_file() and not p.is_symlink())
        folders = [str(tmp), str(tmp / "nested")]
    [(src, synced_by_then)] = [(src, seen) for src, seen in renames if src.endswith(".dirtmp") and ".old." not in src]
    assert set(written) | set(folders) <= set(synced_by_then), synced_by_then
    assert not any(path.endswith("link.json") for path in synced_by_then)  # a link's target is not ours
    assert (target / "nested" / "tokenizer.json").read_text() == "{}"


def test_published_files_and_folders_get_ordinary_permissions(tmp_path):
    """mkstemp/mkdtemp make 0600/0700; what is published must be readable as a plain open() would make it."""
    import os

    from cv_pipeline.atomic import atomic_dir, write_text

    import torch
    from safetensors.torch import save_file

    outside = tmp_path / "outside"
    outside.mkdir(mode=0o700)
    previous = os.umask(0o022)
    try:
        write_text(tmp_path / "batch.json", "{}")
        with atomic_dir(tmp_path / "adapter") as tmp:
            (tmp / "adapter_config.json").write_text("{}")
            # safetensors creates its files 0600 whatever the umask (save_pretrained goes through it)
            save_file({"w": torch.zeros(2)}, str(tmp / "adapter_model.safetensors"))
            (tmp / "sub").mkdir(mode=0o700)
            (tmp / "sub" / "run.sh").write_text("#!/bin/sh\n")
            os.chmod(tmp / "sub" / "run.sh", 0o700)
            (tmp / "elsewhere").symlink_to(outside, target_is_directory=True)  # a link out is not followed
    finally:
        os.umask(previous)
    mode = lambda p: p.stat().st_mode & 0o777  # noqa: E731
    assert mode(tmp_path / "batch.json") == 0o644
    assert mode(tmp_path / "adapter") == 0o755 == mode(tmp_path / "adapter" / "sub")
    assert mode(tmp_path / "adapter" / "adapter_model.safetensors") == 0o644 == mode(tmp_path / "adapter" / "adapter_config.json")
    assert mode(tmp_path / "adapter" / "sub" / "run.sh") == 0o755  # execute bits kept
    assert mode(outside) == 0o700


def test_a_failed_folder_swap_puts_the_old_folder_back(tmp_path, monkeypatch):
    import os

    from cv_pipeline import atomic

    target = tmp_path / "chat_dataset"
    target.mkdir()
    (target / "train.jsonl").write_text("old")
    real_replace = os.replace

    def failing_second_rename(src, dst):
        if Path(src).name.startswith(".chat_dataset.") and not Path(src).name.endswith(".old.dirtmp") \
                and Path(dst) == target:
            raise OSError("disk full")
        return real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", failing_second_rename)
    with pytest.raises(OSError, match="disk full"):
        with atomic.atomic_dir(target) as tmp:
            (tmp / "train.jsonl").write_text("new")
    assert (target / "train.jsonl").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == ["chat_dataset"]


def test_a_writer_killed_between_the_two_renames_loses_nothing(tmp_path):
    """Dying after the old folder was moved aside and before the new one moved in: the next writer restores it."""
    from cv_pipeline.atomic import atomic_dir

    target = tmp_path / "chat_dataset"
    aside = tmp_path / ".chat_dataset.old.dirtmp"  # the state such a crash leaves
    aside.mkdir()
    (aside / "train.jsonl").write_text("old")

    class Abort(Exception):
        pass

    with pytest.raises(Abort):  # the next writer fails too: the old folder must still come back
        with atomic_dir(target):
            raise Abort
    assert (target / "train.jsonl").read_text() == "old"
    assert not aside.exists()



def test_after_a_swap_killed_midway_readers_find_the_old_folder_and_an_empty_one_in_its_place_hides_nothing(tmp_path):
    """The crash above, then a step that reads (or creates) the folder before any writer runs: it reads the old
    dataset, and an empty folder that something made in its place does not stop the next writer restoring it."""
    from cv_pipeline.atomic import atomic_dir
    from cv_pipeline.defs.resources import DataDirResource

    data_dir = DataDirResource(path=str(tmp_path))
    aside = tmp_path / ".chat_dataset.old.dirtmp"
    aside.mkdir()
    (aside / "train.jsonl").write_text("old")
    assert (data_dir.published("chat_dataset") / "train.jsonl").read_text() == "old"  # a reader restores it
    assert not aside.exists()

    aside.mkdir()  # the same crash again, and this time an empty folder appears in the target's place
    (aside / "train.jsonl").write_text("older")
    (tmp_path / "chat_dataset" / "train.jsonl").rename(tmp_path / "elsewhere")
    assert not any((tmp_path / "chat_dataset").iterdir())

    class Abort(Exception):
        pass

    with pytest.raises(Abort):
        with atomic_dir(tmp_path / "chat_dataset"):
            raise Abort
    assert (tmp_path / "chat_dataset" / "train.jsonl").read_text() == "older"
    assert not aside.exists()


def test_a_swap_whose_cleanup_is_cut_short_leaves_nothing_a_later_writer_would_restore(tmp_path, monkeypatch):
    import shutil

    from cv_pipeline import atomic

    target = tmp_path / "adapter"
    rmtree = shutil.rmtree
    for content in ("first", "second"):
        with atomic.atomic_dir(target) as tmp:
            (tmp / "weights").write_text(content)
        if content == "first":  # the next swap's deletion of the old folder stops before it starts
            monkeypatch.setattr(atomic.shutil, "rmtree", lambda path, ignore_errors=False: None)
    monkeypatch.setattr(atomic.shutil, "rmtree", rmtree)
    assert not (tmp_path / ".adapter.old.dirtmp").exists()
    (target / "weights").unlink()  # the new folder empty, as a reader's mkdir would leave it
    with atomic.atomic_dir(target) as tmp:
        (tmp / "weights").write_text("third")
    assert (target / "weights").read_text() == "third"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".adapter.lock", "adapter"]


def test_an_old_folder_left_beside_a_complete_one_is_never_deleted_in_place(tmp_path, monkeypatch):
    """A killed writer's old folder beside the complete new one: the next writer removes it by renaming it first
    (a deletion cut short leaves nothing a restore would take for the old folder), and refuses to start when
    it cannot be removed (its swap would fail at the end, losing what it made)."""
    import os

    from cv_pipeline import atomic

    target, old = tmp_path / "chat_dataset", tmp_path / ".chat_dataset.old.dirtmp"
    for folder, content in ((target, "new"), (old, "old")):
        folder.mkdir()
        (folder / "train.jsonl").write_text(content)
    monkeypatch.setattr(atomic.shutil, "rmtree", lambda path, ignore_errors=False: None)  # every deletion cut short
    with atomic.atomic_dir(target) as tmp:
        (tmp / "train.jsonl").write_text("newer")
    assert not old.exists() and (target / "train.jsonl").read_text() == "newer"
    monkeypatch.undo()

    old.mkdir()
    real_replace = os.replace

    def stuck(src, dst):
        if Path(src) == old:
            raise PermissionError("cannot move it")
        return real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", stuck)
    monkeypatch.setattr(atomic.shutil, "rmtree", lambda path, ignore_errors=False: None)
    with pytest.raises(OSError, match="left from an earlier write and cannot be removed"):
        with atomic.atomic_dir(target):
            pytest.fail("the writer must not start")
    assert (target / "train.jsonl").read_text() == "newer"


def test_a_reader_that_may_not_write_reads_the_old_folder_where_it_lies(tmp_path, monkeypatch):
    from cv_pipeline import atomic

    old = tmp_path / ".chat_dataset.old.dirtmp"
    old.mkdir()
    (old / "train.jsonl").write_text("old")

    def read_only(lock_file):
        raise PermissionError(f"{lock_file}: read-only file system")

    monkeypatch.setattr(atomic, "exclusive", read_only)
    assert (atomic.settled_dir(tmp_path / "chat_dataset") / "train.jsonl").read_text() == "old"


def test_a_chat_dataset_that_fails_a_blocking_check_never_reaches_training(tmp_path):
    from cv_pipeline.defs.curation.checks import failed_dataset_checks
    from cv_pipeline.defs.project import build_definitions
    from cv_pipeline.profiles import get_profile

    rows = [
        {"question_id": q, "answer_id": q + 10_000, "rank": q, "question_score": 100 - q, "answer_score": 1,
         "tags": ["t"], "question": f"What is question {q} about variance?", "answer": f"Answer {q}.",
         "link": f"https://stats.stackexchange.com/q/{q}", "license": "CC BY-SA 4.0", "answer_license": "CC BY-SA 4.0"}
        for q in range(1, 60)
    ]
    cleaned = tmp_path / "cleaned" / "pairs_00000-04999.parquet"
    cleaned.parent.mkdir()
    pq.write_table(pa.Table.from_pylist(rows), cleaned)
    defs = build_definitions(get_profile("demo"), data_dir=tmp_path)
    instance = dg.DagsterInstance.ephemeral()
    everything = [*defs.assets, *defs.asset_checks]
    good = dg.materialize(everything, selection=["chat_dataset"], resources=defs.resources, instance=instance)
    assert all(c.passed for c in good.get_asset_check_evaluations())
    dataset = tmp_path / "chat_dataset"
    written = {p.name: p.read_bytes() for p in dataset.glob("*.jsonl")}

    # New cleaned data with a pair whose answer is only whitespace: chat_dataset applies its blocking checks'
    # rules before it writes, so the build fails, naming the rule and the row, and the last good dataset stays.
    rows[2] = dict(rows[2], answer="   ")
    pq.write_table(pa.Table.from_pylist(rows), cleaned)
    result = dg.materialize(
        everything,
        selection="chat_dataset lora_adapter_all_pairs lora_adapter_top_10k".split(),
        resources=defs.resources,
        instance=instance,
        raise_on_error=False,
    )
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.event_specific_data.error.message
    assert "chat_roles_alternate" in message and "question ids [3]" in message and "last one that passed" in message
    assert "STEP_UP_FOR_RETRY" not in [e.event_type_value for e in result.all_events]
    assert not result.get_asset_materialization_events()
    started = {e.step_key for e in result.all_events if e.event_type_value == "STEP_START"}
    assert started == {"chat_dataset"}, started
    assert {p.name: p.read_bytes() for p in dataset.glob("*.jsonl")} == written
    assert not (tmp_path / "adapters").exists()

    # The files the checks judge can still go bad after they were written (here by hand): the checks, run on
    # their own, fail, and a run of an adapter alone (no checks in it to block) refuses that data, naming the check.
    train = dataset / "train.jsonl"
    first = json.loads(train.read_text(encoding="utf-8").splitlines()[0])
    first["messages"][1]["content"] = " "
    train.write_text(json.dumps(first) + "\n" + "\n".join(train.read_text(encoding="utf-8").splitlines()[1:]) + "\n",
                     encoding="utf-8")
    checks = dg.materialize(everything, selection=dg.AssetSelection.checks_for_assets("chat_dataset"),
                            resources=defs.resources, instance=instance, raise_on_error=False)
    assert {c.check_name: c.passed for c in checks.get_asset_check_evaluations()}["chat_roles_alternate"] is False
    assert failed_dataset_checks(instance) == ["chat_roles_alternate"]
    alone = dg.materialize([*defs.assets], selection=["lora_adapter_top_10k"], resources=defs.resources,
                           instance=instance, raise_on_error=False)
    [failure] = [e for e in alone.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "failed its blocking checks chat_roles_alternate" in failure.event_specific_data.error.message
    assert "STEP_UP_FOR_RETRY" not in [e.event_type_value for e in alone.all_events]
    assert not (tmp_path / "adapters" / "top_10k" / "adapter").exists()

    # Fixed and rebuilt with its checks passing, the dataset is accepted again.
    rows[2] = dict(rows[2], answer="Answer 3.")
    pq.write_table(pa.Table.from_pylist(rows), cleaned)
    rebuilt = dg.materialize(everything, selection=["chat_dataset"], resources=defs.resources, instance=instance)
    assert all(c.passed for c in rebuilt.get_asset_check_evaluations())
    assert failed_dataset_checks(instance) == []


def test_a_blocking_check_that_raised_counts_as_failed_for_a_later_adapter_run(tmp_path, monkeypatch):
    """A check that crashed (its record stays PLANNED in a finished run) did not pass: training refuses that build."""
    from cv_pipeline.curation.dataset import build_chat_dataset, save_chat_dataset
    from cv_pipeline.defs.curation import checks
    from cv_pipeline.defs.project import build_definitions
    from cv_pipeline.profiles import get_profile
    from cv_pipeline_tests.test_dataset import pair

    rows = [pair(q, q) for q in range(1, 60)]
    (tmp_path / "cleaned").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "cleaned" / "pairs_00000-04999.parquet")
    save_chat_dataset(build_chat_dataset(rows, top_n=10), tmp_path / "chat_dataset")
    defs = build_definitions(get_profile("demo"), data_dir=tmp_path)
    instance = dg.DagsterInstance.ephemeral()

    def crash(_data_dir):
        raise OSError("the dataset folder vanished")

    monkeypatch.setattr(checks, "_copies", crash)
    result = dg.materialize([*defs.assets, *defs.asset_checks], selection=["chat_dataset"], resources=defs.resources,
                            instance=instance, raise_on_error=False)
    assert not result.success and result.get_asset_materialization_events()
    assert checks.failed_dataset_checks(instance) == sorted(
        spec.key.name for spec in checks.chat_dataset_checks.check_specs)


def test_a_verdict_on_the_dataset_on_disk_survives_a_later_rebuild_refused_by_its_gate(tmp_path, monkeypatch):
    """The adapters' guard and automatic retraining read each blocking check's history, not only its latest
    record: a later chat_dataset run that planned the checks but built nothing (refused by its gate), or a
    checks-only run cancelled before it started, judged nothing, so a failure on the files on disk still
    refuses training, a pass still allows it, and a check that crashed in a checks-only run (*Execute
    checks*) counts as failed."""
    from cv_pipeline.defs.curation import checks
    from cv_pipeline.defs.project import build_definitions
    from cv_pipeline.profiles import get_profile
    from cv_pipeline_tests.test_dataset import pair

    rows = [pair(q, q) for q in range(1, 60)]
    cleaned = tmp_path / "cleaned" / "pairs_00000-04999.parquet"
    cleaned.parent.mkdir()
    pq.write_table(pa.Table.from_pylist(rows), cleaned)
    defs = build_definitions(get_profile("demo").model_copy(update={"auto_retrain": True}), data_dir=tmp_path)
    instance = dg.DagsterInstance.ephemeral()
    instance.report_runless_asset_event(dg.AssetMaterialization("base_model"))
    everything = [*defs.assets, *defs.asset_checks]
    adapters = [dg.AssetKey("lora_adapter_all_pairs"), dg.AssetKey("lora_adapter_top_10k")]

    def build():
        return dg.materialize(everything, selection=["chat_dataset"], resources=defs.resources, instance=instance,
                              raise_on_error=False)

    def refused_rebuild():  # new cleaned data the gate refuses: its checks are planned, never run
        bad = [dict(r, answer=r["answer"] + " <div>left over</div>") if r["question_id"] == 7 else r for r in rows]
        pq.write_table(pa.Table.from_pylist(bad), cleaned)
        assert not build().get_asset_materialization_events()
        pq.write_table(pa.Table.from_pylist(rows), cleaned)

    def execute_checks():
        return dg.materialize(everything, selection=dg.AssetSelection.checks_for_assets("chat_dataset"),
                              resources=defs.resources, instance=instance, raise_on_error=False)

    def retrain_requested() -> bool:
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance,
                                                   asset_selection=dg.AssetSelection.assets(*adapters))
        return all(result.get_num_requested(a) == 1 for a in adapters)

    assert build().success
    refused_rebuild()
    assert set(checks.dataset_check_states(instance).values()) == {"passed"}
    assert retrain_requested()  # the dataset on disk passed: the refused rebuild does not hold training back
    # Dagster plans checks when it creates a run: a checks-only run cancelled before it started judged nothing
    job = dg.define_asset_job("checks_only", selection=dg.AssetSelection.checks_for_assets("chat_dataset"))
    job_def = dg.Definitions(assets=defs.assets, asset_checks=defs.asset_checks, jobs=[job],
                             resources=defs.resources).resolve_job_def("checks_only")
    instance.report_run_canceled(instance.create_run_for_job(job_def=job_def))
    assert set(checks.dataset_check_states(instance).values()) == {"passed"}
    assert retrain_requested()

    train = tmp_path / "chat_dataset" / "train.jsonl"
    first, *rest = train.read_text(encoding="utf-8").splitlines()
    row = json.loads(first)
    row["messages"][1]["content"] += " <div>x</div>"
    train.write_text("\n".join([json.dumps(row), *rest]) + "\n", encoding="utf-8")  # changed on disk since
    assert not execute_checks().success
    refused_rebuild()
    assert checks.failed_dataset_checks(instance) == ["chat_has_no_markup"]
    assert not retrain_requested()

    assert build().success  # rebuilt from the good cleaned data: accepted again
    monkeypatch.setattr(checks, "_copies", lambda _data_dir: (_ for _ in ()).throw(OSError("the folder vanished")))
    crashed = execute_checks()
    assert not crashed.success and not crashed.get_asset_check_evaluations()
    assert checks.failed_dataset_checks(instance) == sorted(spec.key.name for spec in checks.chat_dataset_checks.check_specs)
    assert not retrain_requested()


def test_throttled_with_backoff_several_times_then_the_batch_completes(tmp_path):
    """Scenario 1: `throttle_violation` carrying `backoff`, three times; the client waits each one out."""
    from cv_pipeline.collection import collect_batch
    from cv_pipeline.partitions import RankRange
    from cv_pipeline.sources.api import StackExchangeAPISource
    from cv_pipeline.sources.ratelimit import FakeClock
    from cv_pipeline.sources.sample_site import Faults

    clock = FakeClock()
    with SampleSite(n_questions=300, clock=clock.now, faults=Faults(throttle_next=3, throttle_backoff=7)) as site:
        with StackExchangeAPISource(base_url=site.base_url, clock=clock) as source:
            batch = collect_batch(source, RankRange(0, 5000), tmp_path / "b.json", tmp_path / "ck")
        assert site.backoff_violations == 0  # the server saw every backoff honoured
    assert sum(1 for s in clock.sleeps if s >= 7) >= 3
    ids = [q.question_id for q in batch.questions]
    assert len(ids) == 300 == len(set(ids))


def test_a_mix_of_503s_timeouts_and_drops_exhausts_the_budget_then_fails_clearly(tmp_path):
    """Scenario 3: retries up to the budget, then a clear failure; no batch file, partial or otherwise."""
    from cv_pipeline.collection import collect_batch
    from cv_pipeline.partitions import RankRange
    from cv_pipeline.sources.api import StackExchangeAPISource
    from cv_pipeline.sources.base import TransientSourceError
    from cv_pipeline.sources.ratelimit import FakeClock

    clock = FakeClock()
    with SampleSite(n_questions=300) as site:
        with StackExchangeAPISource(base_url=site.base_url, clock=clock, max_retries=5, timeout=0.5) as source:
            source.filter_id()
            site.faults.update(unavailable_next=2, drop_next=2, slow_seconds=1.0)  # then every call times out
            before = site.requests
            with pytest.raises(TransientSourceError, match="failed 6 times.*re-run") as err:
                collect_batch(source, RankRange(0, 5000), tmp_path / "b.json", tmp_path / "ck")
            site.faults.update(slow_seconds=0.0)
        assert site.requests - before == 6  # 1 try + 5 retries, then stop
    assert "Timeout" in str(err.value) or "timed out" in str(err.value).lower()
    assert not (tmp_path / "b.json").exists()
    assert leftovers_in(tmp_path) == []


def leftovers_in(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith((".tmp", ".dirtmp"))]


def test_a_plot_whose_save_fails_leaves_no_file_and_no_open_figure(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    from cv_pipeline.plots import histograms

    target = tmp_path / "lengths.png"
    target.write_bytes(b"the previous plot")
    monkeypatch.setattr(Figure, "savefig", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        histograms({"train": [1, 2, 3]}, target, "lengths", "tokens")
    assert target.read_bytes() == b"the previous plot"
    assert [p.name for p in tmp_path.iterdir()] == ["lengths.png"]
    assert plt.get_fignums() == []
