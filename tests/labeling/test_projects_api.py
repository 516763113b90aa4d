import pytest

from labeling.models import Project


@pytest.mark.django_db
def test_site_admin_creates_project_with_classes(staff_client):
    response = staff_client.post(
        "/api/projects/",
        {"name": "Blood smears", "classes": ["NEUTROPHIL", "LYMPHOCYTE", "MONOCYTE"], "overlap": 5,
         "max_overlap": 7, "gold_rate": 0.1, "holdout_fraction": 0.2, "task_type": "image"},
        format="json",
    )
    assert response.status_code == 201, response.content
    project = Project.objects.get(name="Blood smears")
    assert project.class_names == ["NEUTROPHIL", "LYMPHOCYTE", "MONOCYTE"]
    assert [c["key"] for c in response.json()["label_classes"]] == ["1", "2", "3"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    "classes, message",
    [(["only"], "at least"), (["a", "A"], "unique"), (["a", "unsure"], "reserved"), (["a", ""], "")],
)
def test_bad_classes_are_refused(staff_client, classes, message):
    response = staff_client.post("/api/projects/", {"name": "x", "classes": classes}, format="json")
    assert response.status_code == 400
    assert message in str(response.json())
    assert not Project.objects.filter(name="x").exists()


@pytest.mark.django_db
def test_only_site_admins_create_projects(admin_client, crowd_client, anon_client):
    payload = {"name": "y", "classes": ["a", "b"]}
    assert admin_client.post("/api/projects/", payload, format="json").status_code == 403
    assert crowd_client.post("/api/projects/", payload, format="json").status_code == 403
    assert anon_client.post("/api/projects/", payload, format="json").status_code == 401


@pytest.mark.django_db
def test_crowd_sees_question_and_classes_only(crowd_client, project):
    body = crowd_client.get(f"/api/projects/{project.id}/").json()
    assert set(body) == {"id", "name", "question", "label_classes", "role"}
    listed = crowd_client.get("/api/projects/").json()["results"]
    assert [p["id"] for p in listed] == [project.id]
    assert "holdout_fraction" not in listed[0]


@pytest.mark.django_db
def test_non_member_gets_404(crowd_client, other_project):
    assert crowd_client.get(f"/api/projects/{other_project.id}/").status_code == 404


@pytest.mark.django_db
def test_admin_updates_settings_and_members(admin_client, project, crowd_user):
    response = admin_client.patch(f"/api/projects/{project.id}/", {"overlap": 4}, format="json")
    assert response.status_code == 200
    assert response.json()["overlap"] == 4
    members = admin_client.get(f"/api/projects/{project.id}/members/").json()
    assert {m["username"]: m["role"] for m in members} == {"admin1": "admin", "crowd1": "crowd"}
    assert admin_client.patch(
        f"/api/projects/{project.id}/", {"max_overlap": 1}, format="json"
    ).status_code == 400


@pytest.mark.django_db
def test_expert_and_crowd_cannot_change_project(expert_client, crowd_client, project):
    assert expert_client.patch(f"/api/projects/{project.id}/", {"overlap": 9}, format="json").status_code == 403
    assert crowd_client.patch(f"/api/projects/{project.id}/", {"overlap": 9}, format="json").status_code == 403


@pytest.mark.django_db
def test_schema_is_served(staff_client):
    response = staff_client.get("/api/schema/")
    assert response.status_code == 200
    assert b"/api/projects/" in response.content


@pytest.mark.django_db
def test_admin_deletes_project_with_votes_and_expert_labels(admin_client, project, crowd_user):
    from labeling.models import Item, Vote
    from tests.factories import ItemFactory, give_expert_answer, label_of

    item = ItemFactory(project=project)
    give_expert_answer(item, "pneumonia")
    Vote.objects.create(project=project, item=item, worker=crowd_user,
                        label=label_of(project, "normal"), idempotency_key="k1")
    assert admin_client.delete(f"/api/projects/{project.id}/").status_code == 204
    assert not Item.objects.filter(pk=item.pk).exists()


@pytest.mark.django_db
def test_a_class_in_use_cannot_be_deleted_alone(project, crowd_user):
    from django.db.models import RestrictedError

    from labeling.models import Vote
    from tests.factories import ItemFactory, label_of

    item = ItemFactory(project=project)
    Vote.objects.create(project=project, item=item, worker=crowd_user,
                        label=label_of(project, "normal"), idempotency_key="k1")
    with pytest.raises(RestrictedError):
        label_of(project, "normal").delete()


@pytest.mark.django_db
def test_user_with_the_add_project_permission_creates_and_becomes_admin():
    from django.contrib.auth.models import Permission
    from rest_framework.test import APIClient

    from labeling.models import Membership
    from tests.factories import UserFactory

    user = UserFactory(username="lead")
    user.user_permissions.add(Permission.objects.get(codename="add_project"))
    client = APIClient()
    client.force_authenticate(user)
    response = client.post("/api/projects/", {"name": "z", "classes": ["a", "b"]}, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["role"] == "admin"
    assert Membership.objects.get(project__name="z", user=user).role == Membership.Role.ADMIN


@pytest.mark.django_db
def test_every_bad_field_is_reported_at_once(staff_client):
    response = staff_client.post(
        "/api/projects/",
        {"name": "w", "classes": ["a", "a"], "gold_rate": 2, "holdout_fraction": -0.1, "overlap": 0},
        format="json",
    )
    assert response.status_code == 400
    assert set(response.json()) == {"classes", "gold_rate", "holdout_fraction", "overlap"}
    assert not Project.objects.filter(name="w").exists()
