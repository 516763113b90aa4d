"""Crowd votes: submitting, undoing, and judging workers by their answers on gold items.

Lock order, the same in every service here so that transactions cannot deadlock:
lease row, then item row(s) in id order, then the project row.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from django.db import IntegrityError, transaction
from django.db.models import F, Value
from django.db.models.functions import Greatest
from django.utils import timezone

from labeling.models import Assignment, Item, LabelClass, Membership, Project, Vote
from labeling.services.assignment import (
    InvalidAnswer,
    LeaseConflict,
    LeaseNotFound,
    check_not_blocked,
    open_slots,
    write_transaction,
)

logger = logging.getLogger(__name__)

LATE_AND_FULL = "lease expired and the item already has enough votes"


class _AlreadyAnswered(LeaseConflict):
    """Raised under the lease lock; a concurrent retry with the same key turns into a replay."""


@dataclass(frozen=True)
class GoldFeedback:
    correct: bool
    expert_label: str
    gold: bool = True


@dataclass(frozen=True)
class VoteResult:
    vote_id: int
    assignment_id: int
    kind: str
    label: str | None
    created: bool
    # Only for gold items; None otherwise, so a worker learns nothing about regular items.
    feedback: GoldFeedback | None


@dataclass(frozen=True)
class GoldAccuracy:
    answered: int
    correct: int

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.answered if self.answered else None


def _result(vote: Vote, *, created: bool) -> VoteResult:
    feedback = None
    if vote.was_gold:
        expert = vote.item.expert_answer
        feedback = GoldFeedback(
            correct=bool(vote.gold_correct), expert_label=expert.name if expert else ""
        )
    return VoteResult(
        vote_id=vote.pk,
        assignment_id=vote.assignment_id,
        kind=vote.kind,
        label=vote.label.name if vote.label_id else None,
        created=created,
        feedback=feedback,
    )


def _replay(worker, idempotency_key: str, assignment_id: int) -> VoteResult | None:
    vote = (
        Vote.objects.select_related("label", "item__expert_answer")
        .filter(worker=worker, idempotency_key=idempotency_key)
        .first()
    )
    if vote is None:
        return None
    if vote.assignment_id != assignment_id:
        raise LeaseConflict("This idempotency key was already used for another assignment.")
    return _result(vote, created=False)


def _resolve_answer(project: Project, kind: str, label: str | None) -> LabelClass | None:
    if kind not in Vote.Kind.values:
        raise InvalidAnswer(f"unknown kind '{kind}'; use one of {', '.join(Vote.Kind.values)}")
    if kind != Vote.Kind.LABEL:
        if label:
            raise InvalidAnswer(f"a '{kind}' answer carries no label")
        return None
    classes = list(project.label_classes.all())
    for label_class in classes:
        if label_class.name == label:
            return label_class
    names = ", ".join(c.name for c in classes)
    raise InvalidAnswer(f"unknown class '{label}'; this project's classes are {names}")


def submit_vote(
    worker,
    assignment_id: int,
    *,
    label: str | None,
    kind: str = Vote.Kind.LABEL,
    idempotency_key: str,
    source: str = Vote.Source.WEB,
) -> VoteResult:
    """Record the worker's answer on their lease; a retried key returns the first result.

    Raises LeaseNotFound (not theirs), InvalidAnswer (unknown class), LeaseConflict (expired
    and full, already answered), WorkerBlocked.
    """
    replayed = _replay(worker, idempotency_key, assignment_id)
    if replayed is not None:
        return replayed
    try:
        with write_transaction():
            vote, trigger = _record_vote(worker, assignment_id, label, kind, idempotency_key, source)
    except (IntegrityError, _AlreadyAnswered) as exc:
        # A concurrent retry of the same request got there first, or the item was answered.
        replayed = _replay(worker, idempotency_key, assignment_id)
        if replayed is not None:
            return replayed
        if isinstance(exc, LeaseConflict):
            raise
        raise LeaseConflict("You already answered this item.") from None
    if trigger:
        transaction.on_commit(lambda: _trigger_aggregation(vote.project_id), robust=True)
    if vote.was_gold and vote.gold_correct is not None:
        evaluate_worker(worker, vote.project)
    return _result(vote, created=True)


def _record_vote(
    worker, assignment_id: int, label: str | None, kind: str, idempotency_key: str, source: str
) -> tuple[Vote, bool]:
    lease = (
        Assignment.objects.select_for_update(of=("self",))
        .select_related("project")
        .filter(pk=assignment_id, worker=worker)
        .first()
    )
    if lease is None:
        raise LeaseNotFound("No such assignment.")
    project = lease.project
    check_not_blocked(worker, project)
    if lease.status == Assignment.Status.SUBMITTED:
        raise _AlreadyAnswered("This assignment was already answered.")
    answer = _resolve_answer(project, kind, label)
    item = (
        Item.objects.select_for_update(of=("self",))
        .select_related("expert_answer")
        .get(pk=lease.item_id)
    )
    now = timezone.now()
    is_gold = item.is_gold and item.expert_answer_id is not None
    # Late answers may not push an item past its votes; gold needs no capacity.
    if lease.expires_at <= now and not is_gold and open_slots(item.pk, now=now) <= 0:
        raise LeaseConflict(LATE_AND_FULL)

    vote = Vote.objects.create(
        project=project,
        item=item,
        worker=worker,
        assignment=lease,
        kind=kind,
        label=answer,
        idempotency_key=idempotency_key,
        source=source,
        was_gold=is_gold,
        # Unsure/skip on gold is shown the answer but not scored: honesty is not an error.
        gold_correct=(answer.pk == item.expert_answer_id) if is_gold and answer else None,
    )
    lease.status = Assignment.Status.SUBMITTED
    lease.save(update_fields=["status"])
    # An older, expired lease of the same worker on this item is moot now.
    Assignment.objects.filter(item=item, worker=worker, status=Assignment.Status.OPEN).update(
        status=Assignment.Status.RELEASED
    )
    if vote.counts:
        Item.objects.filter(pk=item.pk).update(vote_count=F("vote_count") + 1)
    Project.objects.filter(pk=project.pk).update(
        votes_since_aggregation=F("votes_since_aggregation") + 1
    )
    since, every = (
        Project.objects.filter(pk=project.pk)
        .values_list("votes_since_aggregation", "aggregate_every")
        .get()
    )
    return vote, bool(every) and since >= every


def _trigger_aggregation(project_id: int) -> None:
    try:
        from labeling.services.aggregation import maybe_trigger_aggregation
    except ImportError:
        return
    maybe_trigger_aggregation(project_id)


def undo_vote(worker, assignment_id: int) -> Assignment:
    """Take back the worker's last vote while its lease runs; the lease opens again."""
    with write_transaction():
        lease = (
            Assignment.objects.select_for_update(of=("self",))
            .select_related("project")
            .filter(pk=assignment_id, worker=worker)
            .first()
        )
        if lease is None:
            raise LeaseNotFound("No such assignment.")
        check_not_blocked(worker, lease.project)
        vote = Vote.objects.filter(assignment=lease, worker=worker).first()
        if vote is None or lease.status != Assignment.Status.SUBMITTED:
            raise LeaseConflict("There is no answer on this assignment to undo.")
        if lease.expires_at <= timezone.now():
            raise LeaseConflict("Too late to undo: the assignment has expired.")
        last = Vote.objects.filter(project=lease.project, worker=worker).order_by("-created_at", "-id")
        if last.values_list("pk", flat=True).first() != vote.pk:
            raise LeaseConflict("Only your last answer can be undone.")
        if vote.was_gold:
            # The feedback showed the expert's answer; changing it afterwards would game quality.
            raise LeaseConflict("This answer cannot be changed any more.")
        Item.objects.select_for_update().filter(pk=lease.item_id).first()
        counted = vote.counts
        vote.delete()
        if counted:
            Item.objects.filter(pk=lease.item_id).update(vote_count=F("vote_count") - 1)
        Project.objects.filter(pk=lease.project_id).update(
            votes_since_aggregation=Greatest(F("votes_since_aggregation") - 1, Value(0))
        )
        lease.status = Assignment.Status.OPEN
        lease.save(update_fields=["status"])
        return lease


def gold_accuracy(worker, project: Project, *, since: datetime | None = None) -> GoldAccuracy:
    """The worker's scored gold answers in the project (optionally only those after ``since``)."""
    votes = Vote.objects.filter(
        project=project, worker=worker, was_gold=True, gold_correct__isnull=False
    )
    if since is not None:
        votes = votes.filter(created_at__gt=since)
    answered = votes.count()
    correct = votes.filter(gold_correct=True).count()
    return GoldAccuracy(answered=answered, correct=correct)


def evaluate_worker(worker, project: Project) -> bool:
    """Block the worker when enough gold answers put them under the project's threshold.

    After an admin unblocks someone, only gold answers given since their last block count,
    so the same old mistakes do not block them again at once. Returns whether they are blocked.
    """
    membership = Membership.objects.filter(project=project, user=worker).first()
    if membership is None:
        return False
    if membership.is_blocked:
        return True
    score = gold_accuracy(worker, project, since=membership.blocked_at)
    if score.answered < project.gold_min_answers:
        return False
    if score.accuracy is None or score.accuracy >= project.gold_accuracy_threshold:
        return False
    reason = (
        f"gold accuracy {score.accuracy:.0%} over {score.answered} gold questions is below "
        f"the project's {project.gold_accuracy_threshold:.0%}"
    )
    block_worker(membership, reason=reason)
    return True


@write_transaction()
def block_worker(membership: Membership, *, reason: str) -> Membership:
    """Block a member: their votes stay but stop counting, so the items get new votes."""
    membership = Membership.objects.select_for_update().get(pk=membership.pk)
    if membership.is_blocked:
        return membership
    votes = Vote.objects.filter(
        project_id=membership.project_id, worker_id=membership.user_id, is_excluded=False
    )
    _shift_counts(votes.filter(kind=Vote.Kind.LABEL), -1)
    votes.update(is_excluded=True)
    Assignment.objects.filter(
        project_id=membership.project_id,
        worker_id=membership.user_id,
        status=Assignment.Status.OPEN,
    ).update(status=Assignment.Status.RELEASED)
    membership.is_blocked = True
    membership.blocked_reason = reason[:300]
    membership.blocked_at = timezone.now()
    membership.save(update_fields=["is_blocked", "blocked_reason", "blocked_at"])
    logger.info("blocked %s on project %s: %s", membership.user_id, membership.project_id, reason)
    return membership


@write_transaction()
def unblock_worker(project: Project, user) -> Membership:
    """Lift a block: the worker's flagged votes count again.

    ``blocked_at`` is kept as the start of their fresh gold record (see ``evaluate_worker``).
    """
    membership = Membership.objects.select_for_update().get(project=project, user=user)
    if not membership.is_blocked:
        return membership
    votes = Vote.objects.filter(project=project, worker=user, is_excluded=True)
    _shift_counts(votes.filter(kind=Vote.Kind.LABEL), +1)
    votes.update(is_excluded=False)
    membership.is_blocked = False
    membership.blocked_reason = ""
    membership.save(update_fields=["is_blocked", "blocked_reason"])
    return membership


def _shift_counts(votes, delta: int) -> None:
    item_ids = list(votes.values_list("item_id", flat=True))
    # Take the item rows in id order, the order every other service locks them in.
    list(Item.objects.select_for_update().filter(pk__in=item_ids).order_by("pk").values_list("pk"))
    # One vote per worker and item, so each item moves by exactly one.
    Item.objects.filter(pk__in=item_ids).update(vote_count=F("vote_count") + delta)
