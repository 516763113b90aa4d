"""The pretrained default backbone, fine-tuned briefly, learns a real chest X-ray task."""

from __future__ import annotations

import numpy as np
import pytest

from training.engine import ItemSet, TrainConfig, evaluate, train


def balanced_sample(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    return np.concatenate(
        [rng.choice(np.flatnonzero(labels == k), size // 2, replace=False) for k in (0, 1)]
    )


@pytest.mark.slow
def test_pretrained_efficientnet_learns_pneumoniamnist(pneumoniamnist, weights_cache, tmp_path):
    rng = np.random.default_rng(0)
    train_labels = pneumoniamnist["train_labels"][:, 0]
    holdout_labels = pneumoniamnist["val_labels"][:, 0]
    train_index = balanced_sample(train_labels, 400, rng)
    holdout_index = balanced_sample(holdout_labels, 200, rng)  # chance is 0.5
    config = TrainConfig(
        label_source="expert",
        num_classes=2,
        model_name="tf_efficientnet_lite0",
        weights="imagenet",
        image_size=32,
        epochs=2,
        batch_size=32,
        lr=3e-3,
        augment=False,
        seed=0,
        cache_dir=str(weights_cache),
        checkpoint_dir=str(tmp_path),
    )
    result = train(
        config,
        ItemSet(list(pneumoniamnist["train_images"][train_index]), train_labels[train_index]),
        ItemSet(list(pneumoniamnist["val_images"][holdout_index]), holdout_labels[holdout_index]),
    )
    report = evaluate(result.holdout_targets, result.holdout_probabilities)
    assert report.accuracy >= 0.75, report
    assert report.roc_auc >= 0.85, report
