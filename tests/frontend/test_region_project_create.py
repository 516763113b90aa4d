"""Creating a region project (points, boxes, masks) from the site: the task types and the three
region settings (match distance, match IoU, region limit), checked, nothing half-written."""

from __future__ import annotations

import pytest
from django.test import Client

from labeling.models import LabelClass, Project

FORM = {
    "name": "Blood cells", "question": "Box every cell", "task_type": "boxes", "overlap": "3",
    "max_overlap": "5", "gold_rate": "0.1", "holdout_fraction": "0.1", "confidence_threshold": "0.9",
    "default_method": "auto", "expected_channels": "3", "patch_size": "128", "patch_stride": "128",
    "region_match_distance": "6", "region_match_iou": "0.4", "max_regions": "120",
    "classes": ["WBC", "RBC", "Platelet"],
}  # fmt: skip


@pytest.fixture
def staff(staff_user) -> Client:
    client = Client()
    client.force_login(staff_user)
    return client


def test_the_form_offers_region_task_types_and_settings(staff):
    html = staff.get("/projects/new/").content.decode()
    for value in ("points", "boxes", "masks"):
        assert f'<option value="{value}"' in html
    for name in ("region_match_distance", "region_match_iou", "max_regions"):
        assert f'name="{name}"' in html
    # The defaults are the model's, and the settings start hidden for the default task (image).
    assert 'value="10.0"' in html and 'value="0.5"' in html and 'value="300"' in html
    assert 'data-testid="region-settings" hidden' in html


@pytest.mark.parametrize("task_type", ["points", "boxes", "masks"])
def test_a_region_project_is_created_with_its_settings(staff, task_type):
    response = staff.post("/projects/new/", {**FORM, "task_type": task_type})
    assert response.status_code == 302
    project = Project.objects.get(name="Blood cells")
    assert project.is_region_task and project.task_type == task_type
    assert (project.region_match_distance, project.region_match_iou, project.max_regions) == (
        6.0,
        0.4,
        120,
    )
    assert project.class_names == ["WBC", "RBC", "Platelet"]


@pytest.mark.parametrize(
    "change, field, message",
    [
        ({"region_match_distance": "0"}, "region_match_distance", "above 0"),
        ({"region_match_distance": "near"}, "region_match_distance", "valid number"),
        ({"region_match_iou": "1.5"}, "region_match_iou", "at most 1"),
        ({"region_match_iou": "0"}, "region_match_iou", "above 0"),
        ({"max_regions": "0"}, "max_regions", "between 1 and"),
        ({"max_regions": "2.5"}, "max_regions", "valid integer"),
    ],
)
def test_bad_region_settings_show_in_the_form_and_nothing_is_written(staff, change, field, message):
    # Another field's error shows beside it: every problem at once.
    response = staff.post("/projects/new/", {**FORM, **change, "gold_rate": "2"})
    assert response.status_code == 400
    errors = response.context["errors"]
    assert message in " ".join(errors[field]), errors
    assert "gold_rate" in errors
    html = response.content.decode()
    assert f'data-testid="error-{field}"' in html
    assert 'data-testid="region-settings" hidden' not in html  # shown, with what was typed
    assert f'value="{change[field]}"' in html
    assert not Project.objects.exists() and not LabelClass.objects.exists()


def test_a_classification_project_ignores_the_hidden_region_settings(staff):
    response = staff.post("/projects/new/", {**FORM, "task_type": "image", "region_match_iou": "7"})
    assert response.status_code == 302
    project = Project.objects.get(name="Blood cells")
    assert not project.is_region_task and project.region_match_iou == 0.5


def test_one_class_is_enough_to_mark_regions_not_to_classify(staff):
    response = staff.post("/projects/new/", {**FORM, "task_type": "points", "classes": ["mitosis"]})
    assert response.status_code == 302
    assert Project.objects.get(name="Blood cells").class_names == ["mitosis"]
    response = staff.post(
        "/projects/new/", {**FORM, "name": "X", "task_type": "image", "classes": ["a"]}
    )
    assert response.status_code == 400 and "at least two" in " ".join(
        response.context["errors"]["classes"]
    )


def test_region_project_form_in_the_browser(staff_user, page, login, live_server, browser_errors):
    login(page, staff_user.username)
    page.goto(f"{live_server.url}/projects/new/")
    settings = page.locator("[data-testid=region-settings]")
    assert settings.is_hidden()
    page.select_option("[data-testid=field-task_type]", "masks")
    settings.wait_for(state="visible")
    page.fill("[data-testid=field-name]", "Nuclei")
    # One class is enough for regions: the second row can go.
    page.fill("input[aria-label='class 1']", "nucleus")
    page.click("button[aria-label='remove class 2']")
    assert page.is_disabled("button[aria-label='remove class 1']")
    page.fill("input[name=max_regions]", "500")
    page.fill("input[name=region_match_iou]", "0.3")
    page.click("[data-testid=create-project]")
    page.wait_for_url(f"{live_server.url}/projects/*/import/")
    project = Project.objects.get(name="Nuclei")
    assert (project.task_type, project.max_regions, project.region_match_iou) == ("masks", 500, 0.3)
    assert project.class_names == ["nucleus"]
    # Back to a class task: the settings hide, and two classes are the least again.
    page.goto(f"{live_server.url}/projects/new/")
    page.select_option("[data-testid=field-task_type]", "points")
    page.click("button[aria-label='remove class 2']")
    page.select_option("[data-testid=field-task_type]", "image")
    assert page.locator("[data-testid=region-settings]").is_hidden()
    assert page.locator("input[name=classes]").count() == 2
    assert browser_errors == []
