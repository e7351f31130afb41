"""A run someone stops stays stopped.

Dagster answers an interrupt inside a step (Ctrl-C or `kill` of `cv-pipeline`, *Terminate* in the UI) with
the step's RetryPolicy, as it would a preempted worker: collection would start again 30 s later and
training 10 s later. For the steps with a RetryPolicy, an interrupt becomes a failure that is not retried.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import dagster as dg


@contextlib.contextmanager
def stop_when_interrupted(kept: str) -> Iterator[None]:
    """Turn an interrupt of the step into a dg.Failure its RetryPolicy leaves alone; ``kept`` says what survives."""
    from dagster._core.errors import DagsterExecutionInterruptedError

    try:
        yield
    except (DagsterExecutionInterruptedError, KeyboardInterrupt):
        raise dg.Failure(
            description=f"interrupted (the run was stopped, or the process got SIGINT/SIGTERM), so not retried; {kept}",
            allow_retries=False,
        ) from None
