"""Class-imbalance remedies: a class-weighted loss or a balanced sampler.

Both reweight by inverse class frequency, the "balanced" heuristic of King & Zeng, "Logistic
Regression in Rare Events Data", Political Analysis 2001 (scikit-learn's
``class_weight="balanced"``): ``w_k = N / (K * n_k)``. With soft targets (Dawid-Skene
posteriors, AggNet's E-step, the crowd layer's starting posteriors) ``n_k`` is the class's
expected count ``sum_i t_ik``, and an item's weight is its expected class weight
``sum_k t_ik w_k``. The weights are scaled so that the mean item weight is 1: the loss keeps
its scale and the learning rate its meaning.

* ``loss``: the cross-entropy weights each class's term, ``-sum_k w_k t_ik log p_ik`` (PyTorch's
  ``CrossEntropyLoss(weight=w)`` with probability targets); the crowd layer, whose true class
  is latent, weights each vote by its item's expected class weight.
* ``sampler``: items are drawn with replacement with probability proportional to their weight
  (``torch.utils.data.WeightedRandomSampler``), as many per epoch as there are items.
* ``auto``: ``loss`` when the largest class outweighs the smallest by more than ``threshold``
  (1.5 by default), else nothing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import WeightedRandomSampler

__all__ = [
    "BALANCE_MODES",
    "ClassBalance",
    "plan_class_balance",
]

BalanceMode = Literal["auto", "none", "loss", "sampler"]
BALANCE_MODES: tuple[str, ...] = ("auto", "none", "loss", "sampler")
DEFAULT_THRESHOLD = 1.5


@dataclass
class ClassBalance:
    """The remedy a run applies and why: the class masses it saw and the weights it uses."""

    requested: str  # what the run asked for: auto, none, loss or sampler
    applied: str  # what it does: none, loss or sampler
    ratio: float | None  # largest / smallest class mass (None: a class has no training item)
    threshold: float
    class_counts: list[float]  # expected count per class in the training targets
    class_weights: list[float]  # per class (all 1 when nothing is applied; 0 for an absent class)
    item_weights: np.ndarray  # [N], mean 1 over the items

    def loss_class_weights(self, device: torch.device) -> torch.Tensor | None:
        """Per-class weights ``[K]`` for the cross-entropy, or None when it is not reweighted."""
        if self.applied != "loss":
            return None
        return torch.tensor(self.class_weights, dtype=torch.float32, device=device)

    def loss_item_weights(self) -> torch.Tensor | None:
        """Per-item weights ``[N]`` (the crowd layer's votes take them), or None."""
        if self.applied != "loss":
            return None
        return torch.from_numpy(self.item_weights.astype(np.float32))

    def sampler(self, seed: int) -> WeightedRandomSampler | None:
        """This epoch's balanced sampler (seeded, so a resumed run draws the same), or None."""
        if self.applied != "sampler":
            return None
        generator = torch.Generator()
        generator.manual_seed(seed)
        return WeightedRandomSampler(
            torch.from_numpy(self.item_weights.astype(np.float64)),
            num_samples=len(self.item_weights),
            replacement=True,
            generator=generator,
        )

    def summary(self) -> dict[str, Any]:
        """JSON-ready description for the run's report (without the per-item weights)."""
        values = asdict(self)
        values.pop("item_weights")
        values["class_counts"] = [round(c, 3) for c in self.class_counts]
        values["class_weights"] = [round(w, 4) for w in self.class_weights]
        values["ratio"] = round(self.ratio, 4) if self.ratio is not None else None
        return values


def plan_class_balance(
    mode: str, targets: np.ndarray, threshold: float = DEFAULT_THRESHOLD
) -> ClassBalance:
    """The remedy for training targets ``[N, K]`` (probability rows) under ``mode``."""
    if mode not in BALANCE_MODES:
        raise ValueError(f"class_balance must be one of {BALANCE_MODES}, got {mode!r}")
    if threshold < 1:
        raise ValueError("class_balance_threshold must be at least 1")
    targets = np.asarray(targets, dtype=np.float64)
    if targets.ndim != 2 or targets.shape[0] == 0:
        raise ValueError(f"targets must be a non-empty [N, K] array, got shape {targets.shape}")
    counts = targets.sum(axis=0)
    present = counts > 1e-9
    ratio = float(counts.max() / counts[present].min()) if present.all() else None
    skewed = ratio is None or ratio > threshold
    applied = ("loss" if skewed else "none") if mode == "auto" else mode
    weights = np.zeros_like(counts)
    if applied == "none":
        weights[:] = 1.0
    else:
        weights[present] = len(targets) / (present.sum() * counts[present])
    item_weights = targets @ weights
    # the mean item weight is 1 by construction; rescale away rows that do not sum to 1
    scale = max(float(item_weights.mean()), 1e-12)
    weights, item_weights = weights / scale, item_weights / scale
    return ClassBalance(
        requested=mode,
        applied=applied,
        ratio=ratio,
        threshold=float(threshold),
        class_counts=[float(c) for c in counts],
        class_weights=[float(w) for w in weights],
        item_weights=item_weights,
    )
