"""Start the real Dagster webserver and daemon on loopback for tests, and talk GraphQL to them."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DagsterServer:
    """`dagster-webserver` + `dagster-daemon` against a temporary DAGSTER_HOME and data directory."""

    def __init__(self, home: Path, data_dir: Path, profile: str = "demo", extra_env: dict | None = None):
        self.home, self.data_dir, self.port = home, data_dir, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        home.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
        self.env = {
            **os.environ,
            "DAGSTER_HOME": str(home),
            "CV_PIPELINE_DATA_DIR": str(data_dir),
            "CV_PIPELINE_PROFILE": profile,
            **(extra_env or {}),
        }
        self.procs: list[subprocess.Popen] = []
        self.logs = home.parent / "server_logs"  # outside DAGSTER_HOME, which Dagster manages
        self.logs.mkdir(parents=True, exist_ok=True)

    def _start(self, name: str, *args: str) -> None:
        log = open(self.logs / f"{name}.log", "wb")
        self.procs.append(subprocess.Popen([str(BIN / name), *args], cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT))

    def __enter__(self) -> DagsterServer:
        ws = str(REPO / "workspace.yaml")
        self._start("dagster-webserver", "-w", ws, "-h", "127.0.0.1", "-p", str(self.port))
        self._start("dagster-daemon", "run", "-w", ws)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/server_info", timeout=2).status_code == 200 and self.location_loaded():
                    return self
            except httpx.HTTPError:
                pass
            if any(p.poll() is not None for p in self.procs):
                break
            time.sleep(1)
        self.__exit__()
        raise RuntimeError(f"Dagster webserver did not come up; logs in {self.logs}: " + self.tail_logs())

    def __exit__(self, *exc) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()

    def tail_logs(self, n: int = 3000) -> str:
        return "\n".join(f"--- {f.name}\n{f.read_text(errors='replace')[-n:]}" for f in sorted(self.logs.glob("*.log")))

    def gql(self, query: str, variables: dict | None = None) -> dict:
        r = httpx.post(f"{self.url}/graphql", json={"query": query, "variables": variables or {}}, timeout=60)
        r.raise_for_status()
        body = r.json()
        if body.get("errors"):
            raise RuntimeError(body["errors"])
        return body["data"]

    def location_loaded(self) -> bool:
        data = self.gql("{ workspaceOrError { ... on Workspace { locationEntries { name locationOrLoadError { __typename } } } } }")
        entries = data["workspaceOrError"]["locationEntries"]
        return bool(entries) and entries[0]["locationOrLoadError"]["__typename"] == "RepositoryLocation"

    def location_name(self) -> str:
        data = self.gql("{ workspaceOrError { ... on Workspace { locationEntries { name } } } }")
        return data["workspaceOrError"]["locationEntries"][0]["name"]

    def launch_job(self, job: str, partition: str | None = None, run_config: dict | None = None) -> str:
        tags = [{"key": "dagster/partition", "value": partition}] if partition else []
        params = {
            "selector": {"repositoryLocationName": self.location_name(), "repositoryName": "__repository__", "jobName": job},
            "runConfigData": run_config or {},
            "executionMetadata": {"tags": tags},
        }
        data = self.gql(
            """mutation($p: ExecutionParams!) { launchRun(executionParams: $p) {
                 __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message }
                 ... on RunConfigValidationInvalid { errors { message } } } }""",
            {"p": params},
        )["launchRun"]
        if data["__typename"] != "LaunchRunSuccess":
            raise RuntimeError(f"launchRun failed: {data}")
        return data["run"]["runId"]

    def run_status(self, run_id: str) -> str:
        return self.gql("query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }", {"id": run_id})["runOrError"]["status"]

    def wait_for_run(self, run_id: str, timeout: float = 900) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.run_status(run_id)
            if status in ("SUCCESS", "FAILURE", "CANCELED"):
                return status
            time.sleep(2)
        raise TimeoutError(f"run {run_id} still {status} after {timeout}s; logs: {self.tail_logs()}")

    def latest_metadata(self, asset: str) -> dict:
        data = self.gql(
            """query($k: AssetKeyInput!) { assetOrError(assetKey: $k) { ... on Asset { assetMaterializations(limit: 1) {
                 partition metadataEntries { label __typename
                   ... on IntMetadataEntry { intValue } ... on FloatMetadataEntry { floatValue }
                   ... on TextMetadataEntry { text } ... on PathMetadataEntry { path } ... on MarkdownMetadataEntry { mdStr } } } } } }""",
            {"k": {"path": [asset]}},
        )["assetOrError"]
        mats = data.get("assetMaterializations") or []
        if not mats:
            return {}
        out = {}
        for e in mats[0]["metadataEntries"]:
            out[e["label"]] = next((e[k] for k in ("intValue", "floatValue", "text", "path", "mdStr") if k in e), None)
        return out
