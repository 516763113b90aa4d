"""The annotator page as a crowd worker sees their gold standing: a warning as their score nears
the project's bar, then the block (issue 18). Screenshots go to the test artifacts."""

from __future__ import annotations

import pytest

from labeling.models import Membership
from tests.factories import give_expert_answer
from tests.frontend.test_label_page import chest_item, wait_for_new_item

pytestmark = pytest.mark.slow


def test_a_failing_worker_is_warned_then_blocked_on_the_label_page(
    project, crowd_user, page, login, live_server, artifacts_dir, browser_errors
):
    project.gold_rate = 1.0  # every item gold while gold is left
    project.gold_min_answers = 5
    project.gold_accuracy_threshold = 0.5
    project.save()
    for n in range(6):
        give_expert_answer(chest_item(project, n), "pneumonia", gold=True)
    for n in range(6, 9):
        chest_item(project, n)

    login(page, "crowd1")
    page.goto(f"{live_server.url}/label/{project.id}/")
    page.wait_for_selector("[data-testid=label-app][data-ready=true]")
    standing = page.locator("[data-testid=standing]")
    assert standing.is_hidden()
    shown = wait_for_new_item(page, -1)
    page.keyboard.press("1")  # 'normal' on a pneumonia gold: wrong; one miss is no warning
    shown = wait_for_new_item(page, shown)
    assert standing.is_hidden()
    page.keyboard.press("1")
    standing.wait_for(state="visible")
    assert standing.inner_text().startswith("Your gold accuracy is 0% over 2 gold questions.")
    assert "Workers under 50% after 5 gold questions are blocked" in standing.inner_text()
    page.screenshot(path=str(artifacts_dir / "label-gold-warning.png"))

    # The warning holds across a reload (the page renders it) until the score recovers.
    page.reload()
    page.wait_for_selector("[data-testid=label-app][data-ready=true]")
    assert standing.is_visible() and "0% over 2 gold questions" in standing.inner_text()

    shown = wait_for_new_item(page, -1)
    for _ in range(3):
        page.keyboard.press("1")
        if page.locator("[data-testid=blocked]").is_visible():
            break
        shown = wait_for_new_item(page, shown)
    blocked = page.locator("[data-testid=blocked]")
    blocked.wait_for(state="visible")
    assert blocked.inner_text().startswith("You are blocked from this project: gold accuracy 0% over 5")
    assert standing.is_hidden() and page.locator("[data-testid=item-image]").is_hidden()
    assert Membership.objects.get(project=project, user=crowd_user).is_blocked
    page.screenshot(path=str(artifacts_dir / "label-gold-blocked.png"))

    # Coming back later: the page says so at once.
    page.reload()
    blocked.wait_for(state="visible")
    assert "You are blocked from this project" in blocked.inner_text()
    assert all("403" in e or "Forbidden" in e for e in browser_errors)
