"""Celery tasks of the labelling app: each takes primary keys and calls one service."""

from __future__ import annotations

from celery import shared_task

from labeling.services.aggregation import execute_run


@shared_task(bind=True)
def aggregate_project_task(self, run_id: int) -> str | None:
    """Carry out a queued aggregation run; a run already claimed or finished is left alone.

    Failures are recorded on the run by the service, so the task itself does not raise.
    """
    run = execute_run(run_id)
    return run.status if run is not None else None
