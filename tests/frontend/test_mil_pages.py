"""MIL in the browser: the run page's attention gallery and localisation, the review page's
heatmap toggled with ``h``."""

from __future__ import annotations

import pytest

from labeling.models import Membership
from tests.factories import MembershipFactory, UserFactory
from tests.training.test_mil_runs import make_bag_project, run_mil

pytestmark = pytest.mark.slow


def test_run_page_gallery_and_review_heatmap_toggle(
    page, login, live_server, artifacts_dir, browser_errors
):
    project = make_bag_project(name="Smears in the browser")
    expert = UserFactory(username="mil-expert")
    MembershipFactory(project=project, user=expert, role=Membership.Role.EXPERT)
    run = run_mil(project, epochs=8)  # long enough for the attention to find the squares
    assert run.status == "succeeded", run.failure_reason
    login(page, expert.username)

    page.goto(f"{live_server.url}/runs/{run.pk}/")
    gallery = page.locator("[data-testid=attention-gallery] img")
    assert gallery.count() == 8
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=heatmap]')]"
        ".every(img => img.complete && img.naturalWidth > 0)"
    )
    assert "Most-attended patch overlaps a region" in page.inner_text("[data-testid=localisation]")
    localisation = run.evaluation.extra["localisation"]
    shown = page.inner_text("[data-testid=argmax-overlap]")
    assert shown == f"{localisation['argmax_box_overlap']:.3f}"
    page.locator("[data-testid=attention-gallery]").scroll_into_view_if_needed()
    page.screenshot(path=str(artifacts_dir / "mil_run_page.png"), full_page=True)

    page.goto(f"{live_server.url}/review/{project.id}/")
    page.wait_for_function(
        "() => document.querySelector('[data-testid=review-app]').dataset.heatmap === 'available'"
    )
    state = page.locator("[data-testid=heatmap-state]")
    assert "press h" in state.inner_text()
    assert page.locator("[data-testid=heatmap]").is_hidden()
    page.keyboard.press("h")
    assert page.get_attribute("[data-testid=review-app]", "data-heatmap") == "shown"
    canvas = page.locator("canvas[data-testid=heatmap]")
    assert canvas.is_visible()
    # the overlay covers the image exactly, wherever the viewer put it
    image_box = page.locator("[data-testid=item-image]").bounding_box()
    canvas_box = canvas.bounding_box()
    for key in ("x", "y", "width", "height"):
        assert canvas_box[key] == pytest.approx(image_box[key], abs=1.5)
    page.screenshot(path=str(artifacts_dir / "mil_review_heatmap.png"))

    first = page.get_attribute("[data-testid=review-app]", "data-item-id")
    page.keyboard.press("j")  # the setting stays on for the next item
    page.wait_for_function(
        "first => { const app = document.querySelector('[data-testid=review-app]');"
        " return app.dataset.itemId !== first && app.dataset.heatmap === 'shown'; }",
        arg=first,
    )
    page.keyboard.press("h")
    assert canvas.is_hidden()
    assert "press h" in state.inner_text()
    assert browser_errors == []
