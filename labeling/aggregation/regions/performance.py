"""Rater performance EM: the E and M steps shared by STAPLE (pixels) and the detection models.

STAPLE (S. K. Warfield, K. H. Zou, W. M. Wells, "Simultaneous truth and performance level
estimation (STAPLE): an algorithm for the validation of image segmentation", IEEE TMI
23(7):903-921, 2004) treats each pixel ``i`` as a hidden true label ``T_i`` and each rater
``j`` as a confusion matrix ``theta_j[t, l] = P(D_ij = l | T_i = t)`` (binary: sensitivity
``p_j = theta_j[1, 1]``, specificity ``q_j = theta_j[0, 0]``). With the prior ``f(T_i)``:

* E-step (eq. 14-16, their ``W_i``):
  ``W_i(t) ∝ f(T_i = t) * prod_j theta_j[t, D_ij]``;
* M-step (eq. 18-19, and 26 for several labels):
  ``theta_j[t, l] = sum_{i: D_ij = l} W_i(t) / sum_i W_i(t)``.

It is Dawid & Skene's EM (1979) with pixels for items. The unit the EM works on here is a
*rated unit* with a weight: every pixel whose raters gave the same labels (its *pattern*) has
the same ``W``, so the pixels of one image are grouped by pattern first (at most ``K^R``
units for ``R`` raters) and each unit counts as many pixels as it holds. The iteration is then
exactly the per-pixel one, at the cost of the patterns instead of the pixels. The detection
models use the same EM with one unit per candidate object (labels: marked / not marked).

Initialisation and stopping follow ITK's ``STAPLEImageFilter`` (what SimpleITK runs): ``W``
starts as each unit's vote share, the foreground prior is fixed at the mean of that share over
the image times a confidence weight, each iteration is an M-step then an E-step, and EM stops
once no sensitivity or specificity moved by more than ``tol`` (ITK: squared change at most
1e-14, so ``tol=1e-7``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# log(0) guard; small enough that a rater who is never wrong keeps W at 0 or 1 as in ITK
TINY = 1e-300

PRIORS = ("item", "global", "em", "em_global")


@dataclass(frozen=True)
class RatedUnits:
    """Units (pixel patterns or candidate objects) and the raters' labels of them.

    ``unit_item[g]``: the item unit ``g`` belongs to; ``unit_weight[g]``: how many pixels (or
    objects) it stands for. One entry per (unit, rater who labelled it): ``entry_unit``,
    ``entry_worker``, ``entry_label``. ``unit_prior`` (optional, ``[n_units, K]``) fixes each
    unit's prior (a per-pixel prior map grouped with the patterns).
    """

    unit_item: np.ndarray
    unit_weight: np.ndarray
    entry_unit: np.ndarray
    entry_worker: np.ndarray
    entry_label: np.ndarray
    n_items: int
    n_workers: int
    n_classes: int
    unit_prior: np.ndarray | None = None

    @property
    def n_units(self) -> int:
        return int(len(self.unit_item))

    def label_counts(self) -> np.ndarray:
        """``[n_units, K]``: how many raters gave each label to each unit."""
        g, k = self.n_units, self.n_classes
        flat = self.entry_unit * k + self.entry_label
        return np.bincount(flat, minlength=g * k).reshape(g, k).astype(np.float64)


@dataclass(frozen=True)
class PerformanceFit:
    posteriors: np.ndarray  # [n_units, K]
    confusions: np.ndarray  # [n_workers, true, observed]
    priors: np.ndarray  # [n_items, K]
    n_iter: int
    converged: bool


def clamp_units(post: np.ndarray, known: np.ndarray | None) -> None:
    """Set the posterior of units with a known label (``>= 0``) to that label, in place."""
    if known is None:
        return
    rows = np.flatnonzero(known >= 0)
    if len(rows):
        post[rows] = 0.0
        post[rows, known[rows]] = 1.0


def vote_shares(units: RatedUnits) -> np.ndarray:
    """Each unit's share of raters per label (ITK's initial ``W``); uniform for unrated units."""
    counts = units.label_counts()
    total = counts.sum(axis=1, keepdims=True)
    return np.divide(
        counts, total, out=np.full_like(counts, 1.0 / units.n_classes), where=total > 0
    )


def item_means(
    units: RatedUnits, values: np.ndarray, pooled: bool = False, weight: np.ndarray | None = None
) -> np.ndarray:
    """``[n_items, K]``: the weighted mean of ``values`` per item (or pooled); ``weight``
    defaults to the units' weights."""
    w = units.unit_weight if weight is None else weight
    k = values.shape[1]
    if pooled:
        mean = (values * w[:, None]).sum(axis=0) / max(float(w.sum()), TINY)
        return np.broadcast_to(mean, (units.n_items, k)).copy()
    sums = np.empty((units.n_items, k))
    for t in range(k):
        sums[:, t] = np.bincount(units.unit_item, weights=w * values[:, t], minlength=units.n_items)
    mass = np.bincount(units.unit_item, weights=w, minlength=units.n_items)
    return np.divide(sums, mass[:, None], out=np.full_like(sums, 1.0 / k), where=mass[:, None] > 0)


def initial_priors(
    units: RatedUnits,
    shares: np.ndarray,
    prior: str | float | np.ndarray,
    confidence_weight: float,
    weight: np.ndarray | None = None,
) -> np.ndarray:
    """``[n_items, K]`` priors before the first M-step (see :func:`performance_em`)."""
    k = units.n_classes
    if isinstance(prior, str):
        if prior not in PRIORS:
            raise ValueError(f"prior must be one of {PRIORS}, a number or an array of K numbers")
        priors = item_means(units, shares, pooled=prior in ("global", "em_global"), weight=weight)
        if k == 2:
            # ITK scales the foreground prior by its confidence weight
            priors[:, 1] = np.clip(priors[:, 1] * confidence_weight, 0.0, 1.0)
            priors[:, 0] = 1.0 - priors[:, 1]
        return priors
    given = np.atleast_1d(np.asarray(prior, dtype=np.float64))
    if given.shape == (1,) and k == 2:
        given = np.array([1.0 - given[0], given[0]])
    if given.shape != (k,) or (given < 0).any() or not np.isclose(given.sum(), 1.0):
        raise ValueError(
            "a fixed prior is a foreground probability (binary) or K numbers summing to 1"
        )
    return np.broadcast_to(given, (units.n_items, k)).copy()


def performance_em(
    units: RatedUnits,
    prior: str | float | np.ndarray = "item",
    confidence_weight: float = 1.0,
    max_iter: int = 1000,
    tol: float = 1e-7,
    smoothing: float = 0.0,
    fixed: np.ndarray | None = None,
    known: np.ndarray | None = None,
) -> PerformanceFit:
    """Run the EM of the module docstring on ``units``.

    ``prior``: ``"item"`` (fixed: each item's mean initial ``W``, ITK's ``g_t``), ``"global"``
    (fixed, pooled over items), ``"em"`` / ``"em_global"`` (re-estimated in every M-step, per
    item or pooled), a fixed foreground probability, or ``K`` fixed class probabilities;
    ``units.unit_prior`` overrides it unit by unit. ``smoothing`` is a Dirichlet pseudo-count
    on each confusion row (0: ITK's maximum-likelihood update). ``fixed`` (bool per unit)
    clamps those units to their (unanimous) initial ``W`` and leaves them out of the M-step;
    ``known`` (a label per unit, -1 for none) clamps units to a known label (an expert's mask)
    and keeps them in the M-step, so they inform the raters' confusions.
    """
    if max_iter < 1:
        raise ValueError("max_iter must be >= 1")
    if smoothing < 0:
        raise ValueError("smoothing must be >= 0")
    k, n_workers, g = units.n_classes, units.n_workers, units.n_units
    post = vote_shares(units)
    clamp_units(post, known)
    # restricted to a region, the prior is the foreground share of that region
    region = None if fixed is None else np.where(fixed, 0.0, units.unit_weight)
    priors = initial_priors(units, post, prior, confidence_weight, region)
    reestimate = isinstance(prior, str) and prior.startswith("em")
    entry_weight = units.unit_weight[units.entry_unit].astype(np.float64)
    clamped = post[fixed].copy() if fixed is not None else None
    if fixed is not None:
        entry_weight = np.where(fixed[units.entry_unit], 0.0, entry_weight)
    cells = units.entry_worker * k + units.entry_label
    conf = np.full((n_workers, k, k), 1.0 / k)
    last = None
    converged = False
    n_iter = 0
    while n_iter < max_iter:
        n_iter += 1
        # M-step: soft counts [worker, observed, true] -> confusions [worker, true, observed]
        counts = np.empty((n_workers * k, k))
        for t in range(k):
            counts[:, t] = np.bincount(
                cells, weights=entry_weight * post[units.entry_unit, t], minlength=n_workers * k
            )
        num = counts.reshape(n_workers, k, k).transpose(0, 2, 1) + smoothing
        total = num.sum(axis=2, keepdims=True)
        # a rater with no mass on a true class keeps its previous row there (ITK would divide 0/0)
        conf = np.divide(num, total, out=conf.copy(), where=total > 0)
        if reestimate:
            priors = item_means(units, post, pooled=prior == "em_global", weight=region)
        # E-step
        log_conf = np.log(np.maximum(conf, TINY))
        if units.unit_prior is not None:
            acc = np.log(np.maximum(units.unit_prior, TINY))
        else:
            acc = np.log(np.maximum(priors, TINY))[units.unit_item]
        contrib = log_conf[units.entry_worker, :, units.entry_label]
        for t in range(k):
            acc[:, t] += np.bincount(units.entry_unit, weights=contrib[:, t], minlength=g)
        acc -= acc.max(axis=1, keepdims=True)
        post = np.exp(acc)
        post /= post.sum(axis=1, keepdims=True)
        if clamped is not None:
            post[fixed] = clamped
        clamp_units(post, known)
        if last is not None and np.abs(conf - last).max() <= tol:
            converged = True
            break
        last = conf
    return PerformanceFit(post, conf, priors, n_iter, converged)
