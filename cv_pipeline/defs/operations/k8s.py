"""Kubernetes placement of every step: GPUs for training and evaluation, CPU nodes for the rest.

The tags are inert on one machine; with `CV_PIPELINE_EXECUTOR=k8s` each step runs as its own pod
(`k8s_job_executor`) and these tags become the pod's resources and node selection.
"""

from __future__ import annotations

import os

# One machine has one GPU: the local executor runs at most one step with this tag at a time in a run.
ONE_GPU_TAG = "cv_pipeline/gpu"

GPU_STEP = {
    ONE_GPU_TAG: "1",
    "dagster-k8s/config": {
        "container_config": {
            "resources": {
                "requests": {"cpu": "8", "memory": "48Gi", "nvidia.com/gpu": "1"},
                "limits": {"memory": "64Gi", "nvidia.com/gpu": "1"},
            }
        },
        "pod_spec_config": {
            "node_selector": {"cv-pipeline/node-pool": "gpu"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        },
    }
}


def _cpu_step(cpu: str, memory: str, limit: str) -> dict:
    return {
        "dagster-k8s/config": {
            "container_config": {"resources": {"requests": {"cpu": cpu, "memory": memory}, "limits": {"memory": limit}}},
            "pod_spec_config": {"node_selector": {"cv-pipeline/node-pool": "cpu"}},
        }
    }


# Collection, cleaning, the chat dataset, the base model's download (or conversion) and hash.
CPU_STEP = _cpu_step("1", "4Gi", "8Gi")
# Export merges each adapter into 16-bit base weights on the CPU: a 3B model is 6.4 GB, held twice while saving.
EXPORT_STEP = _cpu_step("2", "16Gi", "24Gi")


def executor():
    """The k8s job executor when asked for (a pod per step, each GPU step given a GPU of its own), else Dagster's
    default (a process per step, or in-process for `execute_in_process`), where the GPU steps of one run take
    turns by their tag. The instance's `gpu` pool (dagster.yaml) does that across runs, and within one too, but
    only where DAGSTER_HOME holds the project's dagster.yaml: this holds whatever instance runs it."""
    import dagster as dg

    choice = os.environ.get("CV_PIPELINE_EXECUTOR", "").strip()
    if choice not in ("", "local", "k8s"):  # a misspelling would otherwise run every step locally, unnoticed
        from cv_pipeline.profiles import SettingError

        raise SettingError(f"CV_PIPELINE_EXECUTOR={choice!r}: use 'k8s' (a pod per step) or 'local' (the default; or unset it)")
    if choice != "k8s":
        return dg.multi_or_in_process_executor.configured(
            {"multiprocess": {"tag_concurrency_limits": [{"key": ONE_GPU_TAG, "limit": 1}]}}
        )
    from dagster_k8s import k8s_job_executor

    return k8s_job_executor.configured({"max_concurrent": 4})
