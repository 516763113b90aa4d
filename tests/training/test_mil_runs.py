"""MIL runs on a bag project: launch rules, a run executed by the task, its stored report.

``make_bag_project`` is shared with the browser tests: 32 x 32 colour images cut into 4 x 4
patches of 8 px; every image has a decoy bar, positive ones also a bright square (the expert
marks it with a box on some hold-out images, as BCCD's white-cell boxes).
"""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from django.core.files.base import ContentFile
from PIL import Image

from labeling.models import Item, Membership, Project, Region, Vote
from tests.factories import MembershipFactory, ProjectFactory, UserFactory, label_of
from training import services
from training.datasets import build_training_data
from training.models import Evaluation, Prediction, TrainingRun
from training.tasks import run_training

SIDE, PATCH = 32, 8
TINY_MIL = {
    "label_source": "mil",
    "backbone": "test_resnet",
    "weights": TrainingRun.Weights.NONE,
    "image_size": 16,  # each 8 px patch is seen at 16 px
    "epochs": 2,
    "batch_size": 8,
    "learning_rate": 3e-3,
    "augment": False,
    "seed": 0,
}


def bag_pixels(n: int, positive: bool) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """An RGB bag and the box (x0, y0, x1, y1) of its square (or where it would be)."""
    rng = np.random.default_rng(n)
    pixels = np.clip(rng.normal(90, 25, (SIDE, SIDE, 3)), 0, 255)
    square, bar = rng.permutation((SIDE // PATCH) ** 2)[:2]
    row, col = divmod(int(bar), SIDE // PATCH)
    pixels[row * PATCH + 1 : row * PATCH + 7, col * PATCH + 3 : col * PATCH + 5] = 240
    row, col = divmod(int(square), SIDE // PATCH)
    box = (col * PATCH + 2, row * PATCH + 2, col * PATCH + 6, row * PATCH + 6)
    if positive:
        pixels[box[1] : box[3], box[0] : box[2]] = (250, 60, 200)
    return pixels.astype(np.uint8), box


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def make_bag_project(*, n_train: int = 24, n_holdout: int = 8, name: str = "Smears") -> Project:
    project = ProjectFactory(
        name=name,
        classes=["no target", "target"],
        task_type=Project.TaskType.BAG,
        patch_size=PATCH,
        patch_stride=PATCH,
    )
    workers = [UserFactory(username=f"{name}-voter{k}") for k in range(3)]
    for worker in workers:
        MembershipFactory(project=project, user=worker, role=Membership.Role.CROWD)
    names = project.class_names
    for n in range(n_train + n_holdout):
        truth = n % 2
        pixels, box = bag_pixels(n, bool(truth))
        holdout = n >= n_train
        item = Item(
            project=project,
            content_hash=hashlib.sha256(f"{project.pk}-bag-{n}".encode()).hexdigest(),
            source_name=f"smear-{n}.png",
            width=SIDE,
            height=SIDE,
            channels=3,
            is_holdout=holdout,
            needs_review=(not holdout and n % 8 == 1),
            expert_answer=label_of(project, names[truth]) if holdout else None,
        )
        item.image.save(f"bag-{n}.png", ContentFile(_png(pixels)), save=False)
        item.thumbnail.save(f"bag-{n}-t.png", ContentFile(_png(pixels)), save=False)
        item.save()
        if holdout and truth:
            Region.objects.create(item=item, name="target", x0=box[0], y0=box[1], x1=box[2], y1=box[3])
        if not holdout:
            for k, worker in enumerate(workers):
                answer = truth if k < 2 or n % 3 else 1 - truth
                Vote.objects.create(
                    project=project, item=item, worker=worker, kind=Vote.Kind.LABEL,
                    label=label_of(project, names[answer]), idempotency_key=f"{item.pk}-{k}",
                )
    return project


def run_mil(project: Project, user=None, **values) -> TrainingRun:
    """Launch a tiny MIL run and execute it here, as the eager Celery task does."""
    run = services.launch_run(project, user, **{**TINY_MIL, **values})
    run_training.apply(args=(run.pk,))
    return TrainingRun.objects.get(pk=run.pk)


@pytest.fixture
def bag_project(db) -> Project:
    return make_bag_project()


@pytest.mark.django_db
def test_mil_run_stores_attention_and_localisation(bag_project):
    run = run_mil(bag_project)
    assert run.status == TrainingRun.Status.SUCCEEDED, run.failure_reason
    assert run.params == {"patch_size": PATCH, "patch_stride": PATCH}  # the grid is recorded
    assert (run.n_train_items, run.n_holdout_items, run.current_epoch) == (24, 8, 2)
    assert run.epoch_metrics.count() == 2

    predictions = Prediction.objects.filter(run=run)
    holdout = predictions.filter(item__is_holdout=True)
    review = predictions.filter(item__needs_review=True)
    assert holdout.count() == 8 and review.count() == 3
    for prediction in predictions:
        grid = np.asarray(prediction.attention)
        assert grid.shape == (4, 4) and grid.sum() == pytest.approx(1.0, abs=1e-4)

    evaluation = Evaluation.objects.get(run=run)
    assert evaluation.n_items == 8 and 0 <= evaluation.accuracy <= 1
    localisation = evaluation.extra["localisation"]
    assert localisation["n_items"] == 4 and localisation["n_points"] == 4  # the marked positives
    for key in ("point_hit_rate", "argmax_box_overlap", "chance_argmax_box_overlap"):
        assert 0 <= localisation[key] <= 1
    assert localisation["chance_argmax_box_overlap"] == pytest.approx(1 / 16)
    gallery = evaluation.extra["mil"]["gallery"]
    assert gallery == list(holdout.order_by("item_id").values_list("item_id", flat=True))
    heatmap = services.heatmap_file(run, gallery[0])
    with Image.open(heatmap) as picture:
        assert picture.size == (SIDE, SIDE)


@pytest.mark.django_db
def test_no_regions_no_localisation_and_crowd_layer_bag_labels(bag_project):
    Region.objects.filter(item__project=bag_project).delete()
    run = run_mil(bag_project, epochs=1, params={"mil_labels": "crowd_layer"})
    assert run.status == TrainingRun.Status.SUCCEEDED, run.failure_reason
    assert "localisation" not in run.evaluation.extra
    assert len(run.annotator_reliability) == 3  # the crowd layer learned each voter's confusion
    data = build_training_data(run)
    assert data.votes is not None and len(data.votes) == 24 * 3


@pytest.mark.django_db
def test_launch_accepts_mil_only_on_bag_projects(project, bag_project, admin_user):
    MembershipFactory(project=bag_project, user=admin_user, role=Membership.Role.ADMIN)
    from rest_framework.test import APIClient

    client = APIClient()
    client.force_authenticate(admin_user)
    refused = client.post(f"/api/projects/{project.pk}/training-runs/", TINY_MIL, format="json")
    assert refused.status_code == 400
    assert "only for bag projects" in refused.json()["label_source"][0]

    for params, message in [
        ({"mil_labels": "aggnet"}, "mil_labels must be one of"),
        ({"patch_stride": 16}, "patch_stride <= patch_size"),
        ({"patch_size": "big"}, "wrong type"),
    ]:
        response = client.post(
            f"/api/projects/{bag_project.pk}/training-runs/", {**TINY_MIL, "params": params},
            format="json",
        )
        assert response.status_code == 400 and message in response.json()["params"][0]
    image_run = {**TINY_MIL, "label_source": "expert", "params": {"patch_size": 8}}
    response = client.post(f"/api/projects/{project.pk}/training-runs/", image_run, format="json")
    assert response.status_code == 400 and "MIL runs only" in response.json()["params"][0]


@pytest.mark.django_db
def test_attention_api_per_role(bag_project):
    run = run_mil(bag_project, epochs=1)
    item_id = run.evaluation.extra["mil"]["gallery"][0]
    review_item = Prediction.objects.filter(run=run, item__needs_review=True).first().item_id
    from rest_framework.test import APIClient

    def client_for(role: str | None) -> APIClient:
        user = UserFactory(username=f"mil-{role}")
        if role:
            MembershipFactory(project=bag_project, user=user, role=role)
        client = APIClient()
        client.force_authenticate(user)
        return client

    expert = client_for(Membership.Role.EXPERT)
    body = expert.get(f"/api/training-runs/{run.pk}/attention/{item_id}/").json()
    assert np.asarray(body["attention"]).shape == (4, 4)
    assert (body["patch_size"], body["patch_stride"], body["width"]) == (PATCH, PATCH, SIDE)
    assert body["heatmap_url"] == f"/api/training-runs/{run.pk}/heatmaps/{item_id}/"
    png = expert.get(body["heatmap_url"])
    assert png.status_code == 200 and png["Content-Type"] == "image/png"
    review = expert.get(f"/api/training-runs/{run.pk}/attention/{review_item}/").json()
    assert review["heatmap_url"] is None  # only the hold-out gallery is rendered
    assert expert.get(f"/api/training-runs/{run.pk}/attention/999999/").status_code == 404
    evaluation = expert.get(f"/api/training-runs/{run.pk}/").json()["evaluation"]
    assert "localisation" in evaluation["extra"]

    crowd = client_for(Membership.Role.CROWD)
    assert crowd.get(f"/api/training-runs/{run.pk}/attention/{item_id}/").status_code == 403
    assert client_for(None).get(body["heatmap_url"]).status_code == 404
