"""AggNet: expectation-maximisation with the CNN in the loop.

Albarqouni et al., "AggNet: Deep Learning From Crowds for Mitosis Detection in Breast Cancer
Histology Images", IEEE TMI 35(5), 2016, after Raykar et al., "Learning From Crowds", JMLR 11,
2010 (sections 2.1-2.3), generalised from sensitivity/specificity to a full confusion matrix per
annotator as in Dawid & Skene (1979).

E-step (Raykar eq. 6 / Albarqouni eq. 4), for item ``i`` with votes ``l_ij`` from annotators
``j``:

    mu_ik  ∝  p_cnn(k | x_i) * prod_j  pi_j[k, l_ij]

M-step: the CNN is trained for one epoch on the soft targets ``mu`` (maximising
``sum_i sum_k mu_ik log p_cnn(k | x_i)``), then each confusion matrix has the closed form
(Raykar eq. 7, with ``s`` pseudo-counts per cell as a Dirichlet prior):

    pi_j[k, l] = (s + sum_{i voted by j} mu_ik [l_ij = l]) / (K s + sum_{i voted by j} mu_ik)

For two classes ``pi_j[1, 1]`` is the annotator's sensitivity and ``pi_j[0, 0]`` the
specificity, Raykar's ``alpha_j`` and ``beta_j``.
"""

from __future__ import annotations

import numpy as np
import torch

from training.engine.data import CrowdVotes

__all__ = [
    "AggNetEM",
    "confusions_from_posteriors",
    "posteriors_from_votes",
    "sensitivity_specificity",
]


def confusions_from_posteriors(
    posteriors: np.ndarray, votes: CrowdVotes, smoothing: float = 1.0
) -> np.ndarray:
    """Closed-form M-step: ``[n_workers, K, K]`` confusions, ``[worker, true, observed]``."""
    num_classes = posteriors.shape[1]
    counts = np.zeros((votes.n_workers, num_classes, num_classes), dtype=np.float64)
    # counts[w, :, l] += mu_i for every vote (i, w, l); np.add.at handles repeated (w, l) pairs
    np.add.at(counts, (votes.workers, slice(None), votes.labels), posteriors[votes.items])
    counts += smoothing
    return counts / counts.sum(axis=2, keepdims=True)


def posteriors_from_votes(
    prior: np.ndarray, confusions: np.ndarray, votes: CrowdVotes
) -> np.ndarray:
    """E-step: ``[N, K]`` posterior of the true class given the prior and every item's votes."""
    log_posterior = np.log(np.clip(prior, 1e-12, None)).astype(np.float64)
    vote_terms = np.log(np.clip(confusions[votes.workers, :, votes.labels], 1e-12, None))
    np.add.at(log_posterior, votes.items, vote_terms)
    log_posterior -= log_posterior.max(axis=1, keepdims=True)
    posterior = np.exp(log_posterior)
    return posterior / posterior.sum(axis=1, keepdims=True)


def sensitivity_specificity(confusions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-annotator (sensitivity, specificity) of a two-class confusion array, class 1 positive."""
    if confusions.shape[1:] != (2, 2):
        raise ValueError("sensitivity/specificity need two classes")
    return confusions[:, 1, 1], confusions[:, 0, 0]


def undo_class_weights(probabilities: np.ndarray, class_weights: np.ndarray | None) -> np.ndarray:
    """Probabilities of a classifier trained with per-class loss weights ``w_k`` back under the
    training prior: divide by ``w_k`` and renormalise (Saerens, Latinne & Decaestecker, Neural
    Computation 14(1), 2002)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if class_weights is None:
        return probabilities
    weights = np.asarray(class_weights, dtype=np.float64)
    corrected = probabilities / np.where(weights > 0, weights, 1.0)
    return corrected / corrected.sum(axis=1, keepdims=True)



class AggNetEM:
    """The annotator side of AggNet: current soft targets ``posteriors_`` and ``confusions_``.

    Starts from given posteriors (majority vote or Dawid-Skene) and either given confusions
    (Dawid-Skene's) or their closed-form estimate. The trainer alternates: train the CNN on
    ``posteriors_``, call :meth:`e_step` with the CNN's class probabilities for the training
    items, then :meth:`m_step`.
    """

    def __init__(
        self,
        votes: CrowdVotes,
        init_posteriors: np.ndarray,
        smoothing: float = 1.0,
        init_confusions: np.ndarray | None = None,
    ):
        init_posteriors = np.asarray(init_posteriors, dtype=np.float64)
        if init_posteriors.ndim != 2:
            raise ValueError("init_posteriors must be [n_items, K]")
        n_items, num_classes = init_posteriors.shape
        votes.check(n_items, num_classes)
        self.votes = votes
        self.smoothing = smoothing
        self.posteriors_ = init_posteriors / init_posteriors.sum(axis=1, keepdims=True)
        if init_confusions is None:
            self.confusions_ = confusions_from_posteriors(self.posteriors_, votes, smoothing)
        else:
            expected = (votes.n_workers, num_classes, num_classes)
            init_confusions = np.asarray(init_confusions, dtype=np.float64)
            if init_confusions.shape != expected:
                raise ValueError(
                    f"init_confusions must have shape {expected}, got {init_confusions.shape}"
                )
            self.confusions_ = init_confusions / init_confusions.sum(axis=2, keepdims=True)

    def e_step(
        self, classifier_probabilities: np.ndarray, class_weights: np.ndarray | None = None
    ) -> np.ndarray:
        """Combine the CNN's probabilities (as prior) with the votes; returns new soft targets.

        ``class_weights`` ``[K]``: the weights of a class-balanced loss (or sampler) the CNN was
        trained with. Such a CNN estimates ``p(k | x)`` under a prior tilted by ``w_k``; dividing
        by ``w_k`` and renormalising takes it back to the training prior (the prior-shift
        correction of Saerens, Latinne & Decaestecker, Neural Computation 14(1), 2002).
        Without it the tilt feeds back through every E-step and drags the targets towards the
        minority class.
        """
        if classifier_probabilities.shape != self.posteriors_.shape:
            raise ValueError(
                f"expected probabilities of shape {self.posteriors_.shape}, "
                f"got {classifier_probabilities.shape}"
            )
        prior = undo_class_weights(classifier_probabilities, class_weights)
        self.posteriors_ = posteriors_from_votes(prior, self.confusions_, self.votes)
        return self.posteriors_

    def m_step(self) -> np.ndarray:
        """Re-estimate every annotator's confusion from the current soft targets."""
        self.confusions_ = confusions_from_posteriors(self.posteriors_, self.votes, self.smoothing)
        return self.confusions_

    def reliabilities(self) -> np.ndarray:
        """``[n_workers, K]`` probability of a correct vote per true class (diagonal).

        For two classes column 0 is specificity and column 1 sensitivity.
        """
        return np.diagonal(self.confusions_, axis1=1, axis2=2).copy()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            "posteriors": torch.from_numpy(self.posteriors_.copy()),
            "confusions": torch.from_numpy(self.confusions_.copy()),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.posteriors_ = state["posteriors"].numpy().astype(np.float64)
        self.confusions_ = state["confusions"].numpy().astype(np.float64)
