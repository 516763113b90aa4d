"""Streamed exports: shapes, pseudonyms, no metadata, admins only, constant memory."""

from __future__ import annotations

import csv
import io
import json

import pytest
from django.http import StreamingHttpResponse

from labeling.exports import vote_rows, worker_pseudonym
from labeling.models import ExpertLabel, Vote
from labeling.services import review
from tests.labeling.test_review import build_scene

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def body(response) -> str:
    assert isinstance(response, StreamingHttpResponse)
    return b"".join(response.streaming_content).decode()


def rows(response) -> list[dict]:
    return list(csv.DictReader(io.StringIO(body(response))))


@pytest.fixture
def scene(project):
    return build_scene(project)


def test_votes_csv_in_crowd_kit_shape_with_pseudonyms(scene, admin_client):
    project = scene.project
    Vote.objects.filter(worker=scene.workers[2], item=scene.regular[3]).update(is_excluded=True)
    response = admin_client.get(f"/api/projects/{project.id}/exports/votes.csv")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    data = rows(response)
    assert list(data[0]) == ["task", "worker", "label"]
    assert len(data) == Vote.objects.filter(is_excluded=False).count() == 29
    pseudonyms = {worker_pseudonym(project.id, w.pk) for w in scene.workers}
    assert {r["worker"] for r in data} == pseudonyms
    assert {r["label"] for r in data} == {"normal", "pneumonia"}
    text = body(admin_client.get(f"/api/projects/{project.id}/exports/votes.csv"))
    for leaked in ("scene-worker", "secret-source", ".png", "modality"):
        assert leaked not in text


def test_pseudonyms_are_stable_and_project_specific(project, other_project):
    assert worker_pseudonym(project.id, 5) == worker_pseudonym(project.id, 5)
    assert worker_pseudonym(project.id, 5) != worker_pseudonym(other_project.id, 5)
    assert len(worker_pseudonym(project.id, 5)) == 13


def test_votes_jsonl(scene, admin_client):
    response = admin_client.get(f"/api/projects/{scene.project.id}/exports/votes.jsonl")
    lines = body(response).splitlines()
    assert len(lines) == 30
    first = json.loads(lines[0])
    assert set(first) == {"task", "worker", "label"}
    assert isinstance(first["task"], int)


def test_consensus_csv_per_method_with_posteriors(scene, admin_client):
    project = scene.project
    url = f"/api/projects/{project.id}/exports/consensus.csv"
    default = rows(admin_client.get(url))
    assert len(default) == 10
    assert set(default[0]) == {"task", "method", "label", "confidence", "p_normal", "p_pneumonia"}
    assert {r["method"] for r in default} == {"dawid_skene"}
    for r in default:
        assert float(r["p_normal"]) + float(r["p_pneumonia"]) == pytest.approx(1)
    mv = rows(admin_client.get(url + "?method=majority_vote"))
    assert {r["method"] for r in mv} == {"majority_vote"}
    missing = admin_client.get(url + "?method=glad")
    assert missing.status_code == 404 and "glad" in missing.json()["detail"]


def test_expert_labels_and_holdout_split(scene, admin_client, expert_user):
    project = scene.project
    review.adjudicate(scene.disputed[0], expert_user, "normal", note="looked twice")
    labels = rows(admin_client.get(f"/api/projects/{project.id}/exports/expert_labels.csv"))
    assert labels == [
        {
            "task": str(scene.disputed[0].pk),
            "expert": worker_pseudonym(project.id, expert_user.pk),
            "label": "normal",
            "source": "review",
            "note": "looked twice",
            "created_at": ExpertLabel.objects.get().created_at.isoformat(),
        }
    ]
    split = rows(admin_client.get(f"/api/projects/{project.id}/exports/holdout.csv"))
    assert len(split) == 10
    held = {int(r["task"]) for r in split if r["split"] == "holdout"}
    assert held == {i.pk for i in scene.holdout}
    assert all(r["expert_label"] for r in split if r["split"] == "holdout")


@pytest.mark.parametrize(
    "name", ["votes.csv", "votes.jsonl", "consensus.csv", "expert_labels.csv", "holdout.csv"]
)
def test_exports_are_for_admins_only(project, name, expert_client, crowd_client, anon_client):
    url = f"/api/projects/{project.id}/exports/{name}"
    assert expert_client.get(url).status_code == 403
    assert crowd_client.get(url).status_code == 403
    assert anon_client.get(url).status_code == 401


def test_vote_rows_stream_from_an_iterator(scene, django_assert_max_num_queries):
    """Rows come from a chunked iterator, not a list: the first row needs one chunk's query."""
    generator = vote_rows(scene.project)
    with django_assert_max_num_queries(2):
        first = next(generator)
    assert first[2] in {"normal", "pneumonia"}
    assert sum(1 for _ in generator) == 29
