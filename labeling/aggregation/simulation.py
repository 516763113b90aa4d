"""Simulated crowds with a known answer: true labels, worker confusion matrices, votes.

The generative model is Dawid & Skene's (1979, section 2): worker ``j`` answering an item of
true class ``k`` draws its label from row ``k`` of its confusion matrix ``pi_j``. Archetypes
(after the worker types of Raykar et al., JMLR 2010, and Vuurens, de Vries & Eickhoff, 2011):

* ``accurate``: correct with probability ``accuracy`` (default 0.9), errors uniform;
* ``noisy``: the same with a low accuracy (default 0.6);
* ``class_biased``: correct with probability ``accuracy`` (default 0.7), otherwise answers
  one favourite class (``biased_class``, default the last class);
* ``spammer``: uniform random answers whatever the item (``accuracy`` ignored);
* ``adversarial``: systematically wrong: with probability ``1 - accuracy`` (accuracy
  default 0.1) answers the next class ``(k + 1) mod K``, a consistent permutation.

Real crowds look different from a few archetypes voting on everything, and
:func:`simulate_sparse_crowd` draws one the way they look (after the crowds of Rodrigues &
Pereira, AAAI 2018, and Chu et al., AAAI 2021: tens of annotators, each labelling a few percent
of the items, about 2.5 votes per item):

* sparse: ``votes_per_item`` is a mean between two whole numbers (2.5: half the items get 2
  votes, half 3), given by distinct annotators drawn in proportion to a log-normal activity,
  so each labels a few percent of the items and a few label several times more than most;
* a long tail of skill: a few near-experts, many mediocre annotators, a few spammers (half
  answer uniformly at random, half give one class whatever the item);
* class-dependent confusions drawn per annotator: every row of ``pi_j`` is a Dirichlet draw
  around the annotator's skill (``concentration`` sets how far rows stray from it), and some
  mediocre annotators ("pair confusers") also give a large share of one class's items the
  label of a specific other class.

Everything is deterministic given the seed (one ``numpy.random.Generator``), and vectorised:
no Python loop over votes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from labeling.aggregation.base import VoteMatrix

ARCHETYPES = ("accurate", "noisy", "class_biased", "spammer", "adversarial")
DEFAULT_ACCURACY = {
    "accurate": 0.9,
    "noisy": 0.6,
    "class_biased": 0.7,
    "spammer": 0.0,
    "adversarial": 0.1,
}

Seed = int | np.random.Generator | None


@dataclass(frozen=True)
class WorkerProfile:
    """One simulated worker: an archetype and its confusion matrix ``[true, observed]``."""

    archetype: str
    confusion: np.ndarray

    @property
    def accuracy(self) -> float:
        """Accuracy under a uniform class prior (mean of the diagonal)."""
        return float(np.mean(np.diag(self.confusion)))


@dataclass(frozen=True)
class SimulatedCrowd:
    """Votes from a simulated crowd together with the truth that generated them."""

    votes: VoteMatrix
    true_labels: np.ndarray  # [n_items] class codes
    confusions: np.ndarray  # [n_workers, true, observed]
    archetypes: list[str]


def worker_confusion(
    archetype: str, n_classes: int, accuracy: float | None = None, biased_class: int | None = None
) -> np.ndarray:
    """The ``[K, K]`` confusion matrix (rows: true class) of one archetype."""
    if archetype not in ARCHETYPES:
        raise ValueError(f"unknown archetype {archetype!r}; expected one of {ARCHETYPES}")
    if n_classes < 2:
        raise ValueError("n_classes must be >= 2")
    k = n_classes
    acc = DEFAULT_ACCURACY[archetype] if accuracy is None else float(accuracy)
    if not 0.0 <= acc <= 1.0:
        raise ValueError("accuracy must be in [0, 1]")
    eye = np.eye(k)
    if archetype in ("accurate", "noisy"):
        return acc * eye + (1.0 - acc) * (1.0 - eye) / (k - 1)
    if archetype == "spammer":
        return np.full((k, k), 1.0 / k)
    if archetype == "class_biased":
        b = k - 1 if biased_class is None else int(biased_class)
        if not 0 <= b < k:
            raise ValueError("biased_class out of range")
        conf = acc * eye
        conf[:, b] += 1.0 - acc
        return conf
    # adversarial: a consistent wrong answer, so a confusion-aware model can invert it
    return acc * eye + (1.0 - acc) * np.roll(eye, 1, axis=1)


def confusions_from_accuracy(
    accuracies: np.ndarray | Sequence[float], n_classes: int
) -> np.ndarray:
    """``[n_workers, K, K]`` symmetric confusions: diagonal ``accuracy``, errors uniform."""
    acc = np.asarray(accuracies, dtype=np.float64)[:, None, None]
    eye = np.eye(n_classes)[None]
    return acc * eye + (1.0 - acc) * (1.0 - eye) / (n_classes - 1)


def parse_mix(mix: str) -> list[str]:
    """``"accurate:5,noisy:3,spammer:2"`` -> one archetype name per worker."""
    out: list[str] = []
    for part in mix.split(","):
        part = part.strip()
        if not part:
            continue
        name, _, count = part.partition(":")
        name = name.strip()
        if name not in ARCHETYPES:
            raise ValueError(f"unknown archetype {name!r} in mix {mix!r}")
        try:
            n = int(count) if count else 1
        except ValueError:
            raise ValueError(f"bad count {count!r} in mix {mix!r}") from None
        if n < 0:
            raise ValueError("counts in a mix must be >= 0")
        out.extend([name] * n)
    if not out:
        raise ValueError(f"mix {mix!r} has no worker")
    return out


def make_profiles(
    mix: str | Sequence[str], n_classes: int, seed: Seed = None, accuracy_jitter: float = 0.0
) -> list[WorkerProfile]:
    """Worker profiles for a mix; ``accuracy_jitter`` spreads accuracies uniformly (+-)."""
    names = parse_mix(mix) if isinstance(mix, str) else list(mix)
    rng = np.random.default_rng(seed)
    jitter = rng.uniform(-accuracy_jitter, accuracy_jitter, size=len(names))
    profiles = []
    for name, dj in zip(names, jitter, strict=True):
        acc = float(np.clip(DEFAULT_ACCURACY[name] + dj, 0.0, 1.0))
        profiles.append(WorkerProfile(name, worker_confusion(name, n_classes, acc)))
    return profiles


def assign_workers(
    n_items: int, n_workers: int, votes_per_item: int, seed: Seed = None
) -> np.ndarray:
    """``[n_items, votes_per_item]`` distinct workers per item, uniformly at random."""
    if votes_per_item > n_workers:
        raise ValueError(f"votes_per_item={votes_per_item} exceeds the {n_workers} workers")
    rng = np.random.default_rng(seed)
    if n_items * n_workers <= 20_000_000:
        # small enough to draw a random permutation prefix per item directly
        return np.argsort(rng.random((n_items, n_workers)), axis=1)[:, :votes_per_item]
    # large crowds: draw with replacement, then redraw only the rows holding a duplicate
    chosen = rng.integers(0, n_workers, size=(n_items, votes_per_item))
    while True:
        s = np.sort(chosen, axis=1)
        bad = np.flatnonzero((s[:, 1:] == s[:, :-1]).any(axis=1))
        if not len(bad):
            return chosen
        chosen[bad] = rng.integers(0, n_workers, size=(len(bad), votes_per_item))


def draw_labels(
    confusions: np.ndarray, worker_idx: np.ndarray, true_of_vote: np.ndarray, seed: Seed = None
) -> np.ndarray:
    """One label per vote from ``confusions[worker, true, :]`` (inverse-CDF, vectorised)."""
    rng = np.random.default_rng(seed)
    cdf = np.cumsum(confusions, axis=2)[worker_idx, true_of_vote]
    u = rng.random(len(worker_idx))[:, None]
    k = confusions.shape[2]
    return np.minimum((u >= cdf).sum(axis=1), k - 1).astype(np.int64)


def simulate_votes(
    true_labels: np.ndarray | Sequence[int],
    confusions: np.ndarray | Sequence[WorkerProfile],
    votes_per_item: int,
    seed: Seed = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Make simulated workers vote on items whose true class codes are known.

    Returns ``(item_idx, worker_idx, label_idx)`` int arrays, ``votes_per_item`` distinct
    workers per item. ``confusions`` is ``[n_workers, K, K]`` or a list of profiles.
    """
    conf = as_confusion_array(confusions)
    truth = np.asarray(true_labels, dtype=np.int64)
    if len(truth) and (truth.min() < 0 or truth.max() >= conf.shape[1]):
        raise ValueError("true_labels has class codes outside the confusion matrices")
    rng = np.random.default_rng(seed)
    workers = assign_workers(len(truth), conf.shape[0], votes_per_item, rng)
    item_idx = np.repeat(np.arange(len(truth), dtype=np.int64), votes_per_item)
    worker_idx = workers.ravel().astype(np.int64)
    label_idx = draw_labels(conf, worker_idx, truth[item_idx], rng)
    return item_idx, worker_idx, label_idx


def simulate_crowd(
    n_items: int,
    n_classes: int,
    mix: str | Sequence[str],
    votes_per_item: int,
    seed: Seed = None,
    class_prior: Sequence[float] | None = None,
    accuracy_jitter: float = 0.0,
) -> SimulatedCrowd:
    """Draw true labels, worker profiles from ``mix`` and their votes, all from one seed."""
    rng = np.random.default_rng(seed)
    prior = (
        np.full(n_classes, 1.0 / n_classes)
        if class_prior is None
        else np.asarray(class_prior, dtype=float)
    )
    if prior.shape != (n_classes,) or (prior < 0).any() or not np.isclose(prior.sum(), 1.0):
        raise ValueError("class_prior must be n_classes non-negative numbers summing to 1")
    truth = rng.choice(n_classes, size=n_items, p=prior).astype(np.int64)
    profiles = make_profiles(mix, n_classes, rng, accuracy_jitter)
    conf = as_confusion_array(profiles)
    item_idx, worker_idx, label_idx = simulate_votes(truth, conf, votes_per_item, rng)
    votes = VoteMatrix.from_codes(
        item_idx,
        worker_idx,
        label_idx,
        n_tasks=n_items,
        n_workers=len(profiles),
        n_classes=n_classes,
    )
    return SimulatedCrowd(votes, truth, conf, [p.archetype for p in profiles])


def as_confusion_array(confusions: np.ndarray | Sequence[WorkerProfile]) -> np.ndarray:
    if isinstance(confusions, np.ndarray):
        conf = confusions.astype(np.float64)
    else:
        conf = np.stack([p.confusion for p in confusions]).astype(np.float64)
    if conf.ndim != 3 or conf.shape[1] != conf.shape[2]:
        raise ValueError("confusions must have shape [n_workers, K, K]")
    if not np.allclose(conf.sum(axis=2), 1.0) or (conf < 0).any():
        raise ValueError("each confusion row must be a probability distribution")
    return conf


SPARSE_TIERS = ("expert", "mediocre", "pair_confuser", "spammer_uniform", "spammer_constant")


@dataclass(frozen=True)
class SparseCrowd(SimulatedCrowd):
    """A :func:`simulate_sparse_crowd` crowd: ``archetypes`` holds each annotator's tier
    (``SPARSE_TIERS``), ``competence`` its skill in ``[0, 1]`` (0 chance, 1 perfect; the
    accuracy under a uniform prior is ``1/K + (1 - 1/K) competence`` before the Dirichlet
    spread), ``activity`` its relative labelling rate and ``confused_pairs`` ``[n_workers, 2]``
    the (true, given) classes a pair confuser mixes (-1 for the others)."""

    competence: np.ndarray
    activity: np.ndarray
    confused_pairs: np.ndarray


def sparse_crowd_confusions(
    n_workers: int,
    n_classes: int,
    seed: Seed = None,
    expert_share: float = 0.1,
    spammer_share: float = 0.1,
    pair_confuser_share: float = 0.3,
    concentration: float = 30.0,
    pair_strength: tuple[float, float] = (0.3, 0.6),
) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray]:
    """``(confusions [n_workers, K, K], tiers, competence, confused_pairs)`` of a realistic
    crowd: competence U(0.8, 0.95) for experts, Beta(2.5, 2) (mean 0.56) for the mediocre
    majority, 0 for spammers; each row a Dirichlet around its mean (``concentration`` x the
    mean row, so a larger concentration keeps rows closer to it)."""
    if n_classes < 2 or n_workers < 1:
        raise ValueError("need at least one worker and two classes")
    shares = np.array([expert_share, spammer_share, pair_confuser_share])
    if (shares < 0).any() or expert_share + spammer_share > 1 or not 0 <= pair_confuser_share <= 1:
        raise ValueError("tier shares must be in [0, 1], experts + spammers at most 1")
    rng = np.random.default_rng(seed)
    k = n_classes
    n_experts = int(round(n_workers * expert_share))
    n_spammers = int(round(n_workers * spammer_share))
    n_mediocre = max(n_workers - n_experts - n_spammers, 0)
    n_experts = n_workers - n_spammers - n_mediocre
    competence = np.concatenate(
        [
            rng.uniform(0.8, 0.95, n_experts),
            rng.beta(2.5, 2.0, n_mediocre),
            np.zeros(n_spammers),
        ]
    )
    tiers = ["expert"] * n_experts + ["mediocre"] * n_mediocre
    spam_kinds = rng.random(n_spammers) < 0.5
    tiers += ["spammer_uniform" if uniform else "spammer_constant" for uniform in spam_kinds]
    accuracy = 1.0 / k + (1.0 - 1.0 / k) * competence
    eye = np.eye(k)
    mean_rows = accuracy[:, None, None] * eye + (1 - accuracy[:, None, None]) * (1 - eye) / (k - 1)
    # one Dirichlet per row: Gamma(alpha) draws normalised (vectorised over workers and rows)
    alpha = np.maximum(concentration * mean_rows, 1e-3)
    draws = rng.gamma(alpha)
    confusions = draws / draws.sum(axis=2, keepdims=True)
    confused_pairs = np.full((n_workers, 2), -1, dtype=np.int64)
    mediocre = np.flatnonzero(np.array(tiers) == "mediocre")
    confusers = mediocre[rng.random(len(mediocre)) < pair_confuser_share]
    if len(confusers):
        true_class = rng.integers(0, k, len(confusers))
        given = (true_class + rng.integers(1, k, len(confusers))) % k
        strength = rng.uniform(*pair_strength, len(confusers))
        rows = confusions[confusers, true_class]  # [n, K]
        moved = rows * strength[:, None]
        rows = rows - moved
        rows[np.arange(len(confusers)), given] += moved.sum(axis=1)
        confusions[confusers, true_class] = rows
        confused_pairs[confusers] = np.stack([true_class, given], axis=1)
        for index in confusers:
            tiers[index] = "pair_confuser"
    spammers = np.arange(n_workers - n_spammers, n_workers)
    uniform = spammers[spam_kinds]
    constant = spammers[~spam_kinds]
    confusions[uniform] = 1.0 / k
    favourite = rng.integers(0, k, len(constant))
    confusions[constant] = eye[favourite][:, None, :]
    order = rng.permutation(n_workers)  # tiers should not be readable from worker codes
    return confusions[order], [tiers[i] for i in order], competence[order], confused_pairs[order]


def assign_sparse(
    n_items: int, activity: np.ndarray, votes_per_item: float, seed: Seed = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(item_idx, worker_idx)``: each item gets ``floor(v)`` or ``ceil(v)`` distinct workers
    (mean ``v``), drawn without replacement in proportion to ``activity`` (Gumbel top-k)."""
    activity = np.asarray(activity, dtype=np.float64)
    n_workers = len(activity)
    low = int(np.floor(votes_per_item))
    high = int(np.ceil(votes_per_item))
    if low < 1 or high > n_workers:
        raise ValueError(f"votes_per_item must lie in [1, {n_workers}], got {votes_per_item}")
    if (activity <= 0).any():
        raise ValueError("activity must be positive")
    rng = np.random.default_rng(seed)
    counts = np.full(n_items, low)
    if high > low:
        counts += rng.random(n_items) < (votes_per_item - low)
    keys = np.log(activity)[None, :] + rng.gumbel(size=(n_items, n_workers))
    chosen = np.argsort(-keys, axis=1)[:, :high]
    keep = np.arange(high)[None, :] < counts[:, None]
    item_idx = np.broadcast_to(np.arange(n_items)[:, None], chosen.shape)[keep]
    return item_idx.astype(np.int64), chosen[keep].astype(np.int64)


def simulate_sparse_crowd(
    true_labels: np.ndarray | Sequence[int],
    n_classes: int,
    n_workers: int | None = None,
    votes_per_item: float = 2.5,
    seed: Seed = None,
    coverage: float = 0.03,
    activity_spread: float = 0.8,
    **confusion_options: float,
) -> SparseCrowd:
    """A realistic sparse crowd over items whose true classes are known (see the module
    docstring). ``n_workers`` defaults to ``votes_per_item / coverage`` so that the average
    annotator labels ``coverage`` of the items; ``activity_spread`` is the log-normal sigma of
    the annotators' labelling rates; ``confusion_options`` go to
    :func:`sparse_crowd_confusions`."""
    truth = np.asarray(true_labels, dtype=np.int64)
    if len(truth) and (truth.min() < 0 or truth.max() >= n_classes):
        raise ValueError("true_labels has class codes outside [0, n_classes)")
    if n_workers is None:
        n_workers = max(int(round(votes_per_item / coverage)), int(np.ceil(votes_per_item)))
    rng = np.random.default_rng(seed)
    confusions, tiers, competence, pairs = sparse_crowd_confusions(
        n_workers, n_classes, rng, **confusion_options
    )
    activity = rng.lognormal(0.0, activity_spread, n_workers)
    item_idx, worker_idx = assign_sparse(len(truth), activity, votes_per_item, rng)
    label_idx = draw_labels(confusions, worker_idx, truth[item_idx], rng)
    votes = VoteMatrix.from_codes(
        item_idx, worker_idx, label_idx,
        n_tasks=len(truth), n_workers=n_workers, n_classes=n_classes,
    )  # fmt: skip
    return SparseCrowd(votes, truth, confusions, tiers, competence, activity, pairs)
