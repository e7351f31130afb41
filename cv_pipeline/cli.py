"""`cv-pipeline`: what people do without the UI (run the demo, materialise assets, list them, ask a model, open the UI)."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from cv_pipeline.atomic import settled_dir, write_text
from cv_pipeline.partitions import parse_partition_key
from cv_pipeline.training.config import ADAPTER_SPECS

REPO_ROOT = Path(__file__).resolve().parents[1]


_COPY_HEADER = "# A copy of the project's dagster.yaml, refreshed by cv-pipeline when that file changes: edit that one.\n"


def dagster_home() -> Path:
    """``$DAGSTER_HOME`` or ``./.dagster_home``, holding a copy of the project's dagster.yaml.

    The copy follows the project's file: it is rewritten when that file changes, in the default
    home (which only this command creates) and wherever the copy carries our header. A
    dagster.yaml of your own in a home you chose is left alone.
    """
    default = Path(".dagster_home").resolve()
    home = Path(os.environ.get("DAGSTER_HOME") or default).resolve()
    home.mkdir(parents=True, exist_ok=True)
    src = REPO_ROOT / "dagster.yaml"
    if src.exists():
        wanted = _COPY_HEADER + src.read_text()
        copy = home / "dagster.yaml"
        current = copy.read_text() if copy.exists() else None
        if current != wanted and (current is None or home == default or current.startswith(_COPY_HEADER)):
            if current is not None and not current.startswith(_COPY_HEADER):
                # Written before copies carried the header, perhaps edited since: kept beside, and said so.
                write_text(copy.with_name("dagster.yaml.bak"), current)
                print(f"note: {copy} now follows the project's dagster.yaml; the earlier one is kept as "
                      f"{copy.name}.bak (put lasting settings in {src})", file=sys.stderr)
            write_text(copy, wanted)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def _definitions(profile: str | None):
    if profile:
        os.environ["CV_PIPELINE_PROFILE"] = profile
    from cv_pipeline.defs.project import build_definitions
    from cv_pipeline.profiles import SettingError

    p = _profile(profile)
    try:
        return p, build_definitions(p)
    except SettingError as exc:
        raise SystemExit(str(exc)) from None


def _profile(name: str | None):
    from cv_pipeline.profiles import get_profile

    try:
        return get_profile(name)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None


CLI_HOST_TAG, CLI_PID_TAG = "cv_pipeline/cli_host", "cv_pipeline/cli_pid"


def _process_space() -> str:
    """Where a pid means something: the host name and the pid namespace (containers that share a host name,
    each with its own pids, are told apart)."""
    import socket

    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        namespace = 0
    return f"{socket.gethostname()}/pidns:{namespace}"


def _cli_tags() -> dict[str, str]:
    """Tags of the runs this command executes in its own process: Ctrl-C or `kill` stops them, not retried; and
    the process that runs them, so that a later command can tell one that was killed (_release_dead_runs)."""
    from cv_pipeline.defs.operations.interrupts import STOP_ON_INTERRUPT

    return {STOP_ON_INTERRUPT: "true", CLI_HOST_TAG: _process_space(), CLI_PID_TAG: str(os.getpid())}


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _release_dead_runs(instance) -> None:
    """Fail the runs of earlier `cv-pipeline` commands on this host whose process is gone, freeing their pool slots.

    Such a command runs its runs in its own process; killed outright (SIGKILL, out of memory) it leaves them
    STARTED with their `gpu` or `stackexchange_api` slot claimed, which the local launcher never notices, and
    the next run would wait for that slot for ever, silently. Then say who holds a slot a live run still has.
    """
    import dagster as dg

    running = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]
    for run in instance.get_runs(dg.RunsFilter(statuses=running, tags={CLI_HOST_TAG: _process_space()})):
        pid = run.tags.get(CLI_PID_TAG, "")
        if not pid.isdigit() or _process_alive(int(pid)):
            continue
        why = f"the cv-pipeline process that ran it (pid {pid}) is gone: killed"
        instance.report_run_failed(run, message=why)
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        print(f"note: run {run.run_id[:8]} ({run.job_name}) was left running by a killed cv-pipeline (pid {pid}); "
              "marked failed and its pool slots freed", file=sys.stderr)
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return
    for pool in sorted(storage.get_concurrency_keys()):
        holders = {slot.run_id for slot in storage.get_concurrency_info(pool).claimed_slots}
        for run_id in sorted(holders):
            run = instance.get_run_by_id(run_id)
            who = f"pid {run.tags[CLI_PID_TAG]}" if run is not None and CLI_PID_TAG in run.tags else "the UI or the daemon"
            print(f"note: pool {pool!r} is held by run {run_id[:8]} ({who}): steps that need it wait until it ends",
                  file=sys.stderr)


# Dagster's console logger shows the steps' own log lines (progress, counts, warnings) and errors;
# --verbose adds its DEBUG events (STEP_START, outputs, handled resources, ...).
_QUIET = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}

SELECTION_HELP = """asset selections (Dagster's syntax; quote them in a shell):
  chat_dataset                         one asset
  raw_question_batches,cleaned_qa_pairs  several assets
  "+cleaned_qa_pairs"                  an asset and the assets it reads directly
  "cleaned_qa_pairs+"                  an asset and the assets that read it directly
  "chat_dataset*"                      an asset and everything downstream of it
  "*adapter_evaluation"                an asset and everything upstream of it
  "key:chat_dataset or key:base_model" any selection expression
Partitioned assets (raw_question_batches, cleaned_qa_pairs) run for --partition, or else once for each of
the profile's partitions, before the rest of the selection. `cv-pipeline list` shows the assets."""


def _read_settings(path: str) -> object:
    """A settings file's contents: JSON as JSON, else YAML read as the launchpad's editor reads it (YAML 1.2:
    ``2e-5`` is a number, ``off``/``yes`` are strings, only ``true``/``false`` are booleans)."""
    import yaml

    try:
        text = Path(path).read_bytes().decode("utf-8")
    except OSError as exc:
        raise SystemExit(f"--config {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise SystemExit(f"--config {path}: not UTF-8 text") from None
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return yaml.load(text, Loader=_yaml12_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise SystemExit(f"--config {path}: not YAML or JSON ({str(exc).splitlines()[0]})") from None


def _yaml12_loader():
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    bool_tag, float_tag = "tag:yaml.org,2002:bool", "tag:yaml.org,2002:float"
    Loader.yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag != bool_tag]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    Loader.add_implicit_resolver(bool_tag, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
    Loader.add_implicit_resolver(float_tag, re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))
    return Loader


def _settings_file(path: str | None, defs) -> dict[str, dict]:
    """The per-asset settings of a run config file (``--config``): its ``ops:``, as the launchpad shows them.

    YAML or JSON, e.g. ``ops: {lora_adapter_top_10k: {config: {per_device_batch: 4, grad_accum: 4}}}``. Every
    entry is checked against its asset's settings before anything runs; each run of the command then gets the
    entries of the assets it materialises. (Limits such as ``top_n >= 0`` are checked when that asset runs.)
    """
    if path is None:
        return {}
    import dagster as dg

    shape = ("a mapping with one key, ops:, holding each asset's settings as the launchpad shows them, e.g.\n"
             "  ops:\n    lora_adapter_top_10k:\n      config: {per_device_batch: 4, grad_accum: 4}")
    data = _read_settings(path)
    if data is None:
        return {}
    if not isinstance(data, dict) or set(data) != {"ops"} or not isinstance(data["ops"], dict):
        keys = sorted(map(str, data)) if isinstance(data, dict) else type(data).__name__
        raise SystemExit(f"--config {path}: expected {shape}\n(got {keys})")
    graph = defs.resolve_asset_graph()
    names = {k.to_user_string() for k in graph.materializable_asset_keys}
    unknown = sorted(map(str, set(data["ops"]) - names))
    if unknown:
        raise SystemExit(f"--config {path}: no asset named {', '.join(unknown)}; the assets are {', '.join(sorted(names))}")
    for name, entry in data["ops"].items():
        job = dg.define_asset_job("config_check", selection=[dg.AssetKey(name)]).resolve(asset_graph=graph)
        try:
            dg.validate_run_config(job, {"ops": {name: entry}})
        except dg.DagsterInvalidConfigError as exc:
            problems = "\n".join(f"  {error.message}" for error in exc.errors)
            raise SystemExit(f"--config {path}: the settings of {name} do not fit it:\n{problems}") from None
    return dict(data["ops"])


def _settings_for(settings: dict[str, dict], keys) -> dict[str, dict]:
    """The entries of ``settings`` for the assets ``keys``."""
    names = {k.to_user_string() for k in keys}
    return {name: entry for name, entry in settings.items() if name in names}


def _note_unused(settings: dict[str, dict], keys) -> None:
    """Name the settings for assets outside ``keys``, everything the command materialises."""
    if unused := sorted(set(settings) - set(_settings_for(settings, keys))):
        print(f"note: --config settings for {', '.join(unused)} were not used: not in what this command ran",
              file=sys.stderr, flush=True)


def _run(execute, what: str, verbose: bool, settings: dict[str, dict] | None = None):
    """Execute one run in this process; it stops at the first failure (an interrupt included), and the command
    ends with the failure's own message: the Dagster log above it has the stack trace (``--verbose`` re-raises).
    ``settings``: the run config of the run's assets (``ops:``)."""
    run_config = {**({} if verbose else _QUIET), **({"ops": settings} if settings else {})}
    try:
        return execute(raise_on_error=True, run_config=run_config)
    except Exception as exc:
        if verbose:
            raise
        lines = [f"  {line}" for line in _failure_message(exc).strip().splitlines()[:8]]
        raise SystemExit("\n".join([f"{what} failed (the Dagster log above has the details):", *lines])) from None


def _failure_message(exc: Exception) -> str:
    """The step's own error: a dg.Failure's description, else the exception; behind a RetryPolicy that gave
    up, the error of the last try (Dagster raises DagsterMaxRetriesExceededError around it)."""
    import dagster as dg

    if isinstance(exc, dg.Failure):
        return exc.description or str(exc)
    infos = getattr(exc, "user_code_process_error_infos", None)
    cause = infos[0].cause if infos else None
    if cause is not None:
        message = cause.message.strip()
        if cause.cls_name == "Failure":  # "dagster._core.definitions.events.Failure: <description>"
            message = message.split(": ", 1)[-1]
        gave_up = (str(exc).strip().splitlines() or [type(exc).__name__])[0]  # its first line: a stack trace follows
        return f"{message}\n(the step's RetryPolicy gave up: {gave_up})"
    return f"{type(exc).__name__}: {exc}"


def _interrupted(exc: BaseException) -> bool:
    """Ctrl-C or SIGTERM: Python's KeyboardInterrupt, or Dagster's own for an interrupted step."""
    if isinstance(exc, KeyboardInterrupt):
        return True
    errors = sys.modules.get("dagster._core.errors")
    return errors is not None and isinstance(exc, errors.DagsterExecutionInterruptedError)


def _report(result) -> None:
    """What a successful run made, and where it is; the checks that ran."""
    import dagster as dg

    for event in result.get_asset_materialization_events():
        paths = [str(v.value) for v in event.materialization.metadata.values() if isinstance(v, dg.PathMetadataValue)]
        part = f" [{event.partition}]" if event.partition else ""
        print(f"materialised {event.asset_key.to_user_string()}{part}" + (f" -> {', '.join(paths)}" if paths else ""), flush=True)
    checks = result.get_asset_check_evaluations()
    if checks:
        failed = sorted({f"{c.asset_key.to_user_string()}:{c.check_name}"
                         + (" (warning)" if c.severity == dg.AssetCheckSeverity.WARN else "") for c in checks if not c.passed})
        print(f"checks: {len(checks) - len(failed)} of {len(checks)} passed" + (f"; failed: {', '.join(failed)}" if failed else ""), flush=True)


def _partition(key: str) -> str:
    try:
        parse_partition_key(key)
    except ValueError as exc:
        raise SystemExit(f"--partition: {exc}") from None
    return key


def run_pipeline(profile: str | None = None, partitions: list[str] | None = None, verbose: bool = False,
                 config: str | None = None) -> Path:
    """The main job: collect+clean each partition (one run each), then train, evaluate and export.

    ``config``: a run config file of per-asset settings (see _settings_file)."""
    import dagster as dg
    from tqdm import tqdm

    dagster_home()
    p, defs = _definitions(profile)
    settings = _settings_file(config, defs)
    instance = dg.DagsterInstance.get()
    _release_dead_runs(instance)
    keys = [_partition(k) for k in partitions or p.demo_partitions]
    collect, train = defs.resolve_job_def("collect_and_clean"), defs.resolve_job_def("train_and_evaluate")
    _note_unused(settings, collect.asset_layer.selected_asset_keys | train.asset_layer.selected_asset_keys)
    collect_settings = _settings_for(settings, collect.asset_layer.selected_asset_keys)
    tags = _cli_tags()
    for key in tqdm(keys, desc="collect+clean partitions", unit="partition"):
        _report(_run(lambda **kw: collect.execute_in_process(instance=instance, partition_key=key, tags=tags, **kw),
                     f"collect_and_clean [{key}]", verbose, collect_settings))
    print("training both adapters, then evaluating and exporting (progress in the Dagster logs)...", flush=True)
    if _gpu_visible():
        # Unsloth patches transformers for its whole process when imported, fully only when imported first, and
        # only on a GPU: as in the UI (a process per step), training gets a fresh process and evaluation and export
        # another one, with plain transformers + PEFT.
        import tempfile

        with tempfile.TemporaryDirectory(prefix="cv-pipeline-config-") as tmp:
            for i, stage in enumerate(_train_stages(defs)):
                args = ["materialize", ",".join(k.to_user_string() for k in stage)]
                if stage_settings := _settings_for(settings, stage):
                    write_text(Path(tmp) / f"stage{i}.json", json.dumps({"ops": stage_settings}))
                    args += ["--config", str(Path(tmp) / f"stage{i}.json")]
                _run_in_fresh_process(p.name, args, verbose)
    else:  # on the CPU Unsloth runs stock transformers and patches nothing: one run, in this process
        _report(_run(lambda **kw: train.execute_in_process(instance=instance, tags=tags, **kw), "train_and_evaluate",
                     verbose, _settings_for(settings, train.asset_layer.selected_asset_keys)))
    from cv_pipeline.profiles import default_data_dir

    report = default_data_dir() / "evaluation" / "report.html"
    print(f"\nDone. Report: {report}\n         and: {report.with_suffix('.md')}")
    return report


def _gpu_visible() -> bool:
    """Whether Unsloth would take its GPU code in a new process here (it picks once, at import)."""
    import torch

    return torch.cuda.is_available()


def _train_stages(defs) -> list[list]:
    """train_and_evaluate's assets in three groups, in order: what comes before the adapters (the dataset, the base
    model), the adapters, and what reads them (evaluation, export)."""
    import dagster as dg

    graph = defs.resolve_asset_graph()
    job = defs.resolve_job_def("train_and_evaluate")
    keys = [k for k in graph.toposorted_asset_keys if k in job.asset_layer.selected_asset_keys]
    adapters = [k for k in keys if k.to_user_string().startswith("lora_adapter_")]
    downstream = dg.AssetSelection.assets(*adapters).downstream().resolve(graph)  # direct or not
    after = [k for k in keys if k not in adapters and k in downstream]
    before = [k for k in keys if k not in adapters and k not in after]
    return [stage for stage in (before, adapters, after) if stage]


def _run_in_fresh_process(profile: str, args: list[str], verbose: bool) -> None:
    """`cv-pipeline --profile PROFILE ARGS` in a new Python process; its exit is this command's."""
    command = [sys.executable, "-m", "cv_pipeline.cli", "--profile", profile, *args, *(["--verbose"] if verbose else [])]
    # Its own process group: a terminal's Ctrl-C reaches this process only, which passes the child exactly one
    # interrupt (a second one, landing while the step turns the first into a failure that is not retried, could
    # escape to Dagster, which would retry the step).
    child = subprocess.Popen(command, process_group=0)
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill` of this process stops the child too
    try:
        code = child.wait()
    except BaseException:
        child.send_signal(signal.SIGINT)
        try:
            child.wait(timeout=300)  # a training step saves nothing more on an interrupt; this is ample
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    if code == 130:
        raise KeyboardInterrupt
    if code != 0:
        raise SystemExit(f"cv-pipeline {' '.join(args)} failed (exit {code}; its output above says why)")


def _resolve(select: str, graph) -> set:
    """The asset keys of ``select`` (commas join selections, as in `dagster asset materialize --select`)."""
    import dagster as dg

    names = ", ".join(sorted(k.to_user_string() for k in graph.materializable_asset_keys))
    try:
        parts = [dg.AssetSelection.from_string(part.strip()) for part in select.split(",")]
        selection = parts[0]
        for part in parts[1:]:
            selection = selection | part
        keys = selection.resolve(graph)
    except dg.DagsterError as exc:
        reason = str(exc).split(". ")[0]
        raise SystemExit(f"{select!r} is not an asset selection here ({reason}).\nAssets: {names}\n\n{SELECTION_HELP}") from None
    if not keys:
        raise SystemExit(f"{select!r} selects no asset. Assets: {names}")
    return keys


def materialize(select: str, partition: str | None, profile: str | None, verbose: bool = False,
                config: str | None = None) -> None:
    """Materialise an asset selection (see SELECTION_HELP) with its checks.

    Partitioned assets run for ``partition``, or, without one, for each of the profile's partitions; the rest of
    the selection runs after them, once. ``config``: a run config file of per-asset settings (see _settings_file).
    """
    import dagster as dg

    dagster_home()
    p, defs = _definitions(profile)
    settings = _settings_file(config, defs)
    everything = [*defs.assets, *defs.asset_checks]
    instance = dg.DagsterInstance.get()
    _release_dead_runs(instance)
    tags = _cli_tags()
    graph = defs.resolve_asset_graph()
    keys = _resolve(select, graph)
    partitioned = {k for k in keys if graph.get(k).is_partitioned}
    if partition is not None and not partitioned:
        names = ", ".join(sorted(k.to_user_string() for k in graph.materializable_asset_keys if graph.get(k).is_partitioned))
        raise SystemExit(f"--partition {partition}: {select!r} has no partitioned asset (those are {names}); drop --partition")
    if partition is not None:
        _partition(partition)
        if partition not in p.demo_partitions:
            print(f"note: {partition} is not one of the {p.name} profile's partitions ({', '.join(p.demo_partitions)})",
                  file=sys.stderr, flush=True)

    def run(selection, key: str | None, what: str) -> None:
        run_settings = _settings_for(settings, selection.resolve(graph))
        _report(_run(lambda **kw: dg.materialize(everything, selection=selection, partition_key=key, instance=instance,
                                                 resources=defs.resources, tags=tags, **kw), what, verbose, run_settings))

    _note_unused(settings, keys)

    if not partitioned:
        run(dg.AssetSelection.assets(*keys), None, select)
        return
    # The partitioned assets run once per partition (--partition, else each of the profile's), then the rest of
    # the selection once: it reads every partition.
    from tqdm import tqdm

    names = " ".join(sorted(k.to_user_string() for k in partitioned))
    partition_keys = [partition] if partition else p.demo_partitions
    for key in tqdm(partition_keys, desc="partitions", unit="partition", disable=len(partition_keys) == 1):
        run(dg.AssetSelection.assets(*partitioned), key, f"{names} [{key}]")
    if keys - partitioned:
        run(dg.AssetSelection.assets(*(keys - partitioned)), None, " ".join(sorted(k.to_user_string() for k in keys - partitioned)))


def list_assets(profile: str | None) -> None:
    """The assets in graph order, which of them are partitioned, and the profile's partition keys."""
    p, defs = _definitions(profile)
    graph = defs.resolve_asset_graph()
    for key in graph.toposorted_asset_keys:
        node = graph.get(key)
        if not node.is_materializable:
            continue
        mark = " [partitioned]" if node.is_partitioned else ""
        print(f"{key.to_user_string()}{mark} - {node.description.splitlines()[0] if node.description else ''}")
    print(f"\npartitions of the {p.name} profile (--partition): {', '.join(p.demo_partitions)}")


def ask(question: str, adapter: str | None, device: str, max_new_tokens: int) -> None:
    from cv_pipeline.defs.resources import DataDirResource
    from cv_pipeline.evaluation.evaluator import resolve_device
    from cv_pipeline.evaluation.inference import stream_answer
    from cv_pipeline.profiles import default_data_dir

    try:
        resolve_device(device)  # --device cuda on a machine without one: said before anything else
    except RuntimeError as exc:
        raise SystemExit(f"--device: {exc}") from None
    data = default_data_dir()
    adapter_dir = None
    if adapter and adapter != "base":
        adapter_dir = settled_dir(data / "adapters" / adapter / "adapter")
        if not adapter_dir.exists():
            raise SystemExit(f"no adapter {adapter!r} at {adapter_dir}: train it first (`cv-pipeline demo`, or "
                             f"`cv-pipeline materialize \"*lora_adapter_{adapter}\"`)")
    base = DataDirResource(path=str(data)).base_model_dir()
    if not (base / "config.json").is_file():
        raise SystemExit(f"no base model at {base}: prepare it first (`cv-pipeline materialize base_model`)")
    for piece in stream_answer(question, base, adapter_dir, device=device, max_new_tokens=max_new_tokens):
        print(piece, end="", flush=True)
    print()


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be at most 65535, got {value}")
    return value


def _device(text: str) -> str:
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not auto, cpu, mps, cuda or cuda:N")
    return text


CONFIG_HELP = ("a YAML or JSON run config of per-asset settings, as the launchpad shows them, e.g. "
               "'ops: {lora_adapter_top_10k: {config: {per_device_batch: 4, grad_accum: 4}}}'")
_Help = argparse.RawDescriptionHelpFormatter  # the epilog's examples keep their lines; help texts name their defaults


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cv-pipeline", description=__doc__, formatter_class=_Help)
    parser.add_argument("--profile", default=None, help="demo or full (default: $CV_PIPELINE_PROFILE, else demo)")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="{demo,materialize,list,ask,ui}")
    # --profile is accepted after the subcommand too (`cv-pipeline demo --profile full`); given in both places,
    # the later one wins.
    profile_opt = argparse.ArgumentParser(add_help=False)
    profile_opt.add_argument("--profile", default=argparse.SUPPRESS, help="demo or full (as before the subcommand)")
    verbose = argparse.ArgumentParser(add_help=False, parents=[profile_opt])
    verbose.add_argument("-v", "--verbose", action="store_true",
                         help="also show Dagster's DEBUG events, and end a failure with Python's traceback instead of the step's message")
    d = sub.add_parser("demo", parents=[verbose], formatter_class=_Help,
                       help="run the whole pipeline on the profile (default: demo) and print the report path",
                       description="Collect and clean each partition, then train both adapters, evaluate and export.")
    d.add_argument("--partition", action="append", help="a partition key to collect; repeat for several (default: the profile's)")
    d.add_argument("--config", metavar="FILE", help=CONFIG_HELP)
    m = sub.add_parser("materialize", parents=[verbose], formatter_class=_Help, epilog=SELECTION_HELP,
                       help="materialise an asset selection (e.g. chat_dataset, \"chat_dataset*\"), optionally one partition",
                       description="Materialise the selected assets and run their checks, in this process.")
    m.add_argument("select", help="an asset selection (examples below)")
    m.add_argument("--partition", help="one partition key, e.g. 00000-04999 (default: each of the profile's partitions)")
    m.add_argument("--config", metavar="FILE", help=CONFIG_HELP)
    sub.add_parser("list", parents=[profile_opt], formatter_class=_Help, help="list the assets in graph order and the profile's partitions",
                   description="List the assets in graph order (which are partitioned) and the profile's partition keys.")
    a = sub.add_parser("ask", parents=[profile_opt], formatter_class=_Help, help="stream an answer from the base model or an adapter",
                       description="Stream an answer to QUESTION from a trained adapter (or the base model).")
    a.add_argument("question")
    a.add_argument("--adapter", default="top_10k", choices=[*ADAPTER_SPECS, "base"],
                   help="an adapter, or the base model (default: top_10k)")
    a.add_argument("--device", default="auto", type=_device, help="auto, cpu, mps, cuda or cuda:N (default: auto)")
    a.add_argument("--max-new-tokens", type=_positive_int, default=256, help="length cap of the answer (default: 256)")
    ui = sub.add_parser("ui", parents=[profile_opt], formatter_class=_Help,
                        help="start the Dagster UI and daemon (dagster dev) on 127.0.0.1 (port 3000 unless --port)",
                        description="Start the Dagster webserver and daemon (dagster dev) on 127.0.0.1, with DAGSTER_HOME "
                        "(default ./.dagster_home) and the data folder this command would use. Ctrl-C stops both.")
    ui.add_argument("--port", type=_port, default=3000, help="port of the web UI (default: 3000)")
    args = parser.parse_args(argv)
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        # Started in the background by a script, which ignores SIGINT for its jobs: Dagster's in-process
        # execution hands SIGTERM to SIGINT's handler, so `kill` would be ignored too. Stop on both.
        signal.signal(signal.SIGINT, signal.default_int_handler)

    try:
        return _dispatch(args)
    except BaseException as exc:  # Ctrl-C or SIGTERM where no step turned it into a failure of its own
        if not _interrupted(exc) or getattr(args, "verbose", False):
            raise
        print("\ninterrupted", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    if args.cmd == "demo":
        run_pipeline(args.profile, args.partition, args.verbose, args.config)
    elif args.cmd == "materialize":
        materialize(args.select, args.partition, args.profile, args.verbose, args.config)
    elif args.cmd == "list":
        list_assets(args.profile)
    elif args.cmd == "ask":
        _profile(args.profile)  # checked, though `ask` reads the data folder ($CV_PIPELINE_DATA_DIR), not the profile
        ask(args.question, args.adapter, args.device, args.max_new_tokens)
    elif args.cmd == "ui":
        import dagster as dg

        from cv_pipeline.profiles import default_data_dir

        _definitions(args.profile)  # a misspelt profile or setting is named here, not as a broken code location in the UI
        dagster_home()
        with dg.DagsterInstance.get() as instance:  # before the UI's launches queue behind a killed command's slots
            _release_dead_runs(instance)
        # dagster dev runs in the repository: pin the data folder this command would use (resolved here).
        os.environ["CV_PIPELINE_DATA_DIR"] = str(default_data_dir())
        return subprocess.call([sys.executable, "-m", "dagster", "dev", "-w", str(REPO_ROOT / "workspace.yaml"),
                                "-h", "127.0.0.1", "-p", str(args.port)], cwd=REPO_ROOT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
