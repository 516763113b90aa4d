"""Many workers at once on PostgreSQL: no slot is handed out twice, no vote is lost."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from django.contrib.auth import get_user_model
from django.db import connection, connections

from labeling.models import Item, Membership, Vote
from labeling.services.assignment import next_item
from labeling.services.votes import submit_vote
from tests.factories import ItemFactory, ProjectFactory

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

WORKERS = 14
ITEMS = 40
K = 3


@pytest.fixture(autouse=True)
def _postgres_only(db):
    if connection.vendor != "postgresql":
        pytest.skip("row locks (SELECT ... FOR UPDATE SKIP LOCKED) need PostgreSQL; set DATABASE_URL")


def _run_threads(target, n: int) -> list[BaseException]:
    errors: list[BaseException] = []
    start = threading.Barrier(n)

    def run(i: int) -> None:
        try:
            start.wait()
            target(i)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
        finally:
            # Each thread has its own connection; close it so the test database can be dropped.
            connections.close_all()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a worker thread hung"
    return errors


def test_workers_hammering_one_project():
    # No auto-aggregation: adaptive redundancy would move votes_wanted under our feet.
    project = ProjectFactory(overlap=K, max_overlap=K, gold_rate=0.0, aggregate_every=0)
    ItemFactory.create_batch(ITEMS, project=project)
    User = get_user_model()
    workers = [User.objects.create(username=f"hammer{i}") for i in range(WORKERS)]
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
            # A few answers are retried, as a flaky network would.
            for _ in range(2 if n % 5 == 0 else 1):
                result = submit_vote(
                    worker, lease.pk, label="normal" if n % 2 else "abnormal",
                    idempotency_key=f"{worker.pk}-{lease.pk}",
                )
            with lock:
                accepted.append((worker.pk, lease.item_id, result.vote_id))
        raise AssertionError("a worker was served more items than exist")

    errors = _run_threads(work, WORKERS)
    assert not errors, errors

    counted = Counter(
        Vote.objects.filter(project=project, kind=Vote.Kind.LABEL, is_excluded=False)
        .values_list("item_id", flat=True)
    )
    items = {item.pk: item for item in Item.objects.filter(project=project)}
    assert max(counted.values()) <= K
    # Nothing was left while slots were free: every item got its k votes.
    assert sum(counted.values()) == ITEMS * K
    for pk, item in items.items():
        assert item.vote_count == counted[pk], pk
    pairs = Vote.objects.filter(project=project).values_list("worker_id", "item_id")
    assert len(set(pairs)) == len(pairs)
    assert {vote for _, _, vote in accepted} == set(
        Vote.objects.filter(project=project).values_list("pk", flat=True)
    )
    assert len(accepted) == len({(w, i) for w, i, _ in accepted})


def test_the_same_vote_posted_twice_at_once_is_recorded_once():
    project = ProjectFactory(overlap=1, gold_rate=0.0)
    item = ItemFactory(project=project)
    worker = get_user_model().objects.create(username="twice")
    Membership.objects.create(project=project, user=worker, role=Membership.Role.CROWD)
    lease = next_item(worker, project)
    results = []

    def post(_: int) -> None:
        results.append(submit_vote(worker, lease.pk, label="normal", idempotency_key="same"))

    errors = _run_threads(post, 6)
    assert not errors, errors
    assert len({r.vote_id for r in results}) == 1
    assert sum(r.created for r in results) == 1
    item.refresh_from_db()
    assert item.vote_count == 1 and Vote.objects.count() == 1


def test_the_crowd_lane_under_workers_with_two_tabs_each():
    """Token clients through the crowd lane (one function call a request), two threads per
    worker: the same rules hold, and each worker's votes-today counter (DailyVoteCount, which
    a worker's concurrent votes update) equals their votes."""
    from rest_framework.authtoken.models import Token

    from labeling.models import DailyVoteCount
    from labeling.services.assignment import start_of_today
    from tests.lane_client import ServerAPIClient

    project = ProjectFactory(overlap=K, max_overlap=K, gold_rate=0.0, aggregate_every=0)
    ItemFactory.create_batch(ITEMS, project=project)
    User = get_user_model()
    workers = [User.objects.create(username=f"tabs{i}") for i in range(WORKERS // 2)]
    Membership.objects.bulk_create(
        Membership(project=project, user=w, role=Membership.Role.CROWD) for w in workers
    )
    tokens = {w.pk: Token.objects.create(user=w).key for w in workers}
    accepted: list[tuple[int, int]] = []  # (worker, vote id)
    lock = threading.Lock()

    def work(i: int) -> None:
        worker = workers[i // 2]
        client = ServerAPIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {tokens[worker.pk]}")
        for n in range(2 * ITEMS):
            served = client.get(f"/api/projects/{project.pk}/next/")
            if served.status_code == 204:
                return
            assert served.status_code == 200, served.content
            lease = served.json()["id"]
            voted = client.post(f"/api/assignments/{lease}/vote/",
                                {"label": "normal", "idempotency_key": f"{i}-{n}"}, format="json")  # fmt: skip
            # The other tab may have answered the same held lease first.
            assert voted.status_code in (201, 409), voted.content
            if voted.status_code == 201:
                with lock:
                    accepted.append((worker.pk, voted.json()["id"]))
        raise AssertionError("a worker was served more items than exist")

    errors = _run_threads(work, 2 * len(workers))
    assert not errors, errors
    counted = Counter(Vote.objects.filter(project=project).values_list("item_id", flat=True))
    assert max(counted.values()) <= K and sum(counted.values()) == ITEMS * K
    for item in Item.objects.filter(project=project):
        assert item.vote_count == counted[item.pk], item.pk
    pairs = Vote.objects.filter(project=project).values_list("worker_id", "item_id")
    assert len(set(pairs)) == len(pairs)
    assert {v for _, v in accepted} == set(Vote.objects.filter(project=project).values_list("pk", flat=True))
    midnight = start_of_today()
    for worker in workers:
        mine = Vote.objects.filter(project=project, worker=worker, created_at__gte=midnight).count()
        row = DailyVoteCount.objects.get(project=project, worker=worker)
        assert (row.day_start, row.votes) == (midnight, mine), worker.username
