"""A run someone stops stays stopped; a preempted worker still retries.

Dagster answers an interrupt inside a step with the step's RetryPolicy, as is right for a worker that was
preempted (a Kubernetes node drained: training then resumes from its last checkpoint). When a person stopped
the run, though (*Terminate* in the UI, Ctrl-C or `kill` of `cv-pipeline`), collection would start again 30 s
later and training 10 s later. So for the steps with a RetryPolicy an interrupt becomes a failure that is not
retried when the run is being cancelled, or when the command line started it (its runs carry STOP_ON_INTERRUPT).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import dagster as dg

# Run tag of the runs `cv-pipeline` executes in its own process: an interrupt there comes from the person at it.
STOP_ON_INTERRUPT = "cv_pipeline/stop_on_interrupt"


def _stopped_by_a_person(context: dg.AssetExecutionContext) -> bool:
    if context.run.tags.get(STOP_ON_INTERRUPT) == "true":
        return True
    run = context.instance.get_run_by_id(context.run_id)
    return run is not None and run.status in (dg.DagsterRunStatus.CANCELING, dg.DagsterRunStatus.CANCELED)


@contextlib.contextmanager
def stop_when_interrupted(context: dg.AssetExecutionContext, kept: str) -> Iterator[None]:
    """Turn an interrupt of the step into a dg.Failure its RetryPolicy leaves alone when a person stopped the
    run; otherwise let it through to the RetryPolicy. ``kept`` says what survives for the next run."""
    from dagster._core.errors import DagsterExecutionInterruptedError

    try:
        yield
    except (DagsterExecutionInterruptedError, KeyboardInterrupt):
        if not _stopped_by_a_person(context):
            raise
        raise dg.Failure(
            description=f"interrupted (the run was stopped, or the process got SIGINT/SIGTERM), so not retried; {kept}",
            allow_retries=False,
        ) from None
