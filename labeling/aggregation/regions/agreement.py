"""Agreement between annotators on regions: pairwise Dice / IoU for masks, F1 for points and boxes.

* Masks: Dice (L. R. Dice, Ecology 26(3), 1945) ``2|A ∩ B| / (|A| + |B|)`` or Jaccard's IoU
  ``|A ∩ B| / |A ∪ B|`` between every pair of annotators of an image.
* Points and boxes: two annotators' marks are matched one-to-one (Hungarian algorithm) within
  a radius or at an IoU threshold; ``F1 = 2 matched / (n_a + n_b)`` (symmetric: the same as
  scoring either one against the other as truth, and the detection F1 of COCO-style
  evaluation at one threshold).

Per task: the mean over the image's pairs (low = contested: a review candidate); per worker:
the mean over their pairs with everyone else (low = disagrees with the crowd). Two empty
annotations agree perfectly (1).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment

from labeling.aggregation.regions.detections import code_marks
from labeling.aggregation.regions.geometry import as_boxes, as_points, dice, iou
from labeling.aggregation.regions.masks import as_segmentation_frame
from labeling.aggregation.regions.matching import Kind, match_cost


def detection_matches(a: np.ndarray, b: np.ndarray, kind: Kind, threshold: float) -> np.ndarray:
    """``[m, 2]`` index pairs of a maximum one-to-one matching of ``a`` to ``b`` (ties: least cost)."""
    if not len(a) or not len(b):
        return np.zeros((0, 2), dtype=np.int64)
    cost, allowed = match_cost(kind, a, b, threshold)
    rows, cols = linear_sum_assignment(np.where(allowed, cost, 1e6))
    ok = allowed[rows, cols]
    return np.stack([rows[ok], cols[ok]], axis=1)


def detection_f1(
    predicted: np.ndarray, truth: np.ndarray, kind: Kind, threshold: float
) -> tuple[float, float, float]:
    """``(f1, precision, recall)`` of predicted points or boxes against true ones."""
    parse = as_points if kind == "points" else as_boxes
    p, t = parse(predicted), parse(truth)
    if not len(p) and not len(t):
        return 1.0, 1.0, 1.0
    m = len(detection_matches(p, t, kind, threshold))
    precision = m / len(p) if len(p) else 1.0
    recall = m / len(t) if len(t) else 1.0
    return 2.0 * m / (len(p) + len(t)), precision, recall


def _pairwise(
    frame: pd.DataFrame, column: str, score: Callable[[Any, Any], float]
) -> tuple[pd.Series, pd.Series]:
    task_scores: dict[Any, list[float]] = {}
    worker_scores: dict[Any, list[float]] = {}
    for task, group in frame.groupby("task", sort=True):
        values = list(group[column])
        workers = list(group["worker"])
        scores = []
        for i in range(len(values)):
            for j in range(i + 1, len(values)):
                s = score(values[i], values[j])
                scores.append(s)
                worker_scores.setdefault(workers[i], []).append(s)
                worker_scores.setdefault(workers[j], []).append(s)
        task_scores[task] = scores
    per_task = pd.Series(
        {t: float(np.mean(s)) if s else np.nan for t, s in task_scores.items()}, name="agreement"
    )
    per_worker = pd.Series(
        {w: float(np.mean(s)) for w, s in worker_scores.items()}, name="agreement"
    )
    per_task.index.name, per_worker.index.name = "task", "worker"
    return per_task, per_worker.sort_index()


def mask_agreement(data: Any, metric: str = "dice") -> tuple[pd.Series, pd.Series]:
    """``(per_task, per_worker)`` mean pairwise Dice (or ``metric="iou"``) of binary masks."""
    if metric not in ("dice", "iou"):
        raise ValueError("metric must be 'dice' or 'iou'")
    frame = as_segmentation_frame(data)
    fn = dice if metric == "dice" else iou
    return _pairwise(frame, "segmentation", lambda a, b: fn(np.asarray(a) > 0, np.asarray(b) > 0))


def detection_agreement(
    data: pd.DataFrame, kind: Kind, threshold: float
) -> tuple[pd.Series, pd.Series]:
    """``(per_task, per_worker)`` mean pairwise F1 of points (``threshold``: radius) or boxes (IoU)."""
    code_marks(data, kind)  # validates the frame
    parse = as_points if kind == "points" else as_boxes
    return _pairwise(data, kind, lambda a, b: detection_f1(parse(a), parse(b), kind, threshold)[0])


def review_order(uncertainty: pd.Series) -> pd.Index:
    """Tasks most uncertain first (ties: task order), the expert review queue's order."""
    u = uncertainty.fillna(np.inf)
    order = np.lexsort((np.arange(len(u)), -u.to_numpy()))
    return u.index[order]
