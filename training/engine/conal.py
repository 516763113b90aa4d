"""CoNAL: common and individual confusions, mixed per image and annotator.

Chu, Ma & Wang, "Learning from Crowds by Modeling Common Confusions", AAAI 2021, section 3.
Annotators share some confusions (an image that looks like class ``l`` fools most of them) and
have their own. The layer holds one common matrix ``W_c`` and one per annotator ``W_a`` (free
K x K matrices, as the MW crowd layer of Rodrigues & Pereira 2018) and mixes them with a weight
that depends on the image and on the annotator (eq. 3-5):

    omega_a(x) = sigmoid(s * <u(h(x)), v_a>)       u: instance embedding of the features h(x),
                                                   v_a: annotator embedding, both unit length
    q_a(. | x) = softmax(omega_a(x) * sigma(x) @ W_c + (1 - omega_a(x)) * sigma(x) @ W_a)

with ``sigma(x)`` the classifier's class probabilities, ``h(x)`` its penultimate features and
``s`` a learned scale (unit vectors alone would keep omega within sigmoid(+-1)). The loss is the
cross-entropy of each observed vote plus the paper's regulariser, which pushes the individual
matrices away from the common one so that each explains something the other does not:
``- lambda * mean_a ||W_c - W_a||_F`` over the batch's voters (``distance_weight``; rows
centred, since a constant added to a row changes nothing).

Initialisation: identity for every matrix (the paper's), or from Dawid-Skene: ``W_a = log
pi_a`` and ``W_c = log`` of the annotators' mean confusion. :meth:`annotator_confusions`
returns the individual matrices' rows ``softmax(W_a[k])``, or with the classifier's
probabilities, the votes and the features, the layer's full (mixed) output estimated on the
items each annotator labelled, as for the vector crowd layers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.engine.crowd_layer import BaseCrowdLayer, data_implied_confusions

if TYPE_CHECKING:
    from training.engine.data import CrowdVotes

__all__ = ["CoNAL"]


class CoNAL(BaseCrowdLayer):
    """Common + individual confusions with an image-conditioned mixing weight."""

    form = "conal"
    needs_features = True

    def __init__(
        self,
        n_workers: int,
        num_classes: int,
        feature_dim: int,
        embedding_dim: int = 20,
        hidden_dim: int = 128,
        init_confusions: np.ndarray | None = None,
        distance_weight: float = 1e-4,
        floor: float = 1e-3,
    ) -> None:
        super().__init__(n_workers, num_classes)
        if feature_dim < 1:
            raise ValueError("feature_dim must be positive")
        if init_confusions is None:
            individual = np.broadcast_to(np.eye(num_classes), (n_workers, num_classes, num_classes))
            common = np.eye(num_classes)
        else:
            confusions = np.maximum(np.asarray(init_confusions, dtype=np.float64), floor)
            confusions = confusions / confusions.sum(axis=2, keepdims=True)
            individual = np.log(confusions)
            common = np.log(confusions.mean(axis=0))
        self.individual = nn.Parameter(torch.tensor(np.array(individual), dtype=torch.float32))
        self.common = nn.Parameter(torch.tensor(common, dtype=torch.float32))
        self.instance_embedding = nn.Sequential(
            nn.Linear(feature_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, embedding_dim)
        )
        self.annotator_embedding = nn.Embedding(n_workers, embedding_dim)
        self.log_scale = nn.Parameter(torch.tensor(np.log(3.0), dtype=torch.float32))
        self.distance_weight = distance_weight

    def common_weight(self, features: torch.Tensor, workers: torch.Tensor) -> torch.Tensor:
        """``[n]`` omega: how much each vote follows the common confusion."""
        instance = F.normalize(self.instance_embedding(features), dim=-1)
        annotator = F.normalize(self.annotator_embedding(workers), dim=-1)
        return torch.sigmoid(self.log_scale.exp() * (instance * annotator).sum(dim=-1))

    def vote_log_probabilities(
        self,
        probabilities: torch.Tensor,
        workers: torch.Tensor,
        features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        individual = torch.bmm(probabilities.unsqueeze(1), self.individual[workers]).squeeze(1)
        if features is None:  # the annotator's own confusion only (one-hot export)
            return individual.log_softmax(dim=-1)
        omega = self.common_weight(features, workers).unsqueeze(1)
        common = probabilities @ self.common
        return (omega * common + (1 - omega) * individual).log_softmax(dim=-1)

    def penalty(self, workers: torch.Tensor, trace_weight: float) -> torch.Tensor | None:
        if self.distance_weight == 0.0:
            return None
        # rows centred: a constant added to a row changes no softmax, so it is no difference
        difference = self.individual[workers] - self.common
        difference = difference - difference.mean(dim=-1, keepdim=True)
        distance = difference.flatten(1).norm(dim=1)
        return -self.distance_weight * distance.mean()

    def common_confusion(self) -> np.ndarray:
        """``[K, K]`` rows ``softmax(W_c[k])``: the confusion every annotator shares."""
        with torch.no_grad():
            return self.common.softmax(dim=-1).cpu().double().numpy()

    def annotator_confusions(
        self,
        probabilities: np.ndarray | None = None,
        votes: CrowdVotes | None = None,
        features: np.ndarray | None = None,
    ) -> np.ndarray:
        one_hot = super().annotator_confusions()
        if probabilities is None or votes is None or features is None or not len(votes):
            return one_hot
        return data_implied_confusions(self, probabilities, votes, one_hot, features)
