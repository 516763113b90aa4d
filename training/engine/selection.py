"""Pick one trained variant by its predictions on validation items with expert answers.

Several crowd models (crowd-layer forms and initialisations, CoNAL, AggNet, ...) are trained on
the same votes; which one generalises best is read off items whose answer an expert (or a gold
question) already gives and that are outside the evaluation hold-out. The criterion is balanced
accuracy (mean recall over the classes present, so a skewed validation set cannot be won by
predicting its majority class), ties broken by the mean negative log-likelihood of the expert
answers (the better calibrated model), then by the order the variants were given.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from training.engine.metrics import _balanced_accuracy, _validated

__all__ = ["ValidationPick", "pick_by_validation"]


@dataclass(frozen=True)
class ValidationPick:
    """The chosen variant, why, and every variant's scores (``{name: {metric: value}}``)."""

    chosen: str
    criterion: str
    n_items: int
    scores: dict[str, dict[str, float]]
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def pick_by_validation(
    probabilities: Mapping[str, np.ndarray], expert_labels: np.ndarray
) -> ValidationPick:
    """Choose among ``probabilities`` (``{variant: [N, K]}`` on the same N validation items)
    by balanced accuracy against ``expert_labels`` ``[N]``, ties by NLL."""
    if not probabilities:
        raise ValueError("no variant to pick from")
    labels = np.asarray(expert_labels)
    scores: dict[str, dict[str, float]] = {}
    for name, predicted in probabilities.items():
        y_true, p = _validated(labels, predicted)
        likelihood = np.clip(p[np.arange(len(y_true)), y_true], 1e-12, None)
        scores[name] = {
            "balanced_accuracy": float(_balanced_accuracy(y_true, p.argmax(axis=1))),
            "accuracy": float((p.argmax(axis=1) == y_true).mean()),
            "nll": float(-np.log(likelihood).mean()),
        }
    names = list(scores)
    # max() keeps the first of equal keys: ties beyond NLL go to the earlier variant
    chosen = max(
        names, key=lambda n: (round(scores[n]["balanced_accuracy"], 12), -scores[n]["nll"])
    )
    best = scores[chosen]
    tied = [
        n
        for n in names
        if n != chosen
        and round(scores[n]["balanced_accuracy"], 12) == round(best["balanced_accuracy"], 12)
    ]
    reason = (
        f"best balanced accuracy on {len(labels)} validation items with expert answers: "
        f"{chosen} {best['balanced_accuracy']:.3f}"
    )
    if tied:
        reason += f" (tied with {', '.join(tied)}; lower NLL {best['nll']:.3f})"
    return ValidationPick(
        chosen=chosen,
        criterion="balanced_accuracy, then nll",
        n_items=int(len(labels)),
        scores=scores,
        reason=reason,
    )
