"""Queueing aggregation: the Celery task, automatic triggering after N votes, and the API."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from labeling.models import AggregationRun, ConsensusLabel, Item, Project
from labeling.services.aggregation import (
    NO_VOTES,
    aggregate_project,
    maybe_trigger_aggregation,
    request_aggregation,
)
from labeling.services.assignment import next_item
from labeling.services.votes import submit_vote
from labeling.tasks import aggregate_project_task
from tests.conftest import _api_client
from tests.factories import ItemFactory, ProjectFactory
from tests.labeling.test_aggregation_service import (
    add_votes,
    crowd_workers,
    set_votes_since_aggregation,
    simulated_project,
)

pytestmark = pytest.mark.django_db

Status = AggregationRun.Status


# -- the task -----------------------------------------------------------------------------------


def test_requested_run_is_carried_out_by_the_task_after_commit(django_capture_on_commit_callbacks):
    project, _items, _truth = simulated_project(n_items=8)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        run = request_aggregation(project, "majority_vote", user=None)
    assert run.status == Status.QUEUED
    assert len(callbacks) == 1  # nothing is sent to a worker before the run row is committed
    callbacks[0]()
    run.refresh_from_db()
    assert run.status == Status.SUCCEEDED
    assert ConsensusLabel.objects.filter(run=run).count() == 8


def test_task_leaves_a_finished_run_alone():
    project, _items, _truth = simulated_project(n_items=5)
    run = aggregate_project(project.pk, "dawid_skene")
    finished_at = run.finished_at
    assert aggregate_project_task.delay(run.pk).get() == Status.SUCCEEDED
    run.refresh_from_db()
    assert run.finished_at == finished_at
    assert ConsensusLabel.objects.filter(run=run).count() == 5
    assert AggregationRun.objects.count() == 1


def test_task_records_the_failure_on_the_run():
    project = ProjectFactory()
    run = AggregationRun.objects.create(project=project, method="dawid_skene")
    assert aggregate_project_task.delay(run.pk).get() == Status.FAILED
    run.refresh_from_db()
    assert (run.status, run.failure_reason) == (Status.FAILED, NO_VOTES)
    assert aggregate_project_task.delay(run.pk + 1000).get() is None


# -- automatic triggering -----------------------------------------------------------------------


def test_trigger_fires_once_enough_votes_came_in_and_not_twice(django_capture_on_commit_callbacks):
    project, items, _truth = simulated_project(n_items=5, aggregate_every=10)
    Item.objects.filter(pk=items[0].pk).update(votes_wanted=4)  # the crowd still has work
    set_votes_since_aggregation(project, 9)
    assert maybe_trigger_aggregation(project.pk) is None

    set_votes_since_aggregation(project, 10)
    with django_capture_on_commit_callbacks() as callbacks:
        run = maybe_trigger_aggregation(project.pk)
        again = maybe_trigger_aggregation(project.pk)
    assert run is not None and again is None
    assert (run.method, run.trigger, run.status) == ("dawid_skene", "auto", Status.QUEUED)
    assert AggregationRun.objects.count() == 1

    for callback in callbacks:
        callback()
    run.refresh_from_db()
    assert run.status == Status.SUCCEEDED
    assert Project.objects.get(pk=project.pk).votes_since_aggregation() == 0
    assert maybe_trigger_aggregation(project.pk) is None


def test_a_drained_queue_triggers_before_the_count_is_reached(django_capture_on_commit_callbacks):
    project, _items, _truth = simulated_project(n_items=5, aggregate_every=50)
    assert maybe_trigger_aggregation(project.pk) is None  # nothing new since the last run
    set_votes_since_aggregation(project, 3)
    with django_capture_on_commit_callbacks():
        run = maybe_trigger_aggregation(project.pk)
    assert run is not None and run.trigger == "auto"


def test_a_lost_run_does_not_block_triggering_forever(django_capture_on_commit_callbacks):
    project, _items, _truth = simulated_project(n_items=5, aggregate_every=1)
    set_votes_since_aggregation(project, 1)
    lost = AggregationRun.objects.create(project=project, method="dawid_skene", status=Status.RUNNING)
    AggregationRun.objects.filter(pk=lost.pk).update(created_at=timezone.now() - timedelta(hours=2))
    with django_capture_on_commit_callbacks():
        assert maybe_trigger_aggregation(project.pk) is not None


def test_never_triggers_when_automatic_aggregation_is_off():
    project, _items, _truth = simulated_project(n_items=3, aggregate_every=0)
    set_votes_since_aggregation(project, 500)
    assert maybe_trigger_aggregation(project.pk) is None


def test_votes_through_the_vote_service_trigger_a_run(django_capture_on_commit_callbacks):
    project = ProjectFactory(classes=["a", "b"], aggregate_every=4, overlap=2, max_overlap=3)
    for _ in range(3):
        ItemFactory(project=project)
    workers = crowd_workers(project, 2)
    with django_capture_on_commit_callbacks(execute=True):
        for n, worker in enumerate(workers * 2):
            lease = next_item(worker, project)
            submit_vote(worker, lease.pk, label="a", idempotency_key=f"k{n}")
    runs = list(AggregationRun.objects.filter(project=project))
    assert [(r.trigger, r.status, r.n_votes) for r in runs] == [("auto", Status.SUCCEEDED, 4)]


# -- the API ------------------------------------------------------------------------------------


def aggregations_url(project) -> str:
    return f"/api/projects/{project.pk}/aggregations/"


@pytest.fixture
def finished_run(project):
    workers = crowd_workers(project, 3)
    items = [ItemFactory(project=project) for _ in range(3)]
    add_votes(project, [(i, w, "pneumonia") for i in items for w in workers])
    return aggregate_project(project.pk, "dawid_skene")


def run_urls(run) -> list[str]:
    base = f"/api/aggregations/{run.pk}/"
    return [base, base + "consensus/", base + "reliabilities/"]


def test_crowd_workers_cannot_see_or_start_aggregations(crowd_client, project, finished_run):
    assert crowd_client.get(aggregations_url(project)).status_code == 403
    assert crowd_client.post(aggregations_url(project), {"method": "dawid_skene"}, format="json").status_code == 403
    for url in run_urls(finished_run):
        assert crowd_client.get(url).status_code == 403


def test_anonymous_and_outsiders_are_refused(anon_client, other_project, project, finished_run):
    assert anon_client.get(aggregations_url(project)).status_code == 401
    for url in run_urls(finished_run):
        assert anon_client.get(url).status_code == 401
    outsider = crowd_workers(other_project, 1, prefix="outsider")[0]
    client = _api_client(outsider)
    assert client.get(aggregations_url(project)).status_code == 404
    for url in run_urls(finished_run):
        assert client.get(url).status_code == 404


def test_experts_read_runs_consensus_and_reliabilities(expert_client, project, finished_run):
    listing = expert_client.get(aggregations_url(project)).json()
    assert [r["id"] for r in listing["results"]] == [finished_run.pk]
    assert listing["results"][0]["status"] == "succeeded"
    assert {"fleiss_kappa", "krippendorff_alpha", "holdout_accuracy", "seconds"} <= set(listing["results"][0])

    detail = expert_client.get(run_urls(finished_run)[0]).json()
    assert (detail["method"], detail["n_votes"], detail["n_items"]) == ("dawid_skene", 9, 3)

    consensus = expert_client.get(run_urls(finished_run)[1], {"limit": 2}).json()
    assert consensus["count"] == 3 and len(consensus["results"]) == 2
    first = consensus["results"][0]
    assert first["label"] == "pneumonia" and len(first["posterior"]) == 2 and "entropy" in first

    reliabilities = expert_client.get(run_urls(finished_run)[2]).json()["results"]
    assert {r["worker"] for r in reliabilities} == {f"w{project.pk}-{i}" for i in range(3)}
    assert all(len(r["confusion"]) == 2 for r in reliabilities)


def test_experts_cannot_start_a_run(expert_client, project):
    response = expert_client.post(aggregations_url(project), {"method": "dawid_skene"}, format="json")
    assert response.status_code == 403
    assert not AggregationRun.objects.exists()


def test_admins_start_a_run_and_get_202(admin_client, project, finished_run, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            aggregations_url(project), {"method": "glad", "params": {"n_iter": 20}}, format="json"
        )
    assert response.status_code == 202
    body = response.json()
    assert (body["method"], body["status"], body["params"]) == ("glad", "queued", {"n_iter": 20})
    run = AggregationRun.objects.get(pk=body["id"])
    assert run.status == Status.SUCCEEDED


def test_unknown_method_or_parameter_is_a_400_naming_the_valid_ones(admin_client, project):
    response = admin_client.post(aggregations_url(project), {"method": "magic"}, format="json")
    assert response.status_code == 400
    message = response.json()["method"][0]
    assert all(name in message for name in ("majority_vote", "dawid_skene", "glad", "mace"))

    response = admin_client.post(
        aggregations_url(project), {"method": "mace", "params": {"n_itr": 5}}, format="json"
    )
    assert response.status_code == 400 and "n_iter" in response.json()["params"][0]
    assert not AggregationRun.objects.exists()


def test_site_staff_are_admins(staff_client, project):
    response = staff_client.post(aggregations_url(project), {"method": "majority_vote"}, format="json")
    assert response.status_code == 202


def test_routes_are_in_the_openapi_schema(staff_client):
    schema = staff_client.get("/api/schema/", {"format": "json"}).json()
    paths = schema["paths"]
    assert "post" in paths["/api/projects/{project_id}/aggregations/"]
    for suffix in ("", "consensus/", "reliabilities/"):
        assert f"/api/aggregations/{{id}}/{suffix}" in paths

