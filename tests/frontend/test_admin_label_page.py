"""Issue 18 in Chromium: a project admin opens the label page from the home page and votes by
keyboard as a crowd worker does; each role meets the site's 404 page."""

from __future__ import annotations

import pytest

from labeling.models import Vote
from tests.frontend.test_label_page import chest_item, wait_for_new_item

pytestmark = pytest.mark.slow


def test_admin_labels_from_the_home_page(
    project, admin_user, page, login, live_server, artifacts_dir, browser_errors
):
    items = [chest_item(project, n) for n in range(3)]
    login(page, admin_user.username)
    page.click(f"[data-testid=projects] a[href='/label/{project.id}/']")
    page.wait_for_selector("[data-testid=label-app][data-ready=true]")
    first = wait_for_new_item(page, -1)
    assert first in {i.pk for i in items}
    page.screenshot(path=str(artifacts_dir / "admin_label_page.png"))
    page.keyboard.press("2")
    wait_for_new_item(page, first)
    # The page shows the next item while the vote is on its way: its progress line counts it.
    page.wait_for_function(
        "() => document.querySelector('[data-testid=progress]').textContent.startsWith('1 ')"
    )
    vote = Vote.objects.get(worker=admin_user)
    assert (vote.item_id, vote.label.name) == (first, "pneumonia")
    assert browser_errors == []


@pytest.mark.parametrize("role", ["crowd", "expert", "admin"])
def test_each_role_meets_the_404_page(
    role, project, crowd_user, expert_user, admin_user, new_page, login, live_server, artifacts_dir
):
    user = {"crowd": crowd_user, "expert": expert_user, "admin": admin_user}[role]
    page = new_page(1000, 560)
    login(page, user.username)
    response = page.goto(f"{live_server.url}/projects/999999/")
    assert response.status == 404
    assert page.locator("header.topbar").is_visible()
    assert page.inner_text("[data-testid=username]") == user.username
    page.screenshot(path=str(artifacts_dir / f"error_404_{role}.png"))
    page.click("[data-testid=error-back]")
    page.wait_for_url(f"{live_server.url}/")
