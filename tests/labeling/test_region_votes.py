"""Region votes (issue 17) through the crowd API and the vote service: bad input, idempotency,
gold scoring and feedback, privacy and roles, on both vote paths (database function, Python)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from rest_framework.authtoken.models import Token

from labeling.aggregation.regions.answers import rle_encode
from labeling.models import (
    Assignment,
    Item,
    LabelClass,
    Membership,
    Project,
    Region,
    RegionAnswer,
    Vote,
    VoteTally,
)
from labeling.services.assignment import InvalidAnswer, LeaseConflict, next_item
from labeling.services.votes import block_worker, submit_vote, unblock_worker, undo_vote
from tests.factories import ItemFactory, ProjectFactory, UserFactory
from tests.lane_client import ServerAPIClient

pytestmark = pytest.mark.django_db

W, H = 100, 80
BOX = {"label": "WBC", "shape": "box", "points": [[10, 10], [30, 30]]}


@pytest.fixture(autouse=True, params=["db-functions", "python"])
def _vote_path(request, settings):
    """Every test once with the database functions (PostgreSQL) and once without."""
    settings.QUORUM_CROWD_DB_FUNCTIONS = request.param == "db-functions"


def region_project(task_type: str = "boxes", **kw) -> Project:
    kw.setdefault("overlap", 2)
    return ProjectFactory(task_type=task_type, classes=["WBC", "RBC"], **kw)


def region_item(project: Project, **kw) -> Item:
    return ItemFactory(project=project, width=W, height=H, **kw)


def member(project: Project, name: str, role: str = Membership.Role.CROWD):
    user = UserFactory(username=name)
    Membership.objects.create(project=project, user=user, role=role)
    return user


def client_of(user) -> ServerAPIClient:
    client = ServerAPIClient()
    token, _ = Token.objects.get_or_create(user=user)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


def next_body(client, project) -> dict:
    response = client.get(f"/api/projects/{project.pk}/next/")
    assert response.status_code == 200, response.content
    return response.json()


def post_vote(client, assignment_id: int, **body):
    return client.post(f"/api/assignments/{assignment_id}/vote/", body, format="json")


def give_expert_regions(item: Item, stored: list[dict], *, gold: bool = True) -> RegionAnswer:
    """An imported expert answer with its Region rows, as the import and review services write."""
    answer = RegionAnswer.objects.create(item=item, source="import")
    classes = list(item.project.label_classes.order_by("index"))
    for r in stored:
        pts = np.asarray(r.get("points", [[0, 0]]), dtype=float)
        Region.objects.create(
            item=item, answer=answer, label=classes[r["label"]], shape=r["shape"],
            x0=pts[:, 0].min(), y0=pts[:, 1].min(), x1=pts[:, 0].max(), y1=pts[:, 1].max(),
            geometry={"points": r["points"]} if r["shape"] == "polygon" else
            {"rle": r["rle"]} if r["shape"] == "mask" else {},
        )  # fmt: skip
    item.expert_regions = answer
    item.is_gold = gold
    item.save(update_fields=["expert_regions", "is_gold"])
    return answer


def test_a_region_vote_is_stored_normalised_and_counts_like_a_label_vote():
    project = region_project()
    item = region_item(project)
    worker = member(project, "drawer")
    client = client_of(worker)
    body = next_body(client, project)
    assert body["task_type"] == "boxes" and body["max_regions"] == project.max_regions
    assert [c["name"] for c in body["classes"]] == ["WBC", "RBC"]
    answer = [BOX, {"label": "RBC", "shape": "box", "points": [[40, 40], [60.5, 70]]}]
    response = post_vote(client, body["id"], regions=answer, idempotency_key="k1")
    assert response.status_code == 201, response.content
    assert response.json()["kind"] == "regions" and response.json()["feedback"] is None
    vote = Vote.objects.get()
    assert vote.kind == Vote.Kind.REGIONS and vote.label_id is None
    assert vote.regions == [
        {"label": 0, "shape": "box", "points": [[10.0, 10.0], [30.0, 30.0]]},
        {"label": 1, "shape": "box", "points": [[40.0, 40.0], [60.5, 70.0]]},
    ]
    item.refresh_from_db()
    assert item.vote_count == 1
    assert sum(VoteTally.objects.filter(project=project).values_list("votes", flat=True)) == 1
    assert Assignment.objects.get(pk=body["id"]).status == Assignment.Status.SUBMITTED
    # one vote per worker per item: the item is not served to them again
    assert client.get(f"/api/projects/{project.pk}/next/").status_code == 204


def test_an_empty_set_is_an_answer_and_kind_may_be_explicit():
    project = region_project("points")
    region_item(project)
    client = client_of(member(project, "nothing"))
    body = next_body(client, project)
    response = post_vote(client, body["id"], regions=[], kind="regions", idempotency_key="e")
    assert response.status_code == 201, response.content
    assert Vote.objects.get().regions == []
    assert Item.objects.get().vote_count == 1


BAD = [
    ("boxes", [{"label": "WBC", "shape": "box", "points": [[5, 5], [5, 9]]}], "region 0: the box has zero area"),
    ("boxes", [BOX, {"label": "WBC", "shape": "box", "points": [[90, 10], [120, 20]]}],
     "region 1: the box (90, 10)-(120, 20) is outside the image (100 x 80)"),
    ("points", [{"label": "WBC", "shape": "point", "points": [[101, 5]]}],
     "region 0: point (101, 5) is outside the image (100 x 80)"),
    ("masks", [{"label": "WBC", "shape": "polygon", "points": [[1, 1], [5, 5]]}],
     "region 0: a polygon needs at least 3 vertices, got 2"),
    ("masks", [{"label": "WBC", "shape": "polygon", "points": [[0, 0], [10, 10], [10, 0], [0, 10]]}],
     "region 0: the polygon intersects itself"),
    ("masks", [{"label": "WBC", "shape": "mask", "rle": {"size": [W, H], "counts": [W * H]}}],
     "region 0: the mask's size [100, 80] is not the image's [80, 100] (height, width)"),
    ("boxes", [BOX] * 4, "4 regions is more than this project's limit of 3"),
    ("boxes", [{**BOX, "label": "platelet"}], "region 0: unknown class 'platelet'; this project's classes are WBC, RBC"),
    ("points", [BOX], "region 0: a box is not allowed in a points project; use point"),
]


@pytest.mark.parametrize(("task_type", "regions", "message"), BAD)
def test_every_bad_answer_is_a_400_naming_the_region_and_writes_nothing(task_type, regions, message):
    project = region_project(task_type, max_regions=3)
    region_item(project)
    client = client_of(member(project, "sloppy"))
    body = next_body(client, project)
    response = post_vote(client, body["id"], regions=regions, idempotency_key="bad")
    assert response.status_code == 400, response.content
    assert response.json() == {"detail": message}
    assert not Vote.objects.exists()
    assert Item.objects.get().vote_count == 0
    assert not VoteTally.objects.filter(project=project, votes__gt=0).exists()
    assert Assignment.objects.get(pk=body["id"]).status == Assignment.Status.OPEN
    # the lease is still theirs: a corrected answer goes in
    fixed = post_vote(client, body["id"], regions=[], idempotency_key="good")
    assert fixed.status_code == 201


def test_class_votes_on_region_projects_and_regions_on_class_projects_are_400():
    project = region_project()
    region_item(project)
    client = client_of(member(project, "mixed"))
    body = next_body(client, project)
    response = post_vote(client, body["id"], label="WBC", idempotency_key="c")
    assert response.status_code == 400
    assert response.json() == {"detail": "this is a boxes project: answer with regions, not a class label"}
    classes = ProjectFactory(classes=["normal", "abnormal"])
    ItemFactory(project=classes)
    other = client_of(member(classes, "classy"))
    lease = next_body(other, classes)
    response = post_vote(other, lease["id"], regions=[], idempotency_key="r")
    assert response.status_code == 400
    assert response.json() == {"detail": "this project takes a class label, not regions"}
    assert "task_type" not in lease
    both = post_vote(client, body["id"], regions=[], label="WBC", idempotency_key="b")
    assert both.status_code == 400
    assert both.json() == {"detail": "a 'regions' answer carries no label"}
    assert not Vote.objects.exists()
    # skip is an answer on both kinds of project (it does not count toward the overlap)
    assert post_vote(client, body["id"], kind="skip", idempotency_key="s").status_code == 201
    assert Item.objects.get(project=project).vote_count == 0


def test_a_retry_replays_and_a_key_reused_for_other_regions_is_409():
    project = region_project()
    region_item(project)
    worker = member(project, "retry")
    client = client_of(worker)
    body = next_body(client, project)
    first = post_vote(client, body["id"], regions=[BOX], idempotency_key="same")
    assert first.status_code == 201
    # the same answer spelled differently (ints for floats, explicit kind) is the same answer
    again = post_vote(client, body["id"], regions=[dict(BOX)], kind="regions", idempotency_key="same")
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    for other in ([], [{**BOX, "label": "RBC"}], [{**BOX, "points": [[10, 10], [31, 30]]}]):
        reused = post_vote(client, body["id"], regions=other, idempotency_key="same")
        assert reused.status_code == 409
        assert reused.json() == {"detail": "This idempotency key was already used for another answer."}
    reused = post_vote(client, body["id"], kind="skip", idempotency_key="same")
    assert reused.status_code == 409
    assert Vote.objects.count() == 1 and Item.objects.get().vote_count == 1
    # a fresh key on an answered lease is refused too (one vote per worker and item)
    assert post_vote(client, body["id"], regions=[], idempotency_key="new").status_code == 409


def test_service_undo_block_and_unblock_move_the_count_of_region_votes():
    project = region_project()
    items = [region_item(project) for _ in range(2)]
    worker = member(project, "mover")
    lease = next_item(worker, project)
    submit_vote(worker, lease.pk, label=None, kind="regions", regions=[BOX], idempotency_key="a")
    assert Item.objects.get(pk=lease.item_id).vote_count == 1
    undo_vote(worker, lease.pk)
    assert Item.objects.get(pk=lease.item_id).vote_count == 0 and not Vote.objects.exists()
    with pytest.raises(InvalidAnswer, match="needs its regions"):
        submit_vote(worker, lease.pk, label=None, kind="regions", idempotency_key="c")
    submit_vote(worker, lease.pk, label=None, kind="regions", regions=[], idempotency_key="b")
    membership = Membership.objects.get(project=project, user=worker)
    block_worker(membership, reason="test")
    assert [i.vote_count for i in Item.objects.filter(pk__in=[i.pk for i in items]).order_by("pk")] == [0, 0]
    unblock_worker(project, worker)
    assert Item.objects.get(pk=lease.item_id).vote_count == 1
    with pytest.raises(LeaseConflict):
        submit_vote(worker, lease.pk, label=None, kind="regions", regions=[], idempotency_key="d")


POINTS_TRUTH = [
    {"label": 0, "shape": "point", "points": [[10, 10]]},
    {"label": 0, "shape": "point", "points": [[50, 50]]},
    {"label": 1, "shape": "point", "points": [[80, 20]]},
]


def test_gold_points_are_scored_by_f1_and_the_feedback_shows_the_expert_after_answering():
    project = region_project("points", gold_rate=1.0, region_match_distance=8)
    item = region_item(project)
    give_expert_regions(item, POINTS_TRUTH)
    client = client_of(member(project, "golden"))
    body = next_body(client, project)
    assert body["item"]["id"] == item.pk
    text = json.dumps(body)
    assert "expert" not in text and "80, 20" not in text and "is_gold" not in text
    answer = [
        {"label": "WBC", "shape": "point", "points": [[13, 14]]},  # 5 px: found
        {"label": "WBC", "shape": "point", "points": [[50, 60]]},  # 10 px: beyond 8
        {"label": "RBC", "shape": "point", "points": [[80, 21]]},  # found
    ]
    response = post_vote(client, body["id"], regions=answer, idempotency_key="g")
    assert response.status_code == 201, response.content
    feedback = response.json()["feedback"]
    assert feedback["gold"] is True and feedback["metric"] == "f1"
    assert feedback["score"] == pytest.approx(4 / 6) and feedback["correct"] is True
    assert feedback["expert_regions"] == [
        {"label": "WBC", "shape": "point", "points": [[10.0, 10.0]]},
        {"label": "WBC", "shape": "point", "points": [[50.0, 50.0]]},
        {"label": "RBC", "shape": "point", "points": [[80.0, 20.0]]},
    ]
    assert feedback["standing"]["answered"] == 1 and feedback["standing"]["accuracy"] == 1.0
    vote = Vote.objects.get()
    assert vote.was_gold and vote.gold_correct is True
    # a replay shows the same feedback
    again = post_vote(client, body["id"], regions=answer, idempotency_key="g")
    assert again.status_code == 200
    assert again.json()["feedback"]["score"] == pytest.approx(4 / 6)
    assert again.json()["feedback"]["expert_regions"] == feedback["expert_regions"]


def test_a_gold_answer_under_half_counts_wrong_and_blocks_by_the_usual_rule():
    project = region_project("boxes", gold_rate=1.0, gold_min_answers=2, gold_accuracy_threshold=0.6)
    for _ in range(3):
        give_expert_regions(region_item(project), [{"label": 0, "shape": "box", "points": [[10, 10], [30, 30]]}])
    worker = member(project, "careless")
    client = client_of(worker)
    scores = []
    for n in range(2):
        body = next_body(client, project)
        # shifted so far that IoU < 0.5: F1 = 0
        response = post_vote(client, body["id"], regions=[{**BOX, "points": [[25, 25], [45, 45]]}],
                             idempotency_key=f"k{n}")
        assert response.status_code == 201
        scores.append(response.json()["feedback"])
    assert [f["score"] for f in scores] == [0.0, 0.0] and not any(f["correct"] for f in scores)
    assert scores[-1]["standing"]["status"] == "blocked"
    assert Membership.objects.get(project=project, user=worker).is_blocked
    assert client.get(f"/api/projects/{project.pk}/next/").status_code == 403


def test_gold_masks_are_scored_by_dice_and_skip_still_shows_the_expert():
    project = region_project("masks", gold_rate=1.0)
    truth = np.zeros((H, W), bool)
    truth[10:30, 10:30] = True
    items = [region_item(project) for _ in range(2)]
    for item in items:
        give_expert_regions(item, [{"label": 0, "shape": "mask", "rle": rle_encode(truth)}])
    client = client_of(member(project, "painter"))
    body = next_body(client, project)
    # the polygon covers the left half of the expert's square: Dice 2*200/(200+400)
    half = {"label": "WBC", "shape": "polygon", "points": [[10, 10], [20, 10], [20, 30], [10, 30]]}
    response = post_vote(client, body["id"], regions=[half], idempotency_key="m")
    feedback = response.json()["feedback"]
    assert feedback["metric"] == "dice" and feedback["score"] == pytest.approx(2 / 3)
    assert feedback["expert_regions"] == [{"label": "WBC", "shape": "mask", "rle": rle_encode(truth)}]
    body = next_body(client, project)
    skipped = post_vote(client, body["id"], kind="skip", idempotency_key="s").json()["feedback"]
    assert skipped["score"] is None and skipped["metric"] is None and skipped["standing"] is None
    assert skipped["expert_regions"] == feedback["expert_regions"]
    assert Vote.objects.get(kind="skip").gold_correct is None


def test_regular_items_never_show_expert_regions_or_other_votes():
    project = region_project("boxes")
    item = region_item(project)
    give_expert_regions(item, [{"label": 1, "shape": "box", "points": [[61.25, 62], [73.5, 74]]}], gold=False)
    first, second = member(project, "first"), member(project, "second")
    a = client_of(first)
    body = next_body(a, project)
    assert post_vote(a, body["id"], regions=[{**BOX, "points": [[11.125, 12], [23, 24]]}],
                     idempotency_key="a").json()["feedback"] is None
    b = client_of(second)
    seen = next_body(b, project)
    text = json.dumps(seen)
    for secret in ("61.25", "73.5", "11.125", "expert", '"regions"', '"votes"', "consensus", "is_gold"):
        assert secret not in text
    response = post_vote(b, seen["id"], regions=[], idempotency_key="b")
    assert response.json()["feedback"] is None
    assert "61.25" not in response.content.decode() and "11.125" not in response.content.decode()


def test_roles_strangers_and_experts_cannot_vote_regions():
    project = region_project()
    region_item(project)
    worker = member(project, "owner")
    lease = next_body(client_of(worker), project)
    expert = member(project, "expert", Membership.Role.EXPERT)
    assert client_of(expert).get(f"/api/projects/{project.pk}/next/").status_code == 403
    stranger = UserFactory(username="stranger")
    assert post_vote(client_of(stranger), lease["id"], regions=[], idempotency_key="x").status_code == 404
    assert post_vote(client_of(expert), lease["id"], regions=[], idempotency_key="x").status_code == 404
    assert post_vote(ServerAPIClient(), lease["id"], regions=[], idempotency_key="x").status_code in (401, 403)
    assert not Vote.objects.exists()


def test_the_schema_documents_regions():
    from labeling.api.serializers.crowd import VoteRequestSerializer

    data = VoteRequestSerializer(data={"regions": [BOX], "idempotency_key": "k"})
    assert data.is_valid() and data.validated_data["kind"] == "regions"
    assert not VoteRequestSerializer(data={"kind": "regions", "idempotency_key": "k"}).is_valid()
    assert LabelClass.objects.count() == 0


def test_gold_is_drawn_from_items_with_expert_regions():
    from labeling.services.gold import GoldError, draw_gold, set_gold

    project = region_project("points")
    with_regions = [region_item(project) for _ in range(3)]
    for item in with_regions:
        give_expert_regions(item, POINTS_TRUTH, gold=False)
    bare = region_item(project)
    assert sorted(draw_gold(project, fraction=1.0)) == sorted(i.pk for i in with_regions)
    with pytest.raises(GoldError, match=f"Gold items need an expert answer: \\[{bare.pk}\\]"):
        set_gold([bare], True)
    assert set_gold(with_regions[:1], False) == 1
    assert set_gold(with_regions[:1], True) == 1


def test_a_late_region_vote_is_taken_while_a_slot_is_free_and_refused_once_full():
    from datetime import timedelta

    from django.utils import timezone

    project = region_project(overlap=1, max_overlap=1)
    region_item(project)
    late, quick = member(project, "late"), member(project, "quick")
    lease = next_item(late, project)
    Assignment.objects.filter(pk=lease.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
    other = next_item(quick, project)
    assert other is not None and other.item_id == lease.item_id  # the expired lease freed the slot
    submit_vote(quick, other.pk, label=None, kind="regions", regions=[BOX], idempotency_key="q")
    with pytest.raises(LeaseConflict, match="lease expired and the item already has enough votes"):
        submit_vote(late, lease.pk, label=None, kind="regions", regions=[BOX], idempotency_key="l")
    assert Item.objects.get().vote_count == 1 and Vote.objects.count() == 1


def test_the_database_function_sends_region_projects_to_python_and_the_lane_passes_regions_on():
    from django.db import connection

    from labeling.api.crowd_lane import plain_answer
    from labeling.services.votes import record_vote_row

    assert plain_answer(json.dumps({"regions": [], "idempotency_key": "k"}).encode()) is None
    assert plain_answer(json.dumps({"kind": "regions", "idempotency_key": "k"}).encode()) is None
    if connection.vendor != "postgresql":
        pytest.skip("quorum_record_vote is PostgreSQL's")
    project = region_project()
    region_item(project)
    worker = member(project, "direct")
    lease = next_item(worker, project)
    for kind, label in (("label", "WBC"), ("skip", None), ("regions", None)):
        row = record_vote_row(
            worker.pk, lease.pk, label=label, kind=kind, idempotency_key=kind, source="api",
            check_role=True, site_admin=False,
        )  # fmt: skip
        assert (row.outcome, row.project_id) == ("region_project", project.pk)
    assert not Vote.objects.exists() and Item.objects.get().vote_count == 0
    assert Assignment.objects.get(pk=lease.pk).status == Assignment.Status.OPEN


def test_the_dashboard_counts_region_votes_and_their_voters():
    from labeling import reports

    project = region_project("points", gold_rate=1.0)
    give_expert_regions(region_item(project), POINTS_TRUTH)
    region_item(project)
    worker = member(project, "counted")
    client = client_of(worker)
    for key in ("a", "b"):
        body = next_body(client, project)
        assert post_vote(client, body["id"], regions=[], idempotency_key=key).status_code == 201
    assert reports.progress(project)["votes"] == 2
    (row,) = [r for r in reports.annotators(project) if r["votes"]]
    assert (row["votes"], row["gold_answered"], row["gold_accuracy"]) == (2, 1, 0.0)
