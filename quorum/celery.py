"""The Celery application; workers start with ``celery -A quorum worker -Q default`` (or ``gpu``),
and one ``celery -A quorum beat`` (or a worker started with ``-B``) runs the periodic tasks."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "quorum.settings")

app = Celery("quorum")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

app.conf.beat_schedule = {
    # a run whose worker vanished without its message being redelivered is failed, resumably
    "sweep-training-runs": {"task": "training.tasks.sweep_training_runs", "schedule": 60.0},
}
