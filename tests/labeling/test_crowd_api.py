"""The crowd API: next / vote / undo, images, unblocking; and what a crowd token never sees."""

from __future__ import annotations

import json

import pytest

from labeling.models import Assignment, Membership, Vote
from labeling.services.votes import block_worker
from tests.factories import ItemFactory, give_expert_answer

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True, params=["lane", "full-stack"])
def _request_path(request, settings):
    """Every test once through the crowd lane and once through middleware + DRF."""
    settings.QUORUM_CROWD_LANE = request.param == "lane"

NEXT_KEYS = {"id", "expires_at", "item", "classes", "progress"}
ITEM_KEYS = {"id", "width", "height", "channels", "image_url", "thumbnail_url"}
VOTE_KEYS = {"id", "assignment", "kind", "label", "feedback", "progress"}
FORBIDDEN = {"source_name", "metadata", "is_gold", "is_holdout", "expert_answer", "vote_count",
             "votes_wanted", "uncertainty", "votes", "consensus", "needs_review", "content_hash"}


def all_keys(value) -> set[str]:
    if isinstance(value, dict):
        return set(value) | set().union(*(all_keys(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(all_keys(v) for v in value)) if value else set()
    return set()


def next_of(client, project, **params):
    return client.get(f"/api/projects/{project.id}/next/", params)


def vote(client, assignment_id, **body):
    return client.post(f"/api/assignments/{assignment_id}/vote/", body, format="json")


def test_next_vote_retry_shape(crowd_client, project):
    ItemFactory.create_batch(2, project=project)
    response = next_of(crowd_client, project)
    assert response.status_code == 200
    body = response.json()
    assert set(body) == NEXT_KEYS
    assert set(body["item"]) == ITEM_KEYS
    assert body["classes"] == [{"name": "normal", "key": "1"}, {"name": "pneumonia", "key": "2"}]
    assert body["progress"] == {"votes_today": 0, "items_left": 2}
    assert not all_keys(body) & FORBIDDEN
    # Refresh is idempotent: the same lease comes back.
    assert next_of(crowd_client, project).json()["id"] == body["id"]

    first = vote(crowd_client, body["id"], label="pneumonia", idempotency_key="key-1")
    assert first.status_code == 201, first.content
    assert set(first.json()) == VOTE_KEYS
    assert first.json()["feedback"] is None
    assert first.json()["progress"] == {"votes_today": 1, "items_left": 1}
    retry = vote(crowd_client, body["id"], label="pneumonia", idempotency_key="key-1")
    assert retry.status_code == 200
    assert retry.json()["id"] == first.json()["id"]
    assert Vote.objects.get().source == Vote.Source.API


def test_a_second_answer_with_a_new_key_is_409(crowd_client, project):
    ItemFactory(project=project)
    lease = next_of(crowd_client, project).json()["id"]
    assert vote(crowd_client, lease, label="normal", idempotency_key="a").status_code == 201
    again = vote(crowd_client, lease, kind="unsure", idempotency_key="b")
    assert again.status_code == 409
    assert again.json() == {"detail": "This assignment was already answered."}
    assert Vote.objects.count() == 1


def test_next_returns_204_when_nothing_is_left(crowd_client, project):
    assert next_of(crowd_client, project).status_code == 204


def test_prefetch_with_exclude(crowd_client, project):
    ItemFactory.create_batch(3, project=project)
    shown = next_of(crowd_client, project).json()
    behind = next_of(crowd_client, project, exclude=shown["id"]).json()
    assert behind["id"] != shown["id"]
    assert next_of(crowd_client, project, exclude=[shown["id"], behind["id"]]).status_code == 409


@pytest.mark.parametrize(
    "body, status, text",
    [
        ({"label": "tumour", "idempotency_key": "k"}, 400,
         "unknown class 'tumour'; this project's classes are normal, pneumonia"),
        ({"kind": "unsure", "idempotency_key": "k"}, 201, ""),
        ({"kind": "skip", "idempotency_key": "k"}, 201, ""),
        ({"idempotency_key": "k"}, 400, "class name"),
        ({"label": "normal"}, 400, "idempotency_key"),
    ],
)
def test_vote_validation(crowd_client, project, body, status, text):
    ItemFactory(project=project)
    lease = next_of(crowd_client, project).json()
    response = vote(crowd_client, lease["id"], **body)
    assert response.status_code == status, response.content
    assert text in response.content.decode()


def test_late_vote_on_a_full_item_is_409(crowd_client, crowd_user2, project):
    from labeling.services.assignment import next_item
    from labeling.services.votes import submit_vote

    ItemFactory(project=project, votes_wanted=1)
    lease = next_of(crowd_client, project).json()
    Assignment.objects.filter(pk=lease["id"]).update(expires_at="2000-01-01T00:00:00Z")
    other = next_item(crowd_user2, project)
    submit_vote(crowd_user2, other.pk, label="normal", idempotency_key="x")
    response = vote(crowd_client, lease["id"], label="normal", idempotency_key="k")
    assert response.status_code == 409
    assert response.json() == {"detail": "lease expired and the item already has enough votes"}


def test_undo(crowd_client, project):
    ItemFactory(project=project)
    lease = next_of(crowd_client, project).json()
    vote(crowd_client, lease["id"], label="normal", idempotency_key="k")
    response = crowd_client.post(f"/api/assignments/{lease['id']}/undo/")
    assert response.status_code == 200
    assert response.json()["id"] == lease["id"]
    assert set(response.json()) == NEXT_KEYS
    assert not Vote.objects.exists()
    assert crowd_client.post(f"/api/assignments/{lease['id']}/undo/").status_code == 409


def test_gold_and_regular_look_the_same_until_answered(crowd_client, project):
    project.gold_rate = 1.0
    project.save()
    gold = ItemFactory(project=project, source_name="gold-case-17.dcm", metadata={"PatientAge": "041Y"})
    give_expert_answer(gold, "pneumonia", gold=True)
    regular = ItemFactory(project=project)
    gold_lease = next_of(crowd_client, project)
    assert gold_lease.json()["item"]["id"] == gold.id
    text = gold_lease.content.decode()
    for secret in ("gold-case-17", "pneumonia\"}", "PatientAge", "true"):
        assert secret not in text.replace('"name":"pneumonia"', "")
    assert "is_gold" not in text

    answered = vote(crowd_client, gold_lease.json()["id"], label="normal", idempotency_key="g")
    feedback = answered.json()["feedback"]
    assert {k: feedback[k] for k in ("gold", "correct", "expert_label")} == {
        "gold": True, "correct": False, "expert_label": "pneumonia"
    }
    # The worker's own gold score: one miss is not yet a warning (see test_gold.py).
    assert feedback["standing"] == {
        "status": "ok", "accuracy": 0.0, "answered": 1, "threshold": 0.5, "min_answers": 5,
        "message": None,
    }
    regular_lease = next_of(crowd_client, project).json()
    assert regular_lease["item"]["id"] == regular.id
    assert set(regular_lease) == set(gold_lease.json())
    assert set(regular_lease["item"]) == set(gold_lease.json()["item"])
    plain = vote(crowd_client, regular_lease["id"], label="normal", idempotency_key="r").json()
    assert set(plain) == set(answered.json()) and plain["feedback"] is None


def test_only_project_crowd_may_label(expert_client, admin_client, anon_client, crowd_client,
                                      project, other_project):
    ItemFactory(project=project)
    assert expert_client.get(f"/api/projects/{project.id}/next/").status_code == 403
    # Project admins label too (issue 18).
    assert admin_client.get(f"/api/projects/{project.id}/next/").status_code == 200
    assert anon_client.get(f"/api/projects/{project.id}/next/").status_code == 401
    assert crowd_client.get(f"/api/projects/{other_project.id}/next/").status_code == 404


def test_another_workers_lease_is_404(crowd_client, crowd_user2, project):
    from rest_framework.test import APIClient

    ItemFactory(project=project)
    lease = next_of(crowd_client, project).json()
    other = APIClient()
    other.force_authenticate(crowd_user2)
    assert vote(other, lease["id"], label="normal", idempotency_key="k").status_code == 404
    assert other.post(f"/api/assignments/{lease['id']}/undo/").status_code == 404


def test_blocked_worker_gets_403_with_reason(crowd_client, crowd_user, project):
    ItemFactory(project=project)
    block_worker(Membership.objects.get(user=crowd_user), reason="gold accuracy 20% is too low")
    response = next_of(crowd_client, project)
    assert response.status_code == 403
    assert "gold accuracy 20%" in response.json()["detail"]


def test_crowd_cannot_read_other_data(crowd_client, crowd_user2, project, other_project):
    """Gold answers, expert labels, others' votes, other projects' items: all closed."""
    from labeling.services.assignment import next_item
    from labeling.services.votes import submit_vote

    item = ItemFactory(project=project, source_name="secret-name.png")
    give_expert_answer(item, "pneumonia", gold=True)
    other_item = ItemFactory(project=other_project)
    project.gold_rate = 1.0
    project.save()
    lease = next_item(crowd_user2, project)
    submit_vote(crowd_user2, lease.pk, label="normal", idempotency_key="x")
    for url in (f"/api/items/{item.id}/image/", f"/api/items/{item.id}/thumbnail/",
                f"/api/items/{other_item.id}/image/"):
        assert crowd_client.get(url).status_code == 404, url
    for url in (f"/api/projects/{project.id}/members/", f"/api/projects/{other_project.id}/"):
        assert crowd_client.get(url).status_code in (403, 404), url
    body = json.dumps(crowd_client.get(f"/api/projects/{project.id}/").json())
    assert "secret-name" not in body and "gold" not in body


def test_images_follow_the_lease(crowd_client, expert_client, project, other_project):
    item = ItemFactory(project=project, source_name="patient-smith.png")
    assert crowd_client.get(f"/api/items/{item.id}/image/").status_code == 404
    lease = next_of(crowd_client, project).json()
    image = crowd_client.get(lease["item"]["image_url"])
    assert image.status_code == 200
    assert image["Content-Type"] == "image/png"
    assert "Content-Disposition" not in image
    assert b"".join(image.streaming_content).startswith(b"\x89PNG")
    assert crowd_client.get(lease["item"]["thumbnail_url"]).status_code == 200
    vote(crowd_client, lease["id"], label="normal", idempotency_key="k")
    assert crowd_client.get(f"/api/items/{item.id}/image/").status_code == 200
    # Experts see every item of their project, none of another project.
    assert expert_client.get(f"/api/items/{item.id}/image/").status_code == 200
    other = ItemFactory(project=other_project)
    assert expert_client.get(f"/api/items/{other.id}/image/").status_code == 404


def test_media_url_is_not_served(crowd_client, project):
    item = ItemFactory(project=project)
    next_of(crowd_client, project)
    assert crowd_client.get(f"/media/{item.image.name}").status_code == 404


def test_admin_unblocks(admin_client, crowd_client, crowd_user, project):
    ItemFactory(project=project)
    block_worker(Membership.objects.get(user=crowd_user), reason="low gold accuracy")
    url = f"/api/projects/{project.id}/members/{crowd_user.id}/unblock/"
    assert crowd_client.post(url).status_code == 403
    response = admin_client.post(url)
    assert response.status_code == 200
    assert response.json()["is_blocked"] is False
    assert next_of(crowd_client, project).status_code == 200


def test_routes_are_in_the_schema(staff_client):
    schema = staff_client.get("/api/schema/").content.decode()
    for route in ("/api/projects/{project_id}/next/", "/api/assignments/{assignment_id}/vote/",
                  "/api/assignments/{assignment_id}/undo/", "/api/items/{item_id}/image/",
                  "/api/projects/{project_id}/members/{user_id}/unblock/"):
        assert route in schema, route


def test_plain_bodies_match_the_documented_serializers(crowd_client, project):
    """The views build their bodies by hand for speed; the schema documents the serializers."""
    from rest_framework.test import APIRequestFactory

    from labeling.api.serializers.crowd import AssignmentSerializer, VoteResponseSerializer
    from labeling.services.assignment import progress

    ItemFactory.create_batch(2, project=project)
    body = next_of(crowd_client, project).json()
    lease = Assignment.objects.select_related("project", "item").get(pk=body["id"])
    request = APIRequestFactory().get("/")
    context = {"request": request, "progress": progress(lease.worker, project)}
    documented = json.loads(json.dumps(AssignmentSerializer(lease, context=context).data))
    assert body == documented
    answered = vote(crowd_client, body["id"], label="normal", idempotency_key="k").json()
    assert set(answered) == set(VoteResponseSerializer().fields)
