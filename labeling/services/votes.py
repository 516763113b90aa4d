"""Crowd votes: submitting, undoing, and judging workers by their answers on gold items.

Lock order, the same in every service here so that transactions cannot deadlock:
lease row, then item row(s) in id order, then the worker's stripe of the project's vote tally.
On PostgreSQL a vote's insert or delete also locks the worker's own DailyVoteCount row (its
trigger); only that worker's requests take it, and never while waiting for another's item.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime
from typing import NamedTuple

from django.db import IntegrityError, connection, transaction
from django.db.models import Case, Exists, F, IntegerField, OuterRef, Q, Subquery, Value, When
from django.db.models.functions import Greatest
from django.utils import timezone

from labeling.aggregation.regions.answers import (
    RegionAnswerError,
    parse_regions,
    score_answer,
    shapes_from_stored,
)
from labeling.models import (
    TALLY_STRIPES,
    Assignment,
    Item,
    LabelClass,
    Membership,
    Project,
    Vote,
    VoteTally,
)
from labeling.selectors import is_site_admin, role_allows, role_of
from labeling.services.assignment import (
    CrowdError,
    InvalidAnswer,
    LeaseConflict,
    LeaseNotFound,
    NotCrowdMember,
    Progress,
    WorkerBlocked,
    blocked_message,
    check_not_blocked,
    database_functions_enabled,
    fetch_function_row,
    open_slots,
    progress_from_counts,
    start_of_today,
    write_transaction,
)
from labeling.services.gold import GoldStanding, gold_record, gold_standing
from labeling.services.review import answer_regions

logger = logging.getLogger(__name__)

LATE_AND_FULL = "lease expired and the item already has enough votes"
# The kinds that count toward an item's overlap (Vote.counts): an answer, not unsure or skip.
COUNTED_KINDS = (Vote.Kind.LABEL, Vote.Kind.REGIONS)


class _AlreadyAnswered(LeaseConflict):
    """Raised under the lease lock; a concurrent retry with the same key turns into a replay."""


class _NotAMember(LeaseNotFound):
    """The lease's project is not the worker's (any more): a 404, so project ids do not leak."""


NOT_CROWD = "Only the project's crowd workers label here."


@dataclass(frozen=True)
class GoldFeedback:
    correct: bool
    expert_label: str
    gold: bool = True
    # The worker's gold record after this answer and the rule's verdict (a scored answer only).
    standing: GoldStanding | None = None
    # Region projects: how the answer scored ("f1" or "dice"; None for unsure/skip) and the
    # expert's regions in wire format, shown only now that the worker has answered.
    metric: str | None = None
    score: float | None = None
    expert_regions: list[dict] | None = None


@dataclass(frozen=True)
class VoteResult:
    vote_id: int
    assignment_id: int
    kind: str
    label: str | None
    created: bool
    # Only for gold items; None otherwise, so a worker learns nothing about regular items.
    feedback: GoldFeedback | None
    # The worker's progress line after the vote, when it came with it (the database path).
    progress: Progress | None = None


@dataclass(frozen=True)
class GoldAccuracy:
    answered: int
    correct: int

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.answered if self.answered else None


def _result(vote: Vote, *, created: bool) -> VoteResult:
    feedback = None
    if vote.was_gold and vote.item.expert_regions_id is not None:
        feedback = _region_feedback(vote.item, vote.regions, vote.gold_correct)
    elif vote.was_gold:
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


KEY_REUSED = "This idempotency key was already used for another answer."


def _replay(
    worker, idempotency_key: str, assignment_id: int, kind: str, label: str | None,
    regions: list | None = None,
) -> VoteResult | None:
    """The first result of a true retry (the same key, lease and answer); LeaseConflict for a
    key already used for another assignment or another answer."""
    vote = (
        Vote.objects.select_related("label", "item__expert_answer", "item__project")
        .filter(worker=worker, idempotency_key=idempotency_key)
        .first()
    )
    if vote is None:
        return None
    if vote.assignment_id != assignment_id:
        raise LeaseConflict("This idempotency key was already used for another assignment.")
    first_label = vote.label.name if vote.label_id else None
    if vote.kind != kind or first_label != (label if kind == Vote.Kind.LABEL else None):
        raise LeaseConflict(KEY_REUSED)
    if kind == Vote.Kind.REGIONS:
        # The same answer is the same normalised regions (a retry may differ in spelling only).
        try:
            again = [s.to_stored() for s in _parse_regions(vote.item.project, vote.item, regions)]
        except InvalidAnswer:
            again = None
        if again != vote.regions:
            raise LeaseConflict(KEY_REUSED)
    return _result(vote, created=False)


def _class_names(project_id: int) -> list[str]:
    return list(LabelClass.objects.filter(project_id=project_id).order_by("index").values_list("name", flat=True))


def _unknown_class(project_id: int, label: str | None) -> InvalidAnswer:
    names = ", ".join(_class_names(project_id))
    return InvalidAnswer(f"unknown class '{label}'; this project's classes are {names}")


def _check_answer(kind: str, label: str | None, regions: list | None = None) -> None:
    if kind not in Vote.Kind.values:
        raise InvalidAnswer(f"unknown kind '{kind}'; use one of {', '.join(Vote.Kind.values)}")
    if kind != Vote.Kind.LABEL and label:
        raise InvalidAnswer(f"a '{kind}' answer carries no label")
    if kind != Vote.Kind.REGIONS and regions is not None:
        raise InvalidAnswer(f"a '{kind}' answer carries no regions")
    if kind == Vote.Kind.REGIONS and regions is None:
        raise InvalidAnswer("a 'regions' answer needs its regions ([] for nothing here)")


def _check_kind_fits(project: Project, kind: str) -> None:
    """Class labels on class projects, regions on region projects; unsure and skip on both."""
    if kind == Vote.Kind.LABEL and project.is_region_task:
        raise InvalidAnswer(
            f"this is a {project.task_type} project: answer with regions, not a class label"
        )
    if kind == Vote.Kind.REGIONS and not project.is_region_task:
        raise InvalidAnswer("this project takes a class label, not regions")


def _parse_regions(project: Project, item: Item, regions: list | None):
    """The answer's shapes checked against the project and the item's image (InvalidAnswer)."""
    classes = _class_names(project.pk)
    try:
        return parse_regions(
            regions, task_type=project.task_type, classes=classes, width=item.width,
            height=item.height, max_regions=project.max_regions,
        )  # fmt: skip
    except RegionAnswerError as exc:
        raise InvalidAnswer(exc.message) from None


def _region_feedback(item: Item, regions: list | None, correct: bool | None) -> GoldFeedback:
    """What a worker is shown after answering a region gold item: the expert's regions, and
    for a region answer (not unsure/skip) its score against them."""
    project = item.project
    truth = answer_regions([item.expert_regions_id])[item.expert_regions_id]
    classes = _class_names(project.pk)
    metric = score = None
    if regions is not None:
        metric, score = score_answer(
            shapes_from_stored(regions), shapes_from_stored(truth), task_type=project.task_type,
            height=item.height, width=item.width, match_distance=project.region_match_distance,
            match_iou=project.region_match_iou,
        )  # fmt: skip
    return GoldFeedback(
        correct=bool(correct), expert_label="", metric=metric, score=score,
        expert_regions=[s.to_wire(classes) for s in shapes_from_stored(truth)],
    )  # fmt: skip


# A region answer at or above this score on a gold item counts as right for the gold standing.
REGION_GOLD_PASS = 0.5


def submit_vote(
    worker,
    assignment_id: int,
    *,
    label: str | None,
    kind: str = Vote.Kind.LABEL,
    idempotency_key: str,
    source: str = Vote.Source.WEB,
    check_role: bool = False,
    regions: list | None = None,
) -> VoteResult:
    """Record the worker's answer on their lease; a retried key returns the first result.

    ``kind="regions"`` answers a region project with ``regions`` (wire format, [] for nothing
    here); a region project takes no class label and a class project no regions.
    Raises LeaseNotFound (not theirs), InvalidAnswer (unknown class, a broken region rule),
    LeaseConflict (expired and full, already answered), WorkerBlocked; with ``check_role``
    (the API's permission, checked under the same lock) also LeaseNotFound when the worker is
    no member of the lease's project and NotCrowdMember when their role does not label. After
    the vote commits, the aggregation service is asked whether a run is due (it also fires when
    the crowd ran out of work).
    """
    try:
        # Region answers are recorded in Python on every database: checking their shapes and
        # scoring a gold answer (F1, Dice) is NumPy work that quorum_record_vote cannot do. The
        # function sends every vote on a region project back here (migration 0014), so the
        # same checks hold whichever path a vote starts on.
        if database_functions_enabled() and kind != Vote.Kind.REGIONS:
            return _submit_in_database(
                worker, assignment_id, label, kind, idempotency_key, source, check_role
            )
        return _submit_in_python(
            worker, assignment_id, label, kind, idempotency_key, source, check_role, regions
        )
    except (_NotAMember, NotCrowdMember):
        raise
    except CrowdError:
        # A retried key gets its first result whatever has changed since (a block, an expiry):
        # looked up only on a refusal, so an accepted vote costs no extra read.
        replayed = _replay(worker, idempotency_key, assignment_id, kind, label, regions)
        if replayed is not None:
            return replayed
        raise


def _submit_in_python(
    worker, assignment_id: int, label: str | None, kind: str, idempotency_key: str, source: str,
    check_role: bool, regions: list | None = None,
) -> VoteResult:
    try:
        with write_transaction():
            vote, feedback = _record_vote(
                worker, assignment_id, label, kind, idempotency_key, source, check_role, regions
            )
    except IntegrityError:
        # A concurrent retry of the same request got there first, or the item was answered.
        raise LeaseConflict("You already answered this item.") from None
    project_id = vote.project_id
    transaction.on_commit(lambda: _trigger_aggregation(project_id), robust=True)
    if vote.was_gold and vote.gold_correct is not None:
        standing = judge_worker(worker, Project.objects.get(pk=project_id))
        feedback = replace(feedback, standing=standing)
    return VoteResult(
        vote_id=vote.pk,
        assignment_id=assignment_id,
        kind=vote.kind,
        label=label if vote.label_id else None,
        created=True,
        feedback=feedback,
    )


class RecordedVote(NamedTuple):
    """``quorum_record_vote``'s row (migration 0008): outcome ``recorded`` or a refusal with
    nothing written (see :func:`_refusal`), the vote, its gold feedback, the aggregation
    counters and the worker's two progress counts."""

    outcome: str
    detail: str | None
    vote_id: int | None
    project_id: int | None
    label_id: int | None
    was_gold: bool | None
    gold_correct: bool | None
    expert_label: str | None
    aggregate_every: int | None
    votes_since: int | None
    work_left: bool | None
    project_created: datetime | None
    votes_today: int | None
    voted_open: int | None
    gold_answered: list[int] | None
    gold_right: list[int] | None
    gold_min_answers: int | None
    gold_threshold: float | None

    def standing(self) -> GoldStanding | None:
        """The rule's verdict on the gold record the function counted (a scored answer only)."""
        if self.gold_answered is None:
            return None
        return gold_standing(
            zip(self.gold_answered, self.gold_right, strict=True),
            min_answers=self.gold_min_answers, threshold=self.gold_threshold,
        )  # fmt: skip


# Every parameter cast (see assignment._SERVE_NEXT_SQL).
_RECORD_VOTE_SQL = (
    "SELECT * FROM quorum_record_vote(%s::integer, %s::bigint, %s::text, %s::text, %s::text, "
    "%s::text, %s::timestamptz, %s::boolean, %s::boolean, %s::timestamptz)"
)


def record_vote_row(
    worker_id: int, assignment_id: int, *, label: str | None, kind: str, idempotency_key: str,
    source: str, check_role: bool, site_admin: bool,
) -> RecordedVote:
    """_record_vote's checks and writes in one call (PostgreSQL), for a caller with only the
    worker's id (the crowd lane); :func:`after_recorded_vote` runs what follows a recorded one."""
    row = fetch_function_row(
        _RECORD_VOTE_SQL,
        [worker_id, assignment_id, kind, label if kind == Vote.Kind.LABEL else None,
         idempotency_key, source, timezone.now(), check_role, site_admin, start_of_today()],
    )  # fmt: skip
    return RecordedVote._make(row)


def after_recorded_vote(worker, row: RecordedVote) -> GoldStanding | None:
    """What follows a recorded vote: the aggregation check after the commit, from the counters
    the vote just updated (no read), and the block when the rule fails the worker's gold
    record, which the function counted. Returns the worker's gold standing (scored gold only)."""
    every, since, project_id = row.aggregate_every, row.votes_since, row.project_id
    due = bool(every and since and (since >= every or not row.work_left))
    transaction.on_commit(lambda: _trigger_aggregation(project_id, due), robust=True)
    standing = row.standing()
    if standing is not None and standing.blocks:
        membership = Membership.objects.filter(project_id=project_id, user_id=worker.pk).first()
        if membership is not None:
            block_worker(membership, reason=standing.reason())
    return standing


def recorded_result(
    row: RecordedVote, assignment_id: int, kind: str, label: str | None,
    standing: GoldStanding | None = None,
) -> VoteResult:
    """The VoteResult of a recorded vote, from its row: the gold feedback and the progress
    line came with it (``standing``: after_recorded_vote's)."""
    return VoteResult(
        vote_id=row.vote_id,
        assignment_id=assignment_id,
        kind=kind,
        label=label if row.label_id else None,
        created=True,
        feedback=GoldFeedback(correct=bool(row.gold_correct), expert_label=row.expert_label or "",
                              standing=standing)
        if row.was_gold else None,
        progress=progress_from_counts(row.project_id, row.project_created, row.votes_today, row.voted_open),
    )  # fmt: skip


def _submit_in_database(
    worker, assignment_id: int, label: str | None, kind: str, idempotency_key: str, source: str,
    check_role: bool,
) -> VoteResult:
    """submit_vote as ``quorum_record_vote``: _record_vote's checks and writes in one round
    trip, with the aggregation counters and the worker's progress."""
    _check_answer(kind, label)
    row = record_vote_row(
        worker.pk, assignment_id, label=label, kind=kind, idempotency_key=idempotency_key,
        source=source, check_role=check_role, site_admin=is_site_admin(worker),
    )  # fmt: skip
    if row.outcome == "region_project":
        # Nothing was written: a vote on a region project is the Python path's (see submit_vote).
        return _submit_in_python(worker, assignment_id, label, kind, idempotency_key, source, check_role)
    if row.outcome != "recorded":
        raise _refusal(row.outcome, row.detail, row.project_id, label)
    standing = after_recorded_vote(worker, row)
    return recorded_result(row, assignment_id, kind, label, standing)


def _refusal(outcome: str, detail: str | None, project_id: int | None, label: str | None) -> CrowdError:
    """The exception _record_vote raises for the same refusal, from the function's outcome."""
    if outcome == "no_lease":
        return LeaseNotFound("No such assignment.")
    if outcome == "no_project":
        return _NotAMember("No such project.")
    if outcome == "forbidden":
        return NotCrowdMember(NOT_CROWD)
    if outcome == "blocked":
        return WorkerBlocked(blocked_message(detail))
    if outcome == "answered":
        return _AlreadyAnswered("This assignment was already answered.")
    if outcome == "unknown_class":
        return _unknown_class(project_id, label)
    if outcome == "late_full":
        return LeaseConflict(LATE_AND_FULL)
    if outcome == "conflict":
        # A concurrent retry of the same request got there first, or the item was answered.
        return LeaseConflict("You already answered this item.")
    raise ValueError(f"quorum_record_vote gave an unknown outcome {outcome!r}")


def _check_crowd_role(worker, project_id: int) -> None:
    """The API's IsProjectCrowd on the lease's project: 404 for strangers, 403 for the rest."""
    actual = role_of(worker, Project(pk=project_id))
    if actual is None:
        raise _NotAMember("No such project.")
    if not role_allows(worker, actual, Membership.Role.CROWD):
        raise NotCrowdMember(NOT_CROWD)


def _record_vote(
    worker, assignment_id: int, label: str | None, kind: str, idempotency_key: str, source: str,
    check_role: bool = False, regions: list | None = None,
) -> tuple[Vote, GoldFeedback | None]:
    answer = (
        Subquery(
            LabelClass.objects.filter(project=OuterRef("project_id"), name=label).values("pk")[:1],
            output_field=IntegerField(),
        )
        if kind == Vote.Kind.LABEL
        else Value(None, output_field=IntegerField())
    )
    # One statement: the lease (locked), the item's gold state, the block and the class id.
    lease = (
        Assignment.objects.select_for_update(of=("self",))
        .select_related("item", "project")
        .only("id", "project_id", "item_id", "worker_id", "status", "expires_at",
              "item__id", "item__is_gold", "item__expert_answer_id", "item__expert_regions_id",
              "item__width", "item__height", "project__task_type", "project__max_regions",
              "project__region_match_distance", "project__region_match_iou")
        .annotate(
            blocked=Exists(
                Membership.objects.filter(project=OuterRef("project_id"), user=worker, is_blocked=True)
            ),
            answer_id=answer,
        )
        .filter(pk=assignment_id, worker=worker)
        .first()
    )
    if lease is None:
        raise LeaseNotFound("No such assignment.")
    if check_role:
        _check_crowd_role(worker, lease.project_id)
    if lease.blocked:
        check_not_blocked(worker, lease.project_id)
    if lease.status == Assignment.Status.SUBMITTED:
        raise _AlreadyAnswered("This assignment was already answered.")
    _check_answer(kind, label, regions)
    project = lease.project
    _check_kind_fits(project, kind)
    if kind == Vote.Kind.LABEL and lease.answer_id is None:
        raise _unknown_class(lease.project_id, label)
    item = lease.item
    item.project = project
    stored = None
    if kind == Vote.Kind.REGIONS:
        stored = [s.to_stored() for s in _parse_regions(project, item, regions)]
    now = timezone.now()
    expert = item.expert_regions_id if project.is_region_task else item.expert_answer_id
    is_gold = item.is_gold and expert is not None
    # Late answers may not push an item past its votes; gold needs no capacity. Only then is
    # the item row locked here; otherwise the vote_count update below takes it.
    if lease.expires_at <= now and not is_gold:
        Item.objects.select_for_update().filter(pk=item.pk).values_list("pk").first()
        if open_slots(item.pk, now=now) <= 0:
            raise LeaseConflict(LATE_AND_FULL)

    region_feedback = None
    if is_gold and project.is_region_task:
        region_feedback = _region_feedback(item, stored, None)
    if region_feedback is not None and region_feedback.score is not None:
        gold_correct = region_feedback.score >= REGION_GOLD_PASS
        region_feedback = replace(region_feedback, correct=gold_correct)
    else:
        # Unsure/skip on gold is shown the answer but not scored: honesty is not an error.
        gold_correct = (lease.answer_id == item.expert_answer_id) if is_gold and lease.answer_id else None
    vote = Vote(
        project_id=lease.project_id,
        item_id=item.pk,
        worker=worker,
        assignment_id=lease.pk,
        kind=kind,
        label_id=lease.answer_id,
        regions=stored,
        idempotency_key=idempotency_key,
        source=source,
        was_gold=is_gold,
        gold_correct=gold_correct,
    )
    vote.save(force_insert=True)
    # This lease is answered; an older, expired lease of the same worker on the item is moot.
    Assignment.objects.filter(item_id=item.pk, worker=worker).filter(
        Q(pk=lease.pk) | Q(status=Assignment.Status.OPEN)
    ).update(
        status=Case(
            When(pk=lease.pk, then=Value(Assignment.Status.SUBMITTED)),
            default=Value(Assignment.Status.RELEASED),
        )
    )
    if vote.counts:
        Item.objects.filter(pk=item.pk).update(vote_count=F("vote_count") + 1)
    _tally_vote(lease.project_id, worker.pk)
    feedback = region_feedback
    if is_gold and feedback is None:
        expert_label = LabelClass.objects.filter(pk=item.expert_answer_id).values_list("name", flat=True).first()
        feedback = GoldFeedback(correct=bool(vote.gold_correct), expert_label=expert_label or "")
    return vote, feedback


def _tally_vote(project_id: int, worker_id: int) -> None:
    """One more vote since the last aggregation, on the worker's stripe (quorum_record_vote's
    upsert: the first vote of a stripe creates it, concurrent ones wait on its row)."""
    table = connection.ops.quote_name(VoteTally._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (project_id, stripe, votes) VALUES (%s, %s, 1) "
            f"ON CONFLICT (project_id, stripe) DO UPDATE SET votes = {table}.votes + 1",
            [project_id, worker_id % TALLY_STRIPES],
        )


def _trigger_aggregation(project_id: int, due: bool | None = None) -> None:
    """Ask the aggregation service for a run; ``due=False`` (the vote's own counters said no)
    skips its reads."""
    if due is False:
        return
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
        VoteTally.objects.filter(project_id=lease.project_id, stripe=worker.pk % TALLY_STRIPES).update(
            votes=Greatest(F("votes") - 1, Value(0))
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
    """Block the worker when the project's rule fails their gold record
    (:func:`labeling.services.gold.gold_standing`). Returns whether they are blocked."""
    membership = Membership.objects.filter(project=project, user=worker).first()
    if membership is None:
        return False
    if membership.is_blocked:
        return True
    standing = judge_worker(worker, project, membership)
    return standing is not None and standing.blocks


def judge_worker(worker, project: Project, membership: Membership | None = None) -> GoldStanding | None:
    """The worker's gold standing in the project, blocking them when the rule says so.

    After an admin unblocks someone, only gold answers given since their last block count,
    so the same old mistakes do not block them again at once. None for a non-member.
    """
    membership = membership or Membership.objects.filter(project=project, user=worker).first()
    if membership is None:
        return None
    standing = gold_standing(
        gold_record(worker, project, since=membership.blocked_at),
        min_answers=project.gold_min_answers, threshold=project.gold_accuracy_threshold,
    )  # fmt: skip
    if standing.blocks and not membership.is_blocked:
        block_worker(membership, reason=standing.reason())
    return standing


@write_transaction()
def block_worker(membership: Membership, *, reason: str) -> Membership:
    """Block a member: their votes stay but stop counting, so the items get new votes."""
    membership = Membership.objects.select_for_update().get(pk=membership.pk)
    if membership.is_blocked:
        return membership
    # Leases before items, the order a vote takes them in, so a vote racing this block
    # cannot deadlock with it.
    Assignment.objects.filter(
        project_id=membership.project_id,
        worker_id=membership.user_id,
        status=Assignment.Status.OPEN,
    ).update(status=Assignment.Status.RELEASED)
    votes = Vote.objects.filter(
        project_id=membership.project_id, worker_id=membership.user_id, is_excluded=False
    )
    _shift_counts(votes.filter(kind__in=COUNTED_KINDS), -1)
    votes.update(is_excluded=True)
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
    _shift_counts(votes.filter(kind__in=COUNTED_KINDS), +1)
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
