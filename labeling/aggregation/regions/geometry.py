"""Geometry for region consensus: box IoU, mask Dice/IoU, polygons and boxes painted as masks.

Boxes are ``[n, 4]`` arrays ``x0, y0, x1, y1`` in pixels (Pascal VOC corners); points are
``[n, 2]`` arrays ``x, y``; masks are arrays indexed ``[row, column]`` = ``[y, x]``.
"""

from __future__ import annotations

import numpy as np


def as_points(points: np.ndarray | list | None) -> np.ndarray:
    """A ``[n, 2]`` float array of ``x, y`` (an empty list gives shape ``(0, 2)``)."""
    arr = np.asarray([] if points is None else points, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 2))
    if arr.ndim != 2 or arr.shape[1] != 2 or not np.isfinite(arr).all():
        raise ValueError(f"points must be an [n, 2] array of finite x, y; got shape {arr.shape}")
    return arr


def as_boxes(boxes: np.ndarray | list | None) -> np.ndarray:
    """A ``[n, 4]`` float array of ``x0, y0, x1, y1`` with ``x0 <= x1`` and ``y0 <= y1``."""
    arr = np.asarray([] if boxes is None else boxes, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 4))
    if arr.ndim != 2 or arr.shape[1] != 4 or not np.isfinite(arr).all():
        raise ValueError(
            f"boxes must be an [n, 4] array of finite x0, y0, x1, y1; got shape {arr.shape}"
        )
    if (arr[:, 2] < arr[:, 0]).any() or (arr[:, 3] < arr[:, 1]).any():
        raise ValueError("boxes need x0 <= x1 and y0 <= y1")
    return arr


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[len(a), len(b)]`` intersection over union of two sets of boxes."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def point_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[len(a), len(b)]`` Euclidean distances."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(axis=2))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two binary masks; 1 when both are empty."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two binary masks; 1 when both are empty."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    union = int(np.logical_or(a, b).sum())
    return 1.0 if union == 0 else int(np.logical_and(a, b).sum()) / union


def polygon_mask(
    vertices: np.ndarray, shape: tuple[int, int], include_outline: bool = True
) -> np.ndarray:
    """Rasterise a closed polygon (``[n, 2]`` ``x, y`` pixel coordinates) into a bool mask.

    A pixel is inside when its centre is (even-odd rule, evaluated per row of the polygon's
    bounding box); ``include_outline`` also sets the pixels the outline passes through, the
    convention of outlines traced along boundary pixels (LIDC's readers, pylidc's masks).
    """
    v = np.asarray(vertices, dtype=np.float64)
    h, w = shape
    out = np.zeros((h, w), dtype=bool)
    if v.ndim != 2 or v.shape[1] != 2 or len(v) == 0:
        raise ValueError("vertices must be an [n, 2] array of x, y")
    x0 = max(int(np.floor(v[:, 0].min())), 0)
    x1 = min(int(np.ceil(v[:, 0].max())), w - 1)
    y0 = max(int(np.floor(v[:, 1].min())), 0)
    y1 = min(int(np.ceil(v[:, 1].max())), h - 1)
    if x1 >= x0 and y1 >= y0 and len(v) >= 3:
        px = np.arange(x0, x1 + 1, dtype=np.float64)
        py = np.arange(y0, y1 + 1, dtype=np.float64)
        xa, ya = v[:, 0], v[:, 1]
        xb, yb = np.roll(xa, -1), np.roll(ya, -1)
        # edges crossing each row's centre line, and where they cross it
        crosses = (ya[None, :] > py[:, None]) != (yb[None, :] > py[:, None])  # [rows, edges]
        # horizontal edges never cross a centre line; their 0/0 is discarded by `crosses`
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (py[:, None] - ya[None, :]) / (yb - ya)[None, :]
            x_cross = xa[None, :] + t * (xb - xa)[None, :]
        x_cross = np.where(crosses, x_cross, -np.inf)
        # a pixel centre is inside when an odd number of crossings lie to its right
        right = (x_cross[:, None, :] > px[None, :, None]).sum(axis=2)  # [rows, cols]
        out[y0 : y1 + 1, x0 : x1 + 1] = (right % 2) == 1
    if include_outline:
        # walk every edge in half-pixel steps and set the pixels it passes through
        ends = np.roll(v, -1, axis=0)
        steps = np.maximum(np.ceil(2 * np.abs(ends - v).max(axis=1)).astype(np.int64), 1)
        t = np.arange(int(steps.sum())) - np.repeat(np.cumsum(steps) - steps, steps)
        frac = (t / np.repeat(steps, steps))[:, None]
        walk = np.repeat(v, steps, axis=0) * (1 - frac) + np.repeat(ends, steps, axis=0) * frac
        xi = np.round(walk[:, 0]).astype(np.int64)
        yi = np.round(walk[:, 1]).astype(np.int64)
        keep = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
        out[yi[keep], xi[keep]] = True
    return out


def ellipse_masks(boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Instance labels ``[h, w]`` (0 background, ``i + 1`` box ``i``) of the ellipse inscribed
    in each box: round cells (blood smears) from their bounding boxes. Later boxes win overlaps.
    """
    boxes = as_boxes(boxes)
    h, w = shape
    labels = np.zeros((h, w), dtype=np.int32)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
        # corners are pixel indices (VOC): the box spans x0..x1 inclusive
        rx, ry = (x1 - x0) / 2.0 + 0.5, (y1 - y0) / 2.0 + 0.5
        c0, c1 = max(int(np.floor(x0)), 0), min(int(np.ceil(x1)) + 1, w)
        r0, r1 = max(int(np.floor(y0)), 0), min(int(np.ceil(y1)) + 1, h)
        if c1 <= c0 or r1 <= r0:
            continue
        yy, xx = np.mgrid[r0:r1, c0:c1]
        inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0
        labels[r0:r1, c0:c1][inside] = i + 1
    return labels
