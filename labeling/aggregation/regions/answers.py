"""Region answers on the wire: parsing, checking and normalising one worker's (or expert's) set
of points, boxes, polygons and masks, COCO run-length encoding, and scoring one answer against
another (gold items). Pure Python and NumPy, no Django.

Wire format (image pixel coordinates of the stored rendering, x right, y down; the image spans
``0 <= x <= width``, ``0 <= y <= height`` as a canvas draws it)::

    {"label": "WBC", "shape": "point", "points": [[x, y]]}
    {"label": "WBC", "shape": "box", "points": [[x0, y0], [x1, y1]]}       x0 < x1, y0 < y1
    {"label": "WBC", "shape": "polygon", "points": [[x, y], ...]}          >= 3 vertices, simple
    {"label": "WBC", "shape": "mask", "rle": {"size": [h, w], "counts": [n0, n1, ...]}}

Masks are COCO's *uncompressed* RLE (T.-Y. Lin et al., "Microsoft COCO: Common Objects in
Context", ECCV 2014; the format of pycocotools' ``mask.py``): the mask read column by column
(Fortran order), ``counts`` alternating runs of 0 and 1 starting with 0 (a first count of 0
when the first pixel is set). Stored answers are the same with ``label`` the class index.

Gold scoring: detection F1 at the project's match rule for points and boxes (matches only
within a class; :func:`labeling.aggregation.regions.agreement.detection_matches`), and for masks
Dice (L. R. Dice, Ecology 26(3), 1945) of each class's union of shapes, averaged over the
classes present in either answer.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from labeling.aggregation.regions.agreement import detection_matches
from labeling.aggregation.regions.geometry import dice, polygon_mask

TaskType = Literal["points", "boxes", "masks"]
ShapeName = Literal["point", "box", "polygon", "mask"]

ALLOWED_SHAPES: dict[str, tuple[str, ...]] = {
    "points": ("point",),
    "boxes": ("box",),
    # A box on a mask project is a rectangle mask (CVAT and Label Studio offer it there too):
    # the quickest outline of a lesion that fills its box
    "masks": ("polygon", "box", "mask"),
}
# A polygon's edges are tested pairwise for crossings (about 50 ms at 1,000 vertices): bounded
# per polygon and per answer so that one answer cannot cost seconds of CPU (a traced outline
# of a large organ has a few hundred vertices; a brush sends a mask instead).
MAX_POLYGON_VERTICES = 1000
MAX_ANSWER_VERTICES = 20_000


class RegionAnswerError(ValueError):
    """A region answer that breaks a rule; ``message`` names the region's index and the rule."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class Shape:
    """One normalised region: class index, shape, and ``points`` (``[n, 2]`` float ``x, y``;
    a box's two corners) or ``mask`` (bool ``[h, w]``, decoded from its RLE)."""

    label: int
    shape: str
    points: np.ndarray | None = None
    rle: dict | None = None

    def to_stored(self) -> dict:
        """The stored form (``Vote.regions``, ``RegionConsensus.regions``): label as index."""
        if self.shape == "mask":
            return {"label": self.label, "shape": "mask", "rle": self.rle}
        return {"label": self.label, "shape": self.shape, "points": self.points.tolist()}

    def to_wire(self, classes: Sequence[str]) -> dict:
        """The API form: label as the class name."""
        out = self.to_stored()
        out["label"] = classes[self.label]
        return out

    def bounding_box(self) -> tuple[float, float, float, float]:
        """``x0, y0, x1, y1`` (a point's is the point; a mask's encloses its set pixels,
        in the same coordinates: pixel column c spans ``c .. c + 1``)."""
        if self.shape == "mask":
            mask = rle_decode(self.rle)
            rows, cols = np.nonzero(mask)
            if not len(rows):
                return 0.0, 0.0, 0.0, 0.0
            return float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1)
        p = self.points
        return float(p[:, 0].min()), float(p[:, 1].min()), float(p[:, 0].max()), float(p[:, 1].max())


# --- COCO uncompressed RLE -------------------------------------------------------------------


def rle_encode(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE of a 2-D mask: ``{"size": [h, w], "counts": [...]}``."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"a mask is 2-D; got shape {m.shape}")
    flat = (m != 0).ravel(order="F").astype(np.int8)
    if not flat.size:
        return {"size": [int(m.shape[0]), int(m.shape[1])], "counts": []}
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    counts = np.diff(bounds)
    if flat[0]:
        counts = np.concatenate([[0], counts])  # counts start with a run of zeros
    return {"size": [int(m.shape[0]), int(m.shape[1])], "counts": [int(c) for c in counts]}


def rle_decode(rle: dict) -> np.ndarray:
    """The bool ``[h, w]`` mask of a COCO uncompressed RLE (checked: see :func:`check_rle`)."""
    h, w = (int(v) for v in rle["size"])
    counts = np.asarray(rle["counts"], dtype=np.int64)
    if counts.sum() != h * w or (counts < 0).any():
        raise ValueError(f"RLE counts sum to {int(counts.sum())}, not h * w = {h * w}")
    values = (np.arange(len(counts)) % 2).astype(bool)
    return np.repeat(values, counts).reshape((h, w), order="F")


def check_rle(rle: Any, height: int, width: int) -> str | None:
    """What is wrong with ``rle`` for an image of ``height`` x ``width``, or None."""
    if not isinstance(rle, dict):
        return 'a mask needs "rle": {"size": [h, w], "counts": [...]}'
    size, counts = rle.get("size"), rle.get("counts")
    if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) for v in size)):
        return 'the mask\'s "size" must be [height, width]'
    if list(size) != [height, width]:
        return f"the mask's size {list(size)} is not the image's [{height}, {width}] (height, width)"
    if isinstance(counts, str):
        return 'compressed RLE is not accepted; send "counts" as a list of run lengths'
    if not isinstance(counts, list) or not all(_is_int(c) and c >= 0 for c in counts):
        return 'the mask\'s "counts" must be a list of non-negative integers'
    total = sum(counts)
    if total != height * width:
        return f"the mask's counts sum to {total}, not height x width = {height * width}"
    return None


# --- Parsing and checking --------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)) and math.isfinite(value)


def _points(raw: Any) -> np.ndarray | None:
    """``[n, 2]`` floats from a list of ``[x, y]`` pairs of finite numbers, else None."""
    if not isinstance(raw, list) or not all(
        isinstance(p, list | tuple) and len(p) == 2 and all(_is_number(v) for v in p) for p in raw
    ):
        return None
    return np.asarray(raw, dtype=np.float64).reshape(-1, 2)


def _drop_repeats(v: np.ndarray) -> np.ndarray:
    """A polygon without consecutive repeated vertices (double clicks, a closing vertex)."""
    if len(v) < 2:
        return v
    keep = np.concatenate([[True], np.any(v[1:] != v[:-1], axis=1)])
    v = v[keep]
    return v[:-1] if len(v) > 1 and (v[-1] == v[0]).all() else v


def _either(names: Sequence[str]) -> str:
    return " or ".join(names) if len(names) < 3 else f"{', '.join(names[:-1])} or {names[-1]}"


def polygon_area(v: np.ndarray) -> float:
    """Unsigned area (shoelace formula)."""
    x, y = v[:, 0], v[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _orient(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    return (b[..., 0] - a[..., 0]) * (c[..., 1] - a[..., 1]) - (b[..., 1] - a[..., 1]) * (c[..., 0] - a[..., 0])


def _on_segment(a: np.ndarray, b: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Whether collinear ``p`` lies within the bounding box of segment ``a``-``b``."""
    return (
        (np.minimum(a[..., 0], b[..., 0]) <= p[..., 0]) & (p[..., 0] <= np.maximum(a[..., 0], b[..., 0]))
        & (np.minimum(a[..., 1], b[..., 1]) <= p[..., 1]) & (p[..., 1] <= np.maximum(a[..., 1], b[..., 1]))
    )  # fmt: skip


def is_simple_polygon(vertices: np.ndarray | list, block: int = 512) -> bool:
    """Whether the closed polygon's edges meet only at shared vertices of neighbouring edges:
    no two edges cross or touch, and no edge folds back over the next (a spike).

    Pairs of non-adjacent edges whose bounding boxes overlap (``block`` edges against all at a
    time, vectorised) get the orientation tests: segments p-q cross or touch when each one's
    ends lie on opposite sides of (or on) the other's line.
    """
    v = np.asarray(vertices, dtype=np.float64)
    n = len(v)
    if n < 3:
        return False
    a, b = v, np.roll(v, -1, axis=0)  # edge i runs a[i] -> b[i]
    # neighbouring edges i, i+1 share b[i]; they overlap when the turn there is a full reversal
    nxt = np.roll(b, -1, axis=0)
    turn = _orient(a, b, nxt)
    back = ((a - b) * (nxt - b)).sum(axis=1) > 0
    if np.any((turn == 0) & back):
        return False
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    idx = np.arange(n)
    for start in range(0, n, block):
        i = idx[start : start + block, None]
        # each pair once (j > i), neither the same nor neighbouring edges (0 and n-1 are)
        near = (idx[None, :] > i + 1) & ~((i == 0) & (idx[None, :] == n - 1))
        near &= (lo[i[:, 0], None, 0] <= hi[None, :, 0]) & (lo[None, :, 0] <= hi[i[:, 0], None, 0])
        near &= (lo[i[:, 0], None, 1] <= hi[None, :, 1]) & (lo[None, :, 1] <= hi[i[:, 0], None, 1])
        pi, pj = np.nonzero(near)
        if not len(pi):
            continue
        pi = pi + start
        p1, p2, q1, q2 = a[pi], b[pi], a[pj], b[pj]
        o1, o2 = _orient(p1, p2, q1), _orient(p1, p2, q2)
        o3, o4 = _orient(q1, q2, p1), _orient(q1, q2, p2)
        hit = ((o1 * o2 < 0) & (o3 * o4 < 0)) | (
            ((o1 == 0) & _on_segment(p1, p2, q1))
            | ((o2 == 0) & _on_segment(p1, p2, q2))
            | ((o3 == 0) & _on_segment(q1, q2, p1))
            | ((o4 == 0) & _on_segment(q1, q2, p2))
        )
        if hit.any():
            return False
    return True


def _inside(p: np.ndarray, width: int, height: int) -> np.ndarray:
    return (p[:, 0] >= 0) & (p[:, 0] <= width) & (p[:, 1] >= 0) & (p[:, 1] <= height)


def _fmt(x: float) -> str:
    return f"{x:g}"


def parse_shape(
    raw: Any, index: int, *, task_type: str, classes: Sequence[str], width: int, height: int
) -> Shape:
    """One wire-format region checked and normalised; RegionAnswerError names ``index``."""
    where = f"region {index}"
    if not isinstance(raw, dict):
        raise RegionAnswerError(f"{where}: a region is an object with label, shape and points or rle")
    allowed = ALLOWED_SHAPES[task_type]
    shape = raw.get("shape")
    if shape not in ALLOWED_SHAPES["points"] + ALLOWED_SHAPES["boxes"] + ALLOWED_SHAPES["masks"]:
        raise RegionAnswerError(f"{where}: unknown shape {shape!r}; use {_either(allowed)}")
    if shape not in allowed:
        raise RegionAnswerError(
            f"{where}: a {shape} is not allowed in a {task_type} project; use {_either(allowed)}"
        )
    label = raw.get("label")
    if not isinstance(label, str) or label not in classes:
        raise RegionAnswerError(
            f"{where}: unknown class {label!r}; this project's classes are {', '.join(classes)}"
        )
    label_index = list(classes).index(label)
    if shape == "mask":
        problem = check_rle(raw.get("rle"), height, width)
        if problem:
            raise RegionAnswerError(f"{where}: {problem}")
        rle = raw["rle"]
        return Shape(label_index, "mask", rle={"size": [height, width], "counts": list(rle["counts"])})
    points = _points(raw.get("points"))
    if points is None:
        raise RegionAnswerError(f'{where}: "points" must be a list of [x, y] pairs of numbers')
    outside = ~_inside(points, width, height)
    if shape == "point":
        if len(points) != 1:
            raise RegionAnswerError(f"{where}: a point has exactly one [x, y], got {len(points)}")
        if outside[0]:
            x, y = points[0]
            raise RegionAnswerError(
                f"{where}: point ({_fmt(x)}, {_fmt(y)}) is outside the image ({width} x {height})"
            )
    elif shape == "box":
        if len(points) != 2:
            raise RegionAnswerError(f"{where}: a box has two corners [[x0, y0], [x1, y1]], got {len(points)}")
        (x0, y0), (x1, y1) = points
        if x0 == x1 or y0 == y1:
            raise RegionAnswerError(f"{where}: the box has zero area")
        if x0 > x1 or y0 > y1:
            raise RegionAnswerError(f"{where}: box corners must be [[x0, y0], [x1, y1]] with x0 < x1 and y0 < y1")
        if outside.any():
            raise RegionAnswerError(
                f"{where}: the box ({_fmt(x0)}, {_fmt(y0)})-({_fmt(x1)}, {_fmt(y1)}) is outside "
                f"the image ({width} x {height})"
            )
    else:
        points = _drop_repeats(points)
        if len(points) < 3:
            raise RegionAnswerError(f"{where}: a polygon needs at least 3 vertices, got {len(points)}")
        if len(points) > MAX_POLYGON_VERTICES:
            raise RegionAnswerError(
                f"{where}: a polygon has at most {MAX_POLYGON_VERTICES} vertices, got {len(points)}"
            )
        if outside.any():
            x, y = points[int(np.argmax(~_inside(points, width, height)))]
            raise RegionAnswerError(
                f"{where}: polygon vertex ({_fmt(x)}, {_fmt(y)}) is outside the image ({width} x {height})"
            )
        # all on one line: zero area (a bow tie's signed areas also cancel, but it crosses)
        if not np.any(_orient(points[0], points[1], points[2:])):
            raise RegionAnswerError(f"{where}: the polygon has zero area")
        if not is_simple_polygon(points):
            raise RegionAnswerError(f"{where}: the polygon intersects itself")
    return Shape(label_index, shape, points=points)


def parse_regions(
    raw: Any, *, task_type: str, classes: Sequence[str], width: int, height: int, max_regions: int
) -> list[Shape]:
    """A wire-format region answer checked against the project (task type, classes, region
    limit) and the item's image size; RegionAnswerError at the first broken rule, naming the
    region's index. An empty list is an answer ("nothing here")."""
    if task_type not in ALLOWED_SHAPES:
        raise RegionAnswerError(f"a {task_type!r} project takes no regions")
    if not isinstance(raw, list):
        raise RegionAnswerError("regions must be a list of regions ([] for nothing here)")
    if len(raw) > max_regions:
        raise RegionAnswerError(f"{len(raw)} regions is more than this project's limit of {max_regions}")
    vertices = sum(
        len(r["points"]) for r in raw
        if isinstance(r, dict) and r.get("shape") == "polygon" and isinstance(r.get("points"), list)
    )  # fmt: skip
    if vertices > MAX_ANSWER_VERTICES:
        raise RegionAnswerError(
            f"the polygons have {vertices} vertices in all, more than {MAX_ANSWER_VERTICES} in one answer"
        )
    return [
        parse_shape(r, i, task_type=task_type, classes=classes, width=width, height=height)
        for i, r in enumerate(raw)
    ]


def shapes_from_stored(stored: Iterable[dict]) -> list[Shape]:
    """Shapes from the stored form (already checked when it was written)."""
    out = []
    for r in stored:
        if r["shape"] == "mask":
            out.append(Shape(int(r["label"]), "mask", rle=r["rle"]))
        else:
            out.append(Shape(int(r["label"]), r["shape"], points=np.asarray(r["points"], dtype=np.float64).reshape(-1, 2)))
    return out


# --- Masks and scoring -----------------------------------------------------------------------


def shape_mask(shape: Shape, height: int, width: int) -> np.ndarray:
    """A polygon's, box's or mask's bool ``[h, w]`` mask: pixel (r, c) covers ``c..c+1``,
    ``r..r+1`` and is inside a polygon or box when its centre ``(c + 0.5, r + 0.5)`` is."""
    if shape.shape == "mask":
        return rle_decode(shape.rle)
    if shape.shape == "polygon":
        return polygon_mask(shape.points - 0.5, (height, width), include_outline=False)
    if shape.shape == "box":
        (x0, y0), (x1, y1) = shape.points
        cols, rows = np.arange(width) + 0.5, np.arange(height) + 0.5
        return ((rows >= y0) & (rows <= y1))[:, None] & ((cols >= x0) & (cols <= x1))[None, :]
    raise ValueError(f"a {shape.shape} has no mask")


def class_masks(shapes: Iterable[Shape], n_classes: int, height: int, width: int) -> np.ndarray:
    """Bool ``[n_classes, h, w]``: each class's union of its polygons, boxes and masks."""
    out = np.zeros((n_classes, height, width), dtype=bool)
    for s in shapes:
        out[s.label] |= shape_mask(s, height, width)
    return out


def _marks(shapes: Iterable[Shape], label: int, kind: str) -> np.ndarray:
    rows = [s.points.reshape(-1) for s in shapes if s.label == label]
    dim = 2 if kind == "points" else 4
    return np.asarray(rows, dtype=np.float64).reshape(-1, dim)


def detection_score(answer: Sequence[Shape], truth: Sequence[Shape], kind: str, threshold: float) -> float:
    """F1 of ``answer``'s points or boxes against ``truth``'s, matched one-to-one within each
    class (points within ``threshold`` px, boxes at IoU >= ``threshold``); 1 when both are empty."""
    total = len(answer) + len(truth)
    if total == 0:
        return 1.0
    matched = 0
    for label in {s.label for s in answer} & {s.label for s in truth}:
        matched += len(detection_matches(_marks(answer, label, kind), _marks(truth, label, kind), kind, threshold))
    return 2.0 * matched / total


def mask_score(answer: Sequence[Shape], truth: Sequence[Shape], height: int, width: int) -> float:
    """Dice of each class's union mask, averaged over classes present in either answer; 1 when
    neither marks anything."""
    labels = sorted({s.label for s in answer} | {s.label for s in truth})
    if not labels:
        return 1.0
    n = max(labels) + 1
    a, t = class_masks(answer, n, height, width), class_masks(truth, n, height, width)
    present = [c for c in labels if a[c].any() or t[c].any()]
    if not present:
        return 1.0
    return float(np.mean([dice(a[c], t[c]) for c in present]))


def score_answer(
    answer: Sequence[Shape], truth: Sequence[Shape], *, task_type: str, height: int, width: int,
    match_distance: float, match_iou: float,
) -> tuple[str, float]:
    """``(metric, score)`` of an answer against the expert's: ("f1", F1) for points and boxes,
    ("dice", mean Dice per class) for masks."""
    if task_type == "points":
        return "f1", detection_score(answer, truth, "points", match_distance)
    if task_type == "boxes":
        return "f1", detection_score(answer, truth, "boxes", match_iou)
    if task_type == "masks":
        return "dice", mask_score(answer, truth, height, width)
    raise ValueError(f"a {task_type!r} project has no region score")
