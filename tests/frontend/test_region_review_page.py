"""The review page of a region project (issue 17): an expert sees each crowd annotator's boxes
(toggleable) and the consensus over the image, accepts the consensus on one item; another
expert edits the consensus of the next (deletes a box, draws one) and submits it."""

from __future__ import annotations

import pytest

from labeling.models import AggregationRun, ExpertLabel, Item, Membership, Project, RegionAnswer
from labeling.services.aggregation import aggregate_project
from labeling.services.review import answer_regions
from tests.factories import MembershipFactory, UserFactory
from tests.frontend.test_region_label_page import (
    assert_points_close,
    click,
    drag,
    region_project,
)
from tests.labeling.test_region_aggregation import box, vote

pytestmark = pytest.mark.slow

# Blood-smear boxes as test_region_label_page's images draw them: the white cell, two red cells.
WBC, RBC_1, RBC_2 = (150, 100, 200, 150), (40, 30, 90, 75), (230, 160, 280, 210)


def crowd_boxes_project() -> tuple[Project, list[Item]]:
    """Two smears, three annotators each: two careful, one who adds a box nobody else saw; then
    the default method's run. Every item goes to review (a strict project: 0.9999)."""
    project = region_project(Project.TaskType.BOXES, "Blood cells (review)")
    Project.objects.filter(pk=project.pk).update(default_method="auto", confidence_threshold=0.9999)
    project.refresh_from_db()
    crowd = [UserFactory(username=f"smear-crowd-{i}") for i in range(3)]
    for user in crowd:
        MembershipFactory(project=project, user=user, role=Membership.Role.CROWD)
    items = list(project.items.order_by("id"))
    for item in items:
        for i, user in enumerate(crowd):
            d = 1.0 if i == 1 else 0.0
            marks = [box(*WBC, label=0), box(RBC_1[0] + d, RBC_1[1], RBC_1[2] + d, RBC_1[3], label=1)]
            marks.append(box(*RBC_2, label=1) if i < 2 else box(300, 20, 340, 60, label=1))
            vote(item, user, marks)
    run = aggregate_project(project.pk, "auto")
    assert run.status == AggregationRun.Status.SUCCEEDED, run.failure_reason
    return project, items


def expert(project: Project, username: str):
    user = UserFactory(username=username)
    MembershipFactory(project=project, user=user, role=Membership.Role.EXPERT)
    return user


def open_review(page, login, live_server, project: Project, username: str) -> int:
    login(page, username)
    page.goto(f"{live_server.url}/review/{project.id}/")
    page.wait_for_selector("[data-testid=review-app][data-ready=true]")
    return int(page.get_attribute("[data-testid=review-app]", "data-item-id"))


def consensus_regions(item: Item) -> list[dict]:
    run = AggregationRun.objects.filter(project=item.project, status="succeeded").latest("id")
    return [
        {k: v for k, v in r.items() if k != "confidence"}
        for r in run.region_consensus.get(item=item).regions
    ]


def by_position(regions: list[dict]) -> list[dict]:
    return sorted(regions, key=lambda r: (r["points"][0][0], r["points"][0][1]))


def test_expert_accepts_a_consensus_and_another_edits_one(
    page, new_page, login, live_server, artifacts_dir, browser_errors
):
    project, items = crowd_boxes_project()
    first_expert, second_expert = expert(project, "expert-accepts"), expert(project, "expert-edits")
    consensus = {item.pk: consensus_regions(item) for item in items}
    assert all(len(c) == 3 for c in consensus.values()), consensus  # the odd box is left out

    # 1: the evidence, then accept.
    shown = open_review(page, login, live_server, project, first_expert.username)
    assert shown == items[0].pk
    assert page.get_attribute("[data-testid=review-app]", "data-mode") == "view"
    annotators = page.inner_text("[data-testid=annotator-layers]")
    assert page.locator("[data-testid=annotator-layers] input[type=checkbox]").count() == 3
    assert "smear-crowd" not in annotators and "sens." in annotators
    assert "confidence" in page.inner_text("[data-testid=consensus-layer]")
    # the third annotator's boxes off, then on again; the consensus stays shown
    page.click("[data-testid=layer-annotator-3]")
    assert not page.is_checked("[data-testid=layer-annotator-3]")
    page.click("[data-testid=layer-annotator-3]")
    assert page.is_checked("[data-testid=layer-annotator-3]") and page.is_checked("[data-testid=layer-consensus]")
    assert page.is_hidden("[data-testid=region-tools]")  # nothing to draw until accept/edit/redraw
    page.screenshot(path=str(artifacts_dir / "region-review-page.png"))
    page.click("[data-testid=accept-consensus]")
    page.wait_for_function(
        "first => { const app = document.querySelector('[data-testid=review-app]');"
        " return app.dataset.ready === 'true' && app.dataset.itemId !== String(first); }",
        arg=shown,
    )
    accepted = Item.objects.get(pk=items[0].pk)
    answer = RegionAnswer.objects.get(pk=accepted.expert_regions_id)
    assert answer.expert == first_expert and answer.source == ExpertLabel.Source.REVIEW
    stored = by_position(answer_regions([answer.pk])[answer.pk])
    expected = by_position(consensus[items[0].pk])
    assert [(r["label"], r["shape"]) for r in stored] == [(r["label"], r["shape"]) for r in expected]
    for got, want in zip(stored, expected, strict=True):
        assert_points_close(got["points"], want["points"], tolerance=0.01)
    assert not accepted.needs_review

    # 2: another expert starts from the consensus of the item left, deletes a red cell's box
    # and draws one more, then submits.
    other = new_page()
    shown = open_review(other, login, live_server, project, second_expert.username)
    assert shown == items[1].pk  # the accepted item left the queue
    other.click("[data-testid=edit-consensus]")
    assert other.get_attribute("[data-testid=review-app]", "data-mode") == "edit"
    assert other.get_attribute("[data-testid=region-canvas]", "data-count") == "3"
    other.keyboard.press("v")
    click(other, 65, 50)
    other.keyboard.press("Delete")
    other.keyboard.press("x")
    other.keyboard.press("2")
    drag(other, (100, 180), (140, 225))
    assert other.get_attribute("[data-testid=region-canvas]", "data-count") == "3"
    other.fill("[data-testid=note]", "one red cell box was two cells")
    other.click("[data-testid=submit-regions]")
    other.wait_for_selector("[data-testid=review-app][data-finished=true]")
    edited = Item.objects.get(pk=items[1].pk)
    answer = RegionAnswer.objects.get(pk=edited.expert_regions_id)
    assert answer.expert == second_expert and answer.note == "one red cell box was two cells"
    stored = by_position(answer_regions([answer.pk])[answer.pk])
    kept = [r for r in by_position(consensus[items[1].pk]) if r["points"][0][0] > 95]
    assert len(kept) == 2
    want = by_position([*kept, {"label": 1, "shape": "box", "points": [[100, 180], [140, 225]]}])
    assert [(r["label"], r["shape"]) for r in stored] == [(r["label"], r["shape"]) for r in want]
    for got, expected_box in zip(stored, want, strict=True):
        assert_points_close(got["points"], expected_box["points"])
    assert "All 1 items reviewed" in other.inner_text("[data-testid=status]")
    assert browser_errors == []


def test_blind_holdout_mask_is_drawn_without_the_crowds_regions(
    page, login, live_server, artifacts_dir, browser_errors
):
    project = region_project(Project.TaskType.MASKS, "Blood cells (blind masks)", n_items=1)
    Project.objects.filter(pk=project.pk).update(default_method="auto")
    (item,) = project.items.all()
    Item.objects.filter(pk=item.pk).update(is_holdout=True)
    crowd = [UserFactory(username=f"mask-crowd-{i}") for i in range(2)]
    for i, user in enumerate(crowd):
        MembershipFactory(project=project, user=user, role=Membership.Role.CROWD)
        x0 = 150 + 4 * i
        square = [[x0, 100], [x0 + 50, 100], [x0 + 50, 150], [x0, 150]]
        vote(item, user, [{"label": 0, "shape": "polygon", "points": square}])
    run = aggregate_project(project.pk, "auto")
    assert run.status == AggregationRun.Status.SUCCEEDED and run.holdout_size == 0
    reviewer = expert(project, "blind-expert")

    assert open_review(page, login, live_server, project, reviewer.username) == item.pk
    assert page.get_attribute("[data-testid=review-app]", "data-mode") == "blind"
    assert "Blind hold-out" in page.inner_text("[data-testid=mode]")
    assert "Hidden" in page.inner_text("[data-testid=annotator-layers]")
    assert page.locator("[data-testid=annotator-layers] input").count() == 0
    for button in ("accept-consensus", "edit-consensus", "redraw"):
        assert page.is_disabled(f"[data-testid={button}]")
    assert "mask-crowd" not in page.content() and "150" not in page.inner_text("[data-testid=region-panel]")
    # the expert's own outline of the white cell, closed on its first vertex
    for x, y in [(150, 100), (200, 100), (200, 150), (150, 150), (150, 100)]:
        click(page, x, y)
    assert page.get_attribute("[data-testid=region-canvas]", "data-count") == "1"
    page.screenshot(path=str(artifacts_dir / "region-review-blind.png"))
    page.keyboard.press("Control+Enter")
    page.wait_for_selector("[data-testid=review-app][data-finished=true]")
    item.refresh_from_db()
    answer = item.expert_regions
    assert answer.source == ExpertLabel.Source.HOLDOUT and answer.expert == reviewer
    (stored,) = answer_regions([answer.pk])[answer.pk]
    assert stored["shape"] == "polygon"
    assert_points_close(stored["points"], [[150, 100], [200, 100], [200, 150], [150, 150]])
    # the run is scored against it at once: the crowd's mask (x 152..202) against the expert's
    run.refresh_from_db()
    assert run.holdout_size == 1 and run.selection["holdout_metric"] == "dice"
    assert 0.9 < run.holdout_accuracy < 1.0
    assert browser_errors == []
