"""Inter-annotator agreement: Fleiss' kappa, Krippendorff's alpha (nominal), worker agreement.

* Fleiss' kappa: J. L. Fleiss, "Measuring nominal scale agreement among many raters",
  Psychological Bulletin 76(5):378-382, 1971, eq. 1-9:
  ``kappa = (P_bar - P_e) / (1 - P_e)``. Items may have different numbers of raters: we use
  the usual generalisation in which item ``i`` with ``n_i >= 2`` ratings has observed
  agreement ``P_i = sum_k n_ik (n_ik - 1) / (n_i (n_i - 1))``, ``P_bar`` is their plain mean
  and the chance term uses pooled class shares ``p_k = sum_i n_ik / sum_i n_i``; items with
  fewer than two ratings are left out. With a constant number of raters this is exactly
  Fleiss' 1971 statistic.
* Krippendorff's alpha, nominal metric: K. Krippendorff, "Computing Krippendorff's
  alpha-reliability", 2011 (section C, any number of coders, missing values):
  ``alpha = 1 - (n - 1) * (n - sum_c o_cc) / (n^2 - sum_c n_c^2)`` from the coincidence
  matrix ``o_ck = sum_u (pairs (c, k) in unit u) / (m_u - 1)`` over units with ``m_u >= 2``.
* Worker agreement: the share of each worker's votes equal to a consensus label (majority
  vote unless given), the simplest per-annotator reliability a reviewer can read.

When every pairable vote agrees, both coefficients are defined here as 1 (the textbook
formulas give 0/0 when, in addition, only one class occurs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from labeling.aggregation.base import VoteMatrix, as_votes, tie_broken_argmax

Ratings = pd.DataFrame | VoteMatrix | np.ndarray


def rating_table(data: Ratings, classes: Sequence[Any] | None = None) -> np.ndarray:
    """``[n_items, K]`` counts: a vote frame, a VoteMatrix, or a count table as is."""
    if isinstance(data, np.ndarray):
        if data.ndim != 2 or (data < 0).any():
            raise ValueError("a count table must be a 2-D array of non-negative counts")
        return data.astype(np.float64)
    return as_votes(data, classes).vote_counts()


def fleiss_kappa(data: Ratings, classes: Sequence[Any] | None = None) -> float:
    """Fleiss' kappa over items with at least two ratings (see module docstring)."""
    counts = rating_table(data, classes)
    n = counts.sum(axis=1)
    keep = n >= 2
    if not keep.any():
        raise ValueError("Fleiss' kappa needs at least one item with two or more ratings")
    c, n = counts[keep], n[keep]
    p_item = (c * (c - 1)).sum(axis=1) / (n * (n - 1))
    p_bar = float(p_item.mean())
    shares = c.sum(axis=0) / c.sum()
    p_e = float((shares**2).sum())
    if np.isclose(p_e, 1.0):
        return 1.0 if np.isclose(p_bar, 1.0) else float("nan")
    return (p_bar - p_e) / (1.0 - p_e)


def krippendorff_alpha(data: Ratings, classes: Sequence[Any] | None = None) -> float:
    """Krippendorff's alpha for nominal data with any pattern of missing ratings."""
    counts = rating_table(data, classes)
    m = counts.sum(axis=1)
    keep = m >= 2
    if not keep.any():
        raise ValueError("Krippendorff's alpha needs at least one unit with two or more ratings")
    c, m = counts[keep], m[keep]
    scaled = c / (m - 1)[:, None]
    coincidence = scaled.T @ c - np.diag(scaled.sum(axis=0))
    n_c = coincidence.sum(axis=1)
    n = n_c.sum()
    disagree = n - np.trace(coincidence)
    expected = n * n - (n_c**2).sum()
    if np.isclose(expected, 0.0):
        return 1.0 if np.isclose(disagree, 0.0) else float("nan")
    return float(1.0 - (n - 1.0) * disagree / expected)


def worker_agreement(
    data: pd.DataFrame | VoteMatrix,
    consensus: pd.Series | np.ndarray | None = None,
    classes: Sequence[Any] | None = None,
) -> pd.Series:
    """Per worker, the share of their votes that match ``consensus`` (task -> label).

    ``consensus`` is a Series indexed by task id with class names, an int array of class
    codes aligned with the coded tasks, or None for the (deterministically tie-broken)
    majority vote. Votes on tasks without a consensus are not counted.
    """
    votes = as_votes(data, classes)
    if consensus is None:
        counts = votes.vote_counts()
        codes = tie_broken_argmax(counts)
    elif isinstance(consensus, np.ndarray):
        if consensus.shape != (votes.n_tasks,):
            raise ValueError("consensus array must have one class code per coded task")
        codes = consensus.astype(np.int64)
    else:
        aligned = consensus.reindex(votes.tasks)
        codes = pd.Index(votes.classes).get_indexer(aligned.to_numpy())
        unknown = aligned.notna().to_numpy() & (codes < 0)
        if unknown.any():
            raise ValueError(f"consensus has labels outside classes {list(votes.classes)}")
    target = codes[votes.task_idx]
    graded = target >= 0
    hits = (votes.label_idx == target) & graded
    n = np.bincount(votes.worker_idx, weights=graded, minlength=votes.n_workers)
    s = np.bincount(votes.worker_idx, weights=hits, minlength=votes.n_workers)
    share = np.divide(s, n, out=np.full(votes.n_workers, np.nan), where=n > 0)
    return pd.Series(share, index=pd.Index(votes.workers, name="worker"), name="agreement")
