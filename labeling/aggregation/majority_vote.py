"""Majority vote and worker-weighted majority vote.

Majority vote is the plurality rule (Condorcet's jury theorem, 1785; the baseline of every
crowd-sourcing paper, e.g. Sheng, Provost & Ipeirotis, KDD 2008). The posterior of task ``i``
is the share of its votes per class, ``p_ik = n_ik / n_i``; with worker weights ``w_j``,
``p_ik = sum_j w_j [y_ij = k] / sum_j w_j`` (the weighted plurality rule, as in
Littlestone & Warmuth's weighted majority, 1994, with fixed weights).

Ties: a tie says nothing about the label under the plurality rule, so by default
(``tie_break="dawid_skene"``) the tied class that Dawid-Skene's posterior (fitted on the same
votes, only when some task is tied) finds most probable wins: the label a model of each
worker's reliability prefers. ``tie_break="first"`` gives ties to the class listed first in
``classes`` (sorted labels when no class list is given, which is what crowd-kit's ``idxmax``
does, although its documentation speaks of random ties). Either way the posterior itself keeps
the tie (equal shares), so uncertainty measures such as the expert queue's entropy still see it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, Self

import numpy as np
import pandas as pd

from labeling.aggregation.base import (
    Aggregator,
    KnownLabels,
    VoteMatrix,
    as_votes,
    code_known_labels,
    tie_broken_argmax,
)

TieBreak = Literal["dawid_skene", "first"]


def normalise_rows(scores: np.ndarray) -> np.ndarray:
    """Rows scaled to sum to one; an all-zero row (a task with no vote) becomes uniform."""
    totals = scores.sum(axis=1, keepdims=True)
    return np.divide(
        scores, totals, out=np.full_like(scores, 1.0 / scores.shape[1]), where=totals > 0
    )


class _TieBreaking(Aggregator):
    """Labels from vote shares, ties resolved as ``tie_break`` says (module docstring).

    ``tie_model_`` is the Dawid-Skene model that resolved ties in ``fit`` (None if there were
    none or ``tie_break="first"``); ``predict`` resolves ties in new votes with it.
    """

    tie_break: TieBreak
    tie_model_: Aggregator | None = None

    def _check_tie_break(self) -> None:
        if self.tie_break not in ("dawid_skene", "first"):
            raise ValueError("tie_break must be 'dawid_skene' or 'first'")

    def _label_codes(
        self, votes: VoteMatrix, posteriors: np.ndarray, known: np.ndarray
    ) -> np.ndarray:
        self.tie_model_ = None
        if self.tie_break == "first" or not _has_ties(posteriors):
            return tie_broken_argmax(posteriors)
        from labeling.aggregation.dawid_skene import DawidSkene  # it imports this module

        self.tie_model_ = DawidSkene().fit(votes, known_labels=known)
        return tie_broken_argmax(posteriors, self.tie_model_.posteriors_)

    def _predicted_label_codes(self, votes: VoteMatrix, posteriors: np.ndarray) -> np.ndarray:
        # the model fitted on the training votes (if they had ties) judges the new votes' ties
        if self.tie_model_ is None or not _has_ties(posteriors):
            return tie_broken_argmax(posteriors)
        return tie_broken_argmax(posteriors, self.tie_model_._predict_votes(votes))


def _has_ties(posteriors: np.ndarray) -> bool:
    if posteriors.shape[1] < 2 or not len(posteriors):
        return False
    top = posteriors.max(axis=1, keepdims=True)
    return bool(((posteriors == top).sum(axis=1) > 1).any())


class MajorityVote(_TieBreaking):
    """Plurality of votes per task; ``posteriors_`` are vote shares; ``tie_break`` as in the
    module docstring."""

    def __init__(self, tie_break: TieBreak = "dawid_skene") -> None:
        self.tie_break = tie_break

    def _fit_votes(self, votes: VoteMatrix, known: np.ndarray) -> np.ndarray:
        self._check_tie_break()
        self.n_iter_ = 0
        return normalise_rows(votes.vote_counts())

    def _predict_votes(self, votes: VoteMatrix) -> np.ndarray:
        return normalise_rows(votes.vote_counts())


class WeightedMajorityVote(_TieBreaking):
    """Majority vote where each worker's vote counts ``weights_[worker]``.

    Weights come from ``fit(..., weights=...)`` (a mapping worker -> weight, a Series, or an
    array aligned with the coded workers). Without them each worker's weight is their
    accuracy on the tasks in ``known_labels`` (gold or expert answers), smoothed as
    ``(correct + smoothing) / (answered + 2 * smoothing)`` so that a worker with no gold
    answer gets 0.5 and one lucky answer is not worth a perfect record. ``tie_break`` as in
    the module docstring.
    """

    def __init__(self, smoothing: float = 1.0, tie_break: TieBreak = "dawid_skene") -> None:
        self.smoothing = smoothing
        self.tie_break = tie_break

    def fit(
        self,
        data: pd.DataFrame | VoteMatrix,
        classes: Sequence[Any] | None = None,
        known_labels: KnownLabels = None,
        weights: Mapping[Any, float] | pd.Series | np.ndarray | None = None,
    ) -> Self:
        if self.smoothing < 0:
            raise ValueError("smoothing must be >= 0")
        self._check_tie_break()
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
