"""Celery tasks of the training app; ``CELERY_TASK_ROUTES`` sends them to the ``gpu`` queue."""

from __future__ import annotations

from celery import shared_task

from training import services


@shared_task(bind=True, acks_late=True, reject_on_worker_lost=True)
def run_training(self, run_id: int) -> None:
    """Train one run. ``acks_late`` + ``reject_on_worker_lost``: if the worker dies mid-run the
    message is redelivered and the run resumes from its last checkpoint."""
    services.execute_run(run_id, task_id=self.request.id or "")
