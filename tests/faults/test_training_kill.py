"""Faults survived end to end: a training run's pool process killed mid-run (``kill -9``), then
its whole worker.

A real Celery worker (prefork, one child, as ``worker-gpu`` runs) on the real broker (Redis in
CI) and database trains a tiny run. Once epoch 2 is recorded the test kills the pool child that
holds the run, never the parent: the parent redelivers the message (``reject_on_worker_lost``)
to its replacement child, which finds the holder dead, records the interruption and trains on
from the last checkpoint, with no person involved.

Once the replacement child has recorded an epoch of its own, the whole worker is killed (parent
first, so nothing redelivers the run; Redis would only after its visibility timeout). Beat's
sweep fails the run with the reason once its holder is dead and silent for ``STALE_AFTER``, a
person resumes it from its checkpoint (the API's resume), and a fresh worker finishes it.

The run must end as an uninterrupted one does: succeeded, every epoch exactly once, its report
made; its page lists both interruptions and where each resumed. One run serves both faults, so
the suite starts two workers instead of three (each start imports torch: the test's cost).
"""

from __future__ import annotations

import json
import os
import signal
import time
from datetime import datetime, timedelta

import pytest
import redis
from django.conf import settings as django_settings
from django.test import Client
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
    pytest.mark.timeout(300),  # about a minute and a half on an idle machine
]

EPOCHS = 6
SWEEP_SECONDS = 30


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


def _pid(holder: str) -> int:
    return int(holder.rsplit("/", 2)[1])


def _resumed_on_its_own(run: TrainingRun) -> bool:
    """The first interruption resumed, and the new holder recorded an epoch after it."""
    first = run.interruptions[0] if run.interruptions else None
    return bool(first and first["resumed_at"] and run.current_epoch > first["epoch"])


def _forget_unacknowledged(task_id: str) -> int:
    """Drop the dead worker's unacknowledged message of ``task_id`` from a Redis broker: Redis
    would hand it out again after its visibility timeout (an hour), when this database's run ids
    may name another test's run. Returns how many were dropped."""
    url = django_settings.CELERY_BROKER_URL
    if not url.startswith("redis"):
        return 0
    broker = redis.Redis.from_url(url)
    dropped = 0
    for tag, payload in broker.hgetall("unacked").items():
        if json.loads(payload)[0]["headers"].get("id") == task_id:
            dropped += broker.hdel("unacked", tag)
            broker.zrem("unacked_index", tag)
    return dropped


def test_a_killed_worker_process_then_a_vanished_worker_lose_no_epoch(
    project, settings, tmp_path, monkeypatch
):
    monkeypatch.setattr(services, "STALE_AFTER", timedelta(seconds=2))
    make_training_set(project, n_train=16, n_holdout=4)
    admin = UserFactory(username="launcher", is_staff=True)
    node = f"test-training-{os.getpid()}@{os.uname().nodename}"

    with worker_process(settings, tmp_path / "first", pool="prefork") as (process, log_path):
        run = services.launch_run(
            project, admin, label_source="expert", **{**TINY, "epochs": EPOCHS}
        )
        # 1. The pool child dies; the parent redelivers and its new child takes the run over.
        run = _wait_for(run, process, log_path, lambda r: r.current_epoch >= 2, "epoch 2")
        first_holder, killed_epoch = run.holder, run.current_epoch
        child = _pid(first_holder)
        assert child != process.pid  # the pool child, not the worker
        os.kill(child, signal.SIGKILL)
        killed = timezone.now()
        run = _wait_for(run, process, log_path, _resumed_on_its_own, "the takeover")
        taken_over = datetime.fromisoformat(run.interruptions[0]["resumed_at"])
        second_holder = run.holder
        assert second_holder != first_holder and _pid(second_holder) != process.pid

        # 2. The whole worker dies: nothing redelivers the run.
        os.kill(process.pid, signal.SIGKILL)
        os.kill(_pid(second_holder), signal.SIGKILL)
        vanished = timezone.now()
        process.wait(timeout=10)

    run.refresh_from_db()
    _forget_unacknowledged(run.celery_task_id)
    vanished_epoch = run.current_epoch
    assert run.status == "running" and vanished_epoch < EPOCHS, "nothing was left to resume"
    deadline = time.monotonic() + SWEEP_SECONDS
    while not sweep_training_runs.apply().get():
        assert time.monotonic() < deadline, "the sweep never failed the orphaned run"
        time.sleep(0.5)
    swept = timezone.now()
    run.refresh_from_db()
    assert run.status == "failed" and "no worker took the run up again" in run.failure_reason
    assert f"resume it from its checkpoint after epoch {vanished_epoch}" in run.failure_reason
    assert run.interruptions[1]["resumed_at"] is None  # the page says 'not resumed'

    api = APIClient()
    api.force_authenticate(admin)
    with worker_process(settings, tmp_path / "second", pool="prefork") as (process, log_path):
        assert api.post(f"/api/training-runs/{run.pk}/resume/").status_code == 200
        run = _wait_for(run, process, log_path, lambda r: r.is_finished, "the end")
    finished = timezone.now()

    # As an uninterrupted run ends: succeeded, every epoch once, the report made.
    assert run.status == "succeeded", f"{run.failure_reason}\n{tail(log_path)}"
    assert run.current_epoch == EPOCHS and run.progress == 1.0
    epochs = list(EpochMetric.objects.filter(run=run).values_list("epoch", flat=True))
    assert epochs == list(range(1, EPOCHS + 1))
    assert run.evaluation.n_items == 4

    first, second = run.interruptions
    assert first["epoch"] >= killed_epoch >= 2
    assert first["resumed_from_epoch"] in (first["epoch"], first["epoch"] + 1)
    assert first["worker"] == f"{node} pid {child}"
    assert first["resumed_by"] == f"{node} pid {_pid(second_holder)}"
    assert second["worker"] == first["resumed_by"] and second["epoch"] == vanished_epoch
    assert second["resumed_from_epoch"] in (vanished_epoch, vanished_epoch + 1)
    assert second["resumed_by"] not in (first["worker"], second["worker"])

    # The run's page says so (the API carries the same rows).
    page = Client()
    page.force_login(admin)
    html = page.get(f"/runs/{run.pk}/").content.decode()
    for row in (first, second):
        assert f"Interrupted at epoch {row['epoch']}: {row['worker']} stopped" in html
        assert (f"resumed from the checkpoint of epoch {row['resumed_from_epoch']} on "
                f"{row['resumed_by']}") in html
    assert api.get(f"/api/training-runs/{run.pk}/").json()["interruptions"] == [first, second]

    resumed = EpochMetric.objects.get(run=run, epoch=first["resumed_from_epoch"] + 1)
    print(
        f"\npool child pid {child} killed after epoch {killed_epoch}: taken over "
        f"{(taken_over - killed).total_seconds():.2f} s after the kill from the checkpoint of "
        f"epoch {first['resumed_from_epoch']}, its next epoch recorded "
        f"{(resumed.created_at - killed).total_seconds():.2f} s after; whole worker killed "
        f"after epoch {vanished_epoch}: swept to failed {(swept - vanished).total_seconds():.2f} "
        f"s after (STALE_AFTER 2 s here, {settings.QUORUM_TRAINING_STALE_MINUTES:g} min + beat's "
        f"60 s in production), resumed from epoch {second['resumed_from_epoch']}; all "
        f"{EPOCHS} epochs once, succeeded {(finished - killed).total_seconds():.2f} s after the "
        f"first kill"
    )
