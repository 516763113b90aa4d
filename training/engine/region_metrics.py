"""Scores of region predictions against expert regions, and the report's region pictures.

* Masks: Dice (L. R. Dice, Ecology 26(3), 1945) and IoU (Jaccard) per image and class, averaged
  over the hold-out images (an image where neither the expert nor the model marks a class
  scores 1 for it, :func:`labeling.aggregation.regions.geometry.dice`'s convention), and the
  pooled Dice over every pixel of the hold-out, which that convention cannot inflate (it is the
  F1 of the pooled pixel precision and recall, also given per class).
* Points and boxes: predictions matched one-to-one to the expert's marks of the same class
  (Hungarian algorithm, within the project's distance for points, at its IoU for boxes: the
  match rule consensus and gold scoring use, :func:`...regions.agreement.detection_matches`);
  precision, recall and F1 pooled over the hold-out, and the count error: the mean absolute
  difference between predicted and expert counts per image.

The headline (``headline`` / ``headline_value``) is the mean Dice over classes for masks and
the F1 over all classes for points and boxes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from labeling.aggregation.regions.agreement import detection_matches
from labeling.aggregation.regions.geometry import dice, iou
from training.engine.chart_style import PALETTE, styled
from training.engine.metrics import _figure, _png

__all__ = [
    "detection_scores",
    "mask_scores",
    "plot_annotator_reliability",
    "plot_region_comparison",
]

Task = Literal["masks", "points", "boxes"]


def mask_scores(
    predicted: Sequence[np.ndarray], truth: Sequence[np.ndarray], class_names: Sequence[str]
) -> dict[str, Any]:
    """Scores of binary masks ``[C, H, W]`` (one per image, same shapes as the truth's)."""
    if len(predicted) != len(truth):
        raise ValueError(f"{len(predicted)} predictions but {len(truth)} expert masks")
    n_classes = len(class_names)
    dices = np.zeros((len(truth), n_classes))
    ious = np.zeros((len(truth), n_classes))
    overlap = np.zeros(n_classes)
    marked = np.zeros(n_classes)  # pixels the model marks
    expected = np.zeros(n_classes)  # pixels the expert marks
    support = np.zeros(n_classes, dtype=np.int64)
    for n, (p, t) in enumerate(zip(predicted, truth, strict=True)):
        p, t = np.asarray(p, dtype=bool), np.asarray(t, dtype=bool)
        if p.shape != t.shape or p.shape[0] != n_classes:
            raise ValueError(f"image {n}: prediction {p.shape} vs expert {t.shape}")
        for k in range(n_classes):
            dices[n, k], ious[n, k] = dice(p[k], t[k]), iou(p[k], t[k])
            overlap[k] += np.logical_and(p[k], t[k]).sum()
            marked[k] += p[k].sum()
            expected[k] += t[k].sum()
            support[k] += bool(t[k].any())
    per_class = {
        name: {
            "dice": float(dices[:, k].mean()) if len(truth) else None,
            "iou": float(ious[:, k].mean()) if len(truth) else None,
            # pixel precision and recall over the whole hold-out; their F1 is the pooled Dice
            "precision": float(overlap[k] / marked[k]) if marked[k] else None,
            "recall": float(overlap[k] / expected[k]) if expected[k] else None,
            "f1": _ratio(2 * overlap[k], marked[k] + expected[k]),
            "pooled_dice": _ratio(2 * overlap[k], marked[k] + expected[k]),
            "support": int(support[k]),
        }
        for k, name in enumerate(class_names)
    }
    mean_dice = float(dices.mean()) if len(truth) else None
    return {
        "task": "masks",
        "n_items": len(truth),
        "headline": "dice",
        "headline_value": mean_dice,
        "dice": mean_dice,
        "iou": float(ious.mean()) if len(truth) else None,
        "per_class": per_class,
    }


def _ratio(numerator: float, denominator: float) -> float | None:
    return float(numerator / denominator) if denominator else None


def detection_scores(
    predicted: Sequence[tuple[np.ndarray, np.ndarray]],
    truth: Sequence[tuple[np.ndarray, np.ndarray]],
    kind: Literal["points", "boxes"],
    threshold: float,
    class_names: Sequence[str],
) -> dict[str, Any]:
    """Scores of detections: ``predicted[n]`` and ``truth[n]`` are ``(coordinates, labels)`` of
    image ``n`` (``[m, 2]`` points or ``[m, 4]`` boxes, ``[m]`` class indices)."""
    if len(predicted) != len(truth):
        raise ValueError(f"{len(predicted)} predictions but {len(truth)} expert answers")
    n_classes = len(class_names)
    dim = 2 if kind == "points" else 4
    matched = np.zeros(n_classes, dtype=np.int64)
    n_predicted = np.zeros(n_classes, dtype=np.int64)
    n_true = np.zeros(n_classes, dtype=np.int64)
    count_error = np.zeros((len(truth), n_classes))
    for n, ((p, pl), (t, tl)) in enumerate(zip(predicted, truth, strict=True)):
        p, t = np.asarray(p, np.float64).reshape(-1, dim), np.asarray(t, np.float64).reshape(-1, dim)
        pl, tl = np.asarray(pl, np.int64), np.asarray(tl, np.int64)
        for k in range(n_classes):
            pk, tk = p[pl == k], t[tl == k]
            matched[k] += len(detection_matches(pk, tk, kind, threshold))
            n_predicted[k] += len(pk)
            n_true[k] += len(tk)
            count_error[n, k] = abs(len(pk) - len(tk))

    def prf(m: int, n_p: int, n_t: int) -> tuple[float | None, float | None, float | None]:
        precision = m / n_p if n_p else None
        recall = m / n_t if n_t else None
        f1 = 2 * m / (n_p + n_t) if n_p + n_t else None
        return precision, recall, f1

    per_class = {}
    for k, name in enumerate(class_names):
        precision, recall, f1 = prf(int(matched[k]), int(n_predicted[k]), int(n_true[k]))
        per_class[name] = {
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "count_error": float(count_error[:, k].mean()) if len(truth) else None,
            "support": int(n_true[k]),
            "predicted": int(n_predicted[k]),
        }
    precision, recall, f1 = prf(int(matched.sum()), int(n_predicted.sum()), int(n_true.sum()))
    totals = np.abs(
        np.array([np.sum(np.asarray(pl) >= 0) for _, pl in predicted])
        - np.array([np.sum(np.asarray(tl) >= 0) for _, tl in truth])
    ) if len(truth) else np.zeros(0)
    return {
        "task": kind,
        "n_items": len(truth),
        "match": {"distance": threshold} if kind == "points" else {"iou": threshold},
        "headline": "f1",
        "headline_value": f1,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "count_error": float(totals.mean()) if len(truth) else None,
        "per_class": per_class,
    }


# -- pictures ---------------------------------------------------------------------------------


def _draw(axes: Any, image: np.ndarray, answer: dict[str, Any], task: Task) -> None:
    axes.imshow(image, cmap="gray" if image.ndim == 2 else None, interpolation="nearest")
    axes.set_axis_off()
    if task == "masks":
        masks = np.asarray(answer["masks"], dtype=bool)
        for k, mask in enumerate(masks):
            if mask.any():
                colour = PALETTE[k % len(PALETTE)]
                axes.contour(mask.astype(float), levels=[0.5], colors=[colour], linewidths=1.2)
        return
    labels = np.asarray(answer["labels"], dtype=np.int64)
    if task == "points":
        points = np.asarray(answer["points"], dtype=np.float64).reshape(-1, 2)
        colours = [PALETTE[k % len(PALETTE)] for k in labels]
        axes.scatter(points[:, 0], points[:, 1], s=14, c=colours, marker="+", linewidths=1.2)
        return
    from matplotlib.patches import Rectangle

    for (x0, y0, x1, y1), k in zip(
        np.asarray(answer["boxes"], dtype=np.float64).reshape(-1, 4), labels, strict=True
    ):
        axes.add_patch(
            Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, linewidth=1.0,
                      edgecolor=PALETTE[int(k) % len(PALETTE)])
        )


@styled
def plot_region_comparison(
    image: np.ndarray,
    expert: dict[str, Any],
    predicted: dict[str, Any],
    task: Task,
    class_names: Sequence[str],
    title: str = "",
) -> bytes:
    """The expert's regions over the image beside the model's (``{"masks": [C, H, W]}`` or
    ``{"points" | "boxes": ..., "labels": ...}``), one colour per class."""
    height, width = image.shape[:2]
    scale = 3.2 / max(height, width)
    figure = _figure(2 * width * scale + 0.4, height * scale + 0.7)
    for n, (answer, label) in enumerate(((expert, "expert"), (predicted, "model"))):
        axes = figure.add_subplot(1, 2, n + 1)
        _draw(axes, image, answer, task)
        count = "" if task == "masks" else f" ({len(np.asarray(answer['labels']))})"
        axes.set_title(f"{label}{count}", fontsize=8)
    if title:
        figure.suptitle(title, fontsize=8)
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], color=PALETTE[k % len(PALETTE)], label=name)
        for k, name in enumerate(class_names)
    ]
    figure.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4))
    return _png(figure)


@styled
def plot_annotator_reliability(
    names: Sequence[str], scores: dict[str, Sequence[float | None]], source: str = ""
) -> bytes:
    """Grouped bars of each annotator's scores (e.g. sensitivity, specificity or precision)."""
    figure = _figure(max(3.5, 0.55 * len(names) + 1.5), 3.2)
    axes = figure.add_subplot()
    positions = np.arange(len(names))
    width = 0.8 / max(len(scores), 1)
    for n, (label, values) in enumerate(scores.items()):
        heights = [np.nan if v is None else float(v) for v in values]
        axes.bar(positions + (n - (len(scores) - 1) / 2) * width, heights, width, label=label)
    axes.set_xticks(positions, list(names), rotation=45, ha="right")
    axes.set_ylim(0, 1.05)
    axes.grid(axis="y")
    axes.set_ylabel("estimated rate")
    if source:
        axes.set_title(source, fontsize=8)
    axes.legend(loc="lower right")
    return _png(figure)
