"""Vote.item_open (migration 0006's triggers) follows its item through every change of
vote_count, votes_wanted and is_gold, on whichever database the tests run, and the progress
line built on it equals the count it replaced (a join over all of the worker's votes)."""

from __future__ import annotations

import pytest
from django.db.models import F

from labeling.models import Item, Membership, Vote
from labeling.services.assignment import next_item, progress
from labeling.services.votes import block_worker, submit_vote, unblock_worker, undo_vote
from tests.factories import ItemFactory, MembershipFactory, UserFactory

pytestmark = pytest.mark.django_db


def flags(item: Item) -> list[bool]:
    return list(Vote.objects.filter(item=item).order_by("id").values_list("item_open", flat=True))


def voted_open_by_join(worker, project) -> int:
    """The definition the flag replaced: votes on non-gold items still short of their votes."""
    return Vote.objects.filter(
        project=project, worker=worker, item__is_gold=False, item__vote_count__lt=F("item__votes_wanted")
    ).count()


def vote(worker, project, label: str = "normal", key: str | None = None):
    lease = next_item(worker, project)
    assert lease is not None
    submit_vote(worker, lease.pk, label=label, idempotency_key=key or f"{worker.pk}-{lease.pk}")
    return lease


@pytest.fixture
def workers(project):
    users = [UserFactory(username=f"w{i}") for i in range(3)]
    for user in users:
        MembershipFactory(project=project, user=user, role=Membership.Role.CROWD)
    return users


def test_flag_follows_votes_undo_and_votes_wanted(project, workers):
    project.gold_rate = 0
    project.save()
    item = ItemFactory(project=project, votes_wanted=2)
    a, b, c = workers

    vote(a, project)
    assert flags(item) == [True]
    lease_b = vote(b, project)
    # the second vote fills the item: both votes now sit on a closed item
    assert flags(item) == [False, False]
    assert progress(a, project).items_left == 0

    undo_vote(b, lease_b.pk)  # open again, and only a's vote is left
    assert flags(item) == [True]
    submit_vote(b, lease_b.pk, label="pneumonia", idempotency_key="b-again")
    assert flags(item) == [False, False]

    # adaptive redundancy asks for a third vote: open again
    Item.objects.filter(pk=item.pk).update(votes_wanted=3)
    assert flags(item) == [True, True]
    vote(c, project)
    assert flags(item) == [False, False, False]

    # an unsure answer does not count, so it leaves the item open
    other = ItemFactory(project=project, votes_wanted=1)
    lease = next_item(a, project)
    assert lease.item_id == other.pk
    submit_vote(a, lease.pk, label=None, kind="unsure", idempotency_key="unsure")
    assert flags(other) == [True]
    for worker in workers:
        assert progress(worker, project).votes_today == Vote.objects.filter(worker=worker).count()
        assert progress(worker, project).items_left >= 0


def test_flag_follows_gold_and_blocking(project, workers):
    project.gold_rate = 0
    project.save()
    a, b, _ = workers
    item = ItemFactory(project=project, votes_wanted=2)
    vote(a, project)
    vote(b, project)
    assert flags(item) == [False, False]

    # blocking b takes their vote out of the count: the item wants a vote again
    block_worker(Membership.objects.get(project=project, user=b), reason="test")
    assert flags(item) == [True, True]
    unblock_worker(project, b)
    assert flags(item) == [False, False]

    # a gold item never wants crowd votes, whatever its count
    Item.objects.filter(pk=item.pk).update(votes_wanted=5)
    assert flags(item) == [True, True]
    item.refresh_from_db()
    item.is_gold = True
    item.save()  # a whole-row save, as the admin does
    assert flags(item) == [False, False]


def test_progress_equals_the_join_it_replaced(project, workers):
    project.gold_rate = 0
    project.save()
    items = [ItemFactory(project=project, votes_wanted=2) for _ in range(6)]
    for round_ in range(2):
        for worker in workers:
            lease = next_item(worker, project)
            if lease is not None:
                submit_vote(worker, lease.pk, label="normal", idempotency_key=f"{round_}")
    Item.objects.filter(pk=items[0].pk).update(votes_wanted=4)
    block_worker(Membership.objects.get(project=project, user=workers[0]), reason="test")
    for worker in workers:
        mine = Vote.objects.filter(project=project, worker=worker)
        assert mine.filter(item_open=True).count() == voted_open_by_join(worker, project)
        assert progress(worker, project).votes_today == mine.count()
