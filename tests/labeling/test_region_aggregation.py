"""Region runs through the service: what a points, boxes or masks run stores, clamps and scores."""

from __future__ import annotations

import numpy as np
import pytest
from django.contrib.auth import get_user_model

from labeling.aggregation.regions import detection_f1
from labeling.aggregation.regions.answers import rle_decode, rle_encode
from labeling.models import (
    AggregationRun,
    ExpertLabel,
    Item,
    Membership,
    Project,
    Region,
    RegionAnswer,
    RegionConsensus,
    Vote,
    VoteTally,
    WorkerReliability,
)
from labeling.services.aggregation import (
    NO_VOTES,
    InvalidAggregation,
    aggregate_project,
    request_aggregation,
)
from labeling.services.region_aggregation import SINGLE_RATER_P
from labeling.tasks import aggregate_project_task
from tests.factories import ItemFactory, MembershipFactory, ProjectFactory

User = get_user_model()
pytestmark = pytest.mark.django_db

Kind = Project.TaskType


def region_project(task_type: str, classes=("cell",), **options) -> Project:
    options.setdefault("default_method", "auto")
    return ProjectFactory(task_type=task_type, classes=list(classes), **options)


def workers(project: Project, n: int, prefix: str = "r") -> list:
    users = [User.objects.create(username=f"{prefix}{project.pk}-{i}") for i in range(n)]
    for user in users:
        MembershipFactory(project=project, user=user, role=Membership.Role.CROWD)
    return users


def vote(item: Item, worker, regions: list) -> Vote:
    """A counted region vote as the vote service stores it (label = class index)."""
    return Vote.objects.create(
        project=item.project, item=item, worker=worker, kind=Vote.Kind.REGIONS, regions=regions,
        idempotency_key=f"r-{item.pk}-{worker.pk}", source=Vote.Source.SIMULATED,
    )


def point(x: float, y: float, label: int = 0) -> dict:
    return {"label": label, "shape": "point", "points": [[x, y]]}


def box(x0, y0, x1, y1, label: int = 0) -> dict:
    return {"label": label, "shape": "box", "points": [[x0, y0], [x1, y1]]}


def square(x0, y0, x1, y1, label: int = 0) -> dict:
    return {"label": label, "shape": "polygon", "points": [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]}


def expert_answer(item: Item, regions: list, source: str = ExpertLabel.Source.IMPORT) -> RegionAnswer:
    """An expert's region set as review and import store it; the item's final answer."""
    classes = {c.index: c for c in item.project.label_classes.all()}
    answer = RegionAnswer.objects.create(item=item, source=source)
    for r in regions:
        pts = r.get("points") or [[0, 0]]
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        geometry = {"points": pts} if r["shape"] == "polygon" else {"rle": r["rle"]} if r["shape"] == "mask" else {}
        Region.objects.create(
            item=item, answer=answer, label=classes[r["label"]], shape=r["shape"],
            x0=min(xs), y0=min(ys), x1=max(xs), y1=max(ys), geometry=geometry,
        )
    Item.objects.filter(pk=item.pk).update(expert_regions=answer)
    return answer


def consensus_of(run: AggregationRun, item: Item) -> RegionConsensus:
    return RegionConsensus.objects.get(run=run, item=item)


# -- points -----------------------------------------------------------------------------------


def point_crowd(seed: int = 0, n_items: int = 6):
    """Three careful workers (jitter 1.5 px, one miss in ten) and one who clicks at random."""
    project = region_project(Kind.POINTS, region_match_distance=6.0, overlap=4, max_overlap=6)
    users = workers(project, 4)
    rng = np.random.default_rng(seed)
    truth = {}
    for _ in range(n_items):
        item = ItemFactory(project=project, width=100, height=100)
        cells = rng.uniform(10, 90, size=(5, 2))
        # cells kept apart so the match radius separates them
        while np.min([np.hypot(*(a - b)) for i, a in enumerate(cells) for b in cells[i + 1 :]]) < 15:
            cells = rng.uniform(10, 90, size=(5, 2))
        truth[item.pk] = cells
        for user in users[:3]:
            kept = cells[rng.random(len(cells)) > 0.1]
            jitter = kept + rng.normal(0, 1.5, size=kept.shape)
            vote(item, user, [point(x, y) for x, y in jitter])
        vote(item, users[3], [point(x, y) for x, y in rng.uniform(0, 100, size=(5, 2))])
    return project, users, truth


def test_point_consensus_finds_the_cells_and_rates_the_random_clicker_lowest():
    project, users, truth = point_crowd()
    run = aggregate_project(project.pk, "auto")
    assert run.status == AggregationRun.Status.SUCCEEDED, run.failure_reason
    assert run.selection["chosen"] == "point_consensus"
    assert run.selection["holdout_metric"] == "f1"
    assert run.n_items == 6 and run.n_workers == 4 and run.n_votes == 24
    f1s = []
    for item_id, cells in truth.items():
        row = RegionConsensus.objects.get(run=run, item_id=item_id)
        found = np.array([r["points"][0] for r in row.regions]).reshape(-1, 2)
        assert all(r["shape"] == "point" and r["label"] == 0 and 0 <= r["confidence"] <= 1 for r in row.regions)
        f1s.append(detection_f1(found, cells, "points", 3.0)[0])
        assert 0 <= row.confidence <= 1 and 0 <= row.agreement <= 1
        item = Item.objects.get(pk=item_id)
        assert item.uncertainty == pytest.approx(1 - row.confidence)
    # the cells within 3 px and the random clicks left out (greedy matching may split a cell)
    assert np.mean(f1s) > 0.9 and sorted(f1s)[1] == 1.0
    rel = {r.worker_id: r for r in WorkerReliability.objects.filter(run=run)}
    assert set(rel) == {u.pk for u in users}
    careful = [rel[u.pk] for u in users[:3]]
    spammer = rel[users[3].pk]
    assert all(r.detail["sensitivity"] > 0.7 and r.detail["precision"] > 0.9 for r in careful)
    assert spammer.detail["precision"] < 0.3
    assert spammer.accuracy < min(r.accuracy for r in careful)
    # accuracy is the F1 of sensitivity and precision
    s, p = careful[0].detail["sensitivity"], careful[0].detail["precision"]
    assert careful[0].accuracy == pytest.approx(2 * s * p / (s + p), abs=1e-4)
    assert spammer.detail["agreement"] < min(r.detail["agreement"] for r in careful)
    assert np.allclose(np.sum(careful[0].confusion, axis=1), 1.0, atol=1e-3)


def test_holdout_regions_score_the_run_and_are_not_clamped():
    project, users, truth = point_crowd(seed=3)
    held, gold = list(Item.objects.filter(project=project).order_by("id")[:2])
    # the hold-out expert marks only two of the five cells: the crowd's five are not overruled
    expert_answer(held, [point(x, y) for x, y in truth[held.pk][:2]], ExpertLabel.Source.HOLDOUT)
    Item.objects.filter(pk=held.pk).update(is_holdout=True)
    # a gold item's expert answer is clamped: the consensus is the expert's cells
    expert_answer(gold, [point(x, y) for x, y in truth[gold.pk][:3]])
    Item.objects.filter(pk=gold.pk).update(is_gold=True)
    run = aggregate_project(project.pk, "point_consensus")
    assert run.status == AggregationRun.Status.SUCCEEDED, run.failure_reason
    assert run.holdout_size == 1
    # 2 of the crowd's 5 match the expert's 2: F1 = 2 * 2 / (5 + 2)
    assert run.holdout_accuracy == pytest.approx(4 / 7)
    assert run.selection["holdout_metric"] == "f1"
    assert len(consensus_of(run, held).regions) == 5
    gold_points = np.array([r["points"][0] for r in consensus_of(run, gold).regions])
    assert len(gold_points) == 3
    assert np.allclose(np.sort(gold_points, axis=0), np.sort(truth[gold.pk][:3], axis=0), atol=0.01)


# -- boxes ------------------------------------------------------------------------------------


def test_box_consensus_keeps_classes_apart_and_flags_contested_items():
    project = region_project(Kind.BOXES, classes=("RBC", "WBC"), confidence_threshold=0.9)
    users = workers(project, 3)
    clear = ItemFactory(project=project, width=64, height=64)
    contested = ItemFactory(project=project, width=64, height=64)
    for i, user in enumerate(users):
        d = i * 0.5
        vote(clear, user, [box(4 + d, 4, 20 + d, 20, label=0), box(30, 30 + d, 60, 60 + d, label=1)])
    # one box, the workers split over its class and one adds a box nobody else saw
    vote(contested, users[0], [box(10, 10, 30, 30, label=0)])
    vote(contested, users[1], [box(10, 10, 30, 30, label=1)])
    vote(contested, users[2], [box(10, 10, 30, 30, label=0), box(40, 40, 60, 60, label=1)])
    run = aggregate_project(project.pk, "box_consensus")
    assert run.status == AggregationRun.Status.SUCCEEDED, run.failure_reason
    assert run.method == project.default_method or run.method == "box_consensus"
    clear_row = consensus_of(run, clear)
    labels = sorted(r["label"] for r in clear_row.regions)
    assert labels == [0, 1]
    rbc = next(r for r in clear_row.regions if r["label"] == 0)
    assert rbc["shape"] == "box"
    assert np.allclose(rbc["points"], [[4.5, 4], [20.5, 20]], atol=0.6)
    assert clear_row.agreement == pytest.approx(1.0)
    contested_row = consensus_of(run, contested)
    assert contested_row.confidence < clear_row.confidence
    assert contested_row.agreement < 1.0


def test_default_method_run_steers_review_votes_wanted_and_the_tally():
    project = region_project(Kind.BOXES, confidence_threshold=0.9, overlap=2, max_overlap=4)
    users = workers(project, 3)
    real, false = box(4, 4, 20, 20), box(40, 40, 60, 60)
    # everyone marks the real box; the first two each miss it twice and add a false one twice
    slips = {0: ["miss", "miss", "add", "add"], 1: [None, None, None, None, "miss", "miss", "add", "add"]}
    clear = [ItemFactory(project=project, width=64, height=64) for _ in range(12)]
    for k, item in enumerate(clear):
        for w, user in enumerate(users):
            slip = slips.get(w, [])[k] if k < len(slips.get(w, [])) else None
            vote(item, user, [] if slip == "miss" else [real, false] if slip == "add" else [real])
    # the two who slip alike disagree: one marks a box, the other nothing
    contested = ItemFactory(project=project, width=64, height=64)
    vote(contested, users[0], [real])
    vote(contested, users[1], [])
    single = ItemFactory(project=project, width=64, height=64)
    vote(single, users[2], [box(30, 30, 50, 50)])
    VoteTally.objects.create(project=project, stripe=0, votes=7)
    run = aggregate_project(project.pk, "auto")
    assert run.status == AggregationRun.Status.SUCCEEDED, run.failure_reason
    settled = Item.objects.get(pk=clear[-1].pk)
    assert consensus_of(run, settled).confidence > 0.9
    assert not settled.needs_review and settled.votes_wanted == 3
    contested = Item.objects.get(pk=contested.pk)
    assert consensus_of(run, contested).confidence < 0.9
    assert contested.needs_review and contested.votes_wanted == 4
    assert contested.uncertainty == pytest.approx(1 - consensus_of(run, contested).confidence)
    # one rater: their answer, at the fixed low confidence, and more votes wanted
    single = Item.objects.get(pk=single.pk)
    row = consensus_of(run, single)
    assert row.regions == [
        {"label": 0, "shape": "box", "points": [[30.0, 30.0], [50.0, 50.0]], "confidence": SINGLE_RATER_P}
    ]
    assert row.confidence == pytest.approx(SINGLE_RATER_P)
    assert row.agreement is None
    assert single.needs_review and single.votes_wanted == 2
    assert VoteTally.objects.get(project=project, stripe=0).votes == 0


# -- masks ------------------------------------------------------------------------------------


def mask_crowd(n_items: int = 3):
    """Two careful workers (polygon and brush) and one who draws the square shifted by 4 px."""
    project = region_project(Kind.MASKS, classes=("tumour", "oedema"))
    users = workers(project, 3)
    items = []
    for k in range(n_items):
        item = ItemFactory(project=project, width=32, height=24)
        truth = np.zeros((24, 32), dtype=bool)
        truth[6 : 16, 8 + k : 20 + k] = True
        brush = {"label": 0, "shape": "mask", "rle": rle_encode(truth)}
        vote(item, users[0], [square(8 + k, 6, 20 + k, 16), square(0, 20, 4, 24, label=1)])
        vote(item, users[1], [brush, square(0, 20, 4, 24, label=1)])
        vote(item, users[2], [square(12 + k, 6, 24 + k, 16)])
        items.append((item, truth))
    return project, users, items


@pytest.mark.parametrize("method", ["auto", "staple", "mask_majority"])
def test_mask_run_stores_the_consensus_mask_and_the_probability_map(method):
    project, users, items = mask_crowd()
    run = aggregate_project(project.pk, method)
    assert run.status == AggregationRun.Status.SUCCEEDED, run.failure_reason
    assert run.selection["holdout_metric"] == "dice"
    if method == "auto":
        assert run.selection["chosen"] == "staple"
    for item, truth in items:
        row = consensus_of(run, item)
        masks = {r["label"]: r for r in row.regions}
        assert set(masks) == {0, 1}
        assert all(r["shape"] == "mask" for r in row.regions)
        assert (rle_decode(masks[0]["rle"]) == truth).all()
        oedema = np.zeros((24, 32), dtype=bool)
        oedema[20:24, 0:4] = True
        assert (rle_decode(masks[1]["rle"]) == oedema).all()
        with row.probability_map.open("rb") as f:
            prob = np.load(f)
        assert prob.dtype == np.float16 and prob.shape == (2, 24, 32)
        assert (prob[0][truth] >= 0.5).all() and (prob[0][~truth] < 0.5).all()
        assert 0 < row.confidence <= 1
        assert 0 < row.agreement < 1
    rel = {r.worker_id: r for r in WorkerReliability.objects.filter(run=run)}
    shifted = rel[users[2].pk]
    assert shifted.accuracy < min(rel[u.pk].accuracy for u in users[:2])
    d = rel[users[0].pk].detail
    assert rel[users[0].pk].accuracy == pytest.approx((d["sensitivity"] + d["specificity"]) / 2, abs=1e-4)
    assert shifted.detail["precision"] < d["precision"]


def test_mask_holdout_is_scored_by_dice():
    project, users, items = mask_crowd(n_items=2)
    item, truth = items[0]
    half = truth.copy()
    half[:, : 8 + 6] = False  # the expert's tumour is the right half of the crowd's
    expert_answer(item, [{"label": 0, "shape": "mask", "rle": rle_encode(half)}], ExpertLabel.Source.HOLDOUT)
    Item.objects.filter(pk=item.pk).update(is_holdout=True)
    run = aggregate_project(project.pk, "staple")
    assert run.holdout_size == 1
    # tumour Dice 2*60/(120+60); oedema: the crowd's 16 px against nothing, Dice 0
    assert run.holdout_accuracy == pytest.approx(np.mean([2 * 60 / 180, 0.0]))


# -- edge cases, the task, the API ------------------------------------------------------------


def test_nothing_marked_is_a_confident_empty_consensus():
    project = region_project(Kind.POINTS)
    users = workers(project, 2)
    item = ItemFactory(project=project, width=16, height=16)
    for user in users:
        vote(item, user, [])
    run = aggregate_project(project.pk, "auto")
    assert run.status == AggregationRun.Status.SUCCEEDED, run.failure_reason
    row = consensus_of(run, item)
    assert row.regions == [] and row.confidence == 1.0 and row.agreement == 1.0


def test_no_votes_fails_with_a_reason_and_class_votes_do_not_count():
    project = region_project(Kind.MASKS)
    run = aggregate_project(project.pk, "auto")
    assert run.status == AggregationRun.Status.FAILED
    assert run.failure_reason == NO_VOTES


def test_a_malformed_stored_mask_fails_the_run_with_its_reason():
    project = region_project(Kind.MASKS)
    users = workers(project, 2)
    item = ItemFactory(project=project, width=8, height=8)
    vote(item, users[0], [{"label": 0, "shape": "mask", "rle": {"size": [4, 4], "counts": [16]}}])
    vote(item, users[1], [])
    run = aggregate_project(project.pk, "staple")
    assert run.status == AggregationRun.Status.FAILED
    assert "mask's size [4, 4] is not the image's [8, 8]" in run.failure_reason
    assert not RegionConsensus.objects.filter(run=run).exists()


def test_methods_are_checked_against_the_task_type():
    project = region_project(Kind.POINTS)
    with pytest.raises(InvalidAggregation, match="point_consensus"):
        aggregate_project(project.pk, "staple")
    with pytest.raises(InvalidAggregation, match="Unknown parameter"):
        aggregate_project(project.pk, "point_consensus", params={"n_iter": 3})
    with pytest.raises(InvalidAggregation):
        request_aggregation(project, "dawid_skene")


def test_the_task_is_idempotent(django_capture_on_commit_callbacks):
    project, users, items = mask_crowd(n_items=1)
    with django_capture_on_commit_callbacks(execute=True):
        run = request_aggregation(project, "auto")  # eager: the task runs on commit
    run.refresh_from_db()
    assert run.status == AggregationRun.Status.SUCCEEDED, run.failure_reason
    before = (RegionConsensus.objects.filter(run=run).count(), WorkerReliability.objects.filter(run=run).count())
    assert aggregate_project_task.apply(args=(run.pk,)).get() == AggregationRun.Status.SUCCEEDED
    run.refresh_from_db()
    assert (RegionConsensus.objects.filter(run=run).count(), WorkerReliability.objects.filter(run=run).count()) == before


def test_api_queues_a_region_method_and_refuses_a_class_one(admin_user):
    project = region_project(Kind.BOXES)
    MembershipFactory(project=project, user=admin_user, role=Membership.Role.ADMIN)
    from tests.conftest import _api_client

    client = _api_client(admin_user)
    ok = client.post(f"/api/projects/{project.pk}/aggregations/", {"method": "box_consensus"}, format="json")
    assert ok.status_code == 202, ok.content
    bad = client.post(f"/api/projects/{project.pk}/aggregations/", {"method": "dawid_skene"}, format="json")
    assert bad.status_code == 400
    assert "box_consensus" in bad.json()["method"][0]
