"""Class imbalance on PneumoniaMNIST: the same CNN with and without the engine's remedies.

Usage::

    .venv/bin/python benchmarks/class_imbalance.py                      # ~2 min on 1 CPU thread
    .venv/bin/python benchmarks/class_imbalance.py --subset 2000 --size 48 --epochs 4 --seeds 0,1

PneumoniaMNIST's train split is skewed (1,214 normal, 3,494 pneumonia: 2.9 to 1). A stratified
``--subset`` of it keeps that skew; the model (default the ImageNet-pretrained
``tf_efficientnet_lite0`` at ``--size`` px) is trained with ``class_balance`` = ``none``,
``loss`` (class-weighted cross-entropy; what ``auto`` picks on this split) and ``sampler``
(balanced sampling), and scored on the official test split (234 normal, 390 pneumonia). Prints
accuracy, balanced accuracy and the recall of each class, per mode and seed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.engine import ItemSet, TrainConfig, evaluate, train  # noqa: E402

DATA_DIR = Path(os.environ.get("QUORUM_DATA_DIR", ROOT / ".." / "shared" / "data"))
NAMES = ["normal", "pneumonia"]


def stratified(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """``size`` indices keeping the classes' proportions."""
    picked = []
    for k in np.unique(labels):
        members = np.flatnonzero(labels == k)
        take = round(size * len(members) / len(labels))
        picked.append(rng.choice(members, take, replace=False))
    return np.sort(np.concatenate(picked))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subset", type=int, default=1500, help="training images (stratified)")
    parser.add_argument("--size", type=int, default=32, help="image side fed to the model")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--model", default="tf_efficientnet_lite0")
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--modes", default="none,loss,sampler")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args()

    data = np.load(DATA_DIR / "pneumoniamnist" / "pneumoniamnist_28.npz")
    train_labels = data["train_labels"][:, 0].astype(np.int64)
    test = ItemSet(list(data["test_images"]), data["test_labels"][:, 0].astype(np.int64))
    print(
        f"train subset {args.subset} of {len(train_labels)} "
        f"(normal:pneumonia {np.bincount(train_labels)[0]}:{np.bincount(train_labels)[1]}), "
        f"test {np.bincount(test.targets).tolist()}, {args.model} {args.weights} "
        f"{args.size}px, {args.epochs} epochs, batch {args.batch_size}, lr {args.lr}, "
        f"{args.threads} thread(s)"
    )
    header = (
        f"{'mode':<8} {'seed':>4} {'applied':<8} {'accuracy':>8} {'balanced':>8} "
        f"{'recall normal':>13} {'recall pneumonia':>16} {'seconds':>7}"
    )
    print(header)
    print("-" * len(header))
    for seed in (int(s) for s in args.seeds.split(",")):
        index = stratified(train_labels, args.subset, np.random.default_rng(seed))
        train_set = ItemSet(list(data["train_images"][index]), train_labels[index])
        for mode in args.modes.split(","):
            config = TrainConfig(
                label_source="expert",
                num_classes=2,
                model_name=args.model,
                weights=args.weights,
                image_size=args.size,
                epochs=args.epochs,
                batch_size=args.batch_size,
                lr=args.lr,
                augment=False,
                seed=seed,
                threads=args.threads,
                cache_dir=args.cache_dir,
                class_balance=mode,
            )
            started = time.perf_counter()
            result = train(config, train_set, test)
            seconds = time.perf_counter() - started
            report = evaluate(result.holdout_targets, result.holdout_probabilities, NAMES)
            print(
                f"{mode:<8} {seed:>4} {result.class_balance['applied']:<8} "
                f"{report.accuracy:>8.3f} {report.balanced_accuracy:>8.3f} "
                f"{report.recall[0]:>13.3f} {report.recall[1]:>16.3f} {seconds:>7.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
