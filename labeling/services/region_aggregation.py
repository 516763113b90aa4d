"""Aggregating a region project's votes (points, boxes, masks) into a stored consensus.

:func:`labeling.services.aggregation.aggregate_project` and the Celery task route a run of a
region project here. The run reads the counted region votes (kind ``regions``, not excluded),
splits every answer per class, and fits one estimator of the pure engine
(:mod:`labeling.aggregation.regions`) on ``(item, class)`` tasks, so one worker's reliability is
pooled over every class they marked:

* ``staple`` / ``mask_majority`` (masks): polygons rasterised and brush RLEs decoded into one
  binary mask per class; STAPLE's (or the vote share's) soft map is the consensus;
* ``point_consensus`` (points) matched within ``project.region_match_distance`` pixels;
* ``box_consensus`` (boxes) matched at ``project.region_match_iou``;
* ``auto`` (the default) picks by task type: STAPLE, point or box consensus.

Stored in one transaction: a ``RegionConsensus`` per voted item (the fused shapes, each with its
confidence; for masks the ``[C, H, W]`` float16 probability map as ``.npy``), a
``WorkerReliability`` per fitted worker (``accuracy`` = F1 of sensitivity and precision, or
(sensitivity + specificity) / 2 for masks; ``detail`` the numbers and the worker's mean
pairwise agreement), and the run's hold-out score against the experts' regions (mean F1 at the
match rule, or mean Dice; ``selection["holdout_metric"]`` says which).

Known answers clamped into the fit, as for classes: the expert regions of gold items and of
items adjudicated on the review queue, outside the hold-out. Hold-out regions only score.

An item one worker annotated has nothing to match against: its consensus is that worker's
answer at a low, fixed confidence (:data:`SINGLE_RATER_P`), and it stays out of the fit, where
it would only confirm the worker by themselves.
"""

from __future__ import annotations

import inspect
import io
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from django.core.files.base import ContentFile
from django.db import transaction
from django.utils import timezone

from labeling.aggregation.regions import (
    STAPLE,
    BoxConsensus,
    MaskMajorityVote,
    PointConsensus,
    detection_agreement,
    mask_agreement,
)
from labeling.aggregation.regions.answers import (
    class_masks,
    rle_encode,
    score_answer,
    shapes_from_stored,
)
from labeling.exports import latest_region_run
from labeling.models import (
    AggregationRun,
    ExpertLabel,
    Item,
    Project,
    RegionAnswer,
    RegionConsensus,
    Vote,
    VoteTally,
    WorkerReliability,
)
from labeling.services.aggregation import (
    BATCH_SIZE,
    NO_VOTES,
    AggregationError,
    InvalidAggregation,
    latest_runs_by_method,
    steer_crowd,
)
from labeling.services.review import answer_regions

TaskType = Project.TaskType
Status = AggregationRun.Status

ESTIMATORS: dict[str, type] = {
    "staple": STAPLE,
    "mask_majority": MaskMajorityVote,
    "point_consensus": PointConsensus,
    "box_consensus": BoxConsensus,
}
METHODS_BY_TASK: dict[str, tuple[str, ...]] = {
    TaskType.MASKS: ("staple", "mask_majority"),
    TaskType.POINTS: ("point_consensus",),
    TaskType.BOXES: ("box_consensus",),
}
AUTO_CHOICE = {TaskType.MASKS: "staple", TaskType.POINTS: "point_consensus", TaskType.BOXES: "box_consensus"}
AUTO = "auto"
HOLDOUT_METRIC = {TaskType.MASKS: "dice", TaskType.POINTS: "f1", TaskType.BOXES: "f1"}
# A lone worker's mark (or pixel) is unverified: as likely right as three to one, never more.
SINGLE_RATER_P = 0.75


def region_method_names(task_type: str | None = None) -> list[str]:
    """Methods a region project of ``task_type`` may run (every region method when None)."""
    return [AUTO, *(METHODS_BY_TASK[task_type] if task_type else ESTIMATORS)]


def resolve_method(project: Project, method: str) -> str:
    """The engine method a run of ``method`` fits on ``project`` (auto: by task type)."""
    allowed = region_method_names(project.task_type)
    if method not in allowed:
        raise InvalidAggregation(
            f"Unknown aggregation method '{method}' for a {project.task_type} project; "
            f"use one of: {', '.join(allowed)}."
        )
    return AUTO_CHOICE[project.task_type] if method == AUTO else method


def _accepted_params(cls: type) -> list[str]:
    names: list[str] = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names += [p.name for p in params if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return names


def check_params(method: str, params: dict[str, Any] | None) -> dict[str, Any]:
    """``params`` as constructor arguments of the engine method, or InvalidAggregation."""
    accepted = _accepted_params(ESTIMATORS[method])
    params = dict(params or {})
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise InvalidAggregation(
            f"Unknown parameter(s) {', '.join(unknown)} for {method}; it takes: {', '.join(accepted)}."
        )
    return params


def build_region_aggregator(project: Project, method: str, params: dict[str, Any] | None = None):
    """The engine estimator of ``method`` for ``project``, with the project's match rule."""
    chosen = resolve_method(project, method)
    params = check_params(chosen, params)
    if chosen == "point_consensus":
        params.setdefault("radius", project.region_match_distance)
    elif chosen == "box_consensus":
        params.setdefault("iou", project.region_match_iou)
    else:
        # one binary map per (item, class): what is stored and what the tests check
        params.setdefault("n_classes", 2)
    return ESTIMATORS[chosen](**params)


# -- loading ----------------------------------------------------------------------------------


@dataclass
class RegionVotes:
    """A region project's counted votes and the expert answers beside them."""

    task_type: str
    n_classes: int
    sizes: dict[int, tuple[int, int]]  # item id -> (height, width)
    votes: list[tuple[int, int, list]]  # (item, worker, stored regions), by item then worker
    known: dict[int, list]  # item -> expert regions clamped into the fit
    holdout: dict[int, list]  # item -> hold-out expert regions (scored, never fitted)
    counts_since: dict[int, int]
    raters: dict[int, list[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for item, worker, _ in self.votes:
            self.raters.setdefault(item, []).append(worker)


def counted_region_votes(project_id: int):
    return Vote.objects.filter(project_id=project_id, kind=Vote.Kind.REGIONS, is_excluded=False)


def _adjudicated_regions(project_id: int):
    return RegionAnswer.objects.filter(
        item__project_id=project_id, source=ExpertLabel.Source.REVIEW
    ).values("item_id")


def load_region_votes(project: Project) -> RegionVotes:
    counts_since = dict(VoteTally.objects.filter(project=project).values_list("stripe", "votes"))
    votes = [
        (item, worker, regions or [])
        for item, worker, regions in counted_region_votes(project.pk)
        .order_by("item_id", "worker_id")
        .values_list("item_id", "worker_id", "regions")
    ]
    if not votes:
        raise AggregationError(NO_VOTES)
    voted = sorted({v[0] for v in votes})
    rows = Item.objects.filter(pk__in=voted).values_list(
        "id", "height", "width", "is_gold", "is_holdout", "expert_regions_id"
    )
    adjudicated = set(_adjudicated_regions(project.pk).values_list("item_id", flat=True))
    sizes, known_answer, holdout_answer = {}, {}, {}
    for item, h, w, is_gold, is_holdout, answer in rows:
        sizes[item] = (h, w)
        if answer is None:
            continue
        if is_holdout:
            holdout_answer[item] = answer
        elif is_gold or item in adjudicated:
            known_answer[item] = answer
    stored = answer_regions([*known_answer.values(), *holdout_answer.values()])
    return RegionVotes(
        task_type=project.task_type,
        n_classes=project.label_classes.count(),
        sizes=sizes,
        votes=votes,
        known={i: stored.get(a, []) for i, a in known_answer.items()},
        holdout={i: stored.get(a, []) for i, a in holdout_answer.items()},
        counts_since=counts_since,
    )


# -- fitting ----------------------------------------------------------------------------------


@dataclass
class RegionResult:
    """What a run stores, per item and per worker (see the module docstring)."""

    consensus: dict[int, list]  # item -> stored regions with "confidence"
    confidence: dict[int, float]
    agreement: dict[int, float | None]
    maps: dict[int, np.ndarray]  # masks: item -> float [C, H, W]
    workers: dict[int, dict[str, Any]]  # worker -> accuracy, confusion, detail
    single_rater: set[int]


def class_marks(stored: list, n_classes: int, kind: str) -> list[np.ndarray]:
    """Per class, a stored answer's points (``[n, 2]``) or boxes (``[n, 4]`` x0, y0, x1, y1)."""
    dim = 2 if kind == "points" else 4
    per_class: list[list[np.ndarray]] = [[] for _ in range(n_classes)]
    for shape in shapes_from_stored(stored):
        per_class[shape.label].append(shape.points.reshape(-1))
    return [np.asarray(rows, dtype=np.float64).reshape(-1, dim) for rows in per_class]


def stored_masks(stored: list, n_classes: int, size: tuple[int, int]) -> np.ndarray:
    """Bool ``[n_classes, h, w]``: a stored answer's polygons and masks, united per class."""
    shapes = shapes_from_stored(stored)
    for s in shapes:
        if s.shape == "mask" and list(s.rle["size"]) != list(size):
            raise AggregationError(f"a stored mask's size {list(s.rle['size'])} is not the image's {list(size)}")
    return class_masks(shapes, n_classes, *size)


def marks_to_regions(label: int, coords: np.ndarray, kind: str, confidence) -> list[dict[str, Any]]:
    """Stored consensus shapes of one class from ``[n, 2]`` points or ``[n, 4]`` boxes."""
    out = []
    for row, p in zip(np.asarray(coords, dtype=np.float64), confidence, strict=True):
        values = [round(float(v), 2) for v in row]
        points = [values] if kind == "points" else [values[:2], values[2:]]
        shape = "point" if kind == "points" else "box"
        out.append({"label": int(label), "shape": shape, "points": points, "confidence": round(float(p), 4)})
    return out


def _task(item: int, cls: int, n_classes: int) -> int:
    return item * n_classes + cls


def _item_means(values: pd.Series, marked: set[int], n_classes: int, items: list[int]) -> dict:
    """Per item, the mean of its (item, class) values over classes someone marked (1 when
    nobody marked anything and two raters agree on that; None with one rater)."""
    out: dict[int, float | None] = {}
    by_item: dict[int, list[float]] = defaultdict(list)
    for task, v in values.items():
        if task in marked and np.isfinite(v):
            by_item[int(task) // n_classes].append(float(v))
    single = {int(t) // n_classes for t, v in values.items() if not np.isfinite(v)}
    for item in items:
        if by_item.get(item):
            out[item] = float(np.mean(by_item[item]))
        else:
            out[item] = None if item in single else 1.0
    return out


def _split_single(data: RegionVotes) -> tuple[set[int], list[int]]:
    """Items one worker annotated and nobody knows the answer of (kept out of the fit), and
    the items the fit takes."""
    single = {i for i, r in data.raters.items() if len(r) == 1 and i not in data.known}
    return single, [i for i in data.raters if i not in single]


def _fit_input(data: RegionVotes, frame: pd.DataFrame, single: set[int], fit_items: list[int], per_class):
    """The frame's rows the fit takes and the known answers of its items as ``(item, class)``
    task -> array (``per_class(item)``: one array per class)."""
    c = data.n_classes
    known = {
        _task(i, cls, c): arr
        for i in fit_items
        if i in data.known
        for cls, arr in enumerate(per_class(i))
    }
    return frame[~(frame["task"] // c).isin(single)], known


def fit_regions(project: Project, data: RegionVotes, model) -> RegionResult:
    """Fit ``model`` (an engine estimator) on the votes and shape what is stored."""
    if data.task_type == TaskType.MASKS:
        return _fit_masks(data, model)
    return _fit_detections(project, data, model)


def _fit_detections(project: Project, data: RegionVotes, model) -> RegionResult:
    kind = "points" if data.task_type == TaskType.POINTS else "boxes"
    threshold = project.region_match_distance if kind == "points" else project.region_match_iou
    c = data.n_classes
    rows, marked = [], set()
    for item, worker, regions in data.votes:
        for cls, arr in enumerate(class_marks(regions, c, kind)):
            rows.append((_task(item, cls, c), worker, arr))
            if len(arr):
                marked.add(_task(item, cls, c))
    frame = pd.DataFrame(rows, columns=["task", "worker", kind])
    single, fit_items = _split_single(data)
    consensus: dict[int, list] = {i: [] for i in data.raters}
    confidence: dict[int, float] = {}
    workers: dict[int, dict[str, Any]] = {}
    if fit_items:
        fitted, known = _fit_input(data, frame, single, fit_items, lambda i: class_marks(data.known[i], c, kind))
        model.fit(fitted, known=known or None)
        for task, coords in model.consensus_.items():
            item, cls = divmod(int(task), c)
            consensus[item] += marks_to_regions(cls, coords, kind, model.scores_[task])
        # every candidate's decision (kept: p, dropped: 1 - p), averaged per item
        clusters = model.clusters_
        p = clusters["confidence"].to_numpy(dtype=np.float64)
        right = np.where(clusters["kept"].to_numpy(dtype=bool), p, 1.0 - p)
        per_item = pd.Series(right).groupby(clusters["task"].to_numpy() // c).mean()
        for item in fit_items:
            confidence[item] = float(per_item.get(item, 1.0))
        precision = model.precision_
        for w, worker in enumerate(model.workers_):
            sens = float(model.sensitivity_[worker])
            prec = precision[worker]
            # a worker who marked nothing made no false mark: precision 1 for their F1
            prec_for_f1 = 1.0 if not np.isfinite(prec) else float(prec)
            f1 = 2 * sens * prec_for_f1 / (sens + prec_for_f1) if sens + prec_for_f1 > 0 else 0.0
            workers[int(worker)] = {
                "accuracy": f1,
                "confusion": np.asarray(model.confusions_[w]),
                "detail": {
                    "sensitivity": sens,
                    "precision": float(prec) if np.isfinite(prec) else None,
                    "specificity": float(model.specificity_[worker]),
                    "localization_error": float(model.localization_error_[worker]),
                },
            }
    for item in single:
        (worker,) = data.raters[item]
        regions = next(r for i, w, r in data.votes if i == item and w == worker)
        for cls, arr in enumerate(class_marks(regions, c, kind)):
            consensus[item] += marks_to_regions(cls, arr, kind, [SINGLE_RATER_P] * len(arr))
        confidence[item] = SINGLE_RATER_P
    per_task, per_worker = detection_agreement(frame, kind, threshold)
    agreement = _item_means(per_task, marked, c, list(data.raters))
    _add_worker_agreement(workers, per_worker)
    return RegionResult(consensus, confidence, agreement, {}, workers, single)


def _fit_masks(data: RegionVotes, model) -> RegionResult:
    c = data.n_classes
    rows, marked = [], set()
    masks_of: dict[tuple[int, int], np.ndarray] = {}
    for item, worker, regions in data.votes:
        stack = stored_masks(regions, c, data.sizes[item])
        masks_of[(item, worker)] = stack
        for cls in range(c):
            rows.append((_task(item, cls, c), worker, stack[cls]))
            if stack[cls].any():
                marked.add(_task(item, cls, c))
    frame = pd.DataFrame(rows, columns=["task", "worker", "segmentation"])
    single, fit_items = _split_single(data)
    maps: dict[int, np.ndarray] = {}
    if fit_items:
        fitted, known = _fit_input(
            data, frame, single, fit_items, lambda i: stored_masks(data.known[i], c, data.sizes[i])
        )
        model.fit(fitted, known=known or None)
        for item in fit_items:
            maps[item] = np.stack([np.asarray(model.probas_[_task(item, cls, c)]) for cls in range(c)])
    for item in single:
        (worker,) = data.raters[item]
        maps[item] = np.where(masks_of[(item, worker)], SINGLE_RATER_P, 1.0 - SINGLE_RATER_P)
    consensus, confidence = {}, {}
    for item, prob in maps.items():
        regions = []
        for cls in range(c):
            fg = prob[cls] >= 0.5
            if fg.any():
                regions.append({
                    "label": cls, "shape": "mask", "rle": rle_encode(fg),
                    "confidence": round(float(np.abs(2 * prob[cls][fg] - 1).mean()), 4),
                })
        consensus[item] = regions
        anyone = np.zeros_like(prob, dtype=bool)
        for worker in data.raters[item]:
            anyone |= masks_of[(item, worker)]
        confidence[item] = float(np.abs(2 * prob[anyone] - 1).mean()) if anyone.any() else 1.0
    workers = _mask_reliability(data, model, masks_of, maps, single) if fit_items else {}
    per_task, per_worker = mask_agreement(frame, "dice")
    agreement = _item_means(per_task, marked, c, list(data.raters))
    _add_worker_agreement(workers, per_worker)
    return RegionResult(consensus, confidence, agreement, maps, workers, single)


def _mask_reliability(data, model, masks_of, maps, single) -> dict[int, dict[str, Any]]:
    """Sensitivity and specificity (STAPLE's own; majority vote: measured against the soft
    consensus, the M-step's formula) and precision (share of a worker's pixels the consensus
    holds for true) per worker, pooled over every class and fitted item."""
    sums: dict[int, np.ndarray] = defaultdict(lambda: np.zeros(4))
    for (item, worker), stack in masks_of.items():
        if item in single:
            continue
        p = maps[item].astype(np.float64)
        sums[worker] += [
            (p * stack).sum(), p.sum(), ((1 - p) * ~stack).sum(), (1 - p).sum()
        ]
    n_marked = defaultdict(float)
    for (item, worker), stack in masks_of.items():
        if item not in single:
            n_marked[worker] += stack.sum()
    out = {}
    for worker, (tp, pos, tn, neg) in sums.items():
        if isinstance(model, STAPLE):
            sens = float(model.sensitivity_[worker])
            spec = float(model.specificity_[worker])
        else:
            sens = tp / pos if pos > 0 else 0.0
            spec = tn / neg if neg > 0 else 1.0
        precision = tp / n_marked[worker] if n_marked[worker] > 0 else None
        out[int(worker)] = {
            "accuracy": (sens + spec) / 2,
            "confusion": np.array([[spec, 1 - spec], [1 - sens, sens]]),
            "detail": {"sensitivity": sens, "specificity": spec, "precision": precision},
        }
    return out


def _add_worker_agreement(workers: dict[int, dict[str, Any]], per_worker: pd.Series) -> None:
    for worker, value in per_worker.items():
        if int(worker) in workers and np.isfinite(value):
            workers[int(worker)]["detail"]["agreement"] = float(value)


# -- hold-out ---------------------------------------------------------------------------------


def holdout_score(
    data: RegionVotes, consensus: dict[int, list], project: Project
) -> tuple[float | None, int]:
    """The run's consensus against the hold-out experts' regions (see :func:`mean_score`)."""
    return mean_score(
        project,
        [(consensus[i], truth, data.sizes[i]) for i, truth in data.holdout.items() if i in consensus],
    )


def mean_score(project: Project, pairs: list[tuple[list, list, tuple[int, int]]]) -> tuple[float | None, int]:
    """Mean per-item F1 (points, boxes: at the project's match rule, within each class) or Dice
    (masks: mean over the classes either side marked) of ``(predicted, truth, (h, w))`` pairs."""
    scores = [
        score_answer(
            shapes_from_stored(predicted), shapes_from_stored(truth), task_type=project.task_type,
            height=h, width=w, match_distance=project.region_match_distance,
            match_iou=project.region_match_iou,
        )[1]
        for predicted, truth, (h, w) in pairs
    ]
    return (float(np.mean(scores)) if scores else None), len(scores)


def rescore_holdout(project: Project) -> None:
    """Score each method's latest run again against the hold-out (an expert just answered a
    hold-out item): the yardstick grows without waiting for the next run."""
    for run in latest_runs_by_method(project).values():
        rows = list(
            RegionConsensus.objects.filter(
                run=run, item__is_holdout=True, item__expert_regions__isnull=False
            ).values_list("regions", "item__expert_regions_id", "item__height", "item__width")
        )
        truth = answer_regions([r[1] for r in rows])
        run.holdout_accuracy, run.holdout_size = mean_score(
            project, [(regions, truth[answer], (h, w)) for regions, answer, h, w in rows]
        )
        run.save(update_fields=["holdout_accuracy", "holdout_size"])


# -- running ----------------------------------------------------------------------------------


def run_region_aggregation(run: AggregationRun, project: Project, started: float) -> None:
    """Fit and store ``run`` (already claimed, status running); raises on failure, which the
    caller records on the run."""
    data = load_region_votes(project)
    model = build_region_aggregator(project, run.method, run.params)
    chosen = resolve_method(project, run.method)
    result = fit_regions(project, data, model)
    with transaction.atomic():
        _store(run, project, data, result, chosen, started)


def _npy(prob: np.ndarray) -> ContentFile:
    buffer = io.BytesIO()
    np.save(buffer, prob.astype(np.float16))
    return ContentFile(buffer.getvalue())


def _store(
    run: AggregationRun, project: Project, data: RegionVotes, result: RegionResult, chosen: str,
    started: float,
) -> None:
    # idempotent: a run carried out again (a redelivered task) replaces what it stored
    RegionConsensus.objects.filter(run=run).delete()
    WorkerReliability.objects.filter(run=run).delete()
    rows = []
    for item, regions in result.consensus.items():
        row = RegionConsensus(
            run=run, item_id=item, regions=regions, confidence=result.confidence[item],
            agreement=result.agreement.get(item),
        )
        if item in result.maps:
            row.probability_map.save(f"run{run.pk}-item{item}.npy", _npy(result.maps[item]), save=False)
        rows.append(row)
    RegionConsensus.objects.bulk_create(rows, batch_size=BATCH_SIZE)
    n_votes = defaultdict(int)
    for _, worker, _ in data.votes:
        n_votes[worker] += 1
    WorkerReliability.objects.bulk_create(
        (
            WorkerReliability(
                run=run, worker_id=worker, n_votes=n_votes[worker], accuracy=float(w["accuracy"]),
                confusion=np.asarray(w["confusion"], dtype=np.float64).round(4).tolist(),
                detail={k: (round(v, 4) if isinstance(v, float) else v) for k, v in w["detail"].items()},
            )
            for worker, w in result.workers.items()
        ),
        batch_size=BATCH_SIZE,
    )
    accuracy, n_scored = holdout_score(data, result.consensus, project)
    agreements = [a for a in result.agreement.values() if a is not None]
    metric = HOLDOUT_METRIC[project.task_type]
    run.n_votes = len(data.votes)
    run.n_items = len(result.consensus)
    run.n_workers = len({w for _, w, _ in data.votes})
    run.holdout_accuracy = accuracy
    run.holdout_size = n_scored
    run.selection = {
        "task_type": project.task_type,
        "holdout_metric": metric,
        "mean_agreement": round(float(np.mean(agreements)), 4) if agreements else None,
        "single_rater_items": len(result.single_rater),
        **(
            {
                "chosen": chosen,
                "criterion": "task type",
                "reason": f"{chosen} is the consensus for a {project.task_type} project",
            }
            if run.method == AUTO
            else {}
        ),
    }
    if run.method == project.default_method:
        items = list(result.consensus)
        conf = np.array([result.confidence[i] for i in items], dtype=np.float64)
        steer_crowd(
            project,
            item_ids=np.array(items, dtype=np.int64),
            counts=np.array([len(data.raters[i]) for i in items], dtype=np.int64),
            posteriors=np.stack([1.0 - conf, conf], axis=1),
            uncertainty=1.0 - conf,
            adjudicated=set(_adjudicated_regions(project.pk).values_list("item_id", flat=True)),
            counts_since=data.counts_since,
        )
    run.status = Status.SUCCEEDED
    run.failure_reason = ""
    run.seconds = time.perf_counter() - started
    run.finished_at = timezone.now()
    run.save()


# -- reads ------------------------------------------------------------------------------------


def review_run(project: Project) -> AggregationRun | None:
    """The run whose consensus and reliabilities experts and admins see: the default method's
    newest, else the newest region run of any method."""
    return latest_region_run(project, project.default_method) or latest_region_run(project)
