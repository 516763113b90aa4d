"""Adaptive redundancy: ask for more votes only where the crowd is still unsure.

A posterior-threshold stopping rule in the spirit of Sheng, Provost & Ipeirotis, "Get another
label? Improving data quality and data mining using multiple, noisy labelers", KDD 2008
(selective repeated labelling) and of Ipeirotis et al., "Repeated labeling using multiple noisy
labelers", DMKD 2014: after each round, an item whose top posterior reaches ``threshold`` and
that has at least ``min_votes`` votes is done; the others keep collecting, up to the base
overlap ``k`` and, while still unsure, up to ``k_max``.

:func:`votes_wanted` is the pure policy the assignment service calls; :func:`simulate_adaptive`
replays it offline on a simulated crowd so its saving can be measured against fixed overlap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from labeling.aggregation.base import Aggregator, VoteMatrix, tie_broken_argmax
from labeling.aggregation.simulation import (
    Seed,
    WorkerProfile,
    as_confusion_array,
    assign_workers,
    draw_labels,
)


def votes_wanted(
    posteriors: np.ndarray,
    vote_counts: np.ndarray | Sequence[int],
    k: int = 3,
    k_max: int = 7,
    threshold: float = 0.95,
    min_votes: int = 2,
) -> np.ndarray:
    """How many more votes each item still wants (``int64 [n_items]``).

    * confident (top posterior >= ``threshold``) and at least ``min_votes`` votes: 0;
    * otherwise, below ``k`` votes: up to ``k`` (the base plan);
    * otherwise (unsure at or past ``k``): up to ``k_max``.
    """
    post = np.asarray(posteriors, dtype=np.float64)
    counts = np.asarray(vote_counts, dtype=np.int64)
    if post.ndim != 2 or counts.shape != (post.shape[0],):
        raise ValueError("posteriors must be [n_items, K] and vote_counts [n_items]")
    if not 1 <= min_votes <= k <= k_max:
        raise ValueError("need 1 <= min_votes <= k <= k_max")
    if not 0.0 < threshold <= 1.0:
        raise ValueError("threshold must be in (0, 1]")
    confident = (post.max(axis=1) >= threshold) & (counts >= min_votes)
    target = np.where(counts < k, k, k_max)
    return np.where(confident, 0, np.maximum(target - counts, 0)).astype(np.int64)


@dataclass(frozen=True)
class VotePool:
    """Every vote an item could get, pre-drawn in order: ``workers``/``labels`` ``[n_items, k_max]``.

    Adaptive and fixed-overlap runs take prefixes of the same pool, so they differ only in
    how many votes they use.
    """

    workers: np.ndarray
    labels: np.ndarray
    n_workers: int
    n_classes: int

    def take(self, counts: np.ndarray) -> VoteMatrix:
        """The first ``counts[i]`` votes of each item."""
        n_items, depth = self.workers.shape
        mask = np.arange(depth)[None, :] < np.asarray(counts)[:, None]
        items = np.broadcast_to(np.arange(n_items)[:, None], mask.shape)[mask]
        return VoteMatrix.from_codes(
            items,
            self.workers[mask],
            self.labels[mask],
            n_tasks=n_items,
            n_workers=self.n_workers,
            n_classes=self.n_classes,
        )


def draw_vote_pool(
    true_labels: np.ndarray | Sequence[int],
    confusions: np.ndarray | Sequence[WorkerProfile],
    k_max: int,
    seed: Seed = None,
) -> VotePool:
    """Pre-draw ``k_max`` votes per item from distinct simulated workers."""
    conf = as_confusion_array(confusions)
    truth = np.asarray(true_labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    workers = assign_workers(len(truth), conf.shape[0], k_max, rng)
    labels = draw_labels(conf, workers.ravel(), np.repeat(truth, k_max), rng).reshape(workers.shape)
    return VotePool(workers.astype(np.int64), labels, conf.shape[0], conf.shape[1])


@dataclass(frozen=True)
class AdaptiveResult:
    labels: np.ndarray  # [n_items] class codes at the end
    posteriors: np.ndarray  # [n_items, K]
    vote_counts: np.ndarray  # [n_items] votes used per item
    rounds: int
    pool: VotePool

    @property
    def n_votes(self) -> int:
        return int(self.vote_counts.sum())


def simulate_adaptive(
    true_labels: np.ndarray | Sequence[int],
    confusions: np.ndarray | Sequence[WorkerProfile],
    k: int = 3,
    k_max: int = 7,
    threshold: float = 0.95,
    min_votes: int = 2,
    aggregator: Aggregator | None = None,
    seed: Seed = None,
    pool: VotePool | None = None,
) -> AdaptiveResult:
    """Collect votes round by round (one more per unsure item per round), re-aggregating each time.

    Every item starts with ``min_votes`` votes; ``aggregator`` (default majority vote; any
    fitted-from-scratch method works, e.g. ``DawidSkene()``) turns the votes so far into
    posteriors, and :func:`votes_wanted` decides which items get another vote.
    """
    from labeling.aggregation.majority_vote import MajorityVote

    model = aggregator if aggregator is not None else MajorityVote()
    if pool is None:
        pool = draw_vote_pool(true_labels, confusions, k_max, seed)
    counts = np.full(pool.workers.shape[0], min_votes, dtype=np.int64)
    rounds = 0
    while True:
        rounds += 1
        model.fit(pool.take(counts))
        post = model.posteriors_
        more = votes_wanted(post, counts, k, k_max, threshold, min_votes) > 0
        if not more.any():
            break
        counts = counts + more
    labels = tie_broken_argmax(post)
    return AdaptiveResult(labels, post, counts, rounds, pool)
