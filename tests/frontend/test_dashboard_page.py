"""The admin dashboard renders real charts with data, and blocks / unblocks a worker; a region
project's dashboard scores its runs and annotators by their own measures."""

from __future__ import annotations

import pytest

from labeling.models import AggregationRun, Item, Membership
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


def test_region_dashboard_scores_by_f1_and_names_the_region_run(
    admin_user, page, login, live_server, artifacts_dir, browser_errors
):
    """A boxes project's dashboard: Methods vs experts gives the run's mean F1 on the expert
    hold-out, Annotators the region run's sensitivity and precision, Exports the COCO files."""
    from labeling.models import ExpertLabel, WorkerReliability
    from labeling.models import Membership as Member
    from labeling.services.region_aggregation import rescore_holdout
    from tests.factories import MembershipFactory
    from tests.frontend.test_region_review_page import RBC_1, WBC, crowd_boxes_project
    from tests.labeling.test_region_aggregation import box, expert_answer

    boxes, items = crowd_boxes_project()
    MembershipFactory(project=boxes, user=admin_user, role=Member.Role.ADMIN)
    # the first smear becomes the blind hold-out, answered by an expert who boxed two of the
    # consensus's three cells: the run is rescored, F1 = 2 * 2 / (3 + 2)
    Item.objects.filter(pk=items[0].pk).update(is_holdout=True)
    truth = [box(*WBC, label=0), box(*RBC_1, label=1)]
    expert_answer(items[0], truth, source=ExpertLabel.Source.HOLDOUT)
    rescore_holdout(boxes)
    run = AggregationRun.objects.get(project=boxes, method="auto")
    assert run.holdout_size == 1 and run.holdout_accuracy == pytest.approx(0.8)

    login(page, admin_user.username)
    page.goto(f"{live_server.url}/projects/{boxes.id}/")
    assert page.inner_text("[data-testid=n-holdout]") == "1 / 1"  # answered with regions
    assert page.locator("[data-testid=chart-agreement]").count() == 0  # kappa of class votes
    methods = page.locator("[data-testid=methods]")
    assert page.inner_text("[data-testid=region-score-heading]") == "Mean F1"
    assert page.inner_text("[data-testid=region-score-auto]") == f"{run.holdout_accuracy:.3f}"
    assert "→ box_consensus" in page.inner_text("[data-testid=method-auto]")
    assert "Accuracy" not in methods.inner_text() and "Recall" not in methods.inner_text()
    assert page.locator("[data-testid=chart-methods], [data-testid=chart-calibration]").count() == 0

    source = page.inner_text("[data-testid=annotators-source]")
    assert "from the latest box_consensus run" in source and "dawid_skene" not in source
    for estimate in WorkerReliability.objects.filter(run=run).select_related("worker"):
        row = page.locator(f"[data-testid=annotator-{estimate.worker.username}]")
        assert row.locator("[data-testid=sensitivity]").inner_text() == f"{estimate.detail['sensitivity']:.2f}"
        assert row.locator("[data-testid=precision]").inner_text() == f"{estimate.detail['precision']:.2f}"
    assert "Confusion" not in page.inner_text("[data-testid=annotators] thead")

    links = page.locator("[data-testid=exports] a").all_inner_texts()
    assert links == ["consensus.coco.json", "expert_regions.coco.json", "votes.coco.json", "votes.jsonl"]
    page.screenshot(path=str(artifacts_dir / "region-dashboard.png"), full_page=True)
    assert browser_errors == []
