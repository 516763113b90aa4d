"""Cross-fitted EM: the classifier in the E-step, predicting only items it was not trained on.

Raykar et al., "Learning From Crowds", JMLR 11, 2010 (sections 2.1-2.3) and AggNet (Albarqouni
et al., IEEE TMI 35(5), 2016) alternate an E-step, ``mu_ik ∝ p(k | x_i) * prod_j pi_j[k, l_ij]``
with the classifier's probabilities ``p`` as the prior, and an M-step that refits the classifier
on ``mu`` and every annotator's confusion ``pi_j`` in closed form. When the classifier that
supplies ``p(k | x_i)`` was trained on item ``i``'s own target, a network that can memorise
(any deep one, after a few epochs) hands the target back as the prior: the E-step confirms the
previous labels and EM stalls at its start (Dawid-Skene's posteriors). :class:`AggNetEM` in
the trainer has this feedback.

Here the prior is cross-fitted, as in the double/debiased machine learning of Chernozhukov et
al., "Double/debiased machine learning for treatment and structural parameters", The
Econometrics Journal 21(1), 2018, and in the out-of-fold label cleaning of Northcutt et al.,
"Confident Learning", JAIR 70, 2021: the items are split into ``n_folds`` folds, one classifier
per fold is trained on the other folds' current targets, and each item's prior is the
prediction of the classifier that never saw it. That prior is an independent witness beside the
votes, which is what Raykar's model assumes (the votes and the image are conditionally
independent given the true class), so where two or three sparse votes disagree the image
decides. Rounds repeat until fewer than ``tolerance`` of the items change their most probable
class (EM's own stopping rule, no labels needed), at most ``max_rounds``; the final classifier
is then trained on all items with the returned posteriors as soft targets.

The classifier is whatever ``fit_predict`` trains: ``fit_predict(train_items, targets,
predict_items, fold_seed)`` returns ``[len(predict_items), K]`` probabilities under the training
prior; a classifier trained with class-balancing weights should pass its predictions through
:func:`training.engine.aggnet.undo_class_weights` first (the prior-shift correction :class:`AggNetEM` applies).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from training.engine.aggnet import confusions_from_posteriors, posteriors_from_votes
from training.engine.data import CrowdVotes

__all__ = ["CrossFitResult", "FitPredict", "cross_fitted_em"]

FitPredict = Callable[[np.ndarray, np.ndarray, np.ndarray, int], np.ndarray]


@dataclass
class CrossFitResult:
    """The E-step's final posteriors ``[N, K]``, the confusions ``[n_workers, K, K]`` they
    imply, the rounds run and the share of items whose argmax changed in each round."""

    posteriors: np.ndarray
    confusions: np.ndarray
    rounds: int
    changed: list[float] = field(default_factory=list)


def fold_assignment(n_items: int, n_folds: int, seed: int) -> np.ndarray:
    """``[n_items]`` fold index per item: a seeded permutation dealt round-robin (equal sizes)."""
    return np.random.default_rng(seed).permutation(n_items) % n_folds


def cross_fitted_em(
    votes: CrowdVotes,
    init_posteriors: np.ndarray,
    fit_predict: FitPredict,
    init_confusions: np.ndarray | None = None,
    n_folds: int = 5,
    max_rounds: int = 5,
    tolerance: float = 0.01,
    smoothing: float = 1.0,
    seed: int = 0,
    known_labels: np.ndarray | None = None,
) -> CrossFitResult:
    """Raykar/AggNet EM whose E-step prior is each item's out-of-fold classifier prediction.

    ``init_posteriors`` ``[N, K]`` (Dawid-Skene's, typically) are the first round's targets;
    ``init_confusions`` (Dawid-Skene's) the first E-step's, else estimated from the posteriors.
    Each round draws new folds (``seed`` + round), so no item keeps the same fold-mates.
    ``known_labels`` ``[N]`` (a class, or -1) clamps gold and expert-answered items to their
    answer in every E-step, as Dawid-Skene's fit does: however many votes contradict it, the
    answer is what their confusions are estimated against.
    """
    posteriors = np.asarray(init_posteriors, dtype=np.float64)
    if posteriors.ndim != 2:
        raise ValueError("init_posteriors must be [n_items, K]")
    n_items, num_classes = posteriors.shape
    if n_folds < 2 or n_folds > n_items:
        raise ValueError(f"n_folds must lie in [2, {n_items}], got {n_folds}")
    if max_rounds < 1:
        raise ValueError("max_rounds must be at least 1")
    votes.check(n_items, num_classes)
    posteriors = posteriors / posteriors.sum(axis=1, keepdims=True)
    if known_labels is not None:
        known_labels = np.asarray(known_labels, dtype=np.int64)
        if known_labels.shape != (n_items,) or known_labels.max(initial=-1) >= num_classes:
            raise ValueError(f"known_labels must be [{n_items}] classes below {num_classes} or -1")
        answered = known_labels >= 0
        clamp = np.eye(num_classes)[known_labels[answered]]
        posteriors[answered] = clamp
    if init_confusions is None:
        confusions = confusions_from_posteriors(posteriors, votes, smoothing)
    else:
        confusions = np.asarray(init_confusions, dtype=np.float64)
        expected = (votes.n_workers, num_classes, num_classes)
        if confusions.shape != expected:
            raise ValueError(f"init_confusions must have shape {expected}, got {confusions.shape}")
        confusions = confusions / confusions.sum(axis=2, keepdims=True)
    changed: list[float] = []
    for round_index in range(max_rounds):
        folds = fold_assignment(n_items, n_folds, seed + round_index)
        prior = np.empty_like(posteriors)
        for fold in range(n_folds):
            held_out = np.flatnonzero(folds == fold)
            trained_on = np.flatnonzero(folds != fold)
            predicted = np.asarray(
                fit_predict(
                    trained_on, posteriors[trained_on], held_out, seed + 1000 * round_index + fold
                ),
                dtype=np.float64,
            )
            if predicted.shape != (len(held_out), num_classes):
                raise ValueError(
                    f"fit_predict returned shape {predicted.shape}, "
                    f"expected {(len(held_out), num_classes)}"
                )
            prior[held_out] = predicted / predicted.sum(axis=1, keepdims=True)
        updated = posteriors_from_votes(prior, confusions, votes)
        if known_labels is not None:
            updated[answered] = clamp
        changed.append(float((updated.argmax(axis=1) != posteriors.argmax(axis=1)).mean()))
        posteriors = updated
        confusions = confusions_from_posteriors(posteriors, votes, smoothing)
        if changed[-1] < tolerance:
            break
    return CrossFitResult(posteriors, confusions, len(changed), changed)
