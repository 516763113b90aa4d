"""Region projects through the project API: task types, region settings and their validation."""

from __future__ import annotations

import pytest

from labeling.models import Project
from tests.factories import ItemFactory

pytestmark = pytest.mark.django_db


def create(client, **fields):
    body = {"name": "Cells", "classes": ["WBC", "RBC", "platelet"], "task_type": "boxes", **fields}
    return client.post("/api/projects/", body, format="json")


@pytest.mark.parametrize("task_type", ["points", "boxes", "masks"])
def test_a_staff_user_creates_a_region_project_with_its_match_rule(staff_client, task_type):
    response = create(staff_client, task_type=task_type, region_match_distance=6.5,
                      region_match_iou=0.4, max_regions=50)  # fmt: skip
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["task_type"] == task_type
    assert (body["region_match_distance"], body["region_match_iou"], body["max_regions"]) == (6.5, 0.4, 50)
    assert [c["name"] for c in body["label_classes"]] == ["WBC", "RBC", "platelet"]
    project = Project.objects.get(pk=body["id"])
    assert project.is_region_task and project.max_regions == 50


def test_defaults_and_a_single_class_for_regions_only(staff_client):
    body = create(staff_client, classes=["nucleus"], task_type="masks").json()
    assert (body["region_match_distance"], body["region_match_iou"], body["max_regions"]) == (10.0, 0.5, 300)
    one_class = create(staff_client, name="Xray", classes=["normal"], task_type="image")
    assert one_class.status_code == 400
    assert "at least two label classes" in one_class.json()["classes"][0]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("region_match_iou", 0, "Must be above 0 and at most 1."),
        ("region_match_iou", 1.5, "Must be above 0 and at most 1."),
        ("region_match_distance", 0, "Must be a distance in pixels above 0."),
        ("region_match_distance", -3, "Must be a distance in pixels above 0."),
        ("max_regions", 0, "Must be between 1 and 5000."),
        ("max_regions", 100000, "Must be between 1 and 5000."),
        ("task_type", "polygons", '"polygons" is not a valid choice.'),
    ],
)
def test_bad_region_settings_are_400_and_create_nothing(staff_client, field, value, message):
    response = create(staff_client, **{field: value})
    assert response.status_code == 400
    assert response.json()[field] == [message]
    assert not Project.objects.exists()


def test_settings_change_but_the_task_type_not_once_items_exist(admin_client, project):
    url = f"/api/projects/{project.id}/"
    response = admin_client.patch(url, {"task_type": "points", "region_match_distance": 4}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["region_match_distance"] == 4
    ItemFactory(project=project)
    response = admin_client.patch(url, {"task_type": "masks"}, format="json")
    assert response.status_code == 400
    assert response.json() == {"task_type": ["The task type cannot change once the project has items."]}
    assert admin_client.patch(url, {"region_match_iou": 0.75}, format="json").json()["region_match_iou"] == 0.75
    assert admin_client.patch(url, {"region_match_iou": 2}, format="json").status_code == 400
    project.refresh_from_db()
    assert (project.task_type, project.region_match_iou) == ("points", 0.75)


def test_a_member_name_with_a_nul_byte_is_a_400(admin_client, project):
    response = admin_client.post(
        f"/api/projects/{project.id}/members/", {"user": "crowd\x00", "role": "crowd"}, format="json"
    )
    assert response.status_code == 400
    assert response.json() == {"user": ["Null characters are not allowed."]}


@pytest.mark.parametrize(
    ("task_type", "method", "ok"),
    [("masks", "staple", True), ("masks", "auto", True), ("points", "point_consensus", True),
     ("masks", "dawid_skene", False), ("boxes", "staple", False), ("image", "staple", False),
     ("image", "dawid_skene", True), ("image", "auto", True)],
)
def test_the_default_method_must_suit_the_task_type(staff_client, task_type, method, ok):
    """A region project with a class method (or the reverse) would only ever fail its runs."""
    answer = create(staff_client, name=f"{task_type} {method}", task_type=task_type, default_method=method)
    if ok:
        assert answer.status_code == 201, answer.json()
    else:
        assert answer.status_code == 400 and "default_method" in answer.json()
        assert not Project.objects.filter(name=f"{task_type} {method}").exists()
