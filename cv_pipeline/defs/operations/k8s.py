"""Kubernetes placement: GPU requests on training/evaluation steps, CPU nodes for collection and curation.

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

CPU_STEP = {
    "dagster-k8s/config": {
        "container_config": {"resources": {"requests": {"cpu": "1", "memory": "4Gi"}, "limits": {"memory": "8Gi"}}},
        "pod_spec_config": {"node_selector": {"cv-pipeline/node-pool": "cpu"}},
    }
}


def executor():
    """The k8s job executor when asked for, else Dagster's default (multiprocess)."""
    if os.environ.get("CV_PIPELINE_EXECUTOR") != "k8s":
        return None
    from dagster_k8s import k8s_job_executor

    return k8s_job_executor.configured({"max_concurrent": 4})
