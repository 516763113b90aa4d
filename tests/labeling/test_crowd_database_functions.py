"""The crowd loop's PostgreSQL functions (migration 0004) against the Python services.

On PostgreSQL next_item and submit_vote run as database functions; every other test of the
crowd loop exercises them there (and the Python services on SQLite). Here the same script of
requests runs once each way on PostgreSQL, and both must serve the same items in the same
order, with the same answers and refusals.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone

from labeling.models import Assignment, DailyVoteCount, Membership, Vote
from labeling.services import assignment as assignments
from labeling.services import votes
from labeling.services.assignment import serve_next
from labeling.services.votes import submit_vote
from tests.factories import (
    ItemFactory,
    MembershipFactory,
    ProjectFactory,
    UserFactory,
    give_expert_answer,
)

pytestmark = pytest.mark.postgres


@pytest.fixture(autouse=True)
def _postgres_only(db):
    if connection.vendor != "postgresql":
        pytest.skip("the database functions exist on PostgreSQL only; set DATABASE_URL")


def _outcome(call):
    try:
        return call()
    except assignments.CrowdError as exc:
        return f"{type(exc).__name__}: {exc.message}"


def _script(tag: str) -> list:
    """A small project, three crowd workers and an expert; returns what each step gave."""
    project = ProjectFactory(
        name=f"paths-{tag}", classes=["normal", "pneumonia"], overlap=2, max_overlap=2,
        gold_rate=0.0, gold_min_answers=1, gold_accuracy_threshold=0.75,
    )  # fmt: skip
    items = ItemFactory.create_batch(4, project=project, votes_wanted=2)
    gold = ItemFactory(project=project, is_gold=True)
    give_expert_answer(gold, "pneumonia", gold=True)
    workers = []
    for i in range(3):
        user = UserFactory(username=f"{tag}-crowd-{i}")
        MembershipFactory(project=project, user=user, role=Membership.Role.CROWD)
        workers.append(user)
    expert = UserFactory(username=f"{tag}-expert")
    MembershipFactory(project=project, user=expert, role=Membership.Role.EXPERT)
    position = {item.pk: n for n, item in enumerate([*items, gold])}
    log: list = []

    def served(worker, **kw):
        lease, progress = serve_next(worker, project, **kw)
        log.append(("next", None if lease is None else position[lease.item_id], vars(progress)))
        return lease

    def vote(worker, lease_id, label, key, kind="label", check_role=True):
        result = _outcome(lambda: submit_vote(
            worker, lease_id, label=label, kind=kind, idempotency_key=key, check_role=check_role
        ))  # fmt: skip
        if isinstance(result, str):
            log.append(("vote", result))
        else:
            log.append(("vote", result.kind, result.label, result.created, result.feedback,
                        result.progress and vars(result.progress)))  # fmt: skip
        return result

    a, b, c = workers
    lease_a = served(a)
    assert served(a).pk == lease_a.pk  # a live lease comes back
    lease_a2 = served(a, exclude=[lease_a.pk])  # prefetch a second
    log.append(("too many", _outcome(lambda: serve_next(a, project, exclude=[lease_a.pk, lease_a2.pk]))))
    vote(a, lease_a.pk, "normal", "a1")
    vote(a, lease_a.pk, "normal", "a1")  # retry: replayed
    vote(a, lease_a.pk, "pneumonia", "a1-again")  # already answered
    vote(a, lease_a2.pk, "no-such-class", "a2")  # unknown class
    vote(b, lease_a2.pk, "normal", "b-steals")  # not b's lease
    vote(a, lease_a2.pk, None, "a2-skip", kind="skip")
    lease_b = served(b)
    vote(b, lease_b.pk, "pneumonia", "b1")
    # A late answer is taken while the item still wants votes, refused once it is full.
    lease_c = served(c)
    Assignment.objects.filter(pk=lease_c.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
    vote(c, lease_c.pk, "normal", "c-late")
    lease_b2 = served(b)
    vote(b, lease_b2.pk, "normal", "b2")
    last_slot = ItemFactory(project=project, votes_wanted=1)
    position[last_slot.pk] = len(position)
    soon = timezone.now() + timedelta(minutes=5)
    lease_c2 = Assignment.objects.create(project=project, item=last_slot, worker=c, expires_at=soon)
    Assignment.objects.filter(pk=lease_c2.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
    lease_b3 = Assignment.objects.create(project=project, item=last_slot, worker=b, expires_at=soon)
    vote(b, lease_b3.pk, "normal", "b-last-slot")
    vote(c, lease_c2.pk, "normal", "c-late-full")
    # Gold: feedback, scoring, and a block at once (one wrong answer is under the bar).
    gold_lease = Assignment.objects.create(
        project=project, item=gold, worker=c, expires_at=timezone.now() + timedelta(minutes=5)
    )
    vote(c, gold_lease.pk, "normal", "c-gold")
    log.append(("blocked after one", Membership.objects.get(project=project, user=c).is_blocked))
    # The role check: an expert's lease is refused with 403, a stranger's with 404.
    expert_lease = Assignment.objects.create(
        project=project, item=items[3], worker=expert, expires_at=timezone.now() + timedelta(minutes=5)
    )
    vote(expert, expert_lease.pk, "normal", "e1")
    vote(expert, expert_lease.pk, "normal", "e2", check_role=False)
    Membership.objects.filter(project=project, user=b).delete()
    lease_b4 = Assignment.objects.create(
        project=project, item=items[3], worker=b, expires_at=timezone.now() + timedelta(minutes=5)
    )
    vote(b, lease_b4.pk, "normal", "b4")
    while (lease := served(a)) is not None:
        vote(a, lease.pk, "normal", f"a-drain-{lease.pk}")
    counts = sorted(
        (position[v.item_id], v.worker.username.split("-", 1)[1], v.kind, v.label and v.label.name,
         v.was_gold, v.gold_correct)
        for v in Vote.objects.filter(project=project).select_related("label", "worker")
    )  # fmt: skip
    log.append(("votes", counts))
    log.append(("vote counts", sorted((position[i.pk], i.vote_count) for i in project.items.all())))
    log.append(("since aggregation", project.votes_since_aggregation()))
    return log


def test_database_functions_and_python_services_agree(settings):
    settings.QUORUM_CROWD_DB_FUNCTIONS = True
    assert assignments.database_functions_enabled()
    in_database = _script("db")
    settings.QUORUM_CROWD_DB_FUNCTIONS = False
    assert not assignments.database_functions_enabled()
    in_python = _script("py")
    # The database path also returns each vote's progress line; the Python one leaves it to
    # the view. Everything else must match step by step.
    strip = [tuple(step[:-1]) if step[0] == "vote" and len(step) == 6 else step for step in in_database]
    assert strip == [tuple(s[:-1]) if s[0] == "vote" and len(s) == 6 else s for s in in_python]
    refusals = [step[1] for step in in_database if step[0] == "vote" and len(step) == 2]
    assert refusals == [
        "_AlreadyAnswered: This assignment was already answered.",
        "InvalidAnswer: unknown class 'no-such-class'; this project's classes are normal, pneumonia",
        "LeaseNotFound: No such assignment.",
        "LeaseConflict: lease expired and the item already has enough votes",
        "NotCrowdMember: Only the project's crowd workers label here.",
        "_NotAMember: No such project.",
    ]
    assert ("blocked after one", True) in in_database


def test_functions_are_installed_by_the_migration():
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT proname FROM pg_proc WHERE proname LIKE 'quorum\\_%%' ORDER BY proname"
        )
        names = [row[0] for row in cursor.fetchall()]
    assert names == [
        "quorum_daily_vote_count",
        "quorum_gold_slot",
        "quorum_item_open_changed",
        "quorum_next_lease",
        "quorum_record_vote",
        "quorum_serve_next",
        "quorum_vote_item_open",
        "quorum_worker_progress",
    ]


def _function_progress(worker, project, midnight) -> tuple[int, int]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM quorum_worker_progress(%s, %s, %s)", [worker.pk, project.pk, midnight])
        return cursor.fetchone()


def _counted_today(worker, project, midnight) -> int:
    return Vote.objects.filter(project=project, worker=worker, created_at__gte=midnight).count()


def test_votes_today_is_a_counter_every_writer_keeps():
    """DailyVoteCount (migration 0009) against counting the votes, through votes, an undo,
    an imported vote of an earlier day, a deleted vote and a new day."""
    project = ProjectFactory(name="daily", classes=["normal", "pneumonia"], gold_rate=0.0)
    worker = UserFactory(username="daily-crowd")
    MembershipFactory(project=project, user=worker, role=Membership.Role.CROWD)
    ItemFactory.create_batch(5, project=project, votes_wanted=3)
    midnight = assignments.start_of_today()
    assert _function_progress(worker, project, midnight)[0] == 0  # no row yet: counted, then kept
    for n in range(3):
        lease, progress = serve_next(worker, project)
        assert progress.votes_today == n
        result = submit_vote(worker, lease.pk, label="normal", idempotency_key=f"d{n}")
        assert result.progress.votes_today == n + 1
    last = Vote.objects.get(idempotency_key="d2")
    votes.undo_vote(worker, last.assignment_id)
    assert _function_progress(worker, project, midnight)[0] == _counted_today(worker, project, midnight) == 2
    # An imported vote from yesterday counts in neither; deleting one of today's counts down.
    item = ItemFactory(project=project)
    old = Vote.objects.create(project=project, item=item, worker=worker, kind=Vote.Kind.SKIP,
                              idempotency_key="imported")  # fmt: skip
    Vote.objects.filter(pk=old.pk).update(created_at=midnight - timedelta(hours=3))
    Vote.objects.filter(idempotency_key="d0").delete()
    assert _function_progress(worker, project, midnight)[0] == _counted_today(worker, project, midnight) == 1
    # Another midnight: counted once and the row moves there (both ways, e.g. two processes'
    # clocks either side of midnight).
    for day in (midnight + timedelta(days=1), midnight - timedelta(days=1), midnight):
        assert _function_progress(worker, project, day)[0] == _counted_today(worker, project, day)
        assert DailyVoteCount.objects.get(project=project, worker=worker).day_start == day
    assert _function_progress(worker, project, midnight)[0] == 1


def test_a_lease_commits_without_waiting_for_the_disk_only_alone(transactional_db):
    """quorum_serve_next turns synchronous_commit off for its own transaction only: in a
    caller's transaction, other writes keep their durable commit."""
    project = ProjectFactory(name="async-lease", classes=["normal"], gold_rate=0.0)
    worker = UserFactory(username="async-crowd")
    MembershipFactory(project=project, user=worker, role=Membership.Role.CROWD)
    ItemFactory.create_batch(3, project=project)

    def setting():
        with connection.cursor() as cursor:
            cursor.execute("SHOW synchronous_commit")
            return cursor.fetchone()[0]

    with transaction.atomic():
        setting()
        row = assignments.serve_next_row(worker.pk, project.pk, site_admin=False, exclude=[])
        assert row.outcome == "new" and setting() == "on"
    row = assignments.serve_next_row(worker.pk, project.pk, site_admin=False, exclude=[row.lease_id])
    assert row.outcome == "new" and setting() == "on"  # the call's own transaction has ended
    assert Assignment.objects.filter(worker=worker, status=Assignment.Status.OPEN).count() == 2
