"""Crowd layer: one learned confusion matrix per annotator on top of the classifier's softmax.

Rodrigues & Pereira, "Deep Learning from Crowds", AAAI 2018 ("MW" variant): for annotator ``a``
the probability of observing vote ``l`` on item ``x`` is

    p_a(l | x) = sum_k p(k | x) * W_a[k, l]            (eq. "MW": softmax output times W_a)

and the loss is the cross-entropy of each observed vote, summed over the annotators who voted
(missing votes are masked). Here ``W_a = softmax(Z_a)`` row-wise, so each row is a distribution
over observed labels given the true class, i.e. ``confusion[a, true, observed]``.

Tanno et al., "Learning From Noisy Labels By Regularized Estimation Of Annotator Confusion",
CVPR 2019, eq. (4): add ``lambda * trace(W_a)`` so that, among the (model, confusion) pairs that
explain the votes equally well, the one putting the noise into the confusions wins.

The layer is used only in training; predictions come from the classifier alone.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CrowdLayer"]


class CrowdLayer(nn.Module):
    """Per-annotator confusion matrices ``W_a`` (``[n_workers, K, K]``, rows sum to 1).

    ``init_confusions`` (e.g. from Dawid-Skene) sets the starting matrices; otherwise each
    starts at ``identity_weight`` on the diagonal and the rest spread evenly, i.e. near identity.
    """

    def __init__(
        self,
        n_workers: int,
        num_classes: int,
        init_confusions: np.ndarray | None = None,
        identity_weight: float = 0.9,
        floor: float = 1e-3,
    ) -> None:
        super().__init__()
        self.n_workers = n_workers
        self.num_classes = num_classes
        if init_confusions is None:
            off = (1.0 - identity_weight) / max(num_classes - 1, 1)
            start = np.full((n_workers, num_classes, num_classes), off)
            start[:, np.arange(num_classes), np.arange(num_classes)] = identity_weight
        else:
            start = np.asarray(init_confusions, dtype=np.float64)
            if start.shape != (n_workers, num_classes, num_classes):
                raise ValueError(
                    f"init_confusions must have shape {(n_workers, num_classes, num_classes)}, "
                    f"got {start.shape}"
                )
        # a floor keeps log finite and lets EM-estimated zeros still move
        start = np.maximum(start, floor)
        start = start / start.sum(axis=2, keepdims=True)
        self.confusion_logits = nn.Parameter(torch.from_numpy(np.log(start)).float())

    def confusions(self) -> torch.Tensor:
        """``[n_workers, K, K]`` with ``confusions()[a, true, observed]``."""
        return self.confusion_logits.softmax(dim=-1)

    def annotator_confusions(self) -> np.ndarray:
        """The learned confusions as a NumPy array (what the Django side stores)."""
        with torch.no_grad():
            return self.confusions().detach().cpu().double().numpy()

    def loss(
        self,
        class_logits: torch.Tensor,
        vote_workers: torch.Tensor,
        vote_labels: torch.Tensor,
        trace_weight: float = 0.0,
        item_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean cross-entropy of the observed votes plus ``trace_weight`` x the mean trace.

        ``item_weights`` ``[B]`` (class balancing) scale the votes on each item.

        ``vote_workers``/``vote_labels`` are ``[B, V]`` padded with -1 where no vote exists.
        The trace is averaged over the votes in the batch (each vote contributes its
        annotator's trace), so an annotator is regularised in proportion to how much they
        labelled, which is the stochastic estimate of Tanno's sum over annotators.
        """
        probabilities = class_logits.float().softmax(dim=-1)  # [B, K], float32 even under AMP
        present = vote_workers >= 0
        if not bool(present.any()):
            return class_logits.sum() * 0.0
        rows = torch.nonzero(present, as_tuple=True)
        workers = vote_workers[rows]
        labels = vote_labels[rows]
        confusions = self.confusions()[workers]  # [n_votes, K, K]
        observed = torch.bmm(probabilities[rows[0]].unsqueeze(1), confusions).squeeze(1)
        if item_weights is None:
            vote_loss = F.nll_loss(observed.clamp_min(1e-8).log(), labels)
        else:
            per_vote = F.nll_loss(observed.clamp_min(1e-8).log(), labels, reduction="none")
            vote_loss = (per_vote * item_weights[rows[0]]).mean()
        if trace_weight == 0.0:
            return vote_loss
        trace = confusions.diagonal(dim1=1, dim2=2).sum(dim=1).mean()
        return vote_loss + trace_weight * trace
