"""`cv-pipeline`: what people do without the UI (run the demo, materialise a stage, ask, export, open the UI)."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from cv_pipeline.partitions import parse_partition_key
from cv_pipeline.training.config import ADAPTER_SPECS

REPO_ROOT = Path(__file__).resolve().parents[1]


def dagster_home() -> Path:
    """``$DAGSTER_HOME`` or ``./.dagster_home``, holding a copy of the project's dagster.yaml."""
    home = Path(os.environ.get("DAGSTER_HOME") or ".dagster_home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    src = REPO_ROOT / "dagster.yaml"
    if src.exists() and not (home / "dagster.yaml").exists():
        shutil.copy(src, home / "dagster.yaml")
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def _definitions(profile: str | None):
    if profile:
        os.environ["CV_PIPELINE_PROFILE"] = profile
    from cv_pipeline.defs.project import build_definitions
    from cv_pipeline.profiles import get_profile

    p = get_profile(profile)
    return p, build_definitions(p)


def _cli_tags() -> dict[str, str]:
    """Tags of the runs this command executes in its own process: Ctrl-C or `kill` stops them, not retried."""
    from cv_pipeline.defs.operations.interrupts import STOP_ON_INTERRUPT

    return {STOP_ON_INTERRUPT: "true"}


def run_pipeline(profile: str | None = None, partitions: list[str] | None = None) -> Path:
    """The main job: collect+clean each partition (one run each), then train, evaluate and export."""
    import dagster as dg
    from tqdm import tqdm

    dagster_home()
    p, defs = _definitions(profile)
    instance = dg.DagsterInstance.get()
    keys = partitions or p.demo_partitions
    for key in keys:
        try:
            parse_partition_key(key)
        except ValueError as exc:
            raise SystemExit(f"--partition: {exc}") from None
    collect = defs.resolve_job_def("collect_and_clean")
    tags = _cli_tags()
    for key in tqdm(keys, desc="collect+clean partitions", unit="partition"):
        collect.execute_in_process(instance=instance, partition_key=key, raise_on_error=True, tags=tags)
    print("training both adapters, then evaluating and exporting (progress in the Dagster logs)...", flush=True)
    defs.resolve_job_def("train_and_evaluate").execute_in_process(instance=instance, raise_on_error=True, tags=tags)
    from cv_pipeline.profiles import default_data_dir

    report = default_data_dir() / "evaluation" / "report.html"
    print(f"\nDone. Report: {report}\n         and: {report.with_suffix('.md')}")
    return report


def materialize(select: str, partition: str | None, profile: str | None) -> None:
    """Materialise a Dagster asset selection (e.g. `chat_dataset`, `chat_dataset+`, `*adapter_evaluation`) with its checks.

    Partitioned assets run for ``partition``, or, without one, for each of the profile's partitions.
    """
    import dagster as dg

    dagster_home()
    p, defs = _definitions(profile)
    everything = [*defs.assets, *defs.asset_checks]
    instance = dg.DagsterInstance.get()
    tags = _cli_tags()
    graph = defs.resolve_asset_graph()
    keys = dg.AssetSelection.from_string(select).resolve(graph)
    partitioned = {k for k in keys if graph.get(k).is_partitioned}
    if partition is None and partitioned:
        # No --partition: one run per partition of the profile for the partitioned assets, then the rest of
        # the selection once (it reads every partition).
        from tqdm import tqdm

        for key in tqdm(p.demo_partitions, desc="partitions", unit="partition"):
            dg.materialize(everything, selection=dg.AssetSelection.assets(*partitioned), partition_key=key,
                           instance=instance, resources=defs.resources, tags=tags)
        if keys - partitioned:
            dg.materialize(everything, selection=dg.AssetSelection.assets(*(keys - partitioned)),
                           instance=instance, resources=defs.resources, tags=tags)
        return
    if partition is not None and not partitioned:
        names = ", ".join(sorted(k.to_user_string() for k in graph.materializable_asset_keys if graph.get(k).is_partitioned))
        raise SystemExit(f"--partition {partition}: {select!r} has no partitioned asset (those are {names}); drop --partition")
    dg.materialize(everything, selection=select, partition_key=partition, instance=instance, resources=defs.resources, tags=tags)


def ask(question: str, adapter: str | None, device: str, max_new_tokens: int) -> None:
    from cv_pipeline.defs.resources import DataDirResource
    from cv_pipeline.evaluation.inference import stream_answer
    from cv_pipeline.profiles import default_data_dir

    data = default_data_dir()
    adapter_dir = None
    if adapter and adapter != "base":
        adapter_dir = data / "adapters" / adapter / "adapter"
        if not adapter_dir.exists():
            raise SystemExit(f"no adapter {adapter!r} at {adapter_dir}: run the pipeline (`make demo`) first")
    for piece in stream_answer(question, DataDirResource(path=str(data)).base_model_dir(), adapter_dir, device=device, max_new_tokens=max_new_tokens):
        print(piece, end="", flush=True)
    print()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cv-pipeline", description=__doc__)
    parser.add_argument("--profile", default=None, help="demo (default) or full; or set CV_PIPELINE_PROFILE")
    sub = parser.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="run the whole pipeline on the profile (default: demo) and print the report path")
    d.add_argument("--partition", action="append", help="partition key(s) to collect (default: the profile's)")
    m = sub.add_parser("materialize", help="materialise a Dagster asset selection (e.g. chat_dataset+), optionally one partition")
    m.add_argument("select")
    m.add_argument("--partition")
    sub.add_parser("list", help="list the assets")
    a = sub.add_parser("ask", help="stream an answer from the base model or an adapter")
    a.add_argument("question")
    a.add_argument("--adapter", default="top_10k", choices=[*ADAPTER_SPECS, "base"], help="an adapter, or the base model")
    a.add_argument("--device", default="auto")
    a.add_argument("--max-new-tokens", type=int, default=256)
    sub.add_parser("ui", help="start the Dagster UI and daemon (dagster dev) on 127.0.0.1:3000")
    args = parser.parse_args(argv)
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        # Started in the background by a script, which ignores SIGINT for its jobs: Dagster's in-process
        # execution hands SIGTERM to SIGINT's handler, so `kill` would be ignored too. Stop on both.
        signal.signal(signal.SIGINT, signal.default_int_handler)

    if args.cmd == "demo":
        run_pipeline(args.profile, args.partition)
    elif args.cmd == "materialize":
        materialize(args.select, args.partition, args.profile)
    elif args.cmd == "list":
        _, defs = _definitions(args.profile)
        for spec in defs.resolve_all_asset_specs():
            print(spec.key.to_user_string(), "-", (spec.description or "").split("\n")[0])
    elif args.cmd == "ask":
        ask(args.question, args.adapter, args.device, args.max_new_tokens)
    elif args.cmd == "ui":
        from cv_pipeline.profiles import default_data_dir

        dagster_home()
        if args.profile:
            os.environ["CV_PIPELINE_PROFILE"] = args.profile
        # dagster dev runs in the repository: pin the data folder this command would use (resolved here).
        os.environ["CV_PIPELINE_DATA_DIR"] = str(default_data_dir())
        return subprocess.call([sys.executable, "-m", "dagster", "dev", "-w", str(REPO_ROOT / "workspace.yaml"), "-h", "127.0.0.1"], cwd=REPO_ROOT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
