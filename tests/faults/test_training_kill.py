"""Faults survived end to end: a training worker's pool process killed mid-run (``kill -9``).

A real Celery worker (prefork, one child, as ``worker-gpu`` runs) on the real broker (Redis in
CI) and database trains a tiny run; once epoch 2 is recorded the test kills the pool child that
holds the run, never the parent. The parent redelivers the message (``reject_on_worker_lost``)
to its replacement child, which finds the holder dead, records the interruption and trains on
from the last checkpoint. The run must end as an uninterrupted one does: succeeded, every epoch
exactly once.

If the whole worker dies (parent and child), nothing redelivers the run soon (Redis only after
its visibility timeout); beat's sweep fails it with the reason once its holder is dead and
silent for ``STALE_AFTER``, and a person resumes it from its checkpoint.
"""

from __future__ import annotations

import os
import signal
import time
from datetime import datetime, timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from tests.factories import UserFactory
from tests.training.test_celery_worker import tail, worker_process
from tests.training.test_runs import TINY, make_training_set
from training import services
from training.models import EpochMetric, TrainingRun
from training.tasks import sweep_training_runs

pytestmark = [
    pytest.mark.celery_worker,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(300)  # about a minute on an idle machine,
]

EPOCHS = 8


def _wait_for(run: TrainingRun, process, log_path, done, what: str) -> TrainingRun:
    while True:
        run.refresh_from_db()
        if done(run):
            return run
        assert process.poll() is None, f"the worker exited early:\n{tail(log_path)}"
        assert not run.is_finished or what == "the end", (
            f"{run.status} before {what}: {run.failure_reason}\n{tail(log_path)}"
        )
        time.sleep(0.05)


def test_a_run_whose_worker_process_is_killed_finishes_all_its_epochs(
    project, settings, tmp_path
):
    make_training_set(project, n_train=16, n_holdout=4)
    admin = UserFactory(username="launcher", is_staff=True)
    with worker_process(settings, tmp_path, pool="prefork") as (process, log_path):
        run = services.launch_run(
            project, admin, label_source="expert", **{**TINY, "epochs": EPOCHS}
        )
        run = _wait_for(run, process, log_path, lambda r: r.current_epoch >= 2, "epoch 2")
        first_holder, killed_epoch = run.holder, run.current_epoch
        pid = int(first_holder.rsplit("/", 2)[1])
        assert pid != process.pid  # the pool child, not the worker
        os.kill(pid, signal.SIGKILL)
        killed = timezone.now()
        run = _wait_for(run, process, log_path, lambda r: r.is_finished, "the end")
        finished = timezone.now()

    assert run.status == "succeeded", f"{run.failure_reason}\n{tail(log_path)}"
    assert run.current_epoch == EPOCHS and run.progress == 1.0
    epochs = list(EpochMetric.objects.filter(run=run).values_list("epoch", flat=True))
    assert epochs == list(range(1, EPOCHS + 1))
    [interruption] = run.interruptions
    assert interruption["epoch"] >= killed_epoch >= 2
    assert interruption["resumed_from_epoch"] in (interruption["epoch"], interruption["epoch"] + 1)
    assert interruption["worker"] == f"test-training-{os.getpid()}@{os.uname().nodename} pid {pid}"
    assert interruption["resumed_by"] != interruption["worker"]
    assert run.evaluation.n_items == 4
    taken_over = datetime.fromisoformat(interruption["resumed_at"])
    resumed = EpochMetric.objects.get(run=run, epoch=interruption["resumed_from_epoch"] + 1)
    print(
        f"\nkilled pid {pid} after epoch {killed_epoch}; taken over "
        f"{(taken_over - killed).total_seconds():.2f} s after the kill, from the checkpoint of "
        f"epoch {interruption['resumed_from_epoch']}; the next epoch recorded "
        f"{(resumed.created_at - killed).total_seconds():.2f} s after, all {EPOCHS} epochs "
        f"{(finished - killed).total_seconds():.2f} s after"
    )


def test_a_run_whose_whole_worker_vanished_is_swept_to_failed_then_resumed(
    project, settings, tmp_path, monkeypatch
):
    monkeypatch.setattr(services, "STALE_AFTER", timedelta(seconds=2))
    make_training_set(project, n_train=16, n_holdout=4)
    admin = UserFactory(username="launcher", is_staff=True)
    with worker_process(settings, tmp_path / "first", pool="prefork") as (process, log_path):
        run = services.launch_run(project, admin, label_source="expert", **{**TINY, "epochs": 4})
        run = _wait_for(run, process, log_path, lambda r: r.current_epoch >= 1, "epoch 1")
        child = int(run.holder.rsplit("/", 2)[1])
        os.kill(process.pid, signal.SIGKILL)  # the worker first, so it cannot redeliver
        os.kill(child, signal.SIGKILL)
        process.wait(timeout=10)

    deadline = time.monotonic() + 30
    while not sweep_training_runs.apply().get():
        assert time.monotonic() < deadline, "the sweep never failed the orphaned run"
        time.sleep(0.5)
    run.refresh_from_db()
    assert run.status == "failed" and "no worker took the run up again" in run.failure_reason
    assert f"resume it from its checkpoint after epoch {run.current_epoch}" in run.failure_reason

    api = APIClient()
    api.force_authenticate(admin)
    with worker_process(settings, tmp_path / "second", pool="prefork") as (process, log_path):
        assert api.post(f"/api/training-runs/{run.pk}/resume/").status_code == 200
        run = _wait_for(run, process, log_path, lambda r: r.is_finished, "the end")
    assert run.status == "succeeded", f"{run.failure_reason}\n{tail(log_path)}"
    assert list(run.epoch_metrics.values_list("epoch", flat=True)) == [1, 2, 3, 4]
    [interruption] = run.interruptions
    assert interruption["resumed_at"] and interruption["resumed_from_epoch"] >= 1
