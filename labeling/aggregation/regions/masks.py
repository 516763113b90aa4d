"""Mask consensus: per-pixel (weighted) majority vote and STAPLE.

STAPLE: S. K. Warfield, K. H. Zou, W. M. Wells, "Simultaneous truth and performance level
estimation (STAPLE)", IEEE TMI 23(7):903-921, 2004; the EM itself (eq. 14-19, 26) is in
:mod:`labeling.aggregation.regions.performance`. Several labels per pixel (eq. 26; T. Rohlfing,
D. B. Russakoff, C. R. Maurer, "Performance-based classifier combination in atlas-based image
segmentation using expectation-maximization parameter estimation", IEEE TMI 23(8), 2004) run
the same code with ``K > 2``; the tests check both against SimpleITK (``STAPLEImageFilter``:
same map and sensitivities to 1e-9; ``MultiLabelSTAPLEImageFilter``: same labels, confusions
within its own stopping threshold).

``fit(data, known=)`` takes masks known to be right for some images (an expert's, a gold
item's): their pixels are clamped to the known label and count in the M-step, so the raters'
sensitivities and specificities are measured against them too.

Input is crowd-kit's segmentation frame (columns ``task``, ``worker``, ``segmentation``: one
mask per row; bool for foreground/background, ints ``0..K-1`` for several labels), so ours and
crowd-kit's ``SegmentationMajorityVote`` / ``SegmentationRASA`` / ``SegmentationEM`` swap, or
a stack ``[raters, *shape]`` of one image's masks (what SimpleITK's filter takes).

The pixels of an image are grouped by their pattern of rater labels before any EM (one code
per pixel: ``sum_r D_r K^r``); the EM then runs over the patterns weighted by their pixel
counts, which is exactly the per-pixel EM (see the performance module). With
``restrict="disagreement"`` the pixels every rater of the image labelled alike are fixed to
that label and left out of the M-step (the "consensus region" of O. Commowick and
S. K. Warfield, IEEE TMI 29(3), 2010), so the specificities are measured where raters differ
rather than on a background of easy zeros.

Reliability: ``share_workers=True`` (default) pools each worker's sensitivity and specificity
over every image they drew (a crowd); ``False`` estimates them per image, as SimpleITK does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Self

import numpy as np
import pandas as pd

from labeling.aggregation.base import numba
from labeling.aggregation.regions.performance import (
    PRIORS,
    PerformanceFit,
    RatedUnits,
    clamp_units,
    performance_em,
    vote_shares,
)

MaskInput = pd.DataFrame | np.ndarray | Sequence[np.ndarray]
SEGMENTATION_COLUMNS = ("task", "worker", "segmentation")

# patterns are counted in a table of K^R cells up to this size, otherwise sorted
_TABLE_CELLS = 1 << 16
# a probability this close to the threshold is a tie (two raters who disagree: 0.5 up to
# rounding) and goes to foreground, as in crowd-kit's majority vote
TIE = 1e-9


@dataclass(frozen=True)
class CodedMasks:
    """Masks grouped by pattern: the EM's units plus how to paint results back on each image."""

    units: RatedUnits
    tasks: np.ndarray
    workers: np.ndarray
    shapes: list[tuple[int, ...]]
    pixel_code: list[np.ndarray]  # per task, flat: each pixel's index into code_unit
    code_unit: list[np.ndarray]  # per task: index -> unit (global), -1 where no pixel has it
    unit_unanimous: np.ndarray  # bool per unit: every rater gave the same label
    slots: list[tuple[Any, Any]] | None = None  # share_workers=False: (task, worker) per rater

    known: np.ndarray | None = None  # per unit: its known label, -1 where none is known

    def pixel_units(self, item: int) -> np.ndarray:
        """Each pixel's unit (global index) in image ``item``, flat."""
        return self.code_unit[item][self.pixel_code[item]]


def as_segmentation_frame(data: MaskInput) -> pd.DataFrame:
    """A crowd-kit segmentation frame from a frame, or from one image's stack of masks."""
    if isinstance(data, pd.DataFrame):
        missing = [c for c in SEGMENTATION_COLUMNS if c not in data.columns]
        if missing:
            raise ValueError(
                f"masks frame lacks column(s) {missing}; expected {list(SEGMENTATION_COLUMNS)}"
            )
        return data
    stack = list(data) if not isinstance(data, np.ndarray) else list(data)
    if not stack:
        raise ValueError("no masks given")
    return pd.DataFrame(
        {"task": 0, "worker": np.arange(len(stack)), "segmentation": [np.asarray(m) for m in stack]}
    )


def code_masks(
    data: MaskInput,
    n_classes: int | None = None,
    share_workers: bool = True,
    prior_maps: Mapping[Any, np.ndarray] | np.ndarray | None = None,
    known: Mapping[Any, np.ndarray] | None = None,
) -> CodedMasks:
    """Group every image's pixels by rater pattern (see module docstring).

    A pixel's pattern also holds its known label where ``known`` (task -> mask, e.g. an
    expert's) gives one and its prior where ``prior_maps`` does, so a unit is uniform in both.
    """
    frame = as_segmentation_frame(data)
    if frame["task"].isna().any() or frame["worker"].isna().any():
        raise ValueError("masks frame has missing task or worker ids")
    task_codes, tasks = pd.factorize(frame["task"], sort=True)
    worker_codes, workers = pd.factorize(frame["worker"], sort=True)
    masks = [np.asarray(m) for m in frame["segmentation"]]
    for m in masks:
        if m.dtype.kind not in "biu":
            raise ValueError(f"masks must be bool or integer label arrays, got {m.dtype}")
    if n_classes is None:
        top = max((int(m.max()) for m in masks if m.size), default=1)
        n_classes = max(2, top + 1)
    k = int(n_classes)
    if any(m.size and (m.min() < 0 or m.max() >= k) for m in masks):
        raise ValueError(f"mask labels must lie in [0, {k})")
    if isinstance(prior_maps, np.ndarray):
        prior_maps = {tasks[0]: prior_maps}
    if prior_maps is not None and k != 2:
        raise ValueError("prior maps are foreground probabilities: binary masks only")
    known = {} if known is None else known
    unknown_tasks = set(known) - set(tasks)
    if unknown_tasks:
        raise ValueError(f"known masks for tasks nobody annotated: {sorted(unknown_tasks)[:5]}")

    order = np.argsort(task_codes, kind="stable")
    bounds = np.searchsorted(task_codes[order], np.arange(len(tasks) + 1))
    unit_item, unit_weight, unit_prior, unit_known = [], [], [], []
    entry_unit, entry_worker, entry_label = [], [], []
    pixel_code, code_unit, shapes, unanimous = [], [], [], []
    n_units = 0
    n_raters_seen = 0
    slots: list[tuple[Any, Any]] = []
    for item in range(len(tasks)):
        rows = order[bounds[item] : bounds[item + 1]]
        stack_masks = [masks[r] for r in rows]
        shape = stack_masks[0].shape
        if any(m.shape != shape for m in stack_masks):
            raise ValueError(
                f"task {tasks[item]!r}: masks of different shapes {[m.shape for m in stack_masks]}"
            )
        raters = worker_codes[rows]
        if len(np.unique(raters)) != len(raters):
            raise ValueError(f"task {tasks[item]!r}: a worker gave more than one mask")
        if not share_workers:
            slots.extend((tasks[item], workers[w]) for w in raters)
            raters = n_raters_seen + np.arange(len(rows))
            n_raters_seen += len(rows)
        code = _pattern_codes(stack_masks, k)
        known_mask = known.get(tasks[item])
        if known_mask is not None:
            known_mask = np.asarray(known_mask)
            if known_mask.shape != shape or known_mask.dtype.kind not in "biu":
                raise ValueError(
                    f"task {tasks[item]!r}: known mask must be labels of the masks' shape"
                )
            if known_mask.size and (known_mask.min() < 0 or known_mask.max() >= k):
                raise ValueError(f"task {tasks[item]!r}: known mask labels must lie in [0, {k})")
            code = code.astype(np.int64) * k + known_mask.reshape(-1).astype(np.int64)
        prior_map = None if prior_maps is None else prior_maps.get(tasks[item])
        if prior_map is not None:
            prior_map = np.asarray(prior_map, dtype=np.float64)
            if prior_map.shape != shape or (prior_map < 0).any() or (prior_map > 1).any():
                raise ValueError(
                    f"task {tasks[item]!r}: prior map must be probabilities of the mask's shape"
                )
            levels, level_of = np.unique(prior_map.ravel(), return_inverse=True)
            code = code.astype(np.int64) * len(levels) + level_of
        patterns, counts, pixel_index, index_unit = _unique_codes(code)
        if prior_map is not None:
            pattern_level = patterns % len(levels)
            patterns = patterns // len(levels)
            unit_prior.append(np.stack([1 - levels[pattern_level], levels[pattern_level]], axis=1))
        elif prior_maps is not None:
            unit_prior.append(np.full((len(patterns), 2), np.nan))
        if known_mask is not None:
            unit_known.append(patterns % k)
            patterns = patterns // k
        else:
            unit_known.append(np.full(len(patterns), -1))
        labels = (patterns[:, None] // k ** np.arange(len(rows))[None, :]) % k  # [P, R]
        n_p = len(patterns)
        unit_item.append(np.full(n_p, item))
        unit_weight.append(counts.astype(np.float64))
        entry_unit.append(np.repeat(n_units + np.arange(n_p), len(rows)))
        entry_worker.append(np.tile(raters, n_p))
        entry_label.append(labels.ravel())
        unanimous.append((labels == labels[:, :1]).all(axis=1))
        pixel_code.append(pixel_index)
        code_unit.append(np.where(index_unit >= 0, n_units + index_unit, -1))
        shapes.append(shape)
        n_units += n_p
    prior_array = None
    if unit_prior:
        prior_array = np.concatenate(unit_prior)
        if np.isnan(prior_array).any():
            raise ValueError("prior_maps must give a map for every task or for none")
    units = RatedUnits(
        unit_item=np.concatenate(unit_item).astype(np.int64),
        unit_weight=np.concatenate(unit_weight),
        entry_unit=np.concatenate(entry_unit).astype(np.int64),
        entry_worker=np.concatenate(entry_worker).astype(np.int64),
        entry_label=np.concatenate(entry_label).astype(np.int64),
        n_items=len(tasks),
        n_workers=len(workers) if share_workers else n_raters_seen,
        n_classes=k,
        unit_prior=prior_array,
    )
    known_units = np.concatenate(unit_known).astype(np.int64)
    return CodedMasks(
        units,
        np.asarray(tasks),
        np.asarray(workers),
        shapes,
        pixel_code,
        code_unit,
        np.concatenate(unanimous),
        None if share_workers else slots,
        known_units,
    )


def _pattern_codes(stack: list[np.ndarray], k: int) -> np.ndarray:
    """One code per pixel, ``sum_r label_r * k**r``, in the smallest unsigned type that holds
    them (one byte for up to 8 binary raters: less memory traffic per pass)."""
    if len(stack) * np.log2(k) > 62:
        raise ValueError(f"{len(stack)} raters with {k} labels overflow a 64-bit pattern code")
    top = k ** len(stack)
    dtype = next(
        t for t in (np.uint8, np.uint16, np.uint32, np.uint64) if top <= np.iinfo(t).max + 1
    )
    code = np.zeros(stack[0].size, dtype=dtype)
    scale = 1
    for m in stack:
        flat = m.reshape(-1)
        flat = flat.view(np.uint8) if flat.dtype == bool else flat.astype(dtype, copy=False)
        if scale == 1:
            code += flat
        else:
            code += flat * dtype(scale)
        scale *= k
    return code


def _count_codes_python(code, counts):
    """``counts[c] += 1`` for every code (``np.bincount`` without widening the codes first)."""
    for i in range(code.shape[0]):
        counts[code[i]] += 1


def _paint_python(table, index, out):
    """``out[i] = table[index[i]]``: a pixel map from a per-pattern table."""
    for i in range(index.shape[0]):
        out[i] = table[index[i]]


if numba is not None:
    _count_codes_numba = numba.njit(cache=True, nogil=True)(_count_codes_python)
    _paint_numba = numba.njit(cache=True, nogil=True)(_paint_python)


def count_codes(code: np.ndarray, top: int) -> np.ndarray:
    if numba is None:
        return np.bincount(code, minlength=top)
    counts = np.zeros(top, dtype=np.int64)
    _count_codes_numba(code, counts)
    return counts


def paint(table: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``table[index]`` for a small table and a long index of small ints."""
    if numba is None:
        return table[index]
    out = np.empty(index.shape, dtype=table.dtype)
    _paint_numba(np.ascontiguousarray(table), index, out)
    return out


def _unique_codes(code: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(patterns, counts, pixel_index, index_unit)``: the distinct codes and their pixel
    counts, and for painting back, each pixel's index into ``index_unit`` (its local unit).

    Few possible codes: counted in a table and the codes are the index (no gather over the
    pixels); many: ``np.unique``'s inverse is the index.
    """
    top = int(code.max()) + 1 if code.size else 1
    if top <= _TABLE_CELLS:
        counts = count_codes(code, top)
        present = np.flatnonzero(counts)
        index_unit = np.full(top, -1, dtype=np.int64)
        index_unit[present] = np.arange(len(present))
        return present.astype(np.int64), counts[present], code, index_unit
    patterns, inverse, counts = np.unique(code, return_inverse=True, return_counts=True)
    return patterns.astype(np.int64), counts, inverse.reshape(-1), np.arange(len(patterns))


class _MaskAggregator:
    """Common fit/predict plumbing: ``fit(data)`` then ``segmentations_`` and ``probas_``.

    ``probas_`` (Series task -> float map): the foreground probability (binary) or ``[*shape,
    K]`` class probabilities; ``segmentations_`` (Series task -> mask): bool (binary, at
    ``threshold``) or the most probable label; ``uncertainty_`` (Series task -> float): the
    expected number of wrong pixels over the expected foreground area (``sum min(p, 1 - p) /
    sum p``, over all non-background classes for ``K > 2``): the review queue's order key.
    """

    n_classes: int | None
    threshold: float
    share_workers: bool = True

    def fit(
        self,
        data: MaskInput,
        prior_maps: Mapping[Any, np.ndarray] | np.ndarray | None = None,
        known: Mapping[Any, np.ndarray] | None = None,
    ) -> Self:
        """``prior_maps``: task -> foreground prior per pixel (STAPLE); ``known``: task -> a
        mask known to be right (an expert's, a gold item's), clamped in the consensus and, in
        STAPLE, telling the workers' sensitivities and specificities."""
        if not 0.0 < self.threshold < 1.0:
            raise ValueError("threshold must be in (0, 1)")
        coded = code_masks(data, self.n_classes, self.share_workers, prior_maps, known)
        post = self._unit_posteriors(coded)
        clamp_units(post, coded.known)
        self._store(coded, post)
        return self

    def fit_predict(self, data: MaskInput, prior_maps: Any = None, known: Any = None) -> pd.Series:
        return self.fit(data, prior_maps=prior_maps, known=known).segmentations_

    def fit_predict_proba(
        self, data: MaskInput, prior_maps: Any = None, known: Any = None
    ) -> pd.Series:
        return self.fit(data, prior_maps=prior_maps, known=known).probas_

    def _unit_posteriors(self, coded: CodedMasks) -> np.ndarray:
        raise NotImplementedError

    def _store(self, coded: CodedMasks, post: np.ndarray) -> None:
        k = coded.units.n_classes
        index = pd.Index(coded.tasks, name="task")
        probas, segs, unc = [], [], []
        weight = coded.units.unit_weight
        for pixels, table, shape in zip(
            coded.pixel_code, coded.code_unit, coded.shapes, strict=True
        ):
            units = table[table >= 0]
            # results per unit, painted on the pixels with one gather from a small table
            safe = np.maximum(table, 0)
            if k == 2:
                fg = post[units, 1]
                fg_map = paint(post[safe, 1], pixels).reshape(shape)
                probas.append(fg_map)
                segs.append(fg_map >= self.threshold - TIE)
                wrong = (weight[units] * np.minimum(fg, 1.0 - fg)).sum()
                area = (weight[units] * fg).sum()
            else:
                p = post[units]
                probas.append(post[safe][pixels].reshape(*shape, k))
                segs.append(paint(post[safe].argmax(axis=1), pixels).reshape(shape))
                wrong = (weight[units] * (1.0 - p.max(axis=1))).sum()
                area = (weight[units] * (1.0 - p[:, 0])).sum()
            unc.append(float(wrong / max(area, 1.0)))
        self.tasks_ = coded.tasks
        self.workers_ = coded.workers
        self.probas_ = pd.Series(probas, index=index, name="proba", dtype=object)
        self.segmentations_ = pd.Series(segs, index=index, name="agg_segmentation", dtype=object)
        self.uncertainty_ = pd.Series(unc, index=index, name="uncertainty")


class MaskMajorityVote(_MaskAggregator):
    """Per-pixel (weighted) majority vote: the soft map is each pixel's (weighted) vote share.

    ``weights`` in ``fit`` (worker -> weight, e.g. a previous STAPLE's sensitivity +
    specificity - 1) turn it into a weighted vote; ties go to foreground at the default
    ``threshold=0.5``, as in crowd-kit's ``SegmentationMajorityVote``.
    """

    def __init__(self, threshold: float = 0.5, n_classes: int | None = None) -> None:
        self.threshold = threshold
        self.n_classes = n_classes
        self._weights: Mapping[Any, float] | pd.Series | None = None

    def fit(
        self,
        data: MaskInput,
        prior_maps: Any = None,
        known: Mapping[Any, np.ndarray] | None = None,
        weights: Mapping[Any, float] | pd.Series | None = None,
    ) -> Self:
        if prior_maps is not None:
            raise ValueError("majority vote takes no prior")
        self._weights = weights
        return super().fit(data, known=known)

    def _unit_posteriors(self, coded: CodedMasks) -> np.ndarray:
        units = coded.units
        if self._weights is None:
            return vote_shares(units)
        w = pd.Series(self._weights).reindex(coded.workers).to_numpy(dtype=np.float64)
        if np.isnan(w).any() or (w < 0).any():
            raise ValueError("weights must give a non-negative weight for every worker")
        k, g = units.n_classes, units.n_units
        flat = units.entry_unit * k + units.entry_label
        counts = np.bincount(flat, weights=w[units.entry_worker], minlength=g * k).reshape(g, k)
        total = counts.sum(axis=1, keepdims=True)
        return np.divide(counts, total, out=np.full_like(counts, 1.0 / k), where=total > 0)


class STAPLE(_MaskAggregator):
    """STAPLE (see module docstring): EM over each rater's sensitivity and specificity.

    Parameters: ``prior`` (``"item"``: each image's mean vote share, fixed, as ITK/SimpleITK;
    ``"global"``: pooled over images; ``"em"`` / ``"em_global"``: re-estimated; a number: the
    fixed foreground probability; or a per-pixel map through ``fit(..., prior_maps=)``),
    ``confidence_weight`` (ITK's scale on the foreground prior), ``max_iter``, ``tol`` (largest
    change of any sensitivity or specificity at which EM stops; ITK's is 1e-7), ``smoothing``
    (Dirichlet pseudo-count per confusion cell; 0 is ITK's update), ``restrict``
    (``"all"`` pixels, or only where raters ``"disagreement"``), ``share_workers``,
    ``threshold`` (on the foreground probability), ``n_classes`` (None: from the labels; > 2 is
    multi-label STAPLE).

    Learned: ``sensitivity_`` / ``specificity_`` (Series worker -> float; binary),
    ``confusions_`` (``[n_workers, true, observed]``), ``priors_`` (``[n_tasks, K]``),
    ``n_iter_``, ``converged_``, plus ``probas_``, ``segmentations_``, ``uncertainty_``.
    With ``share_workers=False`` the workers are ``(task, worker)`` pairs.
    """

    def __init__(
        self,
        prior: Literal["item", "global", "em", "em_global"] | float = "item",
        confidence_weight: float = 1.0,
        max_iter: int = 1000,
        tol: float = 1e-7,
        smoothing: float = 0.0,
        restrict: Literal["all", "disagreement"] = "all",
        share_workers: bool = True,
        threshold: float = 0.5,
        n_classes: int | None = None,
    ) -> None:
        self.prior = prior
        self.confidence_weight = confidence_weight
        self.max_iter = max_iter
        self.tol = tol
        self.smoothing = smoothing
        self.restrict = restrict
        self.share_workers = share_workers
        self.threshold = threshold
        self.n_classes = n_classes

    def _unit_posteriors(self, coded: CodedMasks) -> np.ndarray:
        if self.restrict not in ("all", "disagreement"):
            raise ValueError("restrict must be 'all' or 'disagreement'")
        if isinstance(self.prior, str) and self.prior not in PRIORS:
            raise ValueError(f"prior must be one of {PRIORS} or a number")
        if self.confidence_weight <= 0:
            raise ValueError("confidence_weight must be > 0")
        fixed = coded.unit_unanimous if self.restrict == "disagreement" else None
        fit: PerformanceFit = performance_em(
            coded.units,
            prior=self.prior,
            confidence_weight=self.confidence_weight,
            max_iter=self.max_iter,
            tol=self.tol,
            smoothing=self.smoothing,
            fixed=fixed,
            known=coded.known,
        )
        if coded.slots is None:
            workers = pd.Index(coded.workers, name="worker")
        else:
            workers = pd.MultiIndex.from_tuples(coded.slots, names=["task", "worker"])
        self.confusions_ = fit.confusions
        self.priors_ = fit.priors
        self.n_iter_ = fit.n_iter
        self.converged_ = fit.converged
        if coded.units.n_classes == 2:
            self.sensitivity_ = pd.Series(
                fit.confusions[:, 1, 1], index=workers, name="sensitivity"
            )
            self.specificity_ = pd.Series(
                fit.confusions[:, 0, 0], index=workers, name="specificity"
            )
        else:
            diag = np.einsum("wcc->wc", fit.confusions)
            self.sensitivity_ = pd.DataFrame(diag, index=workers)
            self.specificity_ = None
        return fit.posteriors
