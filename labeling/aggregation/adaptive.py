"""Adaptive redundancy: ask for more votes only where the crowd is still unsure.

A posterior-threshold stopping rule in the spirit of Sheng, Provost & Ipeirotis, "Get another
label? Improving data quality and data mining using multiple, noisy labelers", KDD 2008
(selective repeated labelling) and of Ipeirotis et al., "Repeated labeling using multiple noisy
labelers", DMKD 2014: after each round, an item whose top posterior reaches ``threshold`` and
that has at least ``min_votes`` votes is done; the others keep collecting, up to the base
overlap ``k`` and, while still unsure, up to ``k_max``.

:func:`votes_wanted` is the pure policy the assignment service calls; :func:`simulate_adaptive`
replays it offline on a simulated crowd so its saving can be measured against fixed overlap.

With a model in the loop (:mod:`labeling.aggregation.model_annotator`) the posterior is the
combined one, and a model that agrees with it counts as one of the ``min_votes``: an item the
model and a confident crowd agree on stops early.

:func:`replay_budget` replays a collection policy over a pool of votes that really exist
(:meth:`VotePool.from_votes`, items with any number of votes), re-aggregating every ``batch``
votes, and scores accuracy against votes spent: fixed overlap (round robin) against
uncertainty-first collection (:func:`vote_priority`: every item gets ``min_votes`` first, then
the least certain posterior gets the next vote, as in Sheng et al.'s selective repeated
labelling) and against expected-gain collection (:func:`expected_gain`: the item where one or two
more votes from the crowd's average worker, :func:`pooled_confusion`, raise the chance of a
right label the most gets the next vote).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from labeling.aggregation.base import (
    Aggregator,
    VoteMatrix,
    confusion_counts,
    tie_broken_argmax,
)
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
    model_agrees: np.ndarray | None = None,
) -> np.ndarray:
    """How many more votes each item still wants (``int64 [n_items]``).

    * confident (top posterior >= ``threshold``) and at least ``min_votes`` votes, the model
      counting as one where ``model_agrees`` (its top class is the posterior's): 0;
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
    support = counts
    if model_agrees is not None:
        agrees = np.asarray(model_agrees, dtype=bool)
        if agrees.shape != counts.shape:
            raise ValueError("model_agrees must have one entry per item")
        support = counts + agrees
    confident = (post.max(axis=1) >= threshold) & (support >= min_votes)
    target = np.where(counts < k, k, k_max)
    return np.where(confident, 0, np.maximum(target - counts, 0)).astype(np.int64)


@dataclass(frozen=True)
class VotePool:
    """Every vote an item could get, pre-drawn in order: ``workers``/``labels`` ``[n_items, k_max]``.

    Adaptive and fixed-overlap runs take prefixes of the same pool, so they differ only in
    how many votes they use. A pool of real votes is ragged: ``workers`` is -1 past an item's
    last vote (:attr:`available`).
    """

    workers: np.ndarray
    labels: np.ndarray
    n_workers: int
    n_classes: int

    @classmethod
    def from_votes(cls, votes: VoteMatrix, seed: Seed = None) -> VotePool:
        """The votes that exist, each item's in a random order (one shuffle per seed)."""
        rng = np.random.default_rng(seed)
        order = np.lexsort((rng.random(votes.n_votes), votes.task_idx))
        per_item = np.bincount(votes.task_idx, minlength=votes.n_tasks)
        starts = np.concatenate([[0], np.cumsum(per_item)[:-1]])
        task = votes.task_idx[order]
        slot = np.arange(votes.n_votes) - starts[task]
        depth = int(per_item.max()) if votes.n_votes else 0
        workers = np.full((votes.n_tasks, depth), -1, dtype=np.int64)
        labels = np.full((votes.n_tasks, depth), -1, dtype=np.int64)
        workers[task, slot] = votes.worker_idx[order]
        labels[task, slot] = votes.label_idx[order]
        return cls(workers, labels, votes.n_workers, votes.n_classes)

    @property
    def available(self) -> np.ndarray:
        """Votes each item has in the pool."""
        return (self.workers >= 0).sum(axis=1)

    def take(self, counts: np.ndarray) -> VoteMatrix:
        """The first ``counts[i]`` votes of each item (at most what it has)."""
        n_items, depth = self.workers.shape
        mask = (np.arange(depth)[None, :] < np.asarray(counts)[:, None]) & (self.workers >= 0)
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


def pooled_confusion(votes: VoteMatrix, posteriors: np.ndarray) -> np.ndarray:
    """The crowd's average worker ``[true, observed]``: every worker's soft confusion counts
    under ``posteriors`` summed (add-one smoothed, rows normalised). The next vote on an item
    comes from a worker the policy cannot choose, so this is the vote it should expect."""
    counts = confusion_counts(votes, posteriors).sum(axis=0) + 1.0
    return counts / counts.sum(axis=1, keepdims=True)


def expected_gain(posteriors: np.ndarray, confusion: np.ndarray, lookahead: int = 2) -> np.ndarray:
    """Expected rise in each item's chance of being labelled right, per vote asked (``[n_items]``).

    With posterior ``T`` and the average worker's ``confusion[true, observed]``, ``m`` more votes
    ``l_1..l_m`` raise the expected top posterior (the chance the argmax is right) from
    ``max_k T_k`` to ``sum_{l_1..l_m} max_k T_k prod_s C[k, l_s]``; the gain is that rise divided
    by ``m``, the best over ``m = 1..lookahead`` (expected error reduction, a knowledge-gradient
    rule: X. Chen, Q. Lin and D. Zhou, "Optimistic knowledge gradient policy for optimal budget
    allocation in crowdsourcing", ICML 2013). One vote alone is not enough: it is worth nothing
    on an item where no single answer can change the argmax, though two could.
    """
    post = np.asarray(posteriors, dtype=np.float64)
    conf = np.asarray(confusion, dtype=np.float64)
    if lookahead < 1:
        raise ValueError("lookahead must be >= 1")
    k = post.shape[1]
    if conf.shape != (k, k):
        raise ValueError("confusion must be [K, K] for posteriors [n_items, K]")
    out = np.empty(len(post))
    # items a block at a time: the answers' joint holds K ** (lookahead + 1) numbers per item
    block = max(1, 2**22 // k ** (lookahead + 1))
    for start in range(0, len(post), block):
        part = post[start : start + block]
        now = part.max(axis=1)
        joint = part[:, :, None]  # [items, K, K ** m]: p(true class, the m answers)
        best = np.full(len(part), -np.inf)
        for m in range(1, lookahead + 1):
            joint = (joint[:, :, :, None] * conf[None, :, None, :]).reshape(len(part), k, -1)
            best = np.maximum(best, (joint.max(axis=1).sum(axis=1) - now) / m)
        out[start : start + block] = best
    return out


ORDERINGS = ("fewest_votes", "most_uncertain", "expected_gain")


def vote_priority(
    posteriors: np.ndarray,
    vote_counts: np.ndarray,
    remaining: np.ndarray,
    min_votes: int = 1,
    threshold: float = 0.95,
    ordering: str = "fewest_votes",
    confusion: np.ndarray | None = None,
    lookahead: int = 2,
) -> np.ndarray:
    """Items that can still get a vote, in the order to ask for it.

    Items below ``min_votes`` come first. With ``"fewest_votes"`` and ``"most_uncertain"``,
    items whose top posterior is below ``threshold`` (the ones adaptive redundancy still wants)
    come next, then the confident rest; within each group ``"fewest_votes"`` (the crowd queue's
    order, :mod:`labeling.services.assignment`) serves fewer votes first and, among equals, the
    least certain posterior (highest entropy), ``"most_uncertain"`` the highest entropy first.
    ``"expected_gain"`` serves the highest :func:`expected_gain` under ``confusion`` (the
    average worker, :func:`pooled_confusion`; up to ``lookahead`` votes ahead) first, then fewer
    votes. Remaining ties: lower index.
    """
    if ordering not in ORDERINGS:
        raise ValueError(f"ordering must be one of {ORDERINGS}")
    post = np.asarray(posteriors, dtype=np.float64)
    counts = np.asarray(vote_counts)
    eligible = np.flatnonzero(np.asarray(remaining) > 0)
    p = post[eligible]
    n = counts[eligible]
    if ordering == "expected_gain":
        if confusion is None:
            raise ValueError("ordering 'expected_gain' needs the average worker's confusion")
        # rounded, so a gain that is zero but for rounding (no answer flips the item) ties
        gain = np.round(expected_gain(p, confusion, lookahead), 12)
        # lexsort: the last key sorts first
        return eligible[np.lexsort((eligible, n, -gain, n >= min_votes))]
    entropy = -(p * np.log(np.where(p > 0, p, 1.0))).sum(axis=1)
    group = np.where(n < min_votes, 0, np.where(p.max(axis=1) < threshold, 1, 2))
    if ordering == "fewest_votes":
        keys = (eligible, -entropy, n, group)
    else:
        keys = (eligible, n, -entropy, group)
    return eligible[np.lexsort(keys)]


@dataclass
class BudgetCurve:
    """Accuracy against votes spent for one policy: ``votes[j]`` spent, ``accuracy[j]`` then."""

    policy: str
    votes: list[int] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    # where adaptive redundancy would stop asking (every item confident or out of votes)
    stop_votes: int | None = None
    stop_accuracy: float | None = None

    def accuracy_at(self, n_votes: int) -> float:
        """Accuracy at the last point with at most ``n_votes`` spent (NaN before the first)."""
        spent = np.asarray(self.votes)
        i = int(np.searchsorted(spent, n_votes, side="right")) - 1
        return float(self.accuracy[i]) if i >= 0 else float("nan")


Aggregate = Callable[[VoteMatrix, np.ndarray], np.ndarray]


def replay_budget(
    pool: VotePool,
    truth: np.ndarray,
    aggregate: Aggregate,
    policy: str,
    checkpoints: Sequence[int],
    batch: int,
    min_votes: int = 1,
    threshold: float = 0.95,
    seed: Seed = 0,
    ordering: str = "fewest_votes",
    stop_min_votes: int | None = None,
    lookahead: int = 2,
) -> BudgetCurve:
    """Spend the pool's votes under ``policy``, scoring at each checkpoint (votes spent).

    ``aggregate(votes, counts)`` returns the posterior ``[n_items, K]`` from the votes taken so
    far (``counts`` per item); ``truth`` holds class codes, -1 where unknown (not scored).
    ``policy``: ``"fixed"`` hands votes out round robin (fixed overlap k at every multiple of
    the item count, items in an order drawn from ``seed``), ``"adaptive"`` asks in
    :func:`vote_priority`'s order (``ordering``; ``"expected_gain"`` under the average worker of
    the posterior so far, :func:`pooled_confusion`, ``lookahead`` votes ahead), re-aggregating every ``batch`` votes, and
    records where adaptive redundancy would stop asking (``stop_votes``): every item out of votes or confident
    at ``threshold`` with at least ``stop_min_votes`` (default ``min_votes``; a posterior from one
    vote, majority vote's above all, is sure of anything). Past that point it keeps spending on
    the items the ordering serves first, so the curve runs to the whole pool.
    """
    if policy not in ("fixed", "adaptive"):
        raise ValueError("policy must be 'fixed' or 'adaptive'")
    truth = np.asarray(truth)
    scored = truth >= 0
    available = pool.available
    total = int(available.sum())
    marks = sorted({min(int(c), total) for c in checkpoints})
    curve = BudgetCurve(policy)
    counts = np.zeros(len(available), dtype=np.int64)
    spent = 0

    def score(post: np.ndarray) -> float:
        return float((tie_broken_argmax(post)[scored] == truth[scored]).mean())

    if policy == "fixed":
        # round robin over the items in a random order (a partial round favours no id range)
        order = np.random.default_rng(seed).permutation(len(available))
        for mark in marks:
            counts = np.empty_like(counts)
            counts[order] = _round_robin(available[order], mark)
            curve.votes.append(int(counts.sum()))
            curve.accuracy.append(score(aggregate(pool.take(counts), counts)))
        return curve

    post = aggregate(pool.take(counts), counts)
    next_mark = 0
    while True:
        while next_mark < len(marks) and spent >= marks[next_mark]:
            curve.votes.append(spent)
            curve.accuracy.append(score(post))
            next_mark += 1
        remaining = available - counts
        if curve.stop_votes is None:
            enough = counts >= (min_votes if stop_min_votes is None else stop_min_votes)
            done = (remaining == 0) | ((post.max(axis=1) >= threshold) & enough)
            if done.all():
                curve.stop_votes, curve.stop_accuracy = spent, score(post)
        if spent >= total or next_mark >= len(marks):
            break
        # never step over a checkpoint, so each is scored at exactly its budget
        step = min(batch, marks[next_mark] - spent)
        confusion = None
        if ordering == "expected_gain":
            confusion = pooled_confusion(pool.take(counts), post)
        priority = vote_priority(
            post, counts, remaining, min_votes, threshold, ordering, confusion, lookahead
        )
        chosen = priority[:step]
        counts[chosen] += 1
        spent += len(chosen)
        post = aggregate(pool.take(counts), counts)
    return curve


def _round_robin(available: np.ndarray, n_votes: int) -> np.ndarray:
    """Votes per item after ``n_votes`` handed out one round at a time (items in index order,
    an item out of votes skipped)."""
    counts = np.zeros(len(available), dtype=np.int64)
    left = n_votes
    depth = int(available.max()) if len(available) else 0
    for level in range(depth):
        open_items = np.flatnonzero(available > level)
        take = open_items[:left]
        counts[take] += 1
        left -= len(take)
        if left <= 0:
            break
    return counts
