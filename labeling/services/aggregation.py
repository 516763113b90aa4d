"""Aggregating a project's crowd votes with one method, storing the result, and acting on it.

A run (``AggregationRun``) loads the counted votes (kind ``label``, not excluded) as integer
codes straight from the database, fits one estimator of :data:`labeling.aggregation.METHODS`,
and stores in one transaction a ``ConsensusLabel`` per voted item, a ``WorkerReliability`` per
voter and the run's metrics. Every method's runs are kept, so methods can be compared.

Known answers clamped into the fit: gold items and items an expert adjudicated on the review
queue (source ``review``), outside the hold-out. Hold-out answers never enter a fit: they are
the yardstick (``holdout_accuracy``). Answers imported with the images on regular items are
not clamped either: they are what a simulated crowd is scored against, and clamping them would
make every method look perfect.

A run of the project's default method also steers the crowd: it sets ``Item.uncertainty``
(posterior entropy, bits), ``Item.needs_review`` (not confident) and ``Item.votes_wanted``
(adaptive redundancy: confident items stop, uncertain ones get up to ``max_overlap`` votes).
Once a training run has finished, its model is one more annotator in every run's posterior
(:mod:`labeling.services.model_in_the_loop`).

Runs of a region project (points, boxes, masks) are carried out by
:mod:`labeling.services.region_aggregation`, through the same entry points, task and steering.
"""

from __future__ import annotations

import inspect
import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from itertools import chain
from typing import Any

import numpy as np
import pandas as pd
from django.db import connection, transaction
from django.db.models import Case, F, Q, QuerySet, Sum, Value, When
from django.db.models.functions import Greatest
from django.utils import timezone
from kombu.exceptions import OperationalError as KombuOperationalError

from labeling.aggregation import METHODS, Aggregator, VoteMatrix, fleiss_kappa, krippendorff_alpha
from labeling.aggregation.adaptive import votes_wanted as more_votes_wanted
from labeling.aggregation.selection import AutoSelect
from labeling.models import (
    AggregationRun,
    ConsensusLabel,
    ExpertLabel,
    Item,
    Project,
    Vote,
    VoteTally,
    WorkerReliability,
)
from labeling.services.model_in_the_loop import ModelInTheLoop, combine_with_model

logger = logging.getLogger(__name__)

Status = AggregationRun.Status

BATCH_SIZE = 2000
# Rows per fetch when streaming vote codes; keeps memory flat on millions of votes.
VOTE_CHUNK = 50_000
# A queued or running run older than this is taken for lost (worker died), not in flight.
STALE_AFTER = timedelta(minutes=30)
# Adaptive redundancy never stops an item on a single vote.
MIN_VOTES = 2
NO_VOTES = "no votes to aggregate yet"
# Aggregation is CPU work: the default queue, never the GPU one.
TASK_QUEUE = "default"


class AggregationError(Exception):
    """A reason a person can read; stored as the run's ``failure_reason``."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidAggregation(AggregationError):
    """An unknown method or parameter: refused before any run is created (API: 400)."""


# -- choosing a method ------------------------------------------------------------------------


def method_names() -> list[str]:
    return list(METHODS)


def build_aggregator(method: str, params: dict[str, Any] | None = None) -> Aggregator:
    """The estimator for ``method`` with ``params`` as constructor arguments."""
    if method not in METHODS:
        raise InvalidAggregation(
            f"Unknown aggregation method '{method}'; use one of: {', '.join(METHODS)}."
        )
    params = dict(params or {})
    cls = METHODS[method]
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    if "tie_break" in accepted:
        # a stored label is the first argmax of its stored posterior (what readers of consensus
        # rows expect); a tied item has confidence <= 0.5 and goes to expert review anyway
        params.setdefault("tie_break", "first")
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        takes = ", ".join(accepted) or "no parameters"
        raise InvalidAggregation(
            f"Unknown parameter(s) {', '.join(unknown)} for {method}; it takes: {takes}."
        )
    return cls(**params)


def check_method(method: str, params: dict[str, Any] | None = None, project: Project | None = None) -> None:
    """Raise InvalidAggregation unless ``method`` with ``params`` can run on ``project``: a class
    method on a class project, a region method on a region project (either without a project)."""
    # imported here: the region service builds on this module
    from labeling.services import region_aggregation

    if project is not None and project.is_region_task:
        region_aggregation.build_region_aggregator(project, method, params)
    elif project is None and method in region_aggregation.ESTIMATORS:
        region_aggregation.check_params(method, params)
    else:
        build_aggregator(method, params)


# -- loading votes ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ProjectVotes:
    """A project's counted votes, coded, with what the fit and the metrics need beside them."""

    votes: VoteMatrix  # tasks = item ids, workers = user ids, classes = class names
    class_ids: np.ndarray  # LabelClass id per class code
    known: np.ndarray  # [n_tasks] class code clamped into the fit, -1 where none
    holdout: np.ndarray  # [n_tasks] hold-out expert answer code, -1 where none
    counts_since: dict[int, int]  # the vote tally's stripes when the votes were read


def counted_votes(project_id: int) -> QuerySet:
    return Vote.objects.filter(project_id=project_id, kind=Vote.Kind.LABEL, is_excluded=False)


def load_votes(project: Project) -> ProjectVotes:
    """Read the counted votes as int codes (values_list, no model instances) and code them."""
    classes = list(project.label_classes.order_by("index").values_list("id", "name"))
    class_ids = np.array([c[0] for c in classes], dtype=np.int64)
    counts_since = dict(VoteTally.objects.filter(project=project).values_list("stripe", "votes"))
    rows = counted_votes(project.pk).order_by().values_list("item_id", "worker_id", "label_id")
    flat = np.fromiter(chain.from_iterable(rows.iterator(chunk_size=VOTE_CHUNK)), dtype=np.int64)
    codes = flat.reshape(-1, 3)
    if not len(codes):
        raise AggregationError(NO_VOTES)
    task_idx, tasks = pd.factorize(codes[:, 0], sort=True)
    worker_idx, workers = pd.factorize(codes[:, 1], sort=True)
    label_idx = pd.Index(class_ids).get_indexer(codes[:, 2])
    if (label_idx < 0).any():
        raise AggregationError("some votes carry a label that is not one of the project's classes")
    votes = VoteMatrix.from_codes(
        task_idx, worker_idx, label_idx,
        tasks=np.asarray(tasks), workers=np.asarray(workers), classes=[c[1] for c in classes],
    )
    return ProjectVotes(
        votes=votes,
        class_ids=class_ids,
        known=_answer_codes(clamped_answers(project.pk), votes.tasks, class_ids),
        holdout=_answer_codes(holdout_answers(project.pk), votes.tasks, class_ids),
        counts_since=counts_since,
    )


def _adjudicated(project_id: int) -> QuerySet:
    return ExpertLabel.objects.filter(
        item__project_id=project_id, source=ExpertLabel.Source.REVIEW
    ).values("item_id")


def clamped_answers(project_id: int) -> QuerySet:
    """(item id, class id) of answers a fit may trust: gold and review, never the hold-out."""
    return (
        Item.objects.filter(project_id=project_id, is_holdout=False, expert_answer__isnull=False)
        .filter(Q(is_gold=True) | Q(pk__in=_adjudicated(project_id)))
        .values_list("id", "expert_answer_id")
    )


def holdout_answers(project_id: int) -> QuerySet:
    return Item.objects.filter(
        project_id=project_id, is_holdout=True, expert_answer__isnull=False
    ).values_list("id", "expert_answer_id")


def _answer_codes(pairs: QuerySet, tasks: np.ndarray, class_ids: np.ndarray) -> np.ndarray:
    out = np.full(len(tasks), -1, dtype=np.int64)
    arr = np.array(list(pairs), dtype=np.int64).reshape(-1, 2)
    if len(arr):
        rows = pd.Index(tasks).get_indexer(arr[:, 0])
        present = rows >= 0
        out[rows[present]] = pd.Index(class_ids).get_indexer(arr[present, 1])
    return out


# -- running ----------------------------------------------------------------------------------


def aggregate_project(
    project_id: int, method: str, *, params: dict[str, Any] | None = None, trigger: str = "manual"
) -> AggregationRun:
    """Aggregate the project's votes with ``method`` now, in this process; returns the run.

    Raises InvalidAggregation for an unknown method or parameter; any other failure is recorded
    on the returned run (``status`` failed, ``failure_reason``).
    """
    check_method(method, params, Project.objects.get(pk=project_id))
    run = AggregationRun.objects.create(
        project_id=project_id, method=method, params=params or {}, status=Status.RUNNING, trigger=trigger
    )
    return _execute(run)


def execute_run(run_id: int) -> AggregationRun | None:
    """Run a queued run; one already claimed or finished is returned untouched (idempotent)."""
    claimed = AggregationRun.objects.filter(pk=run_id, status=Status.QUEUED).update(
        status=Status.RUNNING
    )
    run = AggregationRun.objects.filter(pk=run_id).first()
    if run is None:
        logger.warning("aggregation run %s no longer exists", run_id)
        return None
    return _execute(run) if claimed else run


def _execute(run: AggregationRun) -> AggregationRun:
    started = time.perf_counter()
    try:
        project = Project.objects.get(pk=run.project_id)
        if project.is_region_task:
            from labeling.services.region_aggregation import run_region_aggregation

            run_region_aggregation(run, project, started)
            return run
        data = load_votes(project)
        model = build_aggregator(run.method, run.params)
        # auto may choose by the expert hold-out (never clamped: only compared against)
        extra = {"holdout": data.holdout} if isinstance(model, AutoSelect) else {}
        model.fit(data.votes, known_labels=data.known, **extra)
        # a finished training run's model joins as one more annotator (model_in_the_loop)
        loop = combine_with_model(project, data.votes, data.known, model)
        with transaction.atomic():
            _store(run, project, data, model, started, loop)
    except AggregationError as exc:
        _fail(run, exc.message, started)
    except Exception as exc:
        logger.exception("aggregation run %s failed", run.pk)
        _fail(run, f"{run.method} failed: {exc}", started)
    return run


def _fail(run: AggregationRun, reason: str, started: float) -> None:
    run.status = Status.FAILED
    run.failure_reason = reason
    run.seconds = time.perf_counter() - started
    run.finished_at = timezone.now()
    run.save(update_fields=["status", "failure_reason", "seconds", "finished_at"])


def entropy_bits(posteriors: np.ndarray) -> np.ndarray:
    p = np.clip(posteriors, 0.0, 1.0)
    logs = np.log2(p, out=np.zeros_like(p), where=p > 0)
    return np.maximum(-(p * logs).sum(axis=1), 0.0)


def _agreement(func, votes: VoteMatrix) -> float | None:
    try:
        value = float(func(votes))
    except ValueError:
        # Fewer than two votes on every item: agreement is undefined, not zero.
        return None
    return value if np.isfinite(value) else None


def _store(
    run: AggregationRun, project: Project, data: ProjectVotes, model: Aggregator, started: float,
    loop: ModelInTheLoop | None = None,
) -> None:
    votes = data.votes
    posteriors = np.asarray(model.posteriors_, dtype=np.float64)
    labels = pd.Index(votes.classes).get_indexer(model.labels_.to_numpy())
    if loop is not None:
        posteriors, labels = loop.posteriors, loop.labels(labels)
    confidence = posteriors.max(axis=1)
    entropy = entropy_bits(posteriors)
    item_ids = votes.tasks.astype(np.int64)
    ConsensusLabel.objects.bulk_create(
        (
            ConsensusLabel(
                run=run, item_id=item_id, label_id=label_id, posterior=post,
                confidence=conf, entropy=ent,
            )
            for item_id, label_id, post, conf, ent in zip(
                item_ids.tolist(), data.class_ids[labels].tolist(), posteriors.round(6).tolist(),
                confidence.tolist(), entropy.tolist(), strict=True,
            )
        ),
        batch_size=BATCH_SIZE,
    )
    n_votes = np.bincount(votes.worker_idx, minlength=votes.n_workers)
    WorkerReliability.objects.bulk_create(
        (
            WorkerReliability(
                run=run, worker_id=worker_id, n_votes=n, accuracy=acc, confusion=conf
            )
            for worker_id, n, acc, conf in zip(
                votes.workers.astype(np.int64).tolist(), n_votes.tolist(),
                np.nan_to_num(model.worker_accuracy_, nan=0.0).tolist(),
                np.asarray(model.confusions_).round(4).tolist(), strict=True,
            )
        ),
        batch_size=BATCH_SIZE,
    )
    scored = data.holdout >= 0
    run.n_votes = votes.n_votes
    run.n_items = votes.n_tasks
    run.n_workers = votes.n_workers
    run.fleiss_kappa = _agreement(fleiss_kappa, votes)
    run.krippendorff_alpha = _agreement(krippendorff_alpha, votes)
    run.holdout_size = int(scored.sum())
    run.holdout_accuracy = float((labels[scored] == data.holdout[scored]).mean()) if scored.any() else None
    if isinstance(model, AutoSelect):
        run.selection = model.selection_.as_dict()
    if loop is not None:
        run.selection = {**run.selection, "model": loop.record}
    if run.method == project.default_method:
        steer_crowd(
            project,
            item_ids=item_ids,
            counts=np.bincount(votes.task_idx, minlength=votes.n_tasks),
            posteriors=posteriors,
            uncertainty=entropy,
            adjudicated=set(_adjudicated(project.pk).values_list("item_id", flat=True)),
            counts_since=data.counts_since,
            model_agrees=None if loop is None else loop.agrees,
        )
    run.status = Status.SUCCEEDED
    run.failure_reason = ""
    run.seconds = time.perf_counter() - started
    run.finished_at = timezone.now()
    run.save()


def steer_crowd(
    project: Project,
    *,
    item_ids: np.ndarray,
    counts: np.ndarray,
    posteriors: np.ndarray,
    uncertainty: np.ndarray,
    adjudicated: set[int],
    counts_since: dict[int, int],
    model_agrees: np.ndarray | None = None,
) -> None:
    """Uncertainty, review flags and adaptive votes wanted from the default method's result.

    ``posteriors`` ``[n_items, K]`` (a region run gives ``[1 - confidence, confidence]``),
    ``counts`` the counted votes per item, ``uncertainty`` what ``Item.uncertainty`` becomes
    (entropy in bits for classes, 1 - confidence for regions), ``counts_since`` the vote
    tally's stripes as the run read them, ``model_agrees`` the items whose model prediction
    agrees with the posterior (it counts as one of the votes an item needs before it stops).
    """
    confident = posteriors.max(axis=1) >= project.confidence_threshold
    k = max(project.overlap, 1)
    k_max = max(project.max_overlap, k)
    more = more_votes_wanted(
        posteriors, counts, k=k, k_max=k_max, threshold=project.confidence_threshold,
        min_votes=min(MIN_VOTES, k), model_agrees=model_agrees,
    )
    wanted = counts + more
    state = _item_state(project.pk)
    changed = []
    for i, item_id in enumerate(item_ids.tolist()):
        if item_id not in state:
            continue
        is_gold, is_holdout, old_wanted, old_review, old_uncertainty = state[item_id]
        # The hold-out is labelled blind and adjudicated items are final: neither is reviewed.
        review = not confident[i] and not is_holdout and item_id not in adjudicated
        # Gold and hold-out items are served apart from the overlap plan.
        new_wanted = old_wanted if is_gold or is_holdout else int(wanted[i])
        item_uncertainty = float(uncertainty[i])
        if (review, new_wanted, item_uncertainty) != (old_review, old_wanted, old_uncertainty):
            changed.append(
                Item(pk=item_id, needs_review=review, votes_wanted=new_wanted, uncertainty=item_uncertainty)
            )
    Item.objects.bulk_update(changed, ["needs_review", "votes_wanted", "uncertainty"], batch_size=BATCH_SIZE)
    # Votes that arrived while this run worked still count toward the next one: each stripe
    # loses what was read from it.
    read = {stripe: n for stripe, n in counts_since.items() if n}
    if read:
        VoteTally.objects.filter(project=project, stripe__in=read).update(
            votes=Greatest(
                F("votes") - Case(*(When(stripe=s, then=Value(n)) for s, n in read.items())),
                Value(0),
            )
        )


def _item_state(project_id: int) -> dict[int, tuple]:
    # One scan of the project's items: cheaper than an IN list of every voted id.
    return {
        row[0]: row[1:]
        for row in Item.objects.filter(project_id=project_id).values_list(
            "id", "is_gold", "is_holdout", "votes_wanted", "needs_review", "uncertainty"
        ).iterator(chunk_size=VOTE_CHUNK)
    }


# -- queueing ---------------------------------------------------------------------------------


def in_flight(project_id: int, method: str) -> QuerySet:
    """Runs of the method that are queued or running and not so old they must be lost."""
    return AggregationRun.objects.filter(
        project_id=project_id,
        method=method,
        status__in=[Status.QUEUED, Status.RUNNING],
        created_at__gt=timezone.now() - STALE_AFTER,
    )


PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0, "interval_max": 0}


def _dispatch(run: AggregationRun) -> None:
    from labeling.tasks import aggregate_project_task

    run_id, automatic = run.pk, run.trigger == "auto"

    def send() -> None:
        try:
            # Named here rather than as a task attribute, which Celery deprecates for routes.
            # One immediate retry (a pooled connection may predate a broker restart), not
            # kombu's default three with pauses: a vote waits on this (0.65 s a vote when down).
            aggregate_project_task.apply_async(
                (run_id,), queue=TASK_QUEUE, retry_policy=PUBLISH_RETRY_POLICY
            )
        except (KombuOperationalError, OSError) as exc:
            # The broker is down. A queued run no worker will hear of would hold the trigger
            # (in_flight) for STALE_AFTER: an automatic one is forgotten, so a vote after the
            # broker is back asks again; a requested one fails with the reason.
            logger.warning("aggregation run %s not queued, broker unreachable: %s", run_id, exc)
            queued = AggregationRun.objects.filter(pk=run_id, status=Status.QUEUED)
            if automatic:
                queued.delete()
            else:
                queued.update(status=Status.FAILED, finished_at=timezone.now(),
                              failure_reason=f"the task queue (broker) was unreachable: {exc}")

    transaction.on_commit(send)


@transaction.atomic
def request_aggregation(
    project: Project,
    method: str,
    user=None,
    trigger: str = "manual",
    params: dict[str, Any] | None = None,
) -> AggregationRun:
    """Queue a run; the Celery task starts once this transaction commits."""
    check_method(method, params, project)
    run = AggregationRun.objects.create(
        project=project, method=method, params=params or {}, status=Status.QUEUED, trigger=trigger
    )
    logger.info(
        "aggregation run %s (%s) of project %s requested by %s",
        run.pk, method, project.pk, getattr(user, "username", None) or trigger,
    )
    _dispatch(run)
    return run


def _work_left(project_id: int) -> bool:
    # The crowd's pool (hold-out included). It runs after every vote: matching item_open_idx's
    # condition and ordering by its column makes PostgreSQL probe that index (0.01 ms) instead
    # of scanning the table, which it prefers for a bare EXISTS (8 ms on 60k items).
    first_open = (
        Item.objects.filter(project_id=project_id, is_gold=False, vote_count__lt=F("votes_wanted"))
        .order_by("vote_count")
        .values_list("pk", flat=True)[:1]
    )
    return bool(list(first_open))


def aggregation_due(project_id: int) -> bool:
    """``aggregate_every`` new votes came in, or some did and the crowd's work ran out."""
    row = (
        Project.objects.filter(pk=project_id)
        .annotate(since=Sum("vote_tallies__votes"))
        .values_list("aggregate_every", "since")
        .first()
    )
    if row is None or not row[0] or not row[1]:
        return False
    every, since = row
    # A drained queue would otherwise wait forever for the last few votes of the count;
    # aggregating now reopens the items that are still uncertain.
    return since >= every or not _work_left(project_id)


def maybe_trigger_aggregation(project_id: int) -> AggregationRun | None:
    """Queue a run of the default method when :func:`aggregation_due`; else None.

    Called after committed votes, so the common case is one or two cheap reads. The
    check-and-create holds the project row, so concurrent votes queue at most one run.
    """
    if not aggregation_due(project_id):
        return None
    with transaction.atomic():
        if not connection.features.has_select_for_update:
            # SQLite: write first so this transaction holds the database write lock.
            Project.objects.filter(pk=project_id).update(aggregate_every=F("aggregate_every"))
        project = Project.objects.select_for_update().filter(pk=project_id).first()
        if project is None or not aggregation_due(project_id):
            return None
        if in_flight(project_id, project.default_method).exists():
            return None
        run = AggregationRun.objects.create(
            project=project, method=project.default_method, status=Status.QUEUED, trigger="auto"
        )
        _dispatch(run)
    return run


# -- reads ------------------------------------------------------------------------------------


def latest_runs_by_method(project: Project) -> dict[str, AggregationRun]:
    """The newest succeeded run of each method, keyed by method name."""
    runs: dict[str, AggregationRun] = {}
    for run in project.aggregation_runs.filter(status=Status.SUCCEEDED).order_by("-created_at", "-id"):
        runs.setdefault(run.method, run)
    return runs


def latest_run(project: Project, method: str | None = None) -> AggregationRun | None:
    """The newest succeeded run of ``method`` (default: the project's default method)."""
    return (
        project.aggregation_runs.filter(status=Status.SUCCEEDED, method=method or project.default_method)
        .order_by("-created_at", "-id")
        .first()
    )


def expert_agreement(run: AggregationRun) -> tuple[float | None, int]:
    """Share of consensus labels equal to an expert answer that was not clamped into the fit.

    Regular items with an imported answer (a simulated crowd's truth); the hold-out is scored
    apart, and gold or adjudicated items would agree by construction.
    """
    consensus = ConsensusLabel.objects.filter(
        run=run, item__expert_answer__isnull=False, item__is_holdout=False, item__is_gold=False
    ).exclude(item__in=_adjudicated(run.project_id))
    n = consensus.count()
    if not n:
        return None, 0
    return consensus.filter(label_id=F("item__expert_answer_id")).count() / n, n
