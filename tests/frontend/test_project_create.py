"""Creating a project from the site: who may, the form's errors, nothing half-written, and the
creator as the project's admin (issue 18)."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from django.test import Client

from labeling.models import LabelClass, Membership, Project
from tests.factories import UserFactory

FORM = {
    "name": "Skin lesions", "question": "Is this lesion malignant?", "task_type": "image",
    "overlap": "3", "max_overlap": "5", "gold_rate": "0.1", "holdout_fraction": "0.2",
    "confidence_threshold": "0.9", "default_method": "dawid_skene", "expected_channels": "3",
    "patch_size": "128", "patch_stride": "128", "description": "",
}


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def creator(db):
    """Not site staff: holds the "add project" permission."""
    user = UserFactory(username="creator")
    user.user_permissions.add(Permission.objects.get(codename="add_project"))
    return user


def test_permitted_user_creates_a_project_and_becomes_its_admin(creator):
    client = _client(creator)
    assert 'data-testid="new-project"' in client.get("/").content.decode()
    assert client.get("/projects/new/").status_code == 200
    response = client.post("/projects/new/", {**FORM, "classes": ["benign", " malignant ", "unclear"]})
    project = Project.objects.get(name="Skin lesions")
    assert response.status_code == 302 and response["Location"] == f"/projects/{project.id}/import/"
    assert project.class_names == ["benign", "malignant", "unclear"]
    assert (project.holdout_fraction, project.expected_channels, project.created_by) == (0.2, 3, creator)
    assert Membership.objects.get(project=project, user=creator).role == Membership.Role.ADMIN
    assert client.get(f"/projects/{project.id}/").status_code == 200  # the dashboard is theirs


def test_staff_create_with_defaults_for_empty_fields(staff_user):
    response = _client(staff_user).post(
        "/projects/new/", {"name": "Defaults", "classes": ["a", "b"], "overlap": "", "gold_rate": ""}
    )
    assert response.status_code == 302
    project = Project.objects.get(name="Defaults")
    assert (project.overlap, project.gold_rate) == (3, 0.1)


@pytest.mark.parametrize(
    "change, field, message",
    [
        ({"classes": ["only"]}, "classes", "at least"),
        ({"classes": ["a", "A"]}, "classes", "unique"),
        ({"classes": ["a", ""]}, "classes", "blank"),
        ({"classes": ["a", "unsure"]}, "classes", "reserved"),
        ({"classes": [f"c{i}" for i in range(10)]}, "classes", "9"),
        ({"name": ""}, "name", "required"),
        ({"gold_rate": "1.5"}, "gold_rate", "between 0 and 1"),
        ({"holdout_fraction": "half"}, "holdout_fraction", "valid number"),
        ({"overlap": "6", "max_overlap": "5"}, "max_overlap", "at least the overlap"),
    ],
)
def test_errors_show_in_the_form_and_nothing_is_written(staff_user, change, field, message):
    data = {**FORM, "classes": ["benign", "malignant"], **change}
    response = _client(staff_user).post("/projects/new/", data)
    assert response.status_code == 400
    html = response.content.decode()
    assert 'data-testid="form-errors"' in html
    errors = response.context["errors"]
    assert field in errors and message in " ".join(errors[field]), errors
    # What was typed comes back.
    assert f'value="{data["classes"][0]}"' in html
    assert not Project.objects.exists() and not LabelClass.objects.exists()


def test_duplicate_name_is_refused(staff_user, project):
    response = _client(staff_user).post("/projects/new/", {**FORM, "name": project.name, "classes": ["a", "b"]})
    assert response.status_code == 400 and "already exists" in response.context["errors"]["name"][0]
    assert Project.objects.count() == 1


def test_others_may_not_create(project, admin_page, crowd_page, anon_page):
    # A project admin without the permission is not a site-wide creator.
    assert admin_page.get("/projects/new/").status_code == 403
    assert crowd_page.post("/projects/new/", {**FORM, "classes": ["a", "b"]}).status_code == 403
    assert anon_page.get("/projects/new/").status_code == 302
    assert Project.objects.count() == 1
    assert 'data-testid="new-project"' not in admin_page.get("/").content.decode()


def test_create_form_in_the_browser(staff_user, page, login, live_server, artifacts_dir, browser_errors):
    login(page, staff_user.username)
    page.click("[data-testid=new-project]")
    page.fill("[data-testid=field-name]", "Retina scans")
    page.fill("input[aria-label='class 1']", "healthy")
    page.fill("input[aria-label='class 2']", "Healthy")
    page.click("#add-class")
    page.fill("input[aria-label='class 3']", "retinopathy")
    page.fill("input[name=gold_rate]", "2")
    page.click("[data-testid=create-project]")
    page.wait_for_selector("[data-testid=form-errors]")
    assert "unique" in page.inner_text("[data-testid=error-classes]")
    assert "between 0 and 1" in page.inner_text("[data-testid=error-gold_rate]")
    page.screenshot(path=str(artifacts_dir / "project_create_error.png"), full_page=True)
    assert not Project.objects.exists()
    # Fix both and remove the extra row: created, and on to the import page.
    page.fill("input[aria-label='class 2']", "diseased")
    page.click("button[aria-label='remove class 3']")
    page.fill("input[name=gold_rate]", "0.1")
    page.click("[data-testid=create-project]")
    page.wait_for_url(f"{live_server.url}/projects/*/import/")
    assert Project.objects.get(name="Retina scans").class_names == ["healthy", "diseased"]
    assert browser_errors == []
