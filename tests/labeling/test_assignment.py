"""next_item: which item a worker is served, and when nothing is left."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from labeling.models import Assignment, Vote
from labeling.services.assignment import (
    ORDERINGS,
    LeaseConflict,
    WorkerBlocked,
    next_item,
    progress,
    register_ordering,
)
from labeling.services.votes import submit_vote
from tests.factories import ItemFactory, give_expert_answer, label_of

pytestmark = pytest.mark.django_db


def workers(n: int) -> list:
    """Users without a password: hashing one costs a quarter second each."""
    User = get_user_model()
    return [User.objects.create(username=f"w{i}") for i in range(n)]


def vote(worker, project, item, name="normal"):
    """A counted vote given outside the lease flow, as history."""
    Vote.objects.create(
        project=project, item=item, worker=worker, label=label_of(project, name),
        idempotency_key=f"{worker.pk}-{item.pk}",
    )
    item.vote_count += 1
    item.save(update_fields=["vote_count"])


def answer(worker, lease, name="normal"):
    return submit_vote(worker, lease.pk, label=name, idempotency_key=f"k{lease.pk}")


def test_fewest_votes_first_then_most_uncertain(project, crowd_user, crowd_user2):
    busy = ItemFactory(project=project)
    vote(crowd_user2, project, busy)
    calm = ItemFactory(project=project, uncertainty=0.1)
    unsure = ItemFactory(project=project, uncertainty=0.9)
    unscored = ItemFactory(project=project, uncertainty=None)
    order = []
    for _ in range(4):
        lease = next_item(crowd_user, project)
        order.append(lease.item_id)
        answer(crowd_user, lease)
    assert order == [unsure.pk, calm.pk, unscored.pk, busy.pk]


def test_ordering_is_pluggable(project, crowd_user):
    first = ItemFactory(project=project)
    second = ItemFactory(project=project)

    @register_ordering("newest_first")
    def newest_first(items):
        return items.order_by("-id")

    try:
        assert next_item(crowd_user, project, ordering="newest_first").item_id == second.pk
    finally:
        ORDERINGS.pop("newest_first")
    assert first.pk < second.pk


def test_excludes_items_the_worker_voted_on(project, crowd_user):
    done = ItemFactory(project=project)
    vote(crowd_user, project, done)
    todo = ItemFactory(project=project)
    assert next_item(crowd_user, project).item_id == todo.pk


def test_holdout_is_voted_on_like_any_item_but_never_served_as_gold(project, crowd_user):
    # The crowd's consensus on hold-out items is what aggregation methods are scored on.
    holdout = ItemFactory(project=project, is_holdout=True)
    gold_holdout = ItemFactory(project=project, is_holdout=True)
    give_expert_answer(gold_holdout, "normal", gold=True)
    project.gold_rate = 1.0
    lease = next_item(crowd_user, project)
    assert lease.item_id == holdout.pk
    answer(crowd_user, lease)
    assert next_item(crowd_user, project) is None


def test_refresh_returns_the_same_live_lease(project, crowd_user):
    ItemFactory.create_batch(3, project=project)
    first = next_item(crowd_user, project)
    assert next_item(crowd_user, project).pk == first.pk
    second = next_item(crowd_user, project, exclude=[first.pk])
    assert second.pk != first.pk
    # Two live leases at most: the one shown and the one prefetched.
    with pytest.raises(LeaseConflict):
        next_item(crowd_user, project, exclude=[first.pk, second.pk])


def test_votes_wanted_is_honoured_with_leases(project):
    item = ItemFactory(project=project, votes_wanted=2)
    workers_ = workers(3)
    assert next_item(workers_[0], project).item_id == item.pk
    assert next_item(workers_[1], project).item_id == item.pk
    assert next_item(workers_[2], project) is None
    item.votes_wanted = 3  # adaptive redundancy raised it
    item.save(update_fields=["votes_wanted"])
    assert next_item(workers_[2], project).item_id == item.pk


def test_lowered_votes_wanted_stops_an_item(project, crowd_user, crowd_user2):
    item = ItemFactory(project=project, votes_wanted=3)
    vote(crowd_user2, project, item)
    item.votes_wanted = 1
    item.save(update_fields=["votes_wanted"])
    assert next_item(crowd_user, project) is None


def test_expired_leases_free_slots(project, crowd_user, crowd_user2):
    ItemFactory(project=project, votes_wanted=1)
    lease = next_item(crowd_user, project)
    assert next_item(crowd_user2, project) is None
    Assignment.objects.filter(pk=lease.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert next_item(crowd_user2, project).item_id == lease.item_id
    # The first worker may be served it again later without tripping the open-lease constraint.
    assert next_item(crowd_user, project) is None


def test_lease_expiry_follows_project(project, crowd_user):
    project.lease_minutes = 3
    project.save()
    ItemFactory(project=project)
    lease = next_item(crowd_user, project)
    remaining = lease.expires_at - timezone.now()
    assert timedelta(minutes=2, seconds=50) < remaining <= timedelta(minutes=3)


def test_gold_rate_one_serves_gold_even_when_full_and_never_twice(project, crowd_user, crowd_user2):
    regular = ItemFactory(project=project)
    gold = ItemFactory(project=project, votes_wanted=1, vote_count=0)
    give_expert_answer(gold, "pneumonia", gold=True)
    vote(crowd_user2, project, gold)  # full: vote_count 1 of 1
    project.gold_rate = 1.0
    project.save()
    lease = next_item(crowd_user, project)
    assert lease.item_id == gold.pk
    answer(crowd_user, lease)
    # Gold is never served twice; the regular item comes next.
    assert next_item(crowd_user, project, exclude=[]).item_id == regular.pk


def test_gold_rate_zero_never_serves_gold(project, crowd_user):
    gold = ItemFactory(project=project)
    give_expert_answer(gold, "normal", gold=True)
    assert next_item(crowd_user, project) is None


def test_gold_mixed_in_at_about_its_rate(project):
    project.gold_rate = 0.3
    project.save()
    golds = ItemFactory.create_batch(30, project=project)
    for item in golds:
        give_expert_answer(item, "normal", gold=True)
    ItemFactory.create_batch(30, project=project)
    served_gold = 0
    for worker in workers(40):
        served_gold += next_item(worker, project).item.is_gold
    assert 5 <= served_gold <= 20


def test_blocked_worker_gets_nothing(project, crowd_user):
    ItemFactory(project=project)
    membership = crowd_user.memberships.get(project=project)
    membership.is_blocked = True
    membership.blocked_reason = "gold accuracy 20%"
    membership.save()
    with pytest.raises(WorkerBlocked, match="gold accuracy 20%"):
        next_item(crowd_user, project)


def test_progress_counts_own_votes_and_items_left(project, crowd_user):
    ItemFactory.create_batch(3, project=project)
    lease = next_item(crowd_user, project)
    answer(crowd_user, lease)
    assert progress(crowd_user, project).votes_today == 1
    assert progress(crowd_user, project).items_left == 2


def test_written_out_default_order_matches_the_queryset(project, crowd_user, crowd_user2):
    """The hot path's SQL for the default order gives what candidates() gives, in its order."""
    from labeling.services.assignment import _default_candidates, candidates

    others = workers(3)
    items = [
        ItemFactory(project=project, uncertainty=u, votes_wanted=w)
        for u, w in [(None, 3), (0.2, 3), (0.9, 3), (0.9, 1), (None, 2), (0.5, 3), (0.0, 3), (0.7, 2)]
    ]
    gold = ItemFactory(project=project)
    give_expert_answer(gold, "normal", gold=True)
    vote(crowd_user2, project, items[1])
    vote(crowd_user2, project, items[6])
    vote(crowd_user, project, items[5])  # the worker's own vote: never served again
    vote(others[0], project, items[3])  # full
    now = timezone.now()
    # Live leases take slots; an expired one does not; the worker's own lease excludes the item.
    for worker, item in [(others[1], items[4]), (others[2], items[4]), (others[1], items[7])]:
        Assignment.objects.create(project=project, item=item, worker=worker,
                                  expires_at=now + timedelta(minutes=5))
    Assignment.objects.create(project=project, item=items[2], worker=others[2],
                              expires_at=now - timedelta(minutes=1))
    Assignment.objects.create(project=project, item=items[0], worker=crowd_user,
                              expires_at=now + timedelta(minutes=5))

    expected = list(candidates(crowd_user, project, now=now).values_list("pk", flat=True))
    written = [item.pk for item in _default_candidates(crowd_user, project, now, set(), limit=50)]
    assert written == expected
    assert expected == [items[2].pk, items[7].pk, items[1].pk, items[6].pk]
    tried = {items[2].pk}
    assert [i.pk for i in _default_candidates(crowd_user, project, now, tried, limit=50)] == expected[1:]
