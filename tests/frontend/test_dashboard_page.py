"""The admin dashboard renders real charts with data, and blocks / unblocks a worker."""

from __future__ import annotations

import pytest

from labeling.models import Membership
from tests.labeling.test_review import build_scene

pytestmark = pytest.mark.slow

CHARTS = ["votes", "agreement", "methods", "calibration"]


def test_dashboard_charts_and_blocking(
    project, admin_user, page, login, live_server, artifacts_dir, browser_errors
):
    scene = build_scene(project)
    login(page, admin_user.username)
    page.goto(f"{live_server.url}/projects/{project.id}/")
    assert page.inner_text("[data-testid=n-items]") == "10"
    assert page.inner_text("[data-testid=n-holdout]") == "4 / 4"
    for name in CHARTS:
        figure = page.locator(f"[data-testid=chart-{name}]")
        svg = figure.locator("svg")
        assert svg.count() == 1, name
        box = svg.bounding_box()
        assert box and box["width"] > 200 and box["height"] > 100, (name, box)
        # Data drawn, not just axes: the charts tag the artists that draw data.
        assert svg.locator("g[id^=data-] path").count() >= 1, name
        figure.screenshot(path=str(artifacts_dir / f"dashboard_chart_{name}.png"))
    assert "No " not in page.inner_text("[data-testid=chart-methods]")
    # Calibration: one panel per method, not seven lines on one axes.
    calibration = page.locator("[data-testid=chart-calibration] svg").text_content()
    assert "dawid_skene (n=4)" in calibration and "majority_vote (n=4)" in calibration
    # Agreement from the vote history: a point per share of the 30 votes, not one per run.
    assert page.locator("[data-testid=chart-agreement] g[id^=data-]").count() == 2  # κ and α
    assert "votes cast" in page.locator("[data-testid=chart-agreement] svg").text_content()
    page.locator("[data-testid=methods]").screenshot(path=str(artifacts_dir / "dashboard_methods.png"))
    methods = page.inner_text("[data-testid=methods] table")
    assert "dawid_skene" in methods and "0.750" in methods and "1.000" in methods
    heatmaps = page.locator("[data-testid=annotators] svg[data-chart=confusion]")
    assert heatmaps.count() == 3
    assert heatmaps.first.locator("rect").count() == 5  # frame + 2 x 2 cells
    page.screenshot(path=str(artifacts_dir / "dashboard_page.png"), full_page=True)

    worker = scene.workers[2]
    page.click(f"[data-testid=block-{worker.username}]")
    page.wait_for_selector(f"[data-testid=unblock-{worker.username}]")
    assert Membership.objects.get(project=project, user=worker).is_blocked
    assert "blocked" in page.inner_text(f"[data-testid=annotator-{worker.username}]")
    page.click(f"[data-testid=unblock-{worker.username}]")
    page.wait_for_selector(f"[data-testid=block-{worker.username}]")
    assert not Membership.objects.get(project=project, user=worker).is_blocked
    assert browser_errors == []


def test_empty_dashboard_still_draws_every_chart(project, admin_user, page, login, live_server):
    login(page, admin_user.username)
    page.goto(f"{live_server.url}/projects/{project.id}/")
    for name in CHARTS:
        svg = page.locator(f"[data-testid=chart-{name}] svg")
        assert svg.count() == 1 and svg.locator("text").count() >= 1
    # No item yet: the histogram says so instead of drawing bars.
    assert page.locator("[data-testid=chart-votes] g[id^=data-]").count() == 0
    assert "No aggregation run has finished yet" in page.inner_text("[data-testid=methods]")


def test_dash_without_holdout_items_is_explained(admin_user, page, login, live_server, artifacts_dir):
    from labeling.models import Membership as Member
    from tests.factories import MembershipFactory, ProjectFactory

    three = ProjectFactory(name="Three classes", classes=["normal", "pneumonia", "other"])
    MembershipFactory(project=three, user=admin_user, role=Member.Role.ADMIN)
    build_scene(three)
    login(page, admin_user.username)
    page.goto(f"{live_server.url}/projects/{three.id}/")
    dash = page.locator("[data-testid=method-dawid_skene] [data-testid=no-holdout-other]")
    assert "No hold-out item has the expert answer other" in dash.get_attribute("title")
    assert "no hold-out item with that expert answer" in page.inner_text("[data-testid=methods-footnote]")
    page.locator("[data-testid=methods]").screenshot(path=str(artifacts_dir / "dashboard_methods_dash.png"))
