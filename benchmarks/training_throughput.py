"""Training throughput: Quorum's trainer against a plain hand-written timm loop.

Usage::

    .venv/bin/python benchmarks/training_throughput.py              # lite0, 64 px, CUDA+AMP if present
    .venv/bin/python benchmarks/training_throughput.py --quick      # 256 images, 32 px
    .venv/bin/python benchmarks/training_throughput.py --size 224 --batch-size 64 --images 4096

Both sides train the same backbone (built by ``training.engine.build_model``, same weights)
on the same images (seeded random uint8 arrays already at ``--size``, so neither resizes),
with AdamW, cross-entropy, channels-last memory layout, and on CUDA ``torch.autocast``
(float16) + ``GradScaler``. (Layout matters: on this CPU, lite0 at 64 px trains about 1.6x
faster in channels-last than in contiguous NCHW.)

* ``quorum trainer``: :func:`training.engine.train`, label source ``expert``, no hold-out,
  no augmentation; its own ``images_per_second`` per epoch (training steps only, which
  includes its Dataset and DataLoader).
* ``plain timm loop``: the images pre-stacked into one normalised tensor on the device,
  shuffled index batches, forward / loss / backward / step, nothing else.

The first epoch of each is warm-up and not counted; the two alternate ``--repeats`` times in
one process and each keeps its best repeat (the machine may be shared). Overhead is
``1 - trainer / plain``; the target is at most 10 %.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from training.engine import ItemSet, TrainConfig, build_model, train  # noqa: E402


def trainer_images_per_second(
    args: argparse.Namespace, images: np.ndarray, labels: np.ndarray, device: str
) -> float:
    with tempfile.TemporaryDirectory(prefix="quorum-throughput-") as folder:
        config = TrainConfig(
            label_source="expert",
            num_classes=args.classes,
            model_name=args.model,
            weights=args.weights,
            image_size=args.size,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=1e-3,
            augment=False,
            seed=0,
            device=device,
            num_workers=args.num_workers,
            checkpoint_dir=folder,
            cache_dir=args.cache_dir,
        )
        result = train(config, ItemSet(list(images), labels))
    return statistics.median(record.images_per_second for record in result.history[1:])


def plain_images_per_second(
    args: argparse.Namespace, images: np.ndarray, labels: np.ndarray, device: str
) -> float:
    torch.manual_seed(0)
    model, data_config = build_model(
        args.model, args.classes, args.weights, cache_dir=args.cache_dir
    )
    # the same NHWC layout the trainer uses, so the comparison is about the loop, not layout
    model.to(device, memory_format=torch.channels_last).train()
    mean = torch.tensor(data_config.mean).view(1, -1, 1, 1)
    std = torch.tensor(data_config.std).view(1, -1, 1, 1)
    inputs = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - mean) / std
    inputs = inputs.contiguous(memory_format=torch.channels_last).to(device)
    targets = torch.from_numpy(labels).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    use_amp = device == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    rates = []
    for epoch in range(args.epochs):
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        order = torch.randperm(len(inputs), device=device)
        for start in range(0, len(inputs), args.batch_size):
            batch = order[start : start + args.batch_size]
            context = torch.autocast("cuda", dtype=torch.float16) if use_amp else nullcontext()
            with context:
                logits = model(inputs[batch])
            loss = F.cross_entropy(logits.float(), targets[batch])
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        if device == "cuda":
            torch.cuda.synchronize()
        if epoch > 0:
            rates.append(len(inputs) / (time.perf_counter() - started))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="256 images at 32 px, 3 epochs")
    parser.add_argument("--model", default="tf_efficientnet_lite0")
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--classes", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3, help="per measurement; first is warm-up")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--num-workers", type=int, default=0, help="trainer DataLoader workers")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if present)")
    parser.add_argument("--cache-dir", default=None, help="converted-weights cache")
    args = parser.parse_args()
    if args.quick:
        args.images, args.size, args.epochs = 256, 32, 3
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (the first is warm-up)")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(args.images, args.size, args.size, 3), dtype=np.uint8)
    labels = rng.integers(0, args.classes, size=args.images)

    trainer_rates, plain_rates = [], []
    for repeat in range(args.repeats):
        trainer_rates.append(trainer_images_per_second(args, images, labels, device))
        plain_rates.append(plain_images_per_second(args, images, labels, device))
        print(
            f"  repeat {repeat}: trainer {trainer_rates[-1]:.1f} img/s, "
            f"plain {plain_rates[-1]:.1f} img/s",
            flush=True,
        )

    trainer, plain = max(trainer_rates), max(plain_rates)
    name = (
        torch.cuda.get_device_name()
        if device == "cuda"
        else f"cpu, {torch.get_num_threads()} threads"
    )
    print()
    print(
        f"{args.model} ({args.weights}), {args.images} images at {args.size} px, batch "
        f"{args.batch_size}, {args.epochs - 1} timed epochs x best of {args.repeats}, device "
        f"{name}{', AMP float16' if device == 'cuda' else ''}"
    )
    header = f"{'loop':<18} {'images/s':>10} {'vs plain':>9}"
    print(header)
    print("-" * len(header))
    print(f"{'plain timm loop':<18} {plain:>10.1f} {'':>9}")
    print(f"{'quorum trainer':<18} {trainer:>10.1f} {100 * (trainer / plain - 1):>+8.1f}%")
    overhead = 100 * (1 - trainer / plain)
    print(f"\ntrainer overhead: {overhead:.1f}% (target <= 10%)")


if __name__ == "__main__":
    main()
