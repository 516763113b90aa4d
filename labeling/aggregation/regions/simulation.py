"""Simulated region crowds over real truth: the errors annotators make with points, boxes, masks.

Each simulated annotator is a :class:`RegionAnnotator`: how often they find a real object
(``sensitivity``), how many false marks they add per image (Poisson ``false_rate``), how far
their points or box corners wander (``jitter``, pixels, Gaussian), whether their boxes are
loose or tight (``scale`` > or < 1 of the true width and height), and for masks a boundary
offset (``grow``: dilation > 0, erosion < 0, pixels), a ``shift`` of the whole mask and a
rough boundary (``roughness``: amplitude in pixels of a smooth random field added to the
signed distance of the true mask). A ``spammer`` ignores the image: random marks and blobs.
The kinds follow the errors reported for crowd annotation of medical images (missed objects,
false marks, imprecise outlines, systematic over- or under-segmentation; e.g. S. Albarqouni
et al., IEEE TMI 35(5), 2016; L. Maier-Hein et al., MICCAI 2014).

Archetypes (``ARCHETYPES``), combined with a mix string as in :mod:`..simulation`
(``"expert:2,careless:1,loose:1,spammer:1"``). Everything is deterministic given the seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from scipy import ndimage

from labeling.aggregation.simulation import Seed


@dataclass(frozen=True)
class RegionAnnotator:
    archetype: str
    sensitivity: float = 0.95
    false_rate: float = 0.1
    jitter: float = 1.5
    scale: float = 1.0
    grow: float = 0.0
    shift: float = 0.0
    roughness: float = 0.5
    spammer: bool = False


ARCHETYPES: dict[str, RegionAnnotator] = {
    "expert": RegionAnnotator("expert", 0.97, 0.05, 1.0, 1.0, 0.0, 0.0, 0.5),
    "good": RegionAnnotator("good", 0.9, 0.2, 2.0, 1.0, 0.0, 0.0, 1.0),
    "careless": RegionAnnotator("careless", 0.7, 0.8, 4.0, 1.0, 0.0, 1.0, 2.0),
    "loose": RegionAnnotator("loose", 0.9, 0.2, 2.0, 1.2, 2.0, 0.0, 1.0),
    "tight": RegionAnnotator("tight", 0.9, 0.2, 2.0, 0.85, -2.0, 0.0, 1.0),
    "shifted": RegionAnnotator("shifted", 0.9, 0.2, 2.0, 1.0, 0.0, 3.0, 1.0),
    "spammer": RegionAnnotator("spammer", 0.0, 4.0, 0.0, 1.0, 0.0, 0.0, 0.0, spammer=True),
}

DEFAULT_MIX = "expert:1,good:2,careless:1,loose:1,tight:1,shifted:1,spammer:1"


def make_annotators(
    mix: str | Sequence[str], seed: Seed = None, spread: float = 0.0
) -> list[RegionAnnotator]:
    """Annotators for a mix; ``spread`` varies sensitivity and jitter by up to +-spread (share)."""
    names: list[str] = []
    if isinstance(mix, str):
        for part in mix.split(","):
            name, _, count = part.strip().partition(":")
            if name not in ARCHETYPES:
                raise ValueError(f"unknown archetype {name!r}; expected one of {list(ARCHETYPES)}")
            names += [name] * (int(count) if count else 1)
    else:
        names = list(mix)
    rng = np.random.default_rng(seed)
    out = []
    for name in names:
        a = ARCHETYPES[name]
        f = 1.0 + rng.uniform(-spread, spread, size=2)
        out.append(
            replace(
                a, sensitivity=float(np.clip(a.sensitivity * f[0], 0, 1)), jitter=a.jitter * f[1]
            )
        )
    return out


def _pick(n_items: int, n_annotators: int, per_item: int, rng: np.random.Generator) -> np.ndarray:
    if per_item > n_annotators:
        raise ValueError(f"per_item={per_item} exceeds the {n_annotators} annotators")
    return np.argsort(rng.random((n_items, n_annotators)), axis=1)[:, :per_item]


def simulate_points(
    truth: Sequence[np.ndarray],
    annotators: Sequence[RegionAnnotator],
    per_item: int,
    image_size: tuple[int, int],
    seed: Seed = None,
) -> pd.DataFrame:
    """A ``task, worker, points`` frame: each item's true ``[n, 2]`` points marked by
    ``per_item`` annotators drawn at random (``image_size`` is ``(width, height)``)."""
    rng = np.random.default_rng(seed)
    who = _pick(len(truth), len(annotators), per_item, rng)
    w, h = image_size
    rows = []
    for item, objs in enumerate(truth):
        objs = np.asarray(objs, dtype=np.float64).reshape(-1, 2)
        for j in who[item]:
            a = annotators[j]
            found = objs[rng.random(len(objs)) < a.sensitivity]
            found = found + rng.normal(0.0, a.jitter, size=found.shape)
            n_false = rng.poisson(a.false_rate)
            false = rng.uniform([0, 0], [w, h], size=(n_false, 2))
            pts = np.clip(np.concatenate([found, false]), 0, [w - 1, h - 1])
            rows.append((item, int(j), pts[rng.permutation(len(pts))]))
    return pd.DataFrame(rows, columns=["task", "worker", "points"])


def simulate_boxes(
    truth: Sequence[np.ndarray],
    annotators: Sequence[RegionAnnotator],
    per_item: int,
    image_size: tuple[int, int],
    seed: Seed = None,
) -> pd.DataFrame:
    """A ``task, worker, boxes`` frame over each item's true ``[n, 4]`` boxes; false boxes
    are sized like the item's real ones and placed anywhere."""
    rng = np.random.default_rng(seed)
    who = _pick(len(truth), len(annotators), per_item, rng)
    w, h = image_size
    rows = []
    for item, objs in enumerate(truth):
        objs = np.asarray(objs, dtype=np.float64).reshape(-1, 4)
        sizes = objs[:, 2:] - objs[:, :2] if len(objs) else np.array([[30.0, 30.0]])
        for j in who[item]:
            a = annotators[j]
            found = objs[rng.random(len(objs)) < a.sensitivity]
            centre = (found[:, :2] + found[:, 2:]) / 2
            half = (found[:, 2:] - found[:, :2]) / 2 * a.scale
            boxes = np.concatenate([centre - half, centre + half], axis=1)
            boxes = boxes + rng.normal(0.0, a.jitter, size=boxes.shape)
            n_false = rng.poisson(a.false_rate)
            fs = sizes[rng.integers(0, len(sizes), size=n_false)]
            fc = rng.uniform([0, 0], [w, h], size=(n_false, 2))
            false = np.concatenate([fc - fs / 2, fc + fs / 2], axis=1)
            all_boxes = np.concatenate([boxes, false])
            all_boxes[:, [0, 2]] = np.clip(all_boxes[:, [0, 2]], 0, w - 1)
            all_boxes[:, [1, 3]] = np.clip(all_boxes[:, [1, 3]], 0, h - 1)
            lo = np.minimum(all_boxes[:, :2], all_boxes[:, 2:])
            hi = np.maximum(all_boxes[:, :2], all_boxes[:, 2:])
            all_boxes = np.concatenate([lo, hi], axis=1)
            rows.append((item, int(j), all_boxes[rng.permutation(len(all_boxes))]))
    return pd.DataFrame(rows, columns=["task", "worker", "boxes"])


def signed_distance(mask: np.ndarray) -> np.ndarray:
    """Pixels' signed distance to the mask's boundary: positive inside, negative outside."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return -np.full(mask.shape, 1e6)
    if mask.all():
        return np.full(mask.shape, 1e6)
    return ndimage.distance_transform_edt(mask) - ndimage.distance_transform_edt(~mask)


def draw_mask(
    truth_labels: np.ndarray,
    annotator: RegionAnnotator,
    rng: np.random.Generator,
    sdf: np.ndarray | None = None,
    blob_radius: float = 8.0,
) -> np.ndarray:
    """One annotator's binary mask of an instance-labelled truth (0 background, 1.. objects)."""
    labels = np.asarray(truth_labels)
    shape = labels.shape
    a = annotator
    out = np.zeros(shape, dtype=bool)
    if not a.spammer:
        ids = np.unique(labels[labels > 0])
        missed = ids[rng.random(len(ids)) >= a.sensitivity]
        seen = (labels > 0) & ~np.isin(labels, missed)
        d = signed_distance(seen) if (sdf is None or len(missed)) else sdf
        field = a.grow
        if a.roughness > 0:
            noise = ndimage.gaussian_filter(rng.normal(size=shape), 3.0)
            noise *= a.roughness / max(float(noise.std()), 1e-12)
            field = field + noise
        out = d + field > 0
        if a.shift > 0:
            angle = rng.uniform(0, 2 * np.pi)
            dy, dx = np.round(a.shift * np.array([np.sin(angle), np.cos(angle)])).astype(int)
            out = ndimage.shift(out, (dy, dx), order=0, mode="constant", cval=False)
    n_blobs = rng.poisson(a.false_rate)
    if n_blobs:
        yy, xx = np.ogrid[: shape[0], : shape[1]]
        for cy, cx, r in zip(
            rng.uniform(0, shape[0], n_blobs),
            rng.uniform(0, shape[1], n_blobs),
            rng.uniform(0.5, 1.5, n_blobs) * blob_radius,
            strict=True,
        ):
            out |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    return out


def simulate_masks(
    truth: Sequence[np.ndarray],
    annotators: Sequence[RegionAnnotator],
    per_item: int,
    seed: Seed = None,
    blob_radius: float = 8.0,
) -> pd.DataFrame:
    """A crowd-kit segmentation frame (``task, worker, segmentation``) over instance-labelled
    true masks (binary truth works too: one object)."""
    rng = np.random.default_rng(seed)
    who = _pick(len(truth), len(annotators), per_item, rng)
    rows = []
    for item, labels in enumerate(truth):
        labels = np.asarray(labels)
        sdf = signed_distance(labels > 0)
        for j in who[item]:
            rows.append((item, int(j), draw_mask(labels, annotators[j], rng, sdf, blob_radius)))
    return pd.DataFrame(rows, columns=["task", "worker", "segmentation"])
