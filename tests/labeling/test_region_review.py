"""Expert review of region items: the evidence, the blind hold-out, the answer, and who may see it."""

from __future__ import annotations

import pytest
from django.test import Client

from labeling.exports import worker_pseudonym
from labeling.models import (
    AggregationRun,
    ExpertLabel,
    Item,
    Membership,
    Project,
    Region,
    RegionAnswer,
)
from labeling.services import review
from labeling.services.aggregation import aggregate_project
from tests.conftest import _api_client
from tests.factories import ItemFactory, MembershipFactory, UserFactory
from tests.labeling.test_region_aggregation import box, region_project, vote, workers

pytestmark = pytest.mark.django_db


@pytest.fixture
def scene():
    """A boxes project: one item the crowd disputes, one they agree on, one blind hold-out item
    the crowd also marked, and a run of the default method over them."""
    project = region_project(Project.TaskType.BOXES, classes=("RBC", "WBC"), confidence_threshold=0.9)
    crowd = workers(project, 3)
    disputed = ItemFactory(project=project, width=64, height=64)
    agreed = ItemFactory(project=project, width=64, height=64)
    held = ItemFactory(project=project, width=64, height=64, is_holdout=True)
    vote(disputed, crowd[0], [box(4, 4, 20, 20)])
    vote(disputed, crowd[1], [box(40, 40, 60, 60, label=1)])
    vote(disputed, crowd[2], [])
    for user in crowd:
        vote(agreed, user, [box(4, 4, 20, 20), box(30, 30, 50, 50, label=1)])
        vote(held, user, [box(10, 10, 30, 30)])
    run = aggregate_project(project.pk, "auto")
    assert run.status == AggregationRun.Status.SUCCEEDED, run.failure_reason
    expert = UserFactory(username="region-expert")
    MembershipFactory(project=project, user=expert, role=Membership.Role.EXPERT)
    return {
        "project": project, "crowd": crowd, "disputed": disputed, "agreed": agreed, "held": held,
        "run": run, "expert": expert, "client": _api_client(expert),
    }


def test_queue_holds_the_disputed_item_and_the_blind_holdout(scene):
    queue = list(review.review_queue(scene["project"]))
    assert scene["disputed"] in queue and scene["held"] in queue
    assert scene["agreed"] not in queue
    ids = [r["id"] for r in scene["client"].get(f"/api/projects/{scene['project'].pk}/review/queue/").json()["results"]]
    assert set(ids) == {scene["disputed"].pk, scene["held"].pk}


def test_evidence_shows_each_annotator_pseudonymised_and_the_consensus(scene):
    project, item = scene["project"], scene["agreed"]
    body = scene["client"].get(f"/api/review/{item.pk}/").json()
    assert body["task_type"] == "boxes" and body["blind"] is False
    assert [c["name"] for c in body["classes"]] == ["RBC", "WBC"]
    workers_seen = [a["worker"] for a in body["annotators"]]
    assert workers_seen == [worker_pseudonym(project.pk, u.pk) for u in scene["crowd"]]
    text = str(body)
    assert not any(u.username in text for u in scene["crowd"])
    first = body["annotators"][0]
    assert first["regions"] == [
        {"label": "RBC", "shape": "box", "points": [[4, 4], [20, 20]]},
        {"label": "WBC", "shape": "box", "points": [[30, 30], [50, 50]]},
    ]
    assert 0 <= first["reliability"] <= 1 and first["sensitivity"] is not None
    consensus = body["consensus"]
    assert consensus["method"] == "box_consensus" and consensus["run"] == scene["run"].pk
    assert sorted(r["label"] for r in consensus["regions"]) == ["RBC", "WBC"]
    assert all("confidence" in r for r in consensus["regions"])
    assert 0 <= consensus["confidence"] <= 1 and consensus["agreement"] == pytest.approx(1.0)


def test_blind_holdout_shows_neither_crowd_regions_nor_consensus(scene):
    body = scene["client"].get(f"/api/review/{scene['held'].pk}/").json()
    assert body["blind"] is True
    assert body["annotators"] == [] and body["consensus"] is None and body["reliability_method"] is None
    assert "[10, 10]" not in str(body) and "10.0" not in str(body)


def test_expert_answer_becomes_the_items_regions_and_leaves_the_queue(scene):
    item, client = scene["disputed"], scene["client"]
    regions = [{"label": "WBC", "shape": "box", "points": [[40, 40], [60, 60]]}]
    answer = client.post(f"/api/review/items/{item.pk}/regions/", {"regions": regions, "note": "a white cell"}, format="json")
    assert answer.status_code == 200, answer.content
    body = answer.json()
    assert body["source"] == "review" and body["regions"] == [
        {"label": "WBC", "shape": "box", "points": [[40.0, 40.0], [60.0, 60.0]]}
    ]
    assert body["next"] == scene["held"].pk
    item.refresh_from_db()
    assert not item.needs_review
    stored = RegionAnswer.objects.get(pk=item.expert_regions_id)
    assert stored.source == ExpertLabel.Source.REVIEW and stored.expert == scene["expert"] and stored.note == "a white cell"
    region = Region.objects.get(answer=stored)
    assert (region.label.name, region.shape, region.x0, region.y1) == ("WBC", "box", 40, 60)
    assert item not in review.review_queue(scene["project"])
    # sending again replaces the expert's own answer; an empty set is an answer
    again = client.post(f"/api/review/items/{item.pk}/regions/", {"regions": []}, format="json")
    assert again.status_code == 200
    assert RegionAnswer.objects.filter(item=item).count() == 1
    item.refresh_from_db()
    assert not Region.objects.filter(answer_id=item.expert_regions_id).exists()
    # the next run clamps the adjudicated answer
    run = aggregate_project(scene["project"].pk, "box_consensus")
    assert run.region_consensus.get(item=item).regions == []


def test_bad_regions_are_refused_by_name_and_nothing_is_written(scene):
    item, client = scene["disputed"], scene["client"]
    url = f"/api/review/items/{item.pk}/regions/"
    cases = [
        ([{"label": "WBC", "shape": "box", "points": [[40, 40], [40, 60]]}], "region 0: the box has zero area"),
        ([{"label": "WBC", "shape": "box", "points": [[4, 4], [20, 20]]}, {"label": "platelet", "shape": "box", "points": [[1, 1], [2, 2]]}], "region 1: unknown class"),
        ([{"label": "RBC", "shape": "point", "points": [[4, 4]]}], "not allowed in a boxes project"),
        ([{"label": "RBC", "shape": "box", "points": [[4, 4], [70, 20]]}], "outside the image"),
    ]
    for regions, message in cases:
        response = client.post(url, {"regions": regions}, format="json")
        assert response.status_code == 400, regions
        assert message in response.json()["detail"]
    assert client.post(url, {"note": "no regions"}, format="json").status_code == 400
    assert not RegionAnswer.objects.filter(item=item).exists()
    item.refresh_from_db()
    assert item.needs_review and item.expert_regions_id is None
    # a class label is no answer for a region item
    assert client.post(f"/api/review/{item.pk}/label/", {"label": "RBC"}, format="json").status_code == 400


def test_holdout_answer_scores_the_latest_run_at_once(scene):
    held, client, run = scene["held"], scene["client"], scene["run"]
    assert run.holdout_size == 0
    # the crowd's one box, and one more the expert saw: F1 = 2 * 1 / (1 + 2)
    regions = [
        {"label": "RBC", "shape": "box", "points": [[10, 10], [30, 30]]},
        {"label": "RBC", "shape": "box", "points": [[40, 40], [60, 60]]},
    ]
    response = client.post(f"/api/review/items/{held.pk}/regions/", {"regions": regions}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["source"] == "holdout"
    run.refresh_from_db()
    assert run.holdout_size == 1 and run.holdout_accuracy == pytest.approx(2 / 3)
    assert run.selection["holdout_metric"] == "f1"
    held.refresh_from_db()
    assert held.expert_regions.source == ExpertLabel.Source.HOLDOUT
    assert held not in review.review_queue(scene["project"])
    # a second expert finds it answered
    other = UserFactory(username="second-expert")
    MembershipFactory(project=scene["project"], user=other, role=Membership.Role.EXPERT)
    late = _api_client(other).post(f"/api/review/items/{held.pk}/regions/", {"regions": []}, format="json")
    assert late.status_code == 409
    # and the next run scores it the same way
    again = aggregate_project(scene["project"].pk, "auto")
    assert again.holdout_size == 1 and again.holdout_accuracy == pytest.approx(2 / 3)


def test_crowd_and_other_projects_experts_cannot_use_the_review_api(scene):
    item = scene["agreed"]
    crowd_client = _api_client(scene["crowd"][0])
    stranger = UserFactory(username="other-project-expert")
    other = region_project(Project.TaskType.BOXES, name="Another region project")
    MembershipFactory(project=other, user=stranger, role=Membership.Role.EXPERT)
    stranger_client = _api_client(stranger)
    answer = {"regions": [{"label": "RBC", "shape": "box", "points": [[4, 4], [20, 20]]}]}
    for client, code in ((crowd_client, 403), (stranger_client, 404)):
        assert client.get(f"/api/review/{item.pk}/").status_code == code
        assert client.get(f"/api/projects/{scene['project'].pk}/review/queue/").status_code == code
        assert client.post(f"/api/review/items/{item.pk}/regions/", answer, format="json").status_code == code
    assert not RegionAnswer.objects.filter(item=item).exists()
    assert Item.objects.get(pk=item.pk).expert_regions_id is None


def _admin_client(project) -> Client:
    admin = UserFactory(username="region-admin")
    MembershipFactory(project=project, user=admin, role=Membership.Role.ADMIN)
    client = Client()
    client.force_login(admin)
    return client


def _card(html: str, testid: str) -> str:
    start = html.index(f'data-testid="{testid}"')
    return html[start : html.index("</section>", start)]


def test_dashboard_summarises_the_latest_region_run(scene):
    project, run = scene["project"], scene["run"]
    page = _admin_client(project).get(f"/projects/{project.pk}/")
    assert page.status_code == 200
    summary = _card(page.content.decode(), "region-run")
    assert 'data-testid="region-method">box_consensus<' in summary
    assert f'data-testid="region-items">{run.n_items}<' in summary
    assert f'{run.selection["mean_agreement"]:.3f}' in summary
    assert "hold-out F1" in summary and "no hold-out item with expert regions yet" in summary


def test_dashboard_scores_region_methods_and_annotators_by_their_own_measures(scene):
    """Methods vs experts shows the run's mean F1 on the hold-out, the annotators the region
    run's sensitivity and precision, and the exports are the region ones: nothing class-shaped."""
    project, held = scene["project"], scene["held"]
    # the crowd's one box and one more the expert saw: the run's hold-out F1 becomes 2/3
    regions = [
        {"label": "RBC", "shape": "box", "points": [[10, 10], [30, 30]]},
        {"label": "RBC", "shape": "box", "points": [[40, 40], [60, 60]]},
    ]
    answer = scene["client"].post(f"/api/review/items/{held.pk}/regions/", {"regions": regions}, format="json")
    assert answer.status_code == 200, answer.content
    run = AggregationRun.objects.get(pk=scene["run"].pk)
    assert run.holdout_accuracy == pytest.approx(2 / 3)
    client = _admin_client(project)
    html = client.get(f"/projects/{project.pk}/").content.decode()

    methods = _card(html, "methods")
    assert "Mean F1" in methods and "Accuracy" not in methods and "Recall" not in methods
    row = methods[methods.index('data-testid="method-auto"') :].split("</tr>")[0]
    assert f'data-testid="region-score-auto">{run.holdout_accuracy:.3f}<' in row
    assert "→ box_consensus" in row and "(default)" in row
    assert '<td class="num">1</td>' in row  # one hold-out item scored
    assert 'data-chart="methods"' not in html and 'data-chart="calibration"' not in html
    assert "Cohen" not in html and 'data-testid="expert-agreement"' not in html  # class labels only

    annotators = _card(html, "annotators")
    assert "from the latest box_consensus run" in annotators and "dawid_skene" not in annotators
    assert "Confusion" not in annotators and "Estimated accuracy" not in annotators
    for user in scene["crowd"]:
        row = annotators[annotators.index(f'data-testid="annotator-{user.username}"') :].split("</tr>")[0]
        reliability = run.reliabilities.get(worker=user)
        assert f'data-testid="sensitivity">{reliability.detail["sensitivity"]:.2f}<' in row
        assert f'data-testid="precision">{reliability.detail["precision"]:.2f}<' in row
        assert f"{reliability.accuracy:.2f}" in row and f"block-{user.username}" in row

    exports = _card(html, "exports")
    assert "holdout.csv" not in exports and "votes.csv" not in exports
    for name in ("consensus.coco.json", "expert_regions.coco.json", "votes.coco.json", "votes.jsonl"):
        assert name in exports
    assert "consensus_masks.zip" not in exports  # masks projects only

    # the JSON holds the same numbers
    data = client.get(f"/api/projects/{project.pk}/dashboard/").json()
    assert data["methods"] == [] and data["reliability_method"] == "box_consensus"
    assert (data["progress"]["holdout_labelled"], data["progress"]["holdout_total"]) == (1, 1)
    (method,) = data["region_methods"]
    assert method["method"] == "auto" and method["chosen"] == "box_consensus"
    assert (method["metric"], method["metric_label"], method["n"]) == ("f1", "Mean F1", 1)
    assert method["score"] == pytest.approx(2 / 3)
    assert data["region_run"]["run"] == run.pk and data["region_run"]["holdout_score"] == pytest.approx(2 / 3)
    by_name = {a["username"]: a for a in data["annotators"]}
    for user in scene["crowd"]:
        detail = run.reliabilities.get(worker=user).detail
        assert by_name[user.username]["sensitivity"] == detail["sensitivity"]
        assert by_name[user.username]["precision"] == detail["precision"]


def test_region_holdout_is_answered_on_the_review_page_not_by_class(scene):
    held, expert = scene["held"], scene["expert"]
    client = Client()
    client.force_login(expert)
    page = client.get(f"/holdout/{scene['project'].pk}/")
    assert page.status_code == 302 and page["Location"] == f"/review/{scene['project'].pk}/"
    refused = scene["client"].post(f"/api/holdout/{held.pk}/label/", {"label": "RBC"}, format="json")
    assert refused.status_code == 400 and "answered with regions" in refused.json()["detail"]
    assert not ExpertLabel.objects.filter(item=held).exists()
