"""Read-only numbers for the admin dashboard: progress, agreement over time, annotators, and
every aggregation method scored against the expert hold-out.

Scoring uses only hold-out items with an expert answer (blind labels, agreed or tie-broken):
the crowd is never its own yardstick. A class project's methods are scored by accuracy and
recall per class here; a region project's runs (points, boxes, masks) carry their own hold-out
score, mean F1 or mean Dice against the expert regions, stored when the run ended.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np
from django.db.models import Count, Q

from labeling.aggregation.agreement import fleiss_kappa, krippendorff_alpha
from labeling.exports import worker_pseudonym
from labeling.models import (
    AggregationRun,
    ConsensusLabel,
    Item,
    Membership,
    Project,
    Vote,
    WorkerReliability,
)
from labeling.services.region_aggregation import HOLDOUT_METRIC, review_run
from labeling.services.review import holdout_agreement, holdout_disputes, latest_runs, review_queue
from labeling.services.votes import COUNTED_KINDS

CALIBRATION_BINS = 10
# Points of the agreement-over-time series.
AGREEMENT_POINTS = 20
# A region run's hold-out score (``selection["holdout_metric"]``), in words.
REGION_SCORE_LABELS = {"f1": "Mean F1", "dice": "Mean Dice"}


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval (E. B. Wilson, JASA 22:209-212, 1927); sane at p = 0 or 1 and
    small n, where the normal approximation is not."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass
class MethodScore:
    method: str
    run: int
    n: int
    correct: int
    accuracy: float | None
    ci_low: float | None
    ci_high: float | None
    recall: dict[str, float | None]
    calibration: list[dict]
    # an auto run's choice (chosen method, criterion, reason, scores); empty for other methods
    selection: dict = field(default_factory=dict)


def score_methods(project: Project) -> list[MethodScore]:
    """Accuracy (Wilson 95% CI), per-class recall and calibration of each method's latest run on
    the hold-out items that have an expert answer."""
    classes = dict(project.label_classes.values_list("id", "name"))
    scores = []
    for run in latest_runs(project):
        rows = list(
            ConsensusLabel.objects.filter(
                run=run, item__is_holdout=True, item__expert_answer__isnull=False
            ).values_list("label_id", "item__expert_answer_id", "confidence")
        )
        n = len(rows)
        correct = sum(pred == truth for pred, truth, _ in rows)
        low, high = wilson_interval(correct, n) if n else (None, None)
        recall: dict[str, float | None] = {}
        for class_id, name in classes.items():
            truth_rows = [pred for pred, truth, _ in rows if truth == class_id]
            recall[name] = (
                sum(p == class_id for p in truth_rows) / len(truth_rows) if truth_rows else None
            )
        bins: list[dict] = []
        for b in range(CALIBRATION_BINS):
            lo, hi = b / CALIBRATION_BINS, (b + 1) / CALIBRATION_BINS
            inside = [
                (conf, pred == truth)
                for pred, truth, conf in rows
                if lo <= conf < hi or (b == CALIBRATION_BINS - 1 and conf == 1.0)
            ]
            if inside:
                bins.append(
                    {
                        "low": lo,
                        "high": hi,
                        "n": len(inside),
                        "confidence": sum(c for c, _ in inside) / len(inside),
                        "accuracy": sum(ok for _, ok in inside) / len(inside),
                    }
                )
        scores.append(
            MethodScore(
                method=run.method,
                run=run.id,
                n=n,
                correct=correct,
                accuracy=correct / n if n else None,
                ci_low=low,
                ci_high=high,
                recall=recall,
                calibration=bins,
                selection=run.selection,
            )
        )
    return scores


def score_region_methods(project: Project) -> list[dict]:
    """Each region method's latest run with the hold-out score it stored (mean F1 at the match
    rule, or mean Dice, over the hold-out items with expert regions), default method first."""
    default_metric = HOLDOUT_METRIC[project.task_type]
    rows = []
    for run in latest_runs(project):
        metric = run.selection.get("holdout_metric", default_metric)
        rows.append(
            {
                "method": run.method,
                "run": run.id,
                "chosen": run.selection.get("chosen"),
                "metric": metric,
                "metric_label": REGION_SCORE_LABELS[metric],
                "score": run.holdout_accuracy,
                "n": run.holdout_size,
                "mean_agreement": run.selection.get("mean_agreement"),
                "selection": run.selection if run.selection.get("chosen") else {},
            }
        )
    return rows


def region_run(project: Project, run: AggregationRun | None) -> dict | None:
    """The latest region run experts and admins see (``run``, :func:`review_run`'s): its
    method (auto's pick named), mean pairwise agreement and hold-out metric; None before one."""
    if run is None:
        return None
    return {
        "run": run,
        "method": run.fitted_method,
        "mean_agreement": run.selection.get("mean_agreement"),
        "holdout_metric": run.selection.get("holdout_metric", HOLDOUT_METRIC[project.task_type]),
    }


def reliability_run(project: Project) -> AggregationRun | None:
    """The run whose worker estimates the annotator table shows: a class project's default
    method's latest run; a region project's latest region run (:func:`review_run`)."""
    if project.is_region_task:
        return review_run(project)
    return next((r for r in latest_runs(project) if r.method == project.default_method), None)


def progress(project: Project) -> dict:
    items = Item.objects.filter(project=project)
    # an expert answers with a class or, in a region project, with regions
    answered = Q(expert_answer__isnull=False) | Q(expert_regions__isnull=False)
    counts = items.aggregate(
        n=Count("id"),
        holdout=Count("id", filter=Q(is_holdout=True)),
        holdout_labelled=Count("id", filter=Q(is_holdout=True) & answered),
        gold=Count("id", filter=Q(is_gold=True)),
        expert=Count("id", filter=answered),
    )
    histogram = Counter(dict(
        items.values("vote_count").annotate(n=Count("id")).values_list("vote_count", "n")
    ))
    return {
        "items": counts["n"],
        "votes": Vote.objects.filter(project=project, kind__in=COUNTED_KINDS, is_excluded=False).count(),
        "votes_per_item": [{"votes": k, "items": histogram[k]} for k in sorted(histogram)],
        "awaiting_review": review_queue(project).count(),
        "holdout_total": counts["holdout"],
        "holdout_labelled": counts["holdout_labelled"],
        "holdout_disputed": holdout_disputes(project).count(),
        "gold_items": counts["gold"],
        "expert_labelled": counts["expert"],
    }


def agreement_history(project: Project) -> list[dict]:
    """Fleiss' kappa and Krippendorff's alpha of every succeeded run, oldest first."""
    runs = project.aggregation_runs.filter(status="succeeded").order_by("created_at", "id")
    return [
        {
            "run": r.id,
            "method": r.method,
            "created_at": r.created_at,
            "n_votes": r.n_votes,
            "fleiss_kappa": r.fleiss_kappa,
            "krippendorff_alpha": r.krippendorff_alpha,
        }
        for r in runs
        if r.fleiss_kappa is not None or r.krippendorff_alpha is not None
    ]


def _coefficient(func, counts: np.ndarray) -> float | None:
    try:
        value = float(func(counts))
    except ValueError:
        return None  # no item with two votes yet: undefined, not zero
    return value if math.isfinite(value) else None


def agreement_series(project: Project, points: int = AGREEMENT_POINTS) -> list[dict]:
    """Fleiss' kappa and Krippendorff's alpha of the counted votes cast up to each of ``points``
    moments, evenly spaced in votes, oldest first.

    Computed from the votes themselves rather than from the aggregation runs: the runs of one
    aggregation (every method on the same votes) share one value, so a seeded project's seven
    runs drew a flat line, and a project between runs showed nothing new.
    """
    rows = list(
        Vote.objects.filter(project=project, kind=Vote.Kind.LABEL, is_excluded=False)
        .order_by("created_at", "id")
        .values_list("item_id", "label_id", "created_at")
    )
    if not rows:
        return []
    class_ids = project.label_classes.order_by("index").values_list("id", flat=True)
    class_index = {cid: i for i, cid in enumerate(class_ids)}
    items, item_codes = np.unique([r[0] for r in rows], return_inverse=True)
    labels = np.array([class_index[r[1]] for r in rows], dtype=np.int64)
    k = len(class_index)
    cells = item_codes * k + labels
    n = len(rows)
    series = []
    for cut in sorted({max(1, round(n * (p + 1) / points)) for p in range(points)}):
        counts = np.bincount(cells[:cut], minlength=len(items) * k).reshape(len(items), k)
        series.append(
            {
                "votes": cut,
                "at": rows[cut - 1][2],
                "fleiss_kappa": _coefficient(fleiss_kappa, counts),
                "krippendorff_alpha": _coefficient(krippendorff_alpha, counts),
            }
        )
    return series


def annotators(project: Project, run: AggregationRun | None = None) -> list[dict]:
    """One row per crowd member or voter: votes, gold accuracy, and the estimate of them by
    ``run`` (default: the :func:`reliability_run`): accuracy and confusion matrix (class runs)
    or sensitivity, precision and specificity (region runs, ``WorkerReliability.detail``)."""
    run = run or reliability_run(project)
    per_worker = {
        row["worker_id"]: row
        for row in Vote.objects.filter(project=project, kind__in=COUNTED_KINDS)
        .values("worker_id")
        .annotate(
            votes=Count("id"),
            gold_answered=Count("id", filter=Q(was_gold=True, gold_correct__isnull=False)),
            gold_correct=Count("id", filter=Q(was_gold=True, gold_correct=True)),
        )
    }
    reliability = {r.worker_id: r for r in WorkerReliability.objects.filter(run=run)} if run else {}
    members = {
        m.user_id: m
        for m in Membership.objects.filter(project=project).select_related("user")
        if m.role == Membership.Role.CROWD or m.user_id in per_worker
    }
    rows = []
    for user_id, m in sorted(members.items(), key=lambda kv: kv[1].user.username):
        stats = per_worker.get(user_id, {})
        rel = reliability.get(user_id)
        answered = stats.get("gold_answered", 0)
        rows.append(
            {
                "user_id": user_id,
                "username": m.user.username,
                "pseudonym": worker_pseudonym(project.id, user_id),
                "votes": stats.get("votes", 0),
                "gold_answered": answered,
                "gold_accuracy": stats["gold_correct"] / answered if answered else None,
                "estimated_accuracy": rel.accuracy if rel else None,
                "confusion": rel.confusion if rel else None,
                **{
                    key: (rel.detail or {}).get(key) if rel else None
                    for key in ("sensitivity", "precision", "specificity")
                },
                "is_blocked": m.is_blocked,
                "blocked_reason": m.blocked_reason,
            }
        )
    return rows


def dashboard(project: Project) -> dict:
    agreement = holdout_agreement(project)
    estimates = reliability_run(project)
    region = project.is_region_task
    return {
        "project": {"id": project.id, "name": project.name},
        "classes": project.class_names,
        "default_method": project.default_method,
        "progress": progress(project),
        "agreement": agreement_history(project),
        "agreement_series": agreement_series(project),
        "expert_agreement": {
            "n_items": agreement.n_items,
            "observed": agreement.observed,
            "cohen_kappa": agreement.kappa,
        },
        "annotators": annotators(project, estimates),
        # the method whose estimates the annotator table shows (auto's pick named)
        "reliability_method": estimates.fitted_method if estimates else None,
        "region_run": region_run(project, estimates) if region else None,  # review_run's
        # class scores (accuracy, recall, calibration) or a region project's own scores
        "methods": [] if region else [asdict(s) for s in score_methods(project)],
        "region_methods": score_region_methods(project) if region else [],
    }
