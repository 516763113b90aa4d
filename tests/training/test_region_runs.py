"""Region runs end to end through the service and the eager Celery task: launch rules, a masks run
on the consensus (STAPLE-style soft maps written as RegionConsensus rows, as the region
aggregation stores them), a points run, cancel and resume, the report and the run page.

Images are 64 x 64 grey with bright squares (the nuclei); the expert outlines them exactly, the
consensus map is soft at the squares' rims, so a model that learned anything scores well.
"""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from django.core.files.base import ContentFile
from PIL import Image

from labeling.aggregation.regions.answers import rle_encode
from labeling.models import (
    AggregationRun,
    ExpertLabel,
    Item,
    Membership,
    Project,
    Region,
    RegionAnswer,
    RegionConsensus,
    WorkerReliability,
)
from tests.factories import MembershipFactory, ProjectFactory, UserFactory, label_of
from training import region_runs, selectors, services
from training.models import Evaluation, TrainingRun
from training.tasks import run_training

pytestmark = pytest.mark.django_db

SIDE = 64
TINY_REGIONS = {
    "backbone": "test_resnet",
    "weights": TrainingRun.Weights.NONE,
    "image_size": SIDE,
    "epochs": 2,
    "batch_size": 4,
    "learning_rate": 3e-3,
    "augment": False,
    "seed": 0,
}


def _squares(n: int) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """A grey image with one or two bright squares, and their boxes (x0, y0, x1, y1)."""
    rng = np.random.default_rng(n)
    pixels = np.clip(rng.normal(60, 8, (SIDE, SIDE)), 0, 255)
    boxes = []
    for _ in range(1 + n % 2):
        x, y = (int(v) for v in rng.integers(4, SIDE - 20, 2))
        pixels[y : y + 14, x : x + 14] = 220
        boxes.append((x, y, x + 14, y + 14))
    return pixels.astype(np.uint8), boxes


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def make_region_project(
    task: str = Project.TaskType.MASKS, *, n_train: int = 10, n_holdout: int = 4, name: str = "Nuclei"
) -> Project:
    """Training items with a consensus (and expert regions), hold-out items with expert regions."""
    project = ProjectFactory(name=name, classes=["nucleus"], task_type=task)
    workers = [UserFactory(username=f"{name}-annotator{k}") for k in range(3)]
    for worker in workers:
        MembershipFactory(project=project, user=worker, role=Membership.Role.CROWD)
    method = "staple" if task == Project.TaskType.MASKS else "point_consensus"
    consensus = AggregationRun.objects.create(
        project=project, method=method, status=AggregationRun.Status.SUCCEEDED
    )
    nucleus = label_of(project, "nucleus")
    for n in range(n_train + n_holdout):
        pixels, boxes = _squares(n)
        holdout = n >= n_train
        item = Item(
            project=project, content_hash=hashlib.sha256(f"{project.pk}-nuclei-{n}".encode()).hexdigest(), source_name=f"n{n}.png",
            width=SIDE, height=SIDE, channels=1, is_holdout=holdout,
        )  # fmt: skip
        item.image.save(f"n{n}.png", ContentFile(_png(pixels)), save=False)
        item.thumbnail.save(f"n{n}-t.png", ContentFile(_png(pixels)), save=False)
        item.save()
        truth = np.zeros((SIDE, SIDE), dtype=bool)
        for x0, y0, x1, y1 in boxes:
            truth[y0:y1, x0:x1] = True
        answer = RegionAnswer.objects.create(item=item, source=ExpertLabel.Source.IMPORT)
        for k, (x0, y0, x1, y1) in enumerate(boxes):
            if task == Project.TaskType.MASKS:
                # one square as a polygon, the other as a brush mask: both shapes are read
                shape = Region.Shape.POLYGON if k == 0 else Region.Shape.MASK
                geometry = (
                    {"points": [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]}
                    if k == 0
                    else {"rle": rle_encode(_box_mask(x0, y0, x1, y1))}
                )
                Region.objects.create(item=item, answer=answer, label=nucleus, shape=shape,
                                      x0=x0, y0=y0, x1=x1, y1=y1, geometry=geometry)
            elif task == Project.TaskType.BOXES:
                Region.objects.create(item=item, answer=answer, label=nucleus,
                                      shape=Region.Shape.BOX, x0=x0, y0=y0, x1=x1, y1=y1)
            else:
                cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
                Region.objects.create(item=item, answer=answer, label=nucleus,
                                      shape=Region.Shape.POINT, x0=cx, y0=cy, x1=cx, y1=cy)
        item.expert_regions = answer
        item.save(update_fields=["expert_regions"])
        if holdout:
            continue
        row = RegionConsensus(run=consensus, item=item, confidence=0.9)
        if task == Project.TaskType.MASKS:
            # soft at the rim, as STAPLE's map where the raters' outlines differ
            from scipy import ndimage

            soft = ndimage.uniform_filter(truth.astype(np.float32), 3)[None].astype(np.float16)
            row.regions = [{"label": 0, "shape": "mask", "rle": rle_encode(soft[0] >= 0.5),
                            "confidence": 0.9}]
            row.probability_map.save(f"c{n}.npy", ContentFile(_npy(soft)), save=False)
        elif task == Project.TaskType.BOXES:
            row.regions = [
                {"label": 0, "shape": "box", "points": [[b[0], b[1]], [b[2], b[3]]], "confidence": 0.8}
                for b in boxes
            ]
        else:
            row.regions = [
                {"label": 0, "shape": "point", "points": [[(b[0] + b[2]) / 2, (b[1] + b[3]) / 2]],
                 "confidence": 0.8}
                for b in boxes
            ]
        row.save()
    for k, worker in enumerate(workers):
        WorkerReliability.objects.create(
            run=consensus, worker=worker, n_votes=n_train, accuracy=0.9 - 0.2 * k, confusion=[],
            detail={"sensitivity": 0.95 - 0.2 * k, "specificity": 0.99, "agreement": 0.8},
        )
    return project


def _box_mask(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    mask = np.zeros((SIDE, SIDE), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def run_regions(project: Project, user=None, **values) -> TrainingRun:
    run = services.launch_run(project, user, **{"label_source": "consensus", **TINY_REGIONS, **values})
    run_training.apply(args=(run.pk,))
    return TrainingRun.objects.get(pk=run.pk)


@pytest.fixture
def masks_project(db) -> Project:
    return make_region_project()


def test_masks_run_on_the_consensus_stores_its_report(masks_project):
    run = run_regions(masks_project, epochs=3)
    assert run.status == TrainingRun.Status.SUCCEEDED, run.failure_reason
    assert (run.n_train_items, run.n_holdout_items, run.current_epoch) == (10, 4, 3)
    metrics = list(run.epoch_metrics.order_by("epoch"))
    assert [m.epoch for m in metrics] == [1, 2, 3]
    assert all(m.holdout_accuracy is not None for m in metrics)  # the hold-out Dice per epoch

    evaluation = Evaluation.objects.get(run=run)
    regions = evaluation.extra["regions"]
    assert regions["headline"] == "dice" and regions["task"] == "masks"
    assert evaluation.n_items == 4
    assert evaluation.accuracy == evaluation.balanced_accuracy == regions["dice"]
    # bright squares on grey: three epochs find them well
    assert evaluation.accuracy > 0.6
    nucleus = evaluation.per_class["nucleus"]
    assert nucleus["support"] == 4 and 0 < nucleus["iou"] <= nucleus["dice"] <= 1
    assert regions["consensus_run"] is not None and regions["label_source"] == "consensus"
    holdout_ids = list(
        Item.objects.filter(project=masks_project, is_holdout=True).order_by("id").values_list("id", flat=True)
    )
    assert regions["gallery"] == holdout_ids
    for name in [str(holdout_ids[0]), "reliability"]:
        with Image.open(region_runs.picture_file(run, name)) as picture:
            assert picture.format == "PNG" and picture.size[0] > 100
    assert regions["reliability_plot"] is True
    reliability = run.annotator_reliability
    assert set(reliability) == {f"Nuclei-annotator{k}" for k in range(3)}
    assert reliability["Nuclei-annotator0"]["sensitivity"] == pytest.approx(0.95)
    assert selectors.model_file(run) is not None


def test_consensus_from_the_region_aggregation_trains(masks_project):
    """The whole path: crowd masks as region votes, STAPLE through the aggregation service, then
    a consensus run on the map it stored."""
    from labeling.aggregation.regions.answers import class_masks, shapes_from_stored
    from labeling.services.aggregation import aggregate_project
    from labeling.services.review import answer_regions
    from tests.labeling.test_region_aggregation import vote

    AggregationRun.objects.all().delete()
    annotators = [UserFactory(username=f"Nuclei-annotator{k}") for k in range(3)]
    for item in Item.objects.filter(project=masks_project, is_holdout=False):
        stored = answer_regions([item.expert_regions_id])[item.expert_regions_id]
        truth = class_masks(shapes_from_stored(stored), 1, SIDE, SIDE)[0]
        for k, annotator in enumerate(annotators):
            drawn = np.roll(truth, k - 1, axis=1)  # one rater left, one right, one exact
            vote(item, annotator, [{"label": 0, "shape": "mask", "rle": rle_encode(drawn)}])
    consensus = aggregate_project(masks_project.pk, "staple")
    assert consensus.status == AggregationRun.Status.SUCCEEDED, consensus.failure_reason
    run = run_regions(masks_project, epochs=1)
    assert run.status == TrainingRun.Status.SUCCEEDED, run.failure_reason
    assert run.n_train_items == 10
    assert run.evaluation.extra["regions"]["consensus_run"] == consensus.pk
    assert set(run.annotator_reliability) == {f"Nuclei-annotator{k}" for k in range(3)}


def test_expert_run_trains_on_expert_regions(masks_project):
    RegionConsensus.objects.all().delete()
    run = run_regions(masks_project, label_source="expert", epochs=1)
    assert run.status == TrainingRun.Status.SUCCEEDED, run.failure_reason
    assert (run.n_train_items, run.n_holdout_items) == (10, 4)
    assert run.evaluation.extra["regions"]["consensus_run"] is None
    assert run.annotator_reliability == {}  # no crowd in an expert run


def test_consensus_without_aggregation_fails_with_its_reason(masks_project):
    AggregationRun.objects.all().delete()
    run = run_regions(masks_project)
    assert run.status == TrainingRun.Status.FAILED
    assert run.failure_reason.startswith("no region consensus yet: run the aggregation")


def test_points_run_reports_precision_recall_and_counts(db):
    project = make_region_project(Project.TaskType.POINTS, n_train=16, name="Cells")
    run = run_regions(project, epochs=5, batch_size=2, learning_rate=5e-3)
    assert run.status == TrainingRun.Status.SUCCEEDED, run.failure_reason
    evaluation = run.evaluation
    regions = evaluation.extra["regions"]
    assert regions["headline"] == "f1" and regions["match"] == {"distance": 10.0}
    assert evaluation.accuracy == regions["f1"]
    cell = evaluation.per_class["nucleus"]
    assert cell["support"] == 6  # hold-out items 16..19 have 1, 2, 1, 2 squares
    assert {"precision", "recall", "f1", "count_error", "predicted"} <= set(cell)
    assert regions["f1"] > 0.5 and regions["count_error"] is not None


def test_boxes_run_stores_its_report_and_pictures(db):
    project = make_region_project(Project.TaskType.BOXES, n_train=6, name="Smears")
    run = run_regions(project, epochs=1)
    assert run.status == TrainingRun.Status.SUCCEEDED, run.failure_reason
    regions = run.evaluation.extra["regions"]
    assert regions["task"] == "boxes" and regions["match"] == {"iou": 0.5}
    assert run.evaluation.per_class["nucleus"]["support"] == 6  # hold-out items 6..9
    for item_id in regions["gallery"]:
        assert region_runs.picture_file(run, str(item_id)) is not None


def test_launch_rules_for_region_and_class_projects(masks_project, project):
    for source in ("dawid_skene", "majority_vote", "auto"):
        with pytest.raises(services.LaunchError, match="trains on 'consensus'"):
            services.check_launch_settings(masks_project, {**TINY_REGIONS, "label_source": source})
    with pytest.raises(services.LaunchError, match="multiple of 32") as error:
        services.check_launch_settings(
            masks_project, {**TINY_REGIONS, "label_source": "consensus", "image_size": 100}
        )
    assert error.value.field == "image_size"
    with pytest.raises(services.LaunchError, match="consensus is for region projects"):
        services.check_launch_settings(project, {**TINY_REGIONS, "label_source": "consensus"})
    with pytest.raises(services.LaunchError, match="apply to region runs only"):
        services.check_launch_settings(
            project, {**TINY_REGIONS, "label_source": "expert", "params": {"dice_weight": 2.0}}
        )
    run = services.launch_run(masks_project, None, label_source="consensus", **TINY_REGIONS)
    assert (run.n_train_items, run.n_holdout_items) == (10, 4)  # counted at launch


def test_launch_through_the_api_refuses_a_class_source(masks_project, admin_user):
    from rest_framework.test import APIClient

    MembershipFactory(project=masks_project, user=admin_user, role=Membership.Role.ADMIN)
    client = APIClient()
    client.force_authenticate(admin_user)
    url = f"/api/projects/{masks_project.pk}/training-runs/"
    refused = client.post(url, {**TINY_REGIONS, "label_source": "dawid_skene"}, format="json")
    assert refused.status_code == 400
    assert "trains on 'consensus'" in refused.json()["label_source"][0]
    assert not TrainingRun.objects.exists()


def test_cancel_then_resume_from_the_checkpoint(masks_project, monkeypatch):
    original = services.RunProgress.on_epoch_end

    def cancel_after_first(self, record):
        original(self, record)
        if record.epoch == 1:
            services.request_cancel(TrainingRun.objects.get(pk=self.run_id))

    monkeypatch.setattr(services.RunProgress, "on_epoch_end", cancel_after_first)
    run = run_regions(masks_project, epochs=2)
    assert run.status == TrainingRun.Status.CANCELLED and run.current_epoch == 1
    assert not Evaluation.objects.filter(run=run).exists()
    assert selectors.checkpoint_file(run) is not None
    monkeypatch.undo()

    resumed_from = []
    original_resume = services.RunProgress.on_resume
    monkeypatch.setattr(
        services.RunProgress, "on_resume",
        lambda self, epoch: (resumed_from.append(epoch), original_resume(self, epoch)),
    )  # fmt: skip
    services.resume_run(run)  # eager: the task runs when the test's transaction "commits"
    run_training.apply(args=(run.pk,))
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.SUCCEEDED, run.failure_reason
    assert resumed_from == [1]  # the engine went on from epoch 1's checkpoint
    assert list(run.epoch_metrics.order_by("epoch").values_list("epoch", flat=True)) == [1, 2]
    assert run.evaluation.extra["regions"]["headline"] == "dice"


def test_run_page_shows_the_region_report(masks_project, admin_user, client):
    MembershipFactory(project=masks_project, user=admin_user, role=Membership.Role.ADMIN)
    run = run_regions(masks_project, epochs=1)
    client.force_login(admin_user)
    page = client.get(f"/runs/{run.pk}/").content.decode()
    assert 'data-testid="region-report"' in page and "Mean Dice" in page
    gallery = run.evaluation.extra["regions"]["gallery"]
    picture_url = f"/runs/{run.pk}/regions/{gallery[0]}.png"
    assert picture_url in page and f"/runs/{run.pk}/regions/reliability.png" in page
    png = client.get(picture_url)
    assert png.status_code == 200 and png["Content-Type"] == "image/png"
    assert client.get(f"/runs/{run.pk}/regions/999999.png").status_code == 404
    assert 'data-testid="per-class"' not in page  # the class report's table is not shown

    summary = client.get(f"/api/training-runs/{run.pk}/").json()["evaluation"]["summary"]
    assert summary["flags"] == [] and summary["lead"]["value"] == run.evaluation.accuracy
    assert summary["lead"]["label"] == "Mean Dice" and summary["others"] == []
    assert "<h3>Hold-out Dice</h3>" in page
    # the runs by label source lead with the run's own score, as its summary names it
    comparison = page[page.index('data-testid="comparison"') :]
    assert 'data-testid="score-heading">Mean Dice<' in comparison
    assert "Balanced acc." not in page and "ROC AUC" not in comparison.split("</thead>")[0]
    train_page = client.get(f"/projects/{masks_project.pk}/train/").content.decode()
    runs = train_page[train_page.index('data-testid="runs"') :].split("</thead>")[0]
    assert 'data-testid="score-heading">Mean Dice<' in runs and "Balanced acc." not in runs
    assert 'value="consensus" selected' in train_page and 'value="expert"' in train_page
    assert 'value="dawid_skene"' not in train_page

    stranger = UserFactory(username="stranger")
    client.force_login(stranger)
    assert client.get(picture_url).status_code in (403, 404)
