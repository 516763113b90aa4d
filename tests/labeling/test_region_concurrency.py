"""Region votes under many workers at once on PostgreSQL, on both vote paths: no slot is handed
out twice, no vote is lost, every item's vote_count is its counted votes."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from django.contrib.auth import get_user_model
from django.db import connection

from labeling.models import Item, Membership, Project, Vote
from labeling.services.assignment import next_item
from labeling.services.votes import submit_vote
from tests.factories import ItemFactory, ProjectFactory
from tests.labeling.test_concurrency import _run_threads

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

WORKERS = 10
ITEMS = 24
K = 3


@pytest.fixture(autouse=True)
def _postgres_only(db):
    if connection.vendor != "postgresql":
        pytest.skip("row locks (SELECT ... FOR UPDATE SKIP LOCKED) need PostgreSQL; set DATABASE_URL")


@pytest.mark.parametrize("functions", [True, False], ids=["db-functions", "python"])
def test_workers_drawing_regions_on_one_project(settings, functions):
    settings.QUORUM_CROWD_DB_FUNCTIONS = functions
    project = ProjectFactory(
        task_type=Project.TaskType.BOXES, classes=["WBC", "RBC"], overlap=K, max_overlap=K,
        gold_rate=0.0, aggregate_every=0,
    )  # fmt: skip
    ItemFactory.create_batch(ITEMS, project=project, width=64, height=64)
    User = get_user_model()
    workers = [User.objects.create(username=f"drawer{i}") for i in range(WORKERS)]
    Membership.objects.bulk_create(
        Membership(project=project, user=w, role=Membership.Role.CROWD) for w in workers
    )
    accepted: list[tuple[int, int, int]] = []  # (worker, item, vote id)
    lock = threading.Lock()

    def work(i: int) -> None:
        worker = workers[i]
        for n in range(ITEMS + 5):
            lease = next_item(worker, project)
            if lease is None:
                return
            # the worker's own box, so that a lost or swapped vote would show in the stored regions
            regions = [] if n % 4 == 3 else [
                {"label": "WBC" if n % 2 else "RBC", "shape": "box", "points": [[i, n], [i + 10, n + 5]]}
            ]
            # a few answers are retried, as a flaky network would
            for _ in range(2 if n % 5 == 0 else 1):
                result = submit_vote(
                    worker, lease.pk, label=None, kind="regions", regions=regions,
                    idempotency_key=f"{worker.pk}-{lease.pk}",
                )  # fmt: skip
            with lock:
                accepted.append((worker.pk, lease.item_id, result.vote_id))
        raise AssertionError("a worker was served more items than exist")

    errors = _run_threads(work, WORKERS)
    assert not errors, errors

    votes = list(Vote.objects.filter(project=project))
    counted = Counter(v.item_id for v in votes if v.kind == Vote.Kind.REGIONS and not v.is_excluded)
    assert max(counted.values()) <= K
    # nothing was left while slots were free: every item got its k votes
    assert sum(counted.values()) == ITEMS * K
    for item in Item.objects.filter(project=project):
        assert item.vote_count == counted[item.pk], item.pk
    pairs = [(v.worker_id, v.item_id) for v in votes]
    assert len(set(pairs)) == len(pairs)
    assert {vote for _, _, vote in accepted} == {v.pk for v in votes}
    assert len(accepted) == len({(w, i) for w, i, _ in accepted})
    # each stored answer is its worker's own
    index = {w.pk: i for i, w in enumerate(workers)}
    for v in votes:
        for r in v.regions:
            assert r["points"][0][0] == index[v.worker_id]


@pytest.mark.parametrize("functions", [True, False], ids=["db-functions", "python"])
def test_the_same_region_vote_posted_twice_at_once_is_recorded_once(settings, functions):
    settings.QUORUM_CROWD_DB_FUNCTIONS = functions
    project = ProjectFactory(task_type=Project.TaskType.POINTS, classes=["cell"], overlap=1, gold_rate=0.0)
    item = ItemFactory(project=project, width=32, height=32)
    worker = get_user_model().objects.create(username="twice")
    Membership.objects.create(project=project, user=worker, role=Membership.Role.CROWD)
    lease = next_item(worker, project)
    results = []
    regions = [{"label": "cell", "shape": "point", "points": [[3, 4]]}]

    def post(_: int) -> None:
        results.append(
            submit_vote(worker, lease.pk, label=None, kind="regions", regions=regions, idempotency_key="same")
        )

    errors = _run_threads(post, 6)
    assert not errors, errors
    assert len({r.vote_id for r in results}) == 1
    assert sum(r.created for r in results) == 1
    item.refresh_from_db()
    assert item.vote_count == 1 and Vote.objects.count() == 1
