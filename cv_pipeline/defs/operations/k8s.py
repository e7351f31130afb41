"""Kubernetes placement of every step: GPUs for training and evaluation, CPU nodes for the rest.

The tags are inert on one machine; with `CV_PIPELINE_EXECUTOR=k8s` each step runs as its own pod
(`k8s_job_executor`) and these tags become the pod's resources and node selection.
"""

from __future__ import annotations

import os

GPU_STEP = {
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
    """The k8s job executor when asked for, else Dagster's default (multiprocess)."""
    if os.environ.get("CV_PIPELINE_EXECUTOR") != "k8s":
        return None
    from dagster_k8s import k8s_job_executor

    return k8s_job_executor.configured({"max_concurrent": 4})
