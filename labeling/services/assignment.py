"""Handing items to crowd workers: leases, gold mixing and the order items are served in.

A lease (``Assignment``) reserves one of an item's ``votes_wanted`` slots for one worker until
``expires_at``. An item has a free slot while ``vote_count`` (counted votes) plus its live
leases stay below ``votes_wanted``.

Concurrency: every service that adds a lease or a counted vote to a regular item first holds
that item's row, so the capacity re-check after taking the row cannot race.
- PostgreSQL: candidates are read with ``SELECT ... FOR UPDATE SKIP LOCKED``; concurrent workers
  skip each other's rows instead of queueing on them, and the capacity is checked again with a
  fresh statement once the row is held (READ COMMITTED then sees every committed lease).
- On PostgreSQL, the default ordering runs as the database function ``quorum_next_lease``
(migration 0004): the same steps, in one round trip (see :func:`database_functions_enabled`).
- Gold questions come on a per-worker schedule (labeling.services.gold.is_gold_slot), placed
  by the worker's votes today plus the live leases they are shown: at the project's rate,
  spread out, never a run of them when the regular items run out.
- SQLite has no row locks but one writer at a time. Every write transaction here starts with a
  no-op write (``write_transaction``), which takes the database write lock the way ``BEGIN
  IMMEDIATE`` would: the reads that follow cannot be overtaken by another writer, and a waiting
  writer queues on the busy timeout instead of failing at once with "database is locked" when it
  upgrades a read snapshot in WAL mode. A lock error past the timeout is retried a few times.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NamedTuple

import psycopg
from django.conf import settings
from django.db import (
    DEFAULT_DB_ALIAS,
    IntegrityError,
    OperationalError,
    connection,
    connections,
    transaction,
)
from django.db.models import Count, Exists, F, IntegerField, OuterRef, Q, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from labeling.models import UNCERTAINTY_RANK, Assignment, Item, Membership, Project, Vote
from labeling.services.gold import gold_schedule_key, is_gold_slot

# The page holds the shown assignment and one prefetched; more would hoard slots.
MAX_LIVE_LEASES = 2
# A stale candidate (its last slot taken between the read and the lock) is rare; give up after.
MAX_TAKE_ATTEMPTS = 20
SQLITE_LOCK_RETRIES = 5


class CrowdError(Exception):
    """A refusal a crowd worker can read; views turn each subclass into one HTTP status."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class WorkerBlocked(CrowdError):
    pass


class LeaseNotFound(CrowdError):
    pass


class LeaseConflict(CrowdError):
    pass


class InvalidAnswer(CrowdError):
    pass


class NotCrowdMember(CrowdError):
    """A member of the project whose role does not label (an expert, an admin)."""


def database_functions_enabled() -> bool:
    """Whether the crowd loop runs as PostgreSQL functions (migration 0004), one round trip per
    request: next_item in the default ordering and submit_vote. Elsewhere, Python does it."""
    return connection.vendor == "postgresql" and settings.QUORUM_CROWD_DB_FUNCTIONS


@contextmanager
def write_transaction() -> Iterator[None]:
    """``transaction.atomic()`` that holds SQLite's write lock from its first statement."""
    with transaction.atomic():
        if connection.vendor == "sqlite":
            with connection.cursor() as cursor:
                cursor.execute(f'UPDATE "{Project._meta.db_table}" SET id = id WHERE 0')
        yield


# Ordering strategies: each takes the candidate items and returns them in serving order.
Ordering = Callable[[QuerySet], QuerySet]
ORDERINGS: dict[str, Ordering] = {}
DEFAULT_ORDERING = "fewest_votes"


def register_ordering(name: str) -> Callable[[Ordering], Ordering]:
    def decorator(func: Ordering) -> Ordering:
        ORDERINGS[name] = func
        return func

    return decorator


@register_ordering("fewest_votes")
def fewest_votes_then_most_uncertain(items: QuerySet) -> QuerySet:
    """Spread votes evenly; among equals, the item the consensus is least sure of first.

    Unscored items come last; the order is item_open_idx's, so the candidate read stops early.
    """
    return items.order_by("vote_count", UNCERTAINTY_RANK.desc(), "id")


@register_ordering("most_uncertain")
def most_uncertain_first(items: QuerySet) -> QuerySet:
    """Active-learning flavour: resolve disagreement before spreading votes."""
    return items.order_by(UNCERTAINTY_RANK.desc(), "vote_count", "id")


def live_leases(now: datetime | None = None) -> QuerySet:
    return Assignment.objects.filter(
        status=Assignment.Status.OPEN, expires_at__gt=now or timezone.now()
    )


def _live_lease_count(now: datetime) -> Subquery:
    counts = (
        live_leases(now)
        .filter(item=OuterRef("pk"))
        .order_by()
        .values("item")
        .annotate(n=Count("id"))
        .values("n")
    )
    return Coalesce(Subquery(counts, output_field=IntegerField()), Value(0))


def _regular_pool(project: Project | int) -> QuerySet:
    """Items the crowd labels, gold apart (drawn separately).

    Hold-out items are included: the crowd's consensus on them is what every aggregation method
    is scored on. Experts label them blind, and they never train a model or clamp aggregation.
    """
    return Item.objects.filter(project=project, is_gold=False)


def _open_pool(project: Project | int) -> QuerySet:
    """Regular items that still want votes; these filters are the predicate of item_open_idx."""
    return _regular_pool(project).filter(vote_count__lt=F("votes_wanted"))


def _gold_pool(project: Project) -> QuerySet:
    """Gold items with the expert's answer: a class, or on a region project their regions
    (quorum_next_lease takes either, migration 0014)."""
    return Item.objects.filter(project=project, is_holdout=False, is_gold=True).filter(
        Q(expert_answer__isnull=False) | Q(expert_regions__isnull=False)
    )


def open_slots(item_id: int, *, now: datetime | None = None, exclude_lease: int | None = None) -> int:
    """Free slots of an item, read fresh in one statement: votes wanted minus counted votes and
    live leases."""
    now = now or timezone.now()
    leases = live_leases(now).filter(item=OuterRef("pk"))
    if exclude_lease is not None:
        leases = leases.exclude(pk=exclude_lease)
    counted = leases.order_by().values("item").annotate(n=Count("id")).values("n")
    return (
        Item.objects.filter(pk=item_id)
        .annotate(
            free=F("votes_wanted") - F("vote_count")
            - Coalesce(Subquery(counted, output_field=IntegerField()), Value(0))
        )
        .values_list("free", flat=True)
        .get()
    )


def candidates(worker, project: Project, *, now: datetime, ordering: str = DEFAULT_ORDERING) -> QuerySet:
    """Regular items this worker may be served now, in serving order.

    Starts from the open pool so that the default order walks item_open_idx and stops at the
    first free item; each row it passes costs two index probes (the worker's vote, live leases).
    """
    items = (
        _open_pool(project)
        .exclude(Exists(Vote.objects.filter(item=OuterRef("pk"), worker=worker)))
        .exclude(
            Exists(
                Assignment.objects.filter(
                    item=OuterRef("pk"), worker=worker, status=Assignment.Status.OPEN
                )
            )
        )
        .alias(leased=_live_lease_count(now))
        .filter(vote_count__lt=F("votes_wanted") - F("leased"))
    )
    return ORDERINGS[ordering](items)


def _blocked_reason(worker, project: Project | int) -> str | None:
    """The reason of the worker's block here ("" when none was given); None when not blocked."""
    return (
        Membership.objects.filter(project=project, user=worker, is_blocked=True)
        .values_list("blocked_reason", flat=True)
        .first()
    )


def blocked_message(reason: str | None) -> str:
    return f"You are blocked from this project: {reason or 'an admin blocked you'}."


def raise_if_blocked(reason: str | None) -> None:
    """WorkerBlocked when ``reason`` is not None (a block's reason, "" when none was given)."""
    if reason is not None:
        raise WorkerBlocked(blocked_message(reason))


def check_not_blocked(worker, project: Project | int) -> None:
    raise_if_blocked(_blocked_reason(worker, project))


# What the crowd API shows of an item; next_item loads only these (plus is_gold, never shown,
# which callers like the simulation and the tests read).
SERVED_ITEM_FIELDS = ("id", "width", "height", "channels", "is_gold")


def next_item(
    worker,
    project: Project,
    *,
    exclude: Iterable[int] = (),
    ordering: str = DEFAULT_ORDERING,
    votes_today: int | None = None,
) -> Assignment | None:
    """The worker's next lease in the project, or None when nothing is left for them.

    A live lease the worker already holds is returned again (a page refresh is idempotent);
    ``exclude`` names leases the caller already shows, so that the page can prefetch a second.
    A gold item, ignoring capacity, when the worker's gold schedule says so for this place in
    their stream (:func:`labeling.services.gold.is_gold_slot`: today's votes plus the live
    leases they are shown); ``votes_today`` is that count when the caller has it.
    The lease comes with ``item`` (only :data:`SERVED_ITEM_FIELDS` loaded) and ``project``.
    """
    if _in_database(ordering):
        return _serve_in_database(worker, project, exclude)[0]
    check_not_blocked(worker, project)
    now = timezone.now()
    exclude = {int(pk) for pk in exclude}
    # Every open lease of the worker here, live or not, in one read (lease_open_worker_idx).
    leases = list(
        Assignment.objects.filter(worker=worker, project=project, status=Assignment.Status.OPEN)
        .select_related("item")
        .only("id", "item_id", "expires_at", "created_at", *(f"item__{f}" for f in SERVED_ITEM_FIELDS))
        .order_by("created_at", "id")
    )
    held = [lease for lease in leases if lease.expires_at > now]
    for lease in held:
        if lease.pk not in exclude:
            lease.project = project
            return lease
    if len(held) >= MAX_LIVE_LEASES:
        raise LeaseConflict(
            f"You already hold {len(held)} open assignments; answer them before taking more."
        )
    expired = [lease.pk for lease in leases if lease.expires_at <= now]
    if expired:
        # An expired lease of this worker would collide with a new lease on the same item.
        Assignment.objects.filter(pk__in=expired, status=Assignment.Status.OPEN).update(
            status=Assignment.Status.RELEASED
        )

    if project.gold_rate > 0:
        if votes_today is None:
            votes_today = _votes_today(worker, project)
        gold_due = is_gold_slot(votes_today + len(held), project.gold_rate, _gold_key(worker.pk, project.pk))
    else:
        gold_due = False
    if gold_due:
        lease = _take_gold(worker, project, now)
        if lease is not None:
            return lease
    return _take_regular(worker, project, now, ordering)


def serve_next(
    worker,
    project: Project,
    *,
    exclude: Iterable[int] = (),
    block_checked: bool = False,
) -> tuple[Assignment | None, Progress]:
    """:func:`next_item` in the default ordering and the worker's :func:`progress` after it,
    as the crowd API answers them (one round trip with the database functions).

    ``block_checked`` skips the block check in the database path, for a caller that has just
    read the membership (the Python path checks again; it has no round trip to save).
    """
    if _in_database(DEFAULT_ORDERING):
        return _serve_in_database(worker, project, exclude, block_checked=block_checked)
    # Read first (a lease changes neither count): today's votes also place the gold schedule.
    counts = progress(worker, project)
    return next_item(worker, project, exclude=exclude, votes_today=counts.votes_today), counts


def _in_database(ordering: str) -> bool:
    return (
        ordering == DEFAULT_ORDERING
        and ORDERINGS[DEFAULT_ORDERING] is fewest_votes_then_most_uncertain
        and database_functions_enabled()
    )


_LEASE_FIELDS = ["id", "project_id", "item_id", "worker_id", "status", "expires_at"]


# Every parameter cast: with server-side binding a Python int travels as int2, int4, int8 or
# numeric by its size, and the function is found by its argument types.
_NEXT_LEASE_SQL = (
    "SELECT * FROM quorum_next_lease(%s::integer, %s::bigint, %s::timestamptz, %s::timestamptz, "
    "%s::bigint[], %s::double precision, %s::text, %s::integer, %s::integer, %s::timestamptz)"
)
_SERVE_NEXT_SQL = (
    "SELECT * FROM quorum_serve_next(%s::integer, %s::bigint, %s::boolean, %s::timestamptz, "
    "%s::bigint[], %s::text, %s::integer, %s::integer, %s::timestamptz)"
)


def _serve_in_database(
    worker, project: Project, exclude: Iterable[int], *, block_checked: bool = False,
) -> tuple[Assignment | None, Progress]:
    """next_item's steps as ``quorum_next_lease`` (the same order and rows), plus progress."""
    if not block_checked:
        check_not_blocked(worker, project)
    now = timezone.now()
    midnight = start_of_today()
    (outcome, detail, lease_id, expires_at, item_id, width, height, channels, is_gold,
     votes_today, voted_open) = fetch_function_row(
        _NEXT_LEASE_SQL,
        [worker.pk, project.pk, now, _expiry(project, now), sorted({int(pk) for pk in exclude}),
         project.gold_rate, gold_schedule_key(project.pk, worker.pk, midnight), MAX_LIVE_LEASES,
         MAX_TAKE_ATTEMPTS, midnight],
    )  # fmt: skip
    if outcome == "too_many":
        raise LeaseConflict(
            f"You already hold {detail} open assignments; answer them before taking more."
        )
    lease = None
    if outcome in ("held", "new"):
        alias = connection.alias
        lease = Assignment.from_db(
            alias, _LEASE_FIELDS,
            [lease_id, project.pk, item_id, worker.pk, Assignment.Status.OPEN, expires_at],
        )  # fmt: skip
        lease.item = Item.from_db(alias, list(SERVED_ITEM_FIELDS), [item_id, width, height, channels, is_gold])
        lease.project = project
        lease.worker = worker
    return lease, progress_from_counts(project.pk, project.created_at, votes_today, voted_open)


class ServedNext(NamedTuple):
    """``quorum_serve_next``'s row: outcome (``held``, ``new``, ``none`` or a refusal:
    ``no_project``, ``forbidden``, ``blocked``, ``too_many``), the lease and its item, the
    worker's two progress counts, the project's created_at, its classes in index order, and its
    task type and region limit (migration 0014)."""

    outcome: str
    detail: str | None
    lease_id: int | None
    expires_at: datetime | None
    item_id: int | None
    width: int | None
    height: int | None
    channels: int | None
    is_gold: bool | None
    votes_today: int | None
    voted_open: int | None
    project_created: datetime | None
    class_names: list[str] | None
    class_indexes: list[int] | None
    task_type: str | None
    max_regions: int | None


def serve_next_row(
    worker_id: int, project_id: int, *, site_admin: bool, exclude: Iterable[int] = (),
) -> ServedNext:
    """GET next as one call on PostgreSQL (migration 0009): crowd_context's reads, the
    IsProjectCrowd and block checks, and :func:`serve_next`'s steps, for a caller that has only
    the worker's id (the crowd lane). Refusals are outcomes here, with nothing written."""
    midnight = start_of_today()
    row = fetch_function_row(
        _SERVE_NEXT_SQL,
        [worker_id, project_id, site_admin, timezone.now(), sorted({int(pk) for pk in exclude}),
         gold_schedule_key(project_id, worker_id, midnight), MAX_LIVE_LEASES, MAX_TAKE_ATTEMPTS,
         midnight],
    )  # fmt: skip
    return ServedNext._make(row)


def fetch_function_row(sql: str, params: list) -> tuple:
    """The one row of a crowd-loop function call, through a psycopg cursor kept per connection
    and statement, with server-side binding and a prepared statement: Django's cursor wrapper,
    a new cursor per call and parsing the statement each time cost about as much client CPU as
    the call's own round trip (402 against 212 us here), and PostgreSQL plans it once. One
    cursor per statement, because psycopg keeps a cursor's result loaders only while it runs
    the same statement again; binary results, which psycopg loads with less work than text
    (a next + vote pair of calls: 192 -> 173 us). Django still sees database errors (it drops
    a broken connection), and where it logs queries (DEBUG, tests that count them) the call
    goes through its cursor."""
    wrapper = connections[DEFAULT_DB_ALIAS]  # once: each use of the proxy looks it up again
    if wrapper.queries_logged:
        with wrapper.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchone()
    wrapper.ensure_connection()
    raw = wrapper.connection
    kept = getattr(wrapper, "_crowd_cursors", None)
    if kept is None or kept[0] is not raw:
        kept = wrapper._crowd_cursors = (raw, {})
    cursor = kept[1].get(sql)
    if cursor is None or cursor.closed:
        cursor = kept[1][sql] = psycopg.Cursor(raw)
    with wrapper.wrap_database_errors:
        cursor.execute(sql, params, prepare=True, binary=True)
        return cursor.fetchone()


def _expiry(project: Project, now: datetime) -> datetime:
    return now + timedelta(minutes=project.lease_minutes)


def _new_lease(worker, project: Project, item: Item, now: datetime) -> Assignment:
    lease = Assignment(project=project, item=item, worker=worker, expires_at=_expiry(project, now))
    lease.save(force_insert=True)
    return lease


def _take_gold(worker, project: Project, now: datetime) -> Assignment | None:
    """A gold item the worker has never been served; gold checks the worker, so no capacity."""
    gold = (
        _gold_pool(project)
        .exclude(Exists(Vote.objects.filter(item=OuterRef("pk"), worker=worker)))
        .exclude(Exists(Assignment.objects.filter(item=OuterRef("pk"), worker=worker)))
        .only(*SERVED_ITEM_FIELDS)
        .order_by("?")
        .first()
    )
    if gold is None:
        return None
    try:
        with transaction.atomic():
            return _new_lease(worker, project, gold, now)
    except IntegrityError:
        # The same worker's concurrent request leased it first.
        return None


def _take_regular(worker, project: Project, now: datetime, ordering: str) -> Assignment | None:
    for attempt in range(SQLITE_LOCK_RETRIES):
        try:
            return _take_regular_once(worker, project, now, ordering)
        except OperationalError as exc:
            if "locked" not in str(exc) or attempt == SQLITE_LOCK_RETRIES - 1:
                raise
            time.sleep(0.05 * (attempt + 1))
    return None


# candidates() in the default order, written out: building that queryset (two EXISTS, a count
# subquery, an expression order) cost more Python time than the database spends running it.
# tests/labeling/test_assignment.py checks that both give the same items in the same order.
_DEFAULT_CANDIDATE_SQL = """
SELECT i.id, i.width, i.height, i.channels, i.is_gold
FROM labeling_item i
WHERE i.project_id = %(project)s AND NOT i.is_gold AND i.vote_count < i.votes_wanted
  AND NOT EXISTS (SELECT 1 FROM labeling_vote v WHERE v.item_id = i.id AND v.worker_id = %(worker)s)
  AND NOT EXISTS (
    SELECT 1 FROM labeling_assignment a
    WHERE a.item_id = i.id AND a.worker_id = %(worker)s AND a.status = 'open')
  AND i.vote_count + (
    SELECT COUNT(*) FROM labeling_assignment a
    WHERE a.item_id = i.id AND a.status = 'open' AND a.expires_at > %(now)s) < i.votes_wanted
  {tried}
ORDER BY i.vote_count, COALESCE(i.uncertainty, -1.0) DESC, i.id
LIMIT {limit} {lock}
"""


def _default_candidates(
    worker, project: Project, now: datetime, tried: set[int], *, lock: str = "", limit: int = 1
) -> list[Item]:
    params = {
        "project": project.pk,
        "worker": worker.pk,
        "now": connection.ops.adapt_datetimefield_value(now),
    }
    # Ids are ints from our own reads, so they go into the text as literals.
    excluded = f"AND i.id NOT IN ({', '.join(str(int(pk)) for pk in tried)})" if tried else ""
    sql = _DEFAULT_CANDIDATE_SQL.format(tried=excluded, limit=int(limit), lock=lock)
    return list(Item.objects.raw(sql, params))


def _lock_candidate(
    worker, project: Project, now: datetime, ordering: str, tried: set[int]
) -> Item | None:
    skip_locked = connection.features.has_select_for_update_skip_locked
    if ordering == DEFAULT_ORDERING and ORDERINGS[DEFAULT_ORDERING] is fewest_votes_then_most_uncertain:
        if not skip_locked:
            found = _default_candidates(worker, project, now, tried)
        else:
            found = _default_candidates(worker, project, now, tried, lock="FOR UPDATE OF i SKIP LOCKED")
            if not found:
                # Every candidate is held by a concurrent request: wait for one rather than
                # answer "nothing left" while slots may still free up.
                found = _default_candidates(worker, project, now, tried, lock="FOR UPDATE OF i")
        return found[0] if found else None
    items = candidates(worker, project, now=now, ordering=ordering).only(*SERVED_ITEM_FIELDS)
    if tried:
        items = items.exclude(pk__in=tried)
    if not skip_locked:
        return items.first()
    item = items.select_for_update(skip_locked=True).first()
    if item is None:
        item = items.select_for_update().first()
    return item


def _take_regular_once(worker, project: Project, now: datetime, ordering: str) -> Assignment | None:
    tried: set[int] = set()
    for _ in range(MAX_TAKE_ATTEMPTS):
        item = None
        try:
            with write_transaction():
                item = _lock_candidate(worker, project, now, ordering, tried)
                if item is None:
                    return None
                # The candidate read may predate a lease committed just before we took the row.
                if open_slots(item.pk, now=now) <= 0:
                    tried.add(item.pk)
                    continue
                return _new_lease(worker, project, item, now)
        except IntegrityError:
            # The same worker's concurrent request took this item (the whole transaction is
            # rolled back, which is all it did); try another. No savepoint on the common path.
            if item is None:
                raise
            tried.add(item.pk)
    return None


@dataclass(frozen=True)
class Progress:
    votes_today: int
    items_left: int


# items_left is exact while a project has at most this many open items (a bounded index walk);
# above it, the project-wide part comes from a per-process count at most OPEN_COUNT_TTL old:
# counting 20,000 open items on every request cost more than the rest of the request, and even
# every 2 s per process the requests that counted (17-22 ms each here) made the loop's p99
# (serving.py, 100 paced annotators: p99 of next 97 ms with 2 s, 55 ms with 60 s). A count in
# the thousands that lags by seconds tells a worker the same.
ITEMS_LEFT_EXACT_UP_TO = 500
OPEN_COUNT_TTL = 15.0
_open_counts: dict[tuple[int, datetime | None], tuple[float, int]] = {}


def _open_item_count(project_id: int, created_at: datetime | None) -> int:
    # created_at in the key: a test database may hand a new project an old project's id.
    key = (project_id, created_at)
    cached = _open_counts.get(key)
    clock = time.monotonic()
    if cached is not None and clock - cached[0] < OPEN_COUNT_TTL:
        return cached[1]
    open_items = _open_pool(project_id).order_by()
    n = open_items.values("pk")[: ITEMS_LEFT_EXACT_UP_TO + 1].count()
    if n <= ITEMS_LEFT_EXACT_UP_TO:
        _open_counts.pop(key, None)
        return n
    n = open_items.count()
    _open_counts[key] = (clock, n)
    return n


def progress(worker, project: Project) -> Progress:
    """The worker's own progress line: nothing about other workers or single items.

    Items left = open items minus the open items the worker voted on (``Vote.item_open``,
    which triggers keep); see ITEMS_LEFT_EXACT_UP_TO for the first. Each count is one index
    range over the worker's votes (today's; those on open items), not their whole history.
    """
    mine = Vote.objects.filter(project=project, worker=worker)
    votes_today = mine.filter(created_at__gte=start_of_today()).count()
    voted_open = mine.filter(item_open=True).count()
    return progress_from_counts(project.pk, project.created_at, votes_today, voted_open)


def _votes_today(worker, project: Project) -> int:
    return Vote.objects.filter(project=project, worker=worker, created_at__gte=start_of_today()).count()


def _gold_key(worker_id: int, project_id: int) -> str:
    return gold_schedule_key(project_id, worker_id, start_of_today())


def start_of_today() -> datetime:
    return timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0)


def progress_from_counts(project_id: int, created_at: datetime | None, votes_today: int, voted_open: int) -> Progress:
    """The progress line from the worker's two counts (see :func:`progress`)."""
    return Progress(
        votes_today=votes_today,
        items_left=max(0, _open_item_count(project_id, created_at) - voted_open),
    )


def release_expired_leases(project: Project | None = None) -> int:
    """Mark expired open leases released (housekeeping; capacity already ignores them)."""
    leases = Assignment.objects.filter(
        status=Assignment.Status.OPEN, expires_at__lte=timezone.now()
    )
    if project is not None:
        leases = leases.filter(project=project)
    return leases.update(status=Assignment.Status.RELEASED)


def lease_is_live(lease: Assignment, now: datetime | None = None) -> bool:
    return lease.expires_at > (now or timezone.now())

