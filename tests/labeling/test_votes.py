"""submit_vote, undo_vote, and blocking workers on their gold answers."""

from __future__ import annotations

import sys
from datetime import timedelta

import pytest
from django.utils import timezone

from labeling.models import TALLY_STRIPES, Assignment, Item, Membership, Project, Vote, VoteTally
from labeling.services.assignment import (
    InvalidAnswer,
    LeaseConflict,
    LeaseNotFound,
    WorkerBlocked,
    next_item,
)
from labeling.services.votes import (
    LATE_AND_FULL,
    evaluate_worker,
    gold_accuracy,
    submit_vote,
    unblock_worker,
    undo_vote,
)
from tests.factories import ItemFactory, give_expert_answer

pytestmark = pytest.mark.django_db


def expire(lease: Assignment) -> None:
    Assignment.objects.filter(pk=lease.pk).update(expires_at=timezone.now() - timedelta(minutes=1))


def counts(item: Item) -> int:
    item.refresh_from_db()
    return item.vote_count


def test_vote_is_recorded_once_per_key(project, crowd_user):
    item = ItemFactory(project=project)
    lease = next_item(crowd_user, project)
    first = submit_vote(crowd_user, lease.pk, label="pneumonia", idempotency_key="abc")
    again = submit_vote(crowd_user, lease.pk, label="pneumonia", idempotency_key="abc")
    assert first.created and not again.created
    assert first.vote_id == again.vote_id and again.feedback is None
    assert Vote.objects.count() == 1
    assert counts(item) == 1
    lease.refresh_from_db()
    assert lease.status == Assignment.Status.SUBMITTED
    assert Project.objects.get(pk=project.pk).votes_since_aggregation() == 1


def test_a_second_key_on_an_answered_lease_conflicts(project, crowd_user):
    ItemFactory(project=project)
    lease = next_item(crowd_user, project)
    submit_vote(crowd_user, lease.pk, label="normal", idempotency_key="one")
    with pytest.raises(LeaseConflict):
        submit_vote(crowd_user, lease.pk, label="normal", idempotency_key="two")


def test_unknown_class_names_the_classes(project, crowd_user):
    ItemFactory(project=project)
    lease = next_item(crowd_user, project)
    with pytest.raises(InvalidAnswer) as exc:
        submit_vote(crowd_user, lease.pk, label="tumour", idempotency_key="k")
    assert str(exc.value) == "unknown class 'tumour'; this project's classes are normal, pneumonia"
    assert not Vote.objects.exists()


@pytest.mark.parametrize("kind", ["unsure", "skip"])
def test_unsure_and_skip_are_recorded_but_not_counted(project, crowd_user, kind):
    item = ItemFactory(project=project)
    lease = next_item(crowd_user, project)
    result = submit_vote(crowd_user, lease.pk, label=None, kind=kind, idempotency_key="k")
    vote = Vote.objects.get()
    assert (vote.kind, vote.label, result.label) == (kind, None, None)
    assert counts(item) == 0
    # The worker is done with it, the item still needs its votes from others.
    assert next_item(crowd_user, project) is None


def test_lease_of_another_worker_is_not_found(project, crowd_user, crowd_user2):
    ItemFactory(project=project)
    lease = next_item(crowd_user, project)
    with pytest.raises(LeaseNotFound):
        submit_vote(crowd_user2, lease.pk, label="normal", idempotency_key="k")
    with pytest.raises(LeaseNotFound):
        undo_vote(crowd_user2, lease.pk)


def test_late_vote_refused_when_item_is_full(project, crowd_user, crowd_user2):
    item = ItemFactory(project=project, votes_wanted=1)
    late = next_item(crowd_user, project)
    expire(late)
    taken = next_item(crowd_user2, project)
    submit_vote(crowd_user2, taken.pk, label="normal", idempotency_key="k2")
    with pytest.raises(LeaseConflict, match=LATE_AND_FULL):
        submit_vote(crowd_user, late.pk, label="normal", idempotency_key="k1")
    assert counts(item) == 1


def test_late_vote_refused_while_the_slot_is_leased_again(project, crowd_user, crowd_user2):
    ItemFactory(project=project, votes_wanted=1)
    late = next_item(crowd_user, project)
    expire(late)
    next_item(crowd_user2, project)
    with pytest.raises(LeaseConflict, match=LATE_AND_FULL):
        submit_vote(crowd_user, late.pk, label="normal", idempotency_key="k1")


def test_late_vote_accepted_when_item_still_needs_votes(project, crowd_user):
    item = ItemFactory(project=project, votes_wanted=2)
    lease = next_item(crowd_user, project)
    expire(lease)
    assert submit_vote(crowd_user, lease.pk, label="normal", idempotency_key="k").created
    assert counts(item) == 1


def test_gold_feedback_only_for_gold(project, crowd_user):
    project.gold_rate = 1.0
    project.save()
    gold = ItemFactory(project=project)
    give_expert_answer(gold, "pneumonia", gold=True)
    ItemFactory(project=project)
    gold_lease = next_item(crowd_user, project)
    assert gold_lease.item_id == gold.pk
    wrong = submit_vote(crowd_user, gold_lease.pk, label="normal", idempotency_key="g")
    assert wrong.feedback is not None
    assert (wrong.feedback.gold, wrong.feedback.correct, wrong.feedback.expert_label) == (
        True, False, "pneumonia",
    )
    vote = Vote.objects.get(item=gold)
    assert vote.was_gold and vote.gold_correct is False
    regular = next_item(crowd_user, project)
    plain = submit_vote(crowd_user, regular.pk, label="normal", idempotency_key="r")
    assert plain.feedback is None
    assert set(vars(plain)) == set(vars(wrong))
    # Gold answers cannot be taken back once the answer was shown.
    with pytest.raises(LeaseConflict):
        undo_vote(crowd_user, gold_lease.pk)


def test_undo_reopens_the_lease_and_uncounts(project, crowd_user):
    item = ItemFactory(project=project)
    lease = next_item(crowd_user, project)
    submit_vote(crowd_user, lease.pk, label="normal", idempotency_key="k")
    reopened = undo_vote(crowd_user, lease.pk)
    assert reopened.pk == lease.pk and reopened.status == Assignment.Status.OPEN
    assert counts(item) == 0 and not Vote.objects.exists()
    assert Project.objects.get(pk=project.pk).votes_since_aggregation() == 0
    assert next_item(crowd_user, project).pk == lease.pk
    # The same key is free again: the first answer is gone.
    assert submit_vote(crowd_user, lease.pk, label="pneumonia", idempotency_key="k").created


def test_votes_are_tallied_on_their_workers_stripes(project, crowd_user, crowd_user2):
    ItemFactory(project=project)
    ItemFactory(project=project)
    for n, worker in enumerate([crowd_user, crowd_user2]):
        lease = next_item(worker, project)
        submit_vote(worker, lease.pk, label="normal", idempotency_key=f"s{n}")
    stripes = dict(VoteTally.objects.filter(project=project).values_list("stripe", "votes"))
    expected: dict[int, int] = {}
    for worker in (crowd_user, crowd_user2):
        expected[worker.pk % TALLY_STRIPES] = expected.get(worker.pk % TALLY_STRIPES, 0) + 1
    assert stripes == expected
    assert project.votes_since_aggregation() == 2
    undo_vote(crowd_user2, Vote.objects.get(worker=crowd_user2).assignment_id)
    assert project.votes_since_aggregation() == 1


def test_undo_refused_after_expiry_or_for_older_votes(project, crowd_user):
    ItemFactory.create_batch(2, project=project)
    first = next_item(crowd_user, project)
    submit_vote(crowd_user, first.pk, label="normal", idempotency_key="a")
    second = next_item(crowd_user, project)
    submit_vote(crowd_user, second.pk, label="normal", idempotency_key="b")
    with pytest.raises(LeaseConflict, match="last answer"):
        undo_vote(crowd_user, first.pk)
    expire(second)
    with pytest.raises(LeaseConflict, match="expired"):
        undo_vote(crowd_user, second.pk)


def test_undo_without_a_vote_conflicts(project, crowd_user):
    ItemFactory(project=project)
    lease = next_item(crowd_user, project)
    with pytest.raises(LeaseConflict):
        undo_vote(crowd_user, lease.pk)


def test_aggregation_hook_runs_after_every_committed_vote(project, crowd_user, monkeypatch, django_capture_on_commit_callbacks):
    # The aggregation service decides whether a run is due (count reached, or the crowd's
    # work ran out), so it is asked after every vote, and only once the vote committed.
    import labeling.services.votes as votes_module

    project.aggregate_every = 2
    project.save()
    ItemFactory.create_batch(2, project=project)
    called: list[int] = []
    monkeypatch.setattr(
        votes_module, "_trigger_aggregation", lambda project_id, due=None: called.append(project_id)
    )
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        lease = next_item(crowd_user, project)
        submit_vote(crowd_user, lease.pk, label="normal", idempotency_key="1")
    assert called == [] and len(callbacks) == 1
    callbacks[0]()
    assert called == [project.pk]
    with django_capture_on_commit_callbacks(execute=True):
        lease = next_item(crowd_user, project)
        submit_vote(crowd_user, lease.pk, label="normal", idempotency_key="2")
        # A replayed retry records nothing and asks nothing.
        submit_vote(crowd_user, lease.pk, label="normal", idempotency_key="2")
    assert called == [project.pk, project.pk]


def test_aggregation_hook_tolerates_a_missing_module(project, monkeypatch):
    from labeling.services.votes import _trigger_aggregation

    # A None entry makes the import raise ImportError, as before that module exists.
    monkeypatch.setitem(sys.modules, "labeling.services.aggregation", None)
    _trigger_aggregation(project.pk)


def _answer_golds(worker, project, answers):
    for name in answers:
        gold = ItemFactory(project=project)
        give_expert_answer(gold, "pneumonia", gold=True)
        lease = next_item(worker, project)
        assert lease.item.is_gold
        submit_vote(worker, lease.pk, label=name, idempotency_key=f"gold-{lease.pk}")


@pytest.fixture
def strict_project(project):
    project.gold_rate = 1.0
    project.gold_min_answers = 3
    project.gold_accuracy_threshold = 0.6
    project.save()
    return project


def test_worker_blocked_below_threshold_and_votes_flagged(strict_project, crowd_user, crowd_user2):
    project = strict_project
    regular = ItemFactory(project=project)
    project.gold_rate = 0.0
    lease = next_item(crowd_user, project)
    submit_vote(crowd_user, lease.pk, label="normal", idempotency_key="r")
    assert counts(regular) == 1
    project.gold_rate = 1.0
    # Two gold answers, both wrong: not enough answers to judge yet.
    _answer_golds(crowd_user, project, ["normal", "normal"])
    assert not Membership.objects.get(project=project, user=crowd_user).is_blocked
    _answer_golds(crowd_user, project, ["pneumonia"])  # 1 of 3 = 33% < 60%
    membership = Membership.objects.get(project=project, user=crowd_user)
    assert membership.is_blocked and "33%" in membership.blocked_reason
    assert membership.blocked_at is not None
    assert gold_accuracy(crowd_user, project).answered == 3
    assert counts(regular) == 0
    assert not Vote.objects.filter(worker=crowd_user, is_excluded=False).exists()
    with pytest.raises(WorkerBlocked, match="33%"):
        next_item(crowd_user, project)
    # Others are not affected.
    _answer_golds(crowd_user2, project, ["pneumonia"] * 3)
    assert not evaluate_worker(crowd_user2, project)

    unblock_worker(project, crowd_user)
    membership.refresh_from_db()
    assert not membership.is_blocked and membership.blocked_reason == ""
    assert counts(regular) == 1
    assert not Vote.objects.filter(worker=crowd_user, is_excluded=True).exists()
    # A fresh start: old gold mistakes do not block them again at once.
    assert not evaluate_worker(crowd_user, project)


def test_blocked_worker_cannot_vote_on_a_lease_held_before(strict_project, crowd_user):
    project = strict_project
    ItemFactory(project=project)
    project.gold_rate = 0.0
    lease = next_item(crowd_user, project)
    Membership.objects.filter(project=project, user=crowd_user).update(
        is_blocked=True, blocked_reason="test"
    )
    with pytest.raises(WorkerBlocked):
        submit_vote(crowd_user, lease.pk, label="normal", idempotency_key="k")


@pytest.mark.parametrize("functions", [True, False], ids=["db-functions", "python"])
def test_a_key_reused_for_another_answer_conflicts(settings, project, crowd_user, functions):
    """Issue 19: a retry with the same key but another answer is a 409 (LeaseConflict), not the
    first vote; a true retry still gets it (on PostgreSQL through quorum_record_vote too)."""
    settings.QUORUM_CROWD_DB_FUNCTIONS = functions
    ItemFactory(project=project)
    lease = next_item(crowd_user, project)
    first = submit_vote(crowd_user, lease.pk, label="normal", idempotency_key="same")
    for other in ({"label": "pneumonia"}, {"label": None, "kind": "unsure"}):
        with pytest.raises(LeaseConflict, match="already used for another answer"):
            submit_vote(crowd_user, lease.pk, idempotency_key="same", **other)
    again = submit_vote(crowd_user, lease.pk, label="normal", idempotency_key="same")
    assert again.vote_id == first.vote_id and not again.created
    assert Vote.objects.get().label.name == "normal"


def test_a_key_reused_for_another_answer_is_409_on_the_label_page_path(project, crowd_user, crowd_page):
    ItemFactory(project=project)
    lease = next_item(crowd_user, project)
    url = f"/api/assignments/{lease.pk}/vote/"
    post = lambda label: crowd_page.post(  # noqa: E731
        url, {"label": label, "idempotency_key": "k"}, content_type="application/json"
    )
    assert post("normal").status_code == 201
    assert post("normal").status_code == 200
    reused = post("pneumonia")
    assert reused.status_code == 409
    assert reused.json() == {"detail": "This idempotency key was already used for another answer."}
