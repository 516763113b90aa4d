"""Majority vote and worker-weighted majority vote.

Majority vote is the plurality rule (Condorcet's jury theorem, 1785; the baseline of every
crowd-sourcing paper, e.g. Sheng, Provost & Ipeirotis, KDD 2008). The posterior of task ``i``
is the share of its votes per class, ``p_ik = n_ik / n_i``; with worker weights ``w_j``,
``p_ik = sum_j w_j [y_ij = k] / sum_j w_j`` (the weighted plurality rule, as in
Littlestone & Warmuth's weighted majority, 1994, with fixed weights).

Ties are broken deterministically: the tied class listed first in ``classes`` wins (sorted
labels when no class list is given, which is what crowd-kit's ``idxmax`` does too, although
its documentation speaks of random ties). The posterior itself keeps the tie (equal shares),
so uncertainty measures such as the expert queue's entropy still see it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Self

import numpy as np
import pandas as pd

from labeling.aggregation.base import (
    Aggregator,
    KnownLabels,
    VoteMatrix,
    as_votes,
    code_known_labels,
)


def normalise_rows(scores: np.ndarray) -> np.ndarray:
    """Rows scaled to sum to one; an all-zero row (a task with no vote) becomes uniform."""
    totals = scores.sum(axis=1, keepdims=True)
    return np.divide(
        scores, totals, out=np.full_like(scores, 1.0 / scores.shape[1]), where=totals > 0
    )


class MajorityVote(Aggregator):
    """Plurality of votes per task; ``posteriors_`` are vote shares."""

    def _fit_votes(self, votes: VoteMatrix, known: np.ndarray) -> np.ndarray:
        self.n_iter_ = 0
        return normalise_rows(votes.vote_counts())

    def _predict_votes(self, votes: VoteMatrix) -> np.ndarray:
        return normalise_rows(votes.vote_counts())


class WeightedMajorityVote(Aggregator):
    """Majority vote where each worker's vote counts ``weights_[worker]``.

    Weights come from ``fit(..., weights=...)`` (a mapping worker -> weight, a Series, or an
    array aligned with the coded workers). Without them each worker's weight is their
    accuracy on the tasks in ``known_labels`` (gold or expert answers), smoothed as
    ``(correct + smoothing) / (answered + 2 * smoothing)`` so that a worker with no gold
    answer gets 0.5 and one lucky answer is not worth a perfect record.
    """

    def __init__(self, smoothing: float = 1.0) -> None:
        self.smoothing = smoothing

    def fit(
        self,
        data: pd.DataFrame | VoteMatrix,
        classes: Sequence[Any] | None = None,
        known_labels: KnownLabels = None,
        weights: Mapping[Any, float] | pd.Series | np.ndarray | None = None,
    ) -> Self:
        if self.smoothing < 0:
            raise ValueError("smoothing must be >= 0")
        votes = as_votes(data, classes)
        if weights is None:
            self.weights_ = gold_accuracy(
                votes, code_known_labels(known_labels, votes), self.smoothing
            )
        else:
            self.weights_ = _coded_weights(weights, votes)
        return super().fit(votes, known_labels=known_labels)

    def _fit_votes(self, votes: VoteMatrix, known: np.ndarray) -> np.ndarray:
        self.n_iter_ = 0
        return normalise_rows(votes.vote_counts(self.weights_))

    def _predict_votes(self, votes: VoteMatrix) -> np.ndarray:
        # unseen workers (the extra last slot) count as the average worker
        w = np.append(self.weights_, self.weights_.mean() if len(self.weights_) else 1.0)
        return normalise_rows(votes.vote_counts(w))


def gold_accuracy(votes: VoteMatrix, known: np.ndarray, smoothing: float = 1.0) -> np.ndarray:
    """Each worker's smoothed accuracy on tasks with a known answer, ``[n_workers]``."""
    truth = known[votes.task_idx]
    graded = truth >= 0
    answered = np.bincount(votes.worker_idx[graded], minlength=votes.n_workers)
    correct = np.bincount(
        votes.worker_idx[graded],
        weights=(votes.label_idx[graded] == truth[graded]),
        minlength=votes.n_workers,
    )
    denom = answered + 2.0 * smoothing
    return np.divide(correct + smoothing, denom, out=np.full(votes.n_workers, 0.5), where=denom > 0)


def _coded_weights(
    weights: Mapping[Any, float] | pd.Series | np.ndarray, votes: VoteMatrix
) -> np.ndarray:
    if isinstance(weights, np.ndarray):
        if weights.shape != (votes.n_workers,):
            raise ValueError(
                f"weights array must have shape ({votes.n_workers},), one per coded worker"
            )
        out = weights.astype(np.float64)
    else:
        series = (
            weights
            if isinstance(weights, pd.Series)
            else pd.Series(dict(weights), dtype=np.float64)
        )
        missing = pd.Index(votes.workers).difference(series.index)
        if len(missing):
            raise ValueError(f"no weight for worker(s) {list(missing[:5])}")
        out = series.reindex(votes.workers).to_numpy(dtype=np.float64)
    if not np.isfinite(out).all() or (out < 0).any():
        raise ValueError("weights must be finite and non-negative")
    return out
