"""Attention MIL against plain image-level training on the BCCD blood smears.

Usage::

    .venv/bin/python benchmarks/mil.py --quick          # a few minutes on a laptop CPU
    .venv/bin/python benchmarks/mil.py --epochs 8 --seeds 0 1 2
    .venv/bin/python benchmarks/mil.py --task subtype   # 4-class white-cell subtype

Each BCCD image (640 x 480) is one bag, downscaled by ``--scale`` (default 0.4: 256 x 192) and
cut into patches of ``--patch`` pixels every ``--stride`` pixels at that scale (default 64:
a 3 x 4 grid, 160 px patches in the original). Labels are expert image labels from
``image_labels.csv``: ``--task neutrophil`` asks "is the white cell a neutrophil?" (binary),
``--task subtype`` the subtype (basophils, 3 images, are left out). Training uses the train
and val splits, scoring the test split.

Both methods get the same backbone (``--backbone``, ImageNet weights through the engine), the
same epochs, learning rate and seed, and the same pixels: MIL sees the scaled image as patches,
the image-level model (``training.engine.train``, label source ``expert``) the scaled image
whole. Printed per method: hold-out accuracy, balanced accuracy, ROC AUC and seconds; for MIL
also localisation against the WBC boxes of ``Annotations/*.xml``: the share of test images
whose most-attended patch overlaps the white cell's box, the share of box centres inside the
top 10% of patches, and what a uniformly random patch would score.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from labeling.aggregation.regions.datasets import read_voc_boxes  # noqa: E402
from training.engine import (  # noqa: E402  (the path above makes the engine importable)
    ItemSet,
    MILConfig,
    PatchGrid,
    TrainConfig,
    evaluate,
    localisation_scores,
    overlay_attention,
    train,
    train_mil,
)

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "bccd"
SUBTYPES = ["NEUTROPHIL", "EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE"]


def load_bccd(folder: Path, task: str, scale: float) -> dict[str, dict]:
    """Scaled RGB arrays, labels and WBC boxes (in scaled pixels) per split."""
    from PIL import Image

    splits: dict[str, dict] = {}
    with open(folder / "image_labels.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r["wbc_type"] in SUBTYPES]
    for row in rows:
        split = "test" if row["split"] == "test" else "train"
        part = splits.setdefault(split, {"images": [], "labels": [], "boxes": [], "names": []})
        with Image.open(folder / row["image"]) as image:
            size = (round(image.width * scale), round(image.height * scale))
            part["images"].append(np.asarray(image.convert("RGB").resize(size, Image.BILINEAR)))
        if task == "neutrophil":
            part["labels"].append(int(row["wbc_type"] == "NEUTROPHIL"))
        else:
            part["labels"].append(SUBTYPES.index(row["wbc_type"]))
        truth = read_voc_boxes(folder / "Annotations" / (Path(row["image"]).stem + ".xml"))
        part["boxes"].append([
            tuple(v * scale for v in box)
            for box, name in zip(truth.boxes.tolist(), truth.classes, strict=True) if name == "WBC"
        ])
        part["names"].append(Path(row["image"]).name)
    for part in splits.values():
        part["labels"] = np.array(part["labels"])
    return splits


class Progress:
    """Prints each epoch, so a slow CPU shows it is working."""

    def __init__(self, method: str) -> None:
        self.method = method

    def on_epoch_end(self, record) -> None:
        print(
            f"  {self.method} epoch {record.epoch}: train loss {record.train_loss:.3f},"
            f" test accuracy {record.holdout_accuracy:.3f}, {record.seconds:.0f}s",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--task", choices=["neutrophil", "subtype"], default="neutrophil")
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--scale", type=float, default=0.4)
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--stride", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch", type=int, default=8, help="bags (MIL) or images per step")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="3 epochs, one seed")
    parser.add_argument("--heatmaps", type=Path, default=None, help="write PNGs of the first 8")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.seeds = 3, args.seeds[:1]
    if not (args.data / "image_labels.csv").is_file():
        sys.exit(f"BCCD not found at {args.data} (pass --data)")

    started = time.perf_counter()
    splits = load_bccd(args.data, args.task, args.scale)
    train_split, test = splits["train"], splits["test"]
    num_classes = 2 if args.task == "neutrophil" else len(SUBTYPES)
    names = ["other", "neutrophil"] if args.task == "neutrophil" else SUBTYPES
    height, width = train_split["images"][0].shape[:2]
    grid = PatchGrid.for_image(height, width, args.patch, args.stride)
    print(
        f"BCCD {args.task}: {len(train_split['labels'])} train, {len(test['labels'])} test images"
        f" at {width}x{height} (scale {args.scale}), grid {grid.rows}x{grid.cols} of"
        f" {args.patch}px/{args.stride}px; {args.backbone} ({args.weights}), {args.epochs}"
        f" epochs, lr {args.lr}, batch {args.batch}; loaded in {time.perf_counter() - started:.0f}s"
    )
    majority = np.bincount(test["labels"], minlength=num_classes).max() / len(test["labels"])
    print(f"majority-class accuracy on the test split: {majority:.3f}")
    train_set = ItemSet(train_split["images"], train_split["labels"])
    test_set = ItemSet(test["images"], test["labels"])

    rows = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as folder:
            began = time.perf_counter()
            mil = train_mil(
                MILConfig(
                    label_source="expert",
                    num_classes=num_classes,
                    model_name=args.backbone,
                    weights=args.weights,
                    patch_size=args.patch,
                    patch_stride=args.stride,
                    epochs=args.epochs,
                    bags_per_batch=args.batch,
                    lr=args.lr,
                    seed=seed,
                    threads=args.threads,
                    checkpoint_dir=f"{folder}/mil",
                ),
                train_set,
                test_set,
                callbacks=Progress("MIL"),
            )
            mil_seconds = time.perf_counter() - began
            began = time.perf_counter()
            plain = train(
                TrainConfig(
                    label_source="expert",
                    num_classes=num_classes,
                    model_name=args.backbone,
                    weights=args.weights,
                    image_size=(height, width),  # the same pixels MIL sees, not squashed
                    epochs=args.epochs,
                    batch_size=args.batch,
                    lr=args.lr,
                    seed=seed,
                    threads=args.threads,
                    checkpoint_dir=f"{folder}/plain",
                ),
                train_set,
                test_set,
                callbacks=Progress("image-level"),
            )
            plain_seconds = time.perf_counter() - began
        grids = [PatchGrid(*a.shape, args.patch, args.stride) for a in mil.holdout_attention]
        located = localisation_scores(mil.holdout_attention, grids, test["boxes"])
        for method, result, seconds in (
            ("attention MIL", mil, mil_seconds),
            ("image-level", plain, plain_seconds),
        ):
            report = evaluate(test["labels"], result.holdout_probabilities, names)
            rows.append((method, seed, report, seconds, located if result is mil else None))
        if args.heatmaps is not None and seed == args.seeds[0]:
            args.heatmaps.mkdir(parents=True, exist_ok=True)
            for index in range(min(8, len(test["names"]))):
                png = overlay_attention(test["images"][index], mil.holdout_attention[index], grids[index])
                (args.heatmaps / f"{Path(test['names'][index]).stem}.png").write_bytes(png)

    print()
    header = (
        f"{'method':<14} {'seed':>4} {'acc':>6} {'bal.acc':>7} {'AUC':>6} {'sec':>6}"
        f" {'argmax∩WBC':>10} {'chance':>6} {'centre@top10%':>13} {'chance':>6}"
    )
    print(header)
    print("-" * len(header))
    for method, seed, report, seconds, located in rows:
        auc = f"{report.roc_auc:.3f}" if report.roc_auc is not None else "–"
        local = (
            f" {located['argmax_box_overlap']:>10.3f} {located['chance_argmax_box_overlap']:>6.3f}"
            f" {located['point_hit_rate']:>13.3f} {located['chance_point_hit_rate']:>6.3f}"
            if located
            else f" {'–':>10} {'':>6} {'–':>13} {'':>6}"
        )
        print(
            f"{method:<14} {seed:>4} {report.accuracy:>6.3f} {report.balanced_accuracy:>7.3f}"
            f" {auc:>6} {seconds:>6.0f}{local}"
        )


if __name__ == "__main__":
    main()
