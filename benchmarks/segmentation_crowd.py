"""Segmentation trained on a simulated crowd's masks, against the same model trained on the expert.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/segmentation_crowd.py            # 3 seeds
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/segmentation_crowd.py --quick    # 1 seed, 4 epochs

Real truth: StarDist's nuclei image (512 x 512 fluorescence, 2018 Data Science Bowl expert
instance labels; ``labeling.aggregation.regions.datasets.stardist_nuclei``), tiled into
``--crop`` pixel crops. The bottom quarter of the image is the hold-out (its crops never train
anything), the rest trains. Each training crop is annotated by ``--per-item`` simulated raters
drawn from ``--mix`` (``labeling.aggregation.regions.simulation``: missed nuclei, false blobs,
dilated/eroded, shifted and rough outlines, a spammer), then fused with STAPLE and per-pixel
majority vote (``labeling.aggregation.regions.masks``).

The same model (``--backbone`` with its ImageNet weights through the engine, U-Net decoder,
``training.engine.region_trainer``), epochs, learning rate and seed are trained on:

* ``staple``: STAPLE's soft foreground map (the target a ``consensus`` run uses);
* ``staple_mask``: STAPLE's map binarised at 0.5;
* ``majority``: the majority-vote mask (hard);
* ``single``: one rater's mask per crop (what one annotation per image would give);
* ``expert``: the expert's mask (the upper bound, what an ``expert`` run uses).

Printed per source, mean and standard deviation over ``--seeds`` (each seed draws a new crowd and
a new initialisation of the decoder): hold-out Dice and IoU against the expert, the Dice of the
training target itself against the expert on the training crops (binarised at 0.5), and seconds
per run. CPU-sized by default (64 px crops, few epochs, one thread): the numbers are small-data
numbers, the comparison between sources is the point.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from labeling.aggregation.regions import (  # noqa: E402
    STAPLE,
    MaskMajorityVote,
    dice,
    make_annotators,
    simulate_masks,
)
from labeling.aggregation.regions.datasets import stardist_nuclei  # noqa: E402
from labeling.aggregation.regions.simulation import DEFAULT_MIX  # noqa: E402
from training.engine.region_trainer import (  # noqa: E402
    RegionConfig,
    RegionItemSet,
    RegionTarget,
    train_regions,
)

SOURCES = ("staple", "staple_mask", "majority", "single", "expert")


def tiles(image: np.ndarray, labels: np.ndarray, crop: int) -> tuple[list, list]:
    """``(train, holdout)`` lists of ``(pixels, instance labels)``: the bottom quarter holds out."""
    train, holdout = [], []
    height, width = labels.shape
    for y in range(0, height - crop + 1, crop):
        for x in range(0, width - crop + 1, crop):
            tile = (image[y : y + crop, x : x + crop], labels[y : y + crop, x : x + crop])
            (holdout if y >= height * 3 // 4 else train).append(tile)
    return train, holdout


def crowd_targets(truth: list[np.ndarray], args, seed: int) -> tuple[dict[str, list], float]:
    """Each source's training target per crop (``[1, h, w]`` float) and STAPLE's seconds."""
    annotators = make_annotators(args.mix, seed=seed, spread=0.2)
    frame = simulate_masks(truth, annotators, args.per_item, seed=seed + 1, blob_radius=6)
    started = time.perf_counter()
    staple = STAPLE().fit(frame)
    seconds = time.perf_counter() - started
    majority = MaskMajorityVote().fit(frame)
    first = frame.groupby("task", sort=True)["segmentation"].first()
    targets = {
        "staple": [staple.probas_[n] for n in range(len(truth))],
        "staple_mask": [staple.segmentations_[n] for n in range(len(truth))],
        "majority": [majority.segmentations_[n] for n in range(len(truth))],
        "single": [first[n] for n in range(len(truth))],
        "expert": [t > 0 for t in truth],
    }
    return {k: [np.asarray(m, dtype=np.float32)[None] for m in v] for k, v in targets.items()}, seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=64, help="model input side (x32)")
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--per-item", type=int, default=5, help="raters per crop")
    parser.add_argument("--mix", default=DEFAULT_MIX, help="rater archetypes (simulation.py)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sources", nargs="+", default=["staple", "majority", "single", "expert"],
                        choices=SOURCES)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="one seed, 4 epochs")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.epochs = args.seeds[:1], 4

    image, labels = stardist_nuclei()
    # 8-bit already (max 235 in a uint16 file): one global scale, not one stretch per crop
    pixels = np.clip(image, 0, 255).astype(np.uint8)
    train_tiles, holdout_tiles = tiles(pixels, labels, args.crop)
    truth = [t[1] for t in train_tiles]
    holdout = RegionItemSet(
        [t[0] for t in holdout_tiles],
        [RegionTarget(masks=(t[1] > 0).astype(np.float32)[None]) for t in holdout_tiles],
    )
    print(
        f"StarDist nuclei: {len(train_tiles)} training crops and {len(holdout_tiles)} hold-out "
        f"crops of {args.crop} px; {args.per_item} raters per crop from '{args.mix}'; "
        f"{args.backbone} ({args.weights}) + U-Net at {args.image_size} px, {args.epochs} epochs, "
        f"seeds {args.seeds}, {args.threads} thread(s)"
    )
    rows = []
    runs = [(seed, source) for seed in args.seeds for source in args.sources]
    targets: dict[int, dict[str, list]] = {}
    for seed, source in tqdm(runs, desc="training runs", unit="run"):
        if seed not in targets:
            targets[seed], staple_seconds = crowd_targets(truth, args, seed)
        train = RegionItemSet([t[0] for t in train_tiles],
                              [RegionTarget(masks=m) for m in targets[seed][source]])
        config = RegionConfig(
            task="masks", num_classes=1, model_name=args.backbone, weights=args.weights,
            image_size=args.image_size, epochs=args.epochs, batch_size=args.batch_size,
            lr=args.lr, seed=seed, threads=args.threads, augment=True,
            checkpoint_dir=tempfile.mkdtemp(prefix="segmentation-crowd-"),
        )  # fmt: skip
        started = time.perf_counter()
        result = train_regions(config, train, holdout)
        seconds = time.perf_counter() - started
        target_dice = np.mean(
            [dice(m[0] >= 0.5, t > 0) for m, t in zip(targets[seed][source], truth, strict=True)]
        )
        rows.append({
            "source": source, "seed": seed, "holdout_dice": result.holdout_scores["dice"],
            "holdout_pooled_dice": result.holdout_scores["per_class"]["0"]["pooled_dice"],
            "holdout_iou": result.holdout_scores["iou"], "target_dice": target_dice,
            "seconds": seconds, "staple_seconds": staple_seconds,
        })  # fmt: skip
    frame = pd.DataFrame(rows)
    table = frame.groupby("source", sort=False).agg(
        holdout_dice=("holdout_dice", "mean"),
        dice_sd=("holdout_dice", "std"),
        pooled_dice=("holdout_pooled_dice", "mean"),
        holdout_iou=("holdout_iou", "mean"),
        target_dice=("target_dice", "mean"),
        seconds=("seconds", "mean"),
    )
    print()
    print("Hold-out (expert) scores of the same model trained on each source, "
          f"mean over {len(args.seeds)} seed(s):")
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))
    print()
    print("Per seed:")
    print(frame.pivot(index="seed", columns="source", values="holdout_dice")
          .to_string(float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
