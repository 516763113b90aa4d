"""Matching one image's marks (points or boxes) across annotators into candidate objects.

Annotators are taken one after another; each one's marks are matched to the candidates found
so far by an optimal one-to-one assignment (Hungarian algorithm: H. W. Kuhn, "The Hungarian
method for the assignment problem", Naval Research Logistics Quarterly 2:83-97, 1955; SciPy's
``linear_sum_assignment``), allowed only within ``radius`` pixels of a candidate's centre
(points) or at ``IoU >= iou`` with its box (boxes). Disallowed pairs cost more than any set of
allowed ones, so the assignment first maximises the number of matches, then minimises the
total distance (or ``1 - IoU``). Unmatched marks open new candidates; a candidate's position
is the weighted mean of its marks so far. An annotator contributes at most one mark to a
candidate, the constraint that makes a candidate "one object seen by several people".

The result depends on the order (greedy over annotators, optimal within each); the detection
models match twice, the second time most reliable annotators first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from scipy.optimize import linear_sum_assignment

from labeling.aggregation.regions.geometry import box_iou, point_distance

Kind = Literal["points", "boxes"]
_BLOCKED = 1e6


def match_cost(
    kind: Kind, marks: np.ndarray, centres: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """``(cost, allowed)`` ``[len(marks), len(centres)]`` for one annotator against candidates."""
    if kind == "points":
        cost = point_distance(marks, centres)
        return cost, cost <= threshold
    overlap = box_iou(marks, centres)
    return 1.0 - overlap, overlap >= threshold


def match_marks(
    marks: Sequence[np.ndarray],
    kind: Kind,
    threshold: float,
    order: Sequence[int] | np.ndarray | None = None,
    weights: Sequence[float] | np.ndarray | None = None,
) -> tuple[list[np.ndarray], int]:
    """Cluster one image's marks: ``marks[r]`` is annotator ``r``'s ``[n_r, d]`` array.

    Returns ``(cluster, n_clusters)``: ``cluster[r][i]`` is the candidate of annotator ``r``'s
    mark ``i``. ``order`` is the order annotators are taken in (default as given); ``weights``
    (one per annotator) weight their marks in the candidates' running centres.
    """
    n = len(marks)
    order = np.arange(n) if order is None else np.asarray(order)
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    dim = 2 if kind == "points" else 4
    sums = np.zeros((0, dim))
    mass = np.zeros(0)
    cluster: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * n
    for r in order:
        m = marks[r]
        ids = np.full(len(m), -1, dtype=np.int64)
        if len(m) and len(mass):
            centres = sums / mass[:, None]
            cost, allowed = match_cost(kind, m, centres, threshold)
            rows, cols = linear_sum_assignment(np.where(allowed, cost, _BLOCKED))
            ok = allowed[rows, cols]
            ids[rows[ok]] = cols[ok]
        new = ids < 0
        if new.any():
            ids[new] = len(mass) + np.arange(int(new.sum()))
            sums = np.concatenate([sums, np.zeros((int(new.sum()), dim))])
            mass = np.concatenate([mass, np.zeros(int(new.sum()))])
        # floor keeps a zero-weight annotator's new candidate at its own position
        wr = max(w[r], 1e-9)
        np.add.at(sums, ids, wr * m)
        np.add.at(mass, ids, wr)
        cluster[r] = ids
    return cluster, len(mass)
