"""Point and box consensus: match marks into candidate objects, then EM over annotators.

Each image's marks are matched across annotators (:mod:`.matching`) into *candidates*. Every
annotator who worked on the image has either marked a candidate or not, a binary label per
(candidate, annotator): Dawid & Skene's model (1979) with candidates for items, fitted by the
same EM as STAPLE (:mod:`.performance`):

* ``sensitivity_j = P(j marks the candidate | it is a real object)`` (finding true objects);
* ``specificity_j = P(j does not mark it | it is not an object)``, so ``1 - specificity_j``
  is j's rate of false marks per spurious candidate;
* ``P(real | marks)`` per candidate (the E-step) is the consensus object's confidence, and
  ``precision_j`` (not marking false objects) is the expected share of j's marks on real ones:
  ``sum_{marks of j} P(real) / #marks of j``.

The prior share of real candidates is re-estimated, pooled over images (``prior="em_global"``)
and a small Dirichlet ``smoothing`` keeps an annotator seen on few candidates away from 0 or 1.
Matching runs twice (``n_rounds=2``): the second time annotators are taken most reliable first
(F1 of their sensitivity and precision) and weighted by their localisation precision.

Positions: a candidate's point or box is the weighted mean of its marks, each annotator
weighted by the inverse of their localisation variance (``1 / sigma_j^2``, estimated from
their marks' distances to the fused positions on likely-real candidates and shrunk towards
the pooled variance with ``shrinkage`` pseudo-marks). With ``debias`` (default) each
annotator's systematic offset per coordinate (a habit of clicking off-centre, of loose or
tight boxes) is estimated from the same residuals, shrunk the same way, centred so the
crowd's reliability-weighted mean offset is zero (only relative offsets are identifiable; with
known marks they are measured from those), and taken off their marks before fusing. For
boxes this is weighted box fusion
(R. Solovyev, W. Wang, T. Gabruseva, "Weighted boxes fusion: ensembling boxes from different
object detection models", Image and Vision Computing 107:104117, 2021, eq. for the fused
coordinates) with annotator reliability in place of detector scores.

The majority-vote baselines (:class:`PointMajorityVote`, :class:`BoxMajorityVote`) use the
same matching (annotators in the order given), keep candidates marked by at least ``quorum``
of the image's annotators, and place them at the median of their marks (CVAT's consensus
merging: IoU matching and per-coordinate medians).

Input: a frame with one row per annotation (``task``, ``worker`` and ``points`` as ``[n, 2]``
``x, y``, or ``boxes`` as ``[n, 4]`` ``x0, y0, x1, y1``); an annotator who found nothing has
a row with an empty array, which is what says "looked and found nothing here". ``fit(data,
known=)`` takes an expert's (or a gold item's) objects for some images: they are clamped as
the consensus there and measure every annotator who worked on those images.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal, Self

import numpy as np
import pandas as pd

from labeling.aggregation.regions.geometry import as_boxes, as_points
from labeling.aggregation.regions.matching import Kind, match_marks
from labeling.aggregation.regions.performance import PRIORS, RatedUnits, performance_em

COORDS = {"points": ["x", "y"], "boxes": ["x0", "y0", "x1", "y1"]}


@dataclass(frozen=True)
class Marks:
    """All marks of a frame, flat: ``task``, ``worker``, ``row`` and ``coords`` per mark, and
    each task's annotation rows (``row_task``, ``row_worker``)."""

    tasks: np.ndarray
    workers: np.ndarray
    row_task: np.ndarray
    row_worker: np.ndarray
    task: np.ndarray
    worker: np.ndarray
    row: np.ndarray
    coords: np.ndarray

    @property
    def n_tasks(self) -> int:
        return len(self.tasks)

    @property
    def n_workers(self) -> int:
        return len(self.workers)


def code_marks(data: pd.DataFrame, kind: Kind) -> Marks:
    """Code a ``task, worker, points|boxes`` frame (see module docstring)."""
    column = kind
    missing = [c for c in ("task", "worker", column) if c not in data.columns]
    if missing:
        raise ValueError(f"{kind} frame lacks column(s) {missing}; expected task, worker, {column}")
    if data["task"].isna().any() or data["worker"].isna().any():
        raise ValueError(f"{kind} frame has missing task or worker ids")
    task_codes, tasks = pd.factorize(data["task"], sort=True)
    worker_codes, workers = pd.factorize(data["worker"], sort=True)
    pairs = task_codes.astype(np.int64) * max(len(workers), 1) + worker_codes
    if len(np.unique(pairs)) != len(pairs):
        raise ValueError(
            f"a worker has more than one row for a task; give all their {kind} in one row"
        )
    parse = as_points if kind == "points" else as_boxes
    arrays = [parse(v) for v in data[column]]
    counts = np.array([len(a) for a in arrays], dtype=np.int64)
    dim = len(COORDS[kind])
    coords = np.concatenate(arrays) if counts.sum() else np.zeros((0, dim))
    row = np.repeat(np.arange(len(arrays)), counts)
    return Marks(
        tasks=np.asarray(tasks),
        workers=np.asarray(workers),
        row_task=task_codes.astype(np.int64),
        row_worker=worker_codes.astype(np.int64),
        task=task_codes[row].astype(np.int64),
        worker=worker_codes[row].astype(np.int64),
        row=row,
        coords=coords,
    )


def cluster_marks(
    marks: Marks,
    kind: Kind,
    threshold: float,
    worker_rank: np.ndarray | None = None,
    worker_weight: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Match every task's marks; returns ``(mark_cluster, cluster_task)`` with global ids.

    Annotators are taken in ``worker_rank`` order (lower first; default: as coded).
    """
    rank = np.arange(marks.n_workers) if worker_rank is None else worker_rank
    mark_cluster = np.empty(len(marks.row), dtype=np.int64)
    cluster_task: list[np.ndarray] = []
    n_clusters = 0
    rows_by_task = np.argsort(marks.row_task, kind="stable")
    row_bounds = np.searchsorted(marks.row_task[rows_by_task], np.arange(marks.n_tasks + 1))
    mark_bounds = np.searchsorted(marks.row, np.arange(len(marks.row_task) + 1))
    for t in range(marks.n_tasks):
        rows = rows_by_task[row_bounds[t] : row_bounds[t + 1]]
        per_row = [marks.coords[mark_bounds[r] : mark_bounds[r + 1]] for r in rows]
        row_workers = marks.row_worker[rows]
        order = np.argsort(rank[row_workers], kind="stable")
        weights = None if worker_weight is None else worker_weight[row_workers]
        ids, n = match_marks(per_row, kind, threshold, order=order, weights=weights)
        for r, local in zip(rows, ids, strict=True):
            mark_cluster[mark_bounds[r] : mark_bounds[r + 1]] = n_clusters + local
        cluster_task.append(np.full(n, t, dtype=np.int64))
        n_clusters += n
    return mark_cluster, np.concatenate(cluster_task) if cluster_task else np.zeros(0, np.int64)


def candidate_units(marks: Marks, mark_cluster: np.ndarray, cluster_task: np.ndarray) -> RatedUnits:
    """One unit per candidate; one entry per (candidate, annotator of its task): marked or not."""
    n_clusters = len(cluster_task)
    # annotators per task, then every (candidate, annotator of its task) pair
    by_task = np.argsort(marks.row_task, kind="stable")
    bounds = np.searchsorted(marks.row_task[by_task], np.arange(marks.n_tasks + 1))
    per_task = np.diff(bounds)
    reps = per_task[cluster_task]
    entry_unit = np.repeat(np.arange(n_clusters), reps)
    starts = bounds[cluster_task]
    offsets = np.arange(len(entry_unit)) - np.repeat(np.cumsum(reps) - reps, reps)
    entry_worker = marks.row_worker[by_task[np.repeat(starts, reps) + offsets]]
    n_w = max(marks.n_workers, 1)
    marked = np.isin(entry_unit * n_w + entry_worker, mark_cluster * n_w + marks.worker)
    return RatedUnits(
        unit_item=cluster_task,
        unit_weight=np.ones(n_clusters),
        entry_unit=entry_unit.astype(np.int64),
        entry_worker=entry_worker.astype(np.int64),
        entry_label=marked.astype(np.int64),
        n_items=marks.n_tasks,
        n_workers=marks.n_workers,
        n_classes=2,
    )


KNOWN_WORKER = "__known__"


def with_known(crowd: Marks, known: Mapping[Any, np.ndarray], kind: Kind) -> Marks:
    """``crowd`` plus one more annotator (the last worker code) holding the known marks."""
    parse = as_points if kind == "points" else as_boxes
    task_code = {t: i for i, t in enumerate(crowd.tasks)}
    missing = [t for t in known if t not in task_code]
    if missing:
        raise ValueError(f"known {kind} for tasks nobody annotated: {missing[:5]}")
    pseudo = crowd.n_workers
    tasks = list(known)
    arrays = [parse(known[t]) for t in tasks]
    counts = np.array([len(a) for a in arrays], dtype=np.int64)
    first_row = len(crowd.row_task)
    rows = first_row + np.repeat(np.arange(len(tasks)), counts)
    coords = np.concatenate([crowd.coords, *arrays]) if len(arrays) else crowd.coords
    row_task = np.array([task_code[t] for t in tasks], dtype=np.int64)
    return Marks(
        tasks=crowd.tasks,
        workers=np.append(crowd.workers.astype(object), KNOWN_WORKER),
        row_task=np.concatenate([crowd.row_task, row_task]),
        row_worker=np.concatenate([crowd.row_worker, np.full(len(tasks), pseudo)]),
        task=np.concatenate([crowd.task, np.repeat(row_task, counts)]),
        worker=np.concatenate([crowd.worker, np.full(int(counts.sum()), pseudo)]),
        row=np.concatenate([crowd.row, rows]),
        coords=coords,
    )


def known_candidates(
    units: RatedUnits,
    marks: Marks,
    mark_cluster: np.ndarray,
    cluster_task: np.ndarray,
    n_crowd: int,
) -> tuple[RatedUnits, np.ndarray]:
    """Drop the known annotator's entries; clamp the candidates of images with known marks
    (1: matched to one, 0: not)."""
    keep = units.entry_worker < n_crowd
    known_task = np.zeros(marks.n_tasks, dtype=bool)
    known_task[marks.row_task[marks.row_worker >= n_crowd]] = True
    has_known = np.zeros(len(cluster_task), dtype=bool)
    has_known[mark_cluster[marks.worker >= n_crowd]] = True
    clamp = np.where(known_task[cluster_task], has_known.astype(np.int64), -1)
    return (
        replace(
            units,
            entry_unit=units.entry_unit[keep],
            entry_worker=units.entry_worker[keep],
            entry_label=units.entry_label[keep],
        ),
        clamp,
    )


def weighted_centres(
    coords: np.ndarray, cluster: np.ndarray, weight: np.ndarray, n_clusters: int
) -> np.ndarray:
    """``[n_clusters, d]``: each cluster's weighted mean of its marks."""
    mass = np.bincount(cluster, weights=weight, minlength=n_clusters)
    out = np.empty((n_clusters, coords.shape[1]))
    for d in range(coords.shape[1]):
        out[:, d] = np.bincount(cluster, weights=weight * coords[:, d], minlength=n_clusters)
    return out / np.maximum(mass, 1e-300)[:, None]


def median_centres(coords: np.ndarray, cluster: np.ndarray, n_clusters: int) -> np.ndarray:
    """``[n_clusters, d]``: each cluster's per-coordinate median (sorted once, no Python loop)."""
    out = np.zeros((n_clusters, coords.shape[1]))
    if not len(cluster):
        return out
    size = np.bincount(cluster, minlength=n_clusters)
    start = np.concatenate([[0], np.cumsum(size)[:-1]])
    lo = start + (size - 1) // 2
    hi = start + size // 2
    has = size > 0
    for d in range(coords.shape[1]):
        order = np.lexsort((coords[:, d], cluster))
        v = coords[order, d]
        out[has, d] = (v[lo[has]] + v[hi[has]]) / 2.0
    return out


class _DetectionAggregator:
    """Shared storage of a detection consensus (see module docstring for the attributes)."""

    kind: Kind
    threshold: float

    def _match_threshold(self) -> float:
        raise NotImplementedError

    def fit_predict(self, data: pd.DataFrame) -> pd.Series:
        return self.fit(data).consensus_

    def _store(
        self,
        marks: Marks,
        mark_cluster: np.ndarray,
        cluster_task: np.ndarray,
        centres: np.ndarray,
        confidence: np.ndarray,
        keep: np.ndarray,
    ) -> None:
        n_clusters = len(cluster_task)
        task_index = pd.Index(marks.tasks, name="task")
        size = np.bincount(mark_cluster, minlength=n_clusters)
        annotators = np.bincount(marks.row_task, minlength=marks.n_tasks)[cluster_task]
        clusters = pd.DataFrame(centres, columns=COORDS[self.kind])
        clusters.insert(0, "task", marks.tasks[cluster_task] if n_clusters else [])
        clusters["n_marks"] = size
        clusters["n_annotators"] = annotators
        clusters["confidence"] = confidence
        clusters["kept"] = keep
        self.clusters_ = clusters
        order = np.argsort(cluster_task, kind="stable")
        bounds = np.searchsorted(cluster_task[order], np.arange(marks.n_tasks + 1))
        consensus, scores = [], []
        wrong = np.minimum(confidence, 1.0 - confidence)
        unc = np.zeros(marks.n_tasks)
        for t in range(marks.n_tasks):
            ids = order[bounds[t] : bounds[t + 1]]
            kept = ids[keep[ids]]
            consensus.append(centres[kept])
            scores.append(confidence[kept])
            unc[t] = wrong[ids].sum() / max(confidence[ids].sum(), 1.0)
        self.consensus_ = pd.Series(consensus, index=task_index, name=self.kind, dtype=object)
        self.scores_ = pd.Series(scores, index=task_index, name="confidence", dtype=object)
        self.uncertainty_ = pd.Series(unc, index=task_index, name="uncertainty")
        self.marks_ = pd.DataFrame(
            {
                "task": marks.tasks[marks.task] if len(marks.task) else [],
                "worker": marks.workers[marks.worker] if len(marks.worker) else [],
                "cluster": mark_cluster,
            }
        )
        self.tasks_ = marks.tasks
        self.workers_ = marks.workers


class _DetectionConsensus(_DetectionAggregator):
    def __init__(
        self,
        threshold: float = 0.5,
        prior: Literal["item", "global", "em", "em_global"] | float = "em_global",
        smoothing: float = 0.5,
        max_iter: int = 200,
        tol: float = 1e-6,
        n_rounds: int = 2,
        shrinkage: float = 3.0,
        debias: bool = True,
    ) -> None:
        self.threshold = threshold
        self.prior = prior
        self.smoothing = smoothing
        self.max_iter = max_iter
        self.tol = tol
        self.n_rounds = n_rounds
        self.shrinkage = shrinkage
        self.debias = debias

    def _validate(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError("threshold must be in (0, 1)")
        if isinstance(self.prior, str) and self.prior not in PRIORS:
            raise ValueError(f"prior must be one of {PRIORS} or a number")
        if self.n_rounds < 1:
            raise ValueError("n_rounds must be >= 1")
        if self.shrinkage < 0:
            raise ValueError("shrinkage must be >= 0")

    def fit(self, data: pd.DataFrame, known: Mapping[Any, np.ndarray] | None = None) -> Self:
        """``known``: task -> the true points or boxes of that image (an expert's, a gold
        item's). They join the matching first, as an annotator whose candidates are certain
        (matched: real; unmatched: false), place their candidates, and stay out of the
        annotators' statistics."""
        self._validate()
        crowd = code_marks(data, self.kind)
        marks = crowd if not known else with_known(crowd, known, self.kind)
        n_crowd = crowd.n_workers
        self._n_crowd = n_crowd
        rank = weight = None
        if known:
            rank = np.arange(marks.n_workers) + 1
            rank[n_crowd] = 0
        for _ in range(self.n_rounds):
            mark_cluster, cluster_task = cluster_marks(
                marks, self.kind, self._match_threshold(), rank, weight
            )
            units = candidate_units(marks, mark_cluster, cluster_task)
            clamp = None
            if known:
                units, clamp = known_candidates(units, marks, mark_cluster, cluster_task, n_crowd)
            em = performance_em(
                units,
                prior=self.prior,
                max_iter=self.max_iter,
                tol=self.tol,
                smoothing=self.smoothing,
                known=clamp,
            )
            real = em.posteriors[:, 1]
            n_marks = np.bincount(marks.worker, minlength=marks.n_workers)
            hits = np.bincount(marks.worker, weights=real[mark_cluster], minlength=marks.n_workers)
            precision = np.divide(
                hits, n_marks, out=np.full(marks.n_workers, np.nan), where=n_marks > 0
            )
            sensitivity = em.confusions[:, 1, 1]
            centres, sigma, bias = self._fuse(marks, mark_cluster, len(cluster_task), real)
            weight = 1.0 / np.maximum(sigma, 1e-3) ** 2
            f1 = (
                2
                * sensitivity
                * np.nan_to_num(precision)
                / np.maximum(sensitivity + np.nan_to_num(precision), 1e-12)
            )
            rank = np.argsort(np.argsort(-f1, kind="stable"), kind="stable")
            if known:
                f1[n_crowd:] = np.inf
                rank = np.argsort(np.argsort(-f1, kind="stable"), kind="stable")
        if known:
            # the known annotator's slot goes; the crowd's statistics stay
            sensitivity, precision, sigma, bias = (
                a[:n_crowd] for a in (sensitivity, precision, sigma, bias)
            )
            em = replace(em, confusions=em.confusions[:n_crowd])
        index = pd.Index(crowd.workers, name="worker")
        self.sensitivity_ = pd.Series(sensitivity, index=index, name="sensitivity")
        self.specificity_ = pd.Series(em.confusions[:, 0, 0], index=index, name="specificity")
        self.precision_ = pd.Series(precision, index=index, name="precision")
        self.localization_error_ = pd.Series(sigma, index=index, name="localization_error")
        self.bias_ = pd.DataFrame(bias, index=index, columns=COORDS[self.kind])
        self.confusions_ = em.confusions
        self.priors_ = em.priors
        self.n_iter_ = em.n_iter
        self._store(marks, mark_cluster, cluster_task, centres, real, real >= self.threshold)
        if known:
            crowd_mark = marks.worker < n_crowd
            self.marks_ = self.marks_[crowd_mark].reset_index(drop=True)
            self.workers_ = crowd.workers
            n_clusters = len(cluster_task)
            self.clusters_["n_marks"] = np.bincount(mark_cluster[crowd_mark], minlength=n_clusters)
            self.clusters_["n_annotators"] = np.bincount(crowd.row_task, minlength=crowd.n_tasks)[
                cluster_task
            ]
        return self

    def _fuse(
        self, marks: Marks, mark_cluster: np.ndarray, n_clusters: int, real: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Fused positions, each annotator's localisation error (RMS per coordinate) and
        systematic offset per coordinate (zero without ``debias``)."""
        n_w, dim = marks.n_workers, marks.coords.shape[1]
        weight = np.ones(n_w)
        weight[self._n_crowd :] = 1e9
        size = np.bincount(mark_cluster, minlength=n_clusters)
        # residuals only on likely-real candidates someone else also marked
        usable = ((real[mark_cluster] >= 0.5) & (size[mark_cluster] >= 2)).astype(float)
        nn = np.bincount(marks.worker, weights=usable, minlength=n_w)
        var = np.ones(n_w)
        bias = np.zeros((n_w, dim))
        centres = np.zeros((n_clusters, dim))
        for _ in range(6 if self.debias else 4):
            adjusted = marks.coords - bias[marks.worker]
            w_mark = weight[marks.worker]
            centres = weighted_centres(adjusted, mark_cluster, w_mark, n_clusters)
            if not len(mark_cluster):
                break
            # a mark is part of its own centre: scale its residual up by the centre's own share
            own = (
                w_mark
                / np.bincount(mark_cluster, weights=w_mark, minlength=n_clusters)[mark_cluster]
            )
            shrink = np.maximum(1.0 - own, 0.05)
            res2 = ((adjusted - centres[mark_cluster]) ** 2).mean(axis=1) / shrink**2
            ss = np.bincount(marks.worker, weights=res2 * usable, minlength=n_w)
            nc = self._n_crowd
            pooled = ss[:nc].sum() / nn[:nc].sum() if nn[:nc].sum() > 0 else 1.0
            var = (ss + self.shrinkage * pooled) / (nn + self.shrinkage)
            weight = 1.0 / np.maximum(var, 1e-6)
            # a known annotator (the last slot, see with_known) places its candidates
            weight[self._n_crowd :] = 1e9
            if self.debias:
                raw = (marks.coords - centres[mark_cluster]) / shrink[:, None]
                for d in range(dim):
                    bias[:, d] = np.bincount(
                        marks.worker, weights=raw[:, d] * usable, minlength=n_w
                    )
                bias /= (nn + self.shrinkage)[:, None]
                # only offsets relative to the crowd are identifiable: centre them
                mass = (nn * weight)[: self._n_crowd]
                if self._n_crowd < n_w:
                    bias[self._n_crowd :] = 0.0  # offsets are measured from the known marks
                else:
                    bias -= (mass[:, None] * bias).sum(axis=0) / max(mass.sum(), 1e-12)
        return centres, np.sqrt(var), bias


class _DetectionMajorityVote(_DetectionAggregator):
    def __init__(self, quorum: float = 0.5) -> None:
        self.quorum = quorum

    def fit(self, data: pd.DataFrame) -> Self:
        if not 0.0 < self.quorum <= 1.0:
            raise ValueError("quorum must be in (0, 1]")
        marks = code_marks(data, self.kind)
        mark_cluster, cluster_task = cluster_marks(marks, self.kind, self._match_threshold())
        n_clusters = len(cluster_task)
        size = np.bincount(mark_cluster, minlength=n_clusters)
        annotators = np.bincount(marks.row_task, minlength=marks.n_tasks)[cluster_task]
        share = size / np.maximum(annotators, 1)
        centres = median_centres(marks.coords, mark_cluster, n_clusters)
        self.threshold = self.quorum
        self._store(marks, mark_cluster, cluster_task, centres, share, share >= self.quorum - 1e-12)
        return self


class PointConsensus(_DetectionConsensus):
    """Points matched within ``radius`` pixels, then the EM of the module docstring.

    Learned: ``consensus_`` (Series task -> ``[n, 2]`` points with confidence >=
    ``threshold``), ``scores_`` (their confidences), ``clusters_`` (every candidate: position,
    marks, confidence), ``marks_`` (each mark's candidate), ``sensitivity_``, ``specificity_``,
    ``precision_``, ``localization_error_`` (Series worker -> float), ``bias_`` (DataFrame
    worker x coordinate: systematic offset in pixels), ``uncertainty_``.
    """

    kind: Kind = "points"

    def __init__(self, radius: float = 10.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.radius = radius

    def _match_threshold(self) -> float:
        if self.radius <= 0:
            raise ValueError("radius must be > 0")
        return float(self.radius)

    @property
    def points_(self) -> pd.Series:
        return self.consensus_


class BoxConsensus(_DetectionConsensus):
    """Boxes matched at ``IoU >= iou``, fused by reliability-weighted box fusion (see module
    docstring); the same attributes as :class:`PointConsensus`, with boxes."""

    kind: Kind = "boxes"

    def __init__(self, iou: float = 0.5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.iou = iou

    def _match_threshold(self) -> float:
        if not 0.0 < self.iou <= 1.0:
            raise ValueError("iou must be in (0, 1]")
        return float(self.iou)

    @property
    def boxes_(self) -> pd.Series:
        return self.consensus_


class PointMajorityVote(_DetectionMajorityVote):
    """Baseline: points matched within ``radius``, kept when ``quorum`` of annotators marked
    them, placed at the median of their marks."""

    kind: Kind = "points"

    def __init__(self, radius: float = 10.0, quorum: float = 0.5) -> None:
        super().__init__(quorum)
        self.radius = radius

    def _match_threshold(self) -> float:
        if self.radius <= 0:
            raise ValueError("radius must be > 0")
        return float(self.radius)


class BoxMajorityVote(_DetectionMajorityVote):
    """Baseline (CVAT-style): boxes matched at ``IoU >= iou``, kept when ``quorum`` of
    annotators drew them, with median corners."""

    kind: Kind = "boxes"

    def __init__(self, iou: float = 0.5, quorum: float = 0.5) -> None:
        super().__init__(quorum)
        self.iou = iou

    def _match_threshold(self) -> float:
        if not 0.0 < self.iou <= 1.0:
            raise ValueError("iou must be in (0, 1]")
        return float(self.iou)
