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
