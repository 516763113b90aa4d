"""Celery tasks of the training app: training on the ``gpu`` queue (``CELERY_TASK_ROUTES``), the
sweep for runs that dead workers left behind on ``default``, every minute (Celery beat)."""

from __future__ import annotations

from celery import shared_task
from celery.signals import worker_init, worker_ready

from training import devices, services


@worker_init.connect
def preload_engine(**kwargs) -> None:
    """Import torch and the engine in the worker before its pool forks: each pool child (and the
    one that replaces a killed child and takes its run over) starts with them loaded. The web
    process, which imports only the engine's light modules, never loads torch."""
    import training.engine as engine

    for name in engine.__all__:
        getattr(engine, name)


@worker_ready.connect
def report_training_device(sender, **kwargs) -> None:
    """A worker on the ``gpu`` queue tells the site its device and timm models (training.devices)."""
    devices.report_in_background(list(sender.app.amqp.queues.consume_from or {}))


@shared_task(bind=True, acks_late=True, reject_on_worker_lost=True)
def run_training(self, run_id: int) -> None:
    """Train one run. ``acks_late`` + ``reject_on_worker_lost``: if the worker process dies
    mid-run the message is redelivered, and the worker that gets it finds the holder dead and
    resumes the run from its last checkpoint."""
    services.execute_run(run_id, task_id=self.request.id or "", worker=self.request.hostname or "")


@shared_task
def sweep_training_runs() -> list[int]:
    """Fail (resumably) the running runs whose worker died and that no worker took up again."""
    return services.sweep_runs()
