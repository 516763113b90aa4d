"""Building a run's data from the database, and the run services (launch, cancel, resume, stale).

``make_training_set`` is shared with the other training test modules: a tiny two-class project
(16 px images, dark = normal, bright = pneumonia) with crowd votes, expert answers and a hold-out.
"""

from __future__ import annotations

import hashlib
import io
from datetime import timedelta

import numpy as np
import pytest
from django.core.files.base import ContentFile
from django.utils import timezone
from PIL import Image

from labeling.models import Item, Membership, Vote
from labeling.services.aggregation import PUBLISH_RETRY_POLICY
from tests.factories import MembershipFactory, UserFactory, label_of
from training import selectors, services
from training.datasets import NoLabelledItems, build_training_data
from training.models import TrainingRun

TINY = {
    "backbone": "test_resnet",
    "weights": TrainingRun.Weights.NONE,
    "image_size": 16,
    "epochs": 1,
    "batch_size": 4,
    "learning_rate": 1e-3,
    "augment": False,
    "seed": 0,
}


def _pixels(n: int, bright: bool, size: int = 16) -> np.ndarray:
    rng = np.random.default_rng(n)
    base = 190 if bright else 60
    return np.clip(base + rng.normal(0, 25, (size, size)), 0, 255).astype(np.uint8)


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _npy(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, pixels.astype(np.uint16) * 16)  # 12-bit like a DICOM frame
    return buffer.getvalue()


def make_training_set(
    project, *, n_train: int = 8, n_holdout: int = 4, votes: bool = True, experts: bool = True
) -> dict:
    """Items with votes from three crowd workers (the third one often wrong) on ``project``."""
    names = project.class_names
    workers = [UserFactory(username=f"voter{k}") for k in range(3)]
    for worker in workers:
        MembershipFactory(project=project, user=worker, role=Membership.Role.CROWD)
    items = []
    for n in range(n_train + n_holdout):
        truth = n % 2
        pixels = _pixels(n, bright=bool(truth))
        holdout = n >= n_train
        item = Item(
            project=project,
            content_hash=hashlib.sha256(f"{project.pk}-{n}".encode()).hexdigest(),
            source_name=f"case-{n}.png",
            width=16,
            height=16,
            is_holdout=holdout,
            needs_review=(not holdout and n % 4 == 1),
            expert_answer=label_of(project, names[truth]) if (holdout or experts) else None,
        )
        item.image.save(f"item-{n}.png", ContentFile(_png(pixels)), save=False)
        item.thumbnail.save(f"item-{n}-t.png", ContentFile(_png(pixels)), save=False)
        if n % 3 == 0:  # some items carry full-precision pixels, as DICOM imports do
            item.array.save(f"item-{n}.npy", ContentFile(_npy(pixels)), save=False)
        item.save()
        items.append(item)
        if votes and not holdout:
            for k, worker in enumerate(workers):
                answer = truth if k < 2 or n % 3 else 1 - truth
                Vote.objects.create(
                    project=project, item=item, worker=worker, kind=Vote.Kind.LABEL,
                    label=label_of(project, names[answer]), idempotency_key=f"{item.pk}-{k}",
                )
    return {"items": items, "workers": workers}


def new_run(project, user=None, **values) -> TrainingRun:
    fields = {**TINY, "label_source": TrainingRun.LabelSource.EXPERT, **values}
    return TrainingRun.objects.create(project=project, created_by=user, **fields)


@pytest.mark.django_db
def test_expert_source_uses_non_holdout_expert_answers_and_arrays(project):
    made = make_training_set(project)
    data = build_training_data(new_run(project))
    assert data.class_names == ["normal", "pneumonia"]
    assert data.train.ids == [i.id for i in made["items"][:8]]
    assert list(data.train.targets) == [0, 1] * 4
    assert data.holdout.ids == [i.id for i in made["items"][8:]]
    assert str(data.train.images[0]).endswith(".npy")  # the array wins over the rendering
    assert str(data.train.images[1]).endswith(".png")
    assert data.votes is None


@pytest.mark.django_db
def test_crowd_sources_code_counted_votes_and_start_from_dawid_skene(project):
    made = make_training_set(project, experts=False)
    blocked = made["workers"][2]
    Vote.objects.filter(worker=blocked, item=made["items"][0]).update(is_excluded=True)
    data = build_training_data(new_run(project, label_source="crowd_layer"))
    assert len(data.train) == 8
    assert len(data.votes) == 8 * 3 - 1  # the excluded vote is left out
    assert data.worker_ids == sorted(w.id for w in made["workers"])
    assert data.init_posteriors.shape == (8, 2)
    assert data.init_confusions.shape == (3, 2, 2)
    assert np.array_equal(data.init_posteriors.argmax(1), np.array([0, 1] * 4))
    majority = build_training_data(new_run(project, label_source="majority_vote"))
    assert majority.votes is None and majority.init_posteriors.shape == (8, 2)


@pytest.mark.django_db
@pytest.mark.parametrize("source", ["expert", "dawid_skene"])
def test_no_labelled_items_is_a_readable_error(project, source):
    make_training_set(project, votes=False, experts=False)
    with pytest.raises(NoLabelledItems, match=f"no labelled items for label source {source}"):
        build_training_data(new_run(project, label_source=source))


def test_checkpoint_names_match_the_engine():
    from training.engine import trainer

    assert (selectors.CHECKPOINT_NAME, selectors.MODEL_NAME) == (
        trainer.CHECKPOINT_NAME,
        trainer.MODEL_NAME,
    )


@pytest.mark.django_db
def test_launch_dispatches_after_commit(project, admin_user, django_capture_on_commit_callbacks):
    from unittest import mock

    with mock.patch("training.tasks.run_training.apply_async") as apply_async:
        with django_capture_on_commit_callbacks(execute=True) as callbacks:
            run = services.launch_run(project, admin_user, label_source="expert", **TINY)
            assert not apply_async.called  # nothing leaves before the commit
    assert len(callbacks) == 1
    apply_async.assert_called_once_with(
        (run.pk,), task_id=run.celery_task_id, retry_policy=PUBLISH_RETRY_POLICY
    )
    assert TrainingRun.objects.get(pk=run.pk).status == TrainingRun.Status.QUEUED


@pytest.mark.django_db
@pytest.mark.parametrize(
    "change, field",
    [
        ({"backbone": "no_such_net"}, "backbone"),
        ({"weights": "file", "weights_path": "/nonexistent/w.pth"}, "weights_path"),
        ({"label_source": "mil"}, "label_source"),
        ({"params": {"bogus": 1}}, "params"),
        ({"params": {"trace_lambda": "lots"}}, "params"),
    ],
)
def test_launch_refuses_bad_settings(project, admin_user, change, field):
    values = {**TINY, "label_source": "expert", **change}
    with pytest.raises(services.LaunchError) as caught:
        services.launch_run(project, admin_user, **values)
    assert caught.value.field == field
    assert not TrainingRun.objects.exists()


@pytest.mark.django_db
def test_cancel_queued_at_once_and_refuse_finished(project):
    run = services.request_cancel(new_run(project))
    assert run.status == TrainingRun.Status.CANCELLED and run.finished_at is not None
    with pytest.raises(services.RunStateError):
        services.request_cancel(run)
    running = services.request_cancel(new_run(project, status="running"))
    assert running.status == "running" and running.cancel_requested


@pytest.mark.django_db
def test_resume_needs_a_checkpoint(project):
    run = new_run(project, status="failed", failure_reason="boom")
    with pytest.raises(services.RunStateError, match="no checkpoint"):
        services.resume_run(run)
    folder = selectors.run_folder(run)
    folder.mkdir(parents=True)
    (folder / selectors.CHECKPOINT_NAME).write_bytes(b"x")
    with pytest.raises(services.RunStateError, match="only failed or cancelled"):
        services.resume_run(new_run(project, status="succeeded"))
    resumed = services.resume_run(run)
    assert resumed.status == "queued" and resumed.failure_reason == ""


@pytest.mark.django_db
def test_a_running_run_whose_worker_stopped_is_marked_failed(project):
    long_ago = timezone.now() - services.STALE_AFTER - timedelta(minutes=1)
    run = new_run(project, status="running", started_at=long_ago, heartbeat_at=long_ago)
    fresh = new_run(project, status="running", started_at=timezone.now(), heartbeat_at=timezone.now())
    assert services.fail_if_worker_gone(fresh).status == "running"
    failed = services.fail_if_worker_gone(run)
    assert failed.status == "failed"
    assert failed.failure_reason.startswith("the worker running it stopped (no sign of life since")
    assert "no checkpoint" in failed.failure_reason


@pytest.mark.django_db
def test_launch_records_counts_and_the_report_records_the_remedy(project, admin_user):
    from unittest import mock

    from training.tasks import run_training

    make_training_set(project, experts=False)
    with mock.patch("training.tasks.run_training.apply_async"):
        run = services.launch_run(
            project, admin_user, label_source="crowd_layer",
            params={"class_balance": "loss", "lead_metric": "macro_f1"}, **TINY,
        )
    # counted at launch, before any worker saw the run
    stored = TrainingRun.objects.get(pk=run.pk)
    assert (stored.status, stored.n_train_items, stored.n_holdout_items) == ("queued", 8, 4)
    run_training.apply(args=(run.pk,))
    run.refresh_from_db()
    assert run.status == "succeeded", run.failure_reason
    assert (run.n_train_items, run.n_holdout_items) == (8, 4)  # the worker agrees
    balance = run.evaluation.extra["class_balance"]
    assert (balance["requested"], balance["applied"]) == ("loss", "loss")
    assert len(balance["class_weights"]) == 2
    assert selectors.report_summary(run, run.evaluation)["lead"]["metric"] == "macro_f1"
