"""Items, crowd votes and the torch Dataset/DataLoader that feed a backbone.

An item's image is either a NumPy array at full precision (e.g. a DICOM pixel array after
rescale, HxW or HxWxC) or a path to an image file. Targets are hard class indices ``[N]`` or soft
class probabilities ``[N, K]``; votes are integer-coded long-format arrays, as in crowd-kit's
``(task, worker, label)`` frame.
"""

from __future__ import annotations

import dataclasses
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler, SequentialSampler
from torchvision.transforms import v2

from training.engine.backbones import DataConfig

__all__ = [
    "CrowdVotes",
    "ImageSource",
    "ItemDataset",
    "ItemSet",
    "Preprocessing",
    "TooFewItems",
    "TrainingBatches",
    "batches_per_epoch",
    "check_trainable",
    "load_image",
    "make_loader",
]

ImageSource = np.ndarray | str | os.PathLike
_LUMA = torch.tensor([0.299, 0.587, 0.114])


@dataclass
class ItemSet:
    """Images with optional targets (hard ``[N]`` ints or soft ``[N, K]`` probabilities) and ids.

    ``ids`` are handed back with predictions so callers can map rows to their own records.
    """

    images: Sequence[ImageSource]
    targets: np.ndarray | None = None
    ids: Sequence[Any] | None = None

    def __post_init__(self) -> None:
        if self.targets is not None:
            self.targets = np.asarray(self.targets)
            if len(self.targets) != len(self.images):
                raise ValueError(f"{len(self.images)} images but {len(self.targets)} targets")
            if self.targets.ndim == 2 and self.targets.shape[1] == 1:
                self.targets = self.targets[:, 0]  # MedMNIST-style [N, 1] labels
        if self.ids is not None and len(self.ids) != len(self.images):
            raise ValueError(f"{len(self.images)} images but {len(self.ids)} ids")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def item_ids(self) -> list[Any]:
        return list(self.ids) if self.ids is not None else list(range(len(self.images)))

    def soft_targets(self, num_classes: int) -> np.ndarray:
        """Targets as ``[N, K]`` float32 probabilities (one-hot for hard labels)."""
        if self.targets is None:
            raise ValueError("this item set has no targets")
        return as_probabilities(self.targets, num_classes)

    def hard_targets(self) -> np.ndarray:
        """Targets as ``[N]`` class indices (argmax for soft labels)."""
        if self.targets is None:
            raise ValueError("this item set has no targets")
        targets = self.targets
        return targets.argmax(axis=1) if targets.ndim == 2 else targets.astype(np.int64)


def as_probabilities(targets: np.ndarray, num_classes: int) -> np.ndarray:
    """Hard ``[N]`` or soft ``[N, K]`` targets as validated ``[N, K]`` float32 rows summing to 1."""
    targets = np.asarray(targets)
    if targets.ndim == 1:
        hard = targets.astype(np.int64)
        if hard.size and (hard.min() < 0 or hard.max() >= num_classes):
            raise ValueError(
                f"class indices must lie in [0, {num_classes}), got {hard.min()}..{hard.max()}"
            )
        return np.eye(num_classes, dtype=np.float32)[hard]
    if targets.ndim != 2 or targets.shape[1] != num_classes:
        raise ValueError(f"soft targets must have shape [N, {num_classes}], got {targets.shape}")
    soft = targets.astype(np.float32)
    if (soft < 0).any() or not np.allclose(soft.sum(axis=1), 1.0, atol=1e-3):
        raise ValueError("soft targets must be non-negative rows that sum to 1")
    return soft


@dataclass
class CrowdVotes:
    """Crowd votes on the training items, integer-coded and long-format.

    ``items[v]`` indexes the training ItemSet, ``workers[v]`` is in ``[0, n_workers)`` and
    ``labels[v]`` in ``[0, K)``.
    """

    items: np.ndarray
    workers: np.ndarray
    labels: np.ndarray
    n_workers: int = field(default=-1)

    def __post_init__(self) -> None:
        self.items = np.asarray(self.items, dtype=np.int64)
        self.workers = np.asarray(self.workers, dtype=np.int64)
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if (
            not (self.items.shape == self.workers.shape == self.labels.shape)
            or self.items.ndim != 1
        ):
            raise ValueError("items, workers and labels must be 1-D arrays of equal length")
        if self.n_workers < 0:
            self.n_workers = int(self.workers.max()) + 1 if self.workers.size else 0
        if self.workers.size and (self.workers.min() < 0 or self.workers.max() >= self.n_workers):
            raise ValueError(f"worker codes must lie in [0, {self.n_workers})")
        if (self.items < 0).any() or (self.labels < 0).any():
            raise ValueError("item and label codes must be non-negative")

    @classmethod
    def from_per_item(
        cls, votes: Sequence[Sequence[tuple[int, int]]], n_workers: int = -1
    ) -> CrowdVotes:
        """Build from one list of ``(worker, label)`` pairs per item."""
        items = [i for i, item_votes in enumerate(votes) for _ in item_votes]
        pairs = [pair for item_votes in votes for pair in item_votes]
        workers = [w for w, _ in pairs]
        labels = [label for _, label in pairs]
        return cls(np.array(items), np.array(workers), np.array(labels), n_workers)

    def __len__(self) -> int:
        return int(self.items.size)

    def check(self, n_items: int, num_classes: int) -> None:
        """Raise if the codes do not fit ``n_items`` items and ``num_classes`` classes."""
        if self.items.size and self.items.max() >= n_items:
            raise ValueError(
                f"vote refers to item {self.items.max()} but there are {n_items} items"
            )
        if self.labels.size and self.labels.max() >= num_classes:
            raise ValueError(f"vote label {self.labels.max()} but only {num_classes} classes")

    def padded(self, n_items: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-item vote lists as ``[n_items, V]`` worker and label arrays padded with -1."""
        counts = np.bincount(self.items, minlength=n_items)
        width = max(int(counts.max()) if counts.size else 0, 1)
        order = np.argsort(self.items, kind="stable")
        items = self.items[order]
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        slot = np.arange(items.size) - starts[items]
        workers = np.full((n_items, width), -1, dtype=np.int64)
        labels = np.full((n_items, width), -1, dtype=np.int64)
        workers[items, slot] = self.workers[order]
        labels[items, slot] = self.labels[order]
        return workers, labels

    def vote_fractions(self, n_items: int, num_classes: int) -> np.ndarray:
        """Majority-vote posterior: each item's vote shares (uniform where an item has no vote)."""
        counts = np.zeros((n_items, num_classes), dtype=np.float64)
        np.add.at(counts, (self.items, self.labels), 1.0)
        totals = counts.sum(axis=1, keepdims=True)
        return np.where(totals > 0, counts / np.maximum(totals, 1), 1.0 / num_classes)


@dataclass(frozen=True)
class Preprocessing:
    """How an item becomes a model input: size, channels, intensity scaling, normalisation."""

    image_size: tuple[int, int]
    in_chans: int = 3
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    interpolation: str = "bicubic"
    intensity_percentiles: tuple[float, float] | None = (0.5, 99.5)  # None: min-max
    augment: bool = False
    horizontal_flip: bool = True

    @classmethod
    def for_model(
        cls, data_config: DataConfig, image_size: int | tuple[int, int] | None = None, **kwargs: Any
    ) -> Preprocessing:
        """Preprocessing matching a backbone's DataConfig, optionally at another image size."""
        if image_size is None:
            size = data_config.image_size
        elif isinstance(image_size, int):
            size = (image_size, image_size)
        else:
            size = (int(image_size[0]), int(image_size[1]))
        return cls(
            image_size=size,
            in_chans=data_config.in_chans,
            mean=data_config.mean,
            std=data_config.std,
            interpolation=data_config.interpolation,
            **kwargs,
        )

    def without_augmentation(self) -> Preprocessing:
        return dataclasses.replace(self, augment=False)


def load_image(
    source: ImageSource, intensity_percentiles: tuple[float, float] | None = (0.5, 99.5)
) -> np.ndarray:
    """Read one item as float32 ``HxWxC`` in ``[0, 1]``.

    8-bit data is divided by 255; anything else (16-bit DICOM, CT in Hounsfield units, float
    arrays) is windowed to the given percentiles, or min-max if ``None``.
    """
    if isinstance(source, np.ndarray):
        array = source
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"image file {path} does not exist")
        if path.suffix == ".npy":
            array = np.load(path)
        else:
            with Image.open(path) as image:
                if image.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "1"):
                    image = image.convert("RGB")
                array = np.asarray(image)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"an image must be HxW or HxWxC with C in 1..4, got shape {array.shape}")
    if array.shape[2] in (2, 4):
        array = array[:, :, :-1]  # drop alpha
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    values = array.astype(np.float32)
    if intensity_percentiles is None:
        low, high = float(values.min()), float(values.max())
    else:
        low, high = (float(v) for v in np.percentile(values, intensity_percentiles))
    if high <= low:
        return np.zeros_like(values)
    return np.clip((values - low) / (high - low), 0.0, 1.0)


class ItemDataset(Dataset):
    """Torch dataset of ``(image [C,H,W], target [K], index)``.

    ``target`` is a probability vector (one-hot for hard labels, zeros when the set has no
    targets); ``index`` is the item's position, which the trainer uses to look up votes and
    AggNet's current soft targets.
    """

    def __init__(self, items: ItemSet, num_classes: int, preprocessing: Preprocessing) -> None:
        self.items = items
        self.num_classes = num_classes
        self.preprocessing = preprocessing
        self.targets = (
            torch.from_numpy(items.soft_targets(num_classes))
            if items.targets is not None
            else torch.zeros(len(items), num_classes)
        )
        self._mean = torch.tensor(preprocessing.mean, dtype=torch.float32).view(-1, 1, 1)
        self._std = torch.tensor(preprocessing.std, dtype=torch.float32).view(-1, 1, 1)
        if len(preprocessing.mean) != preprocessing.in_chans:
            raise ValueError("mean/std must have one value per input channel")
        augmentations: list[v2.Transform] = []
        if preprocessing.horizontal_flip:
            augmentations.append(v2.RandomHorizontalFlip())
        augmentations.append(v2.RandomAffine(degrees=10, translate=(0.05, 0.05), scale=(0.9, 1.1)))
        self._augment = v2.Compose(augmentations) if preprocessing.augment else None

    def __len__(self) -> int:
        return len(self.items)

    def set_targets(self, probabilities: np.ndarray) -> None:
        """Replace the soft targets (AggNet's E-step does this each epoch)."""
        self.targets = torch.from_numpy(as_probabilities(probabilities, self.num_classes))

    def image(self, index: int) -> torch.Tensor:
        """The preprocessed (resized, normalised, augmented if enabled) image of one item."""
        prep = self.preprocessing
        array = load_image(self.items.images[index], prep.intensity_percentiles)
        image = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
        image = match_channels(image, prep.in_chans)
        if tuple(image.shape[1:]) != prep.image_size:
            mode = (
                prep.interpolation if prep.interpolation in ("bilinear", "bicubic") else "bilinear"
            )
            image = F.interpolate(
                image[None], size=prep.image_size, mode=mode, antialias=True, align_corners=False
            )[0].clamp_(0.0, 1.0)
        if self._augment is not None:
            image = self._augment(image)
        return (image - self._mean) / self._std

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        return self.image(index), self.targets[index], index


def match_channels(image: torch.Tensor, in_chans: int) -> torch.Tensor:
    channels = image.shape[0]
    if channels == in_chans:
        return image
    if channels == 1:
        return image.expand(in_chans, -1, -1).contiguous()
    if channels == 3 and in_chans == 1:
        return (image * _LUMA.view(3, 1, 1)).sum(dim=0, keepdim=True)
    raise ValueError(f"cannot turn a {channels}-channel image into {in_chans} channels")


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator; numpy and random follow it
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    num_workers: int = 0,
    drop_last: bool = False,
    pin_memory: bool = False,
    sampler: Sampler | None = None,
) -> DataLoader:
    """A training DataLoader whose order and worker RNG depend only on ``seed``; its batches are
    :class:`TrainingBatches` (a last batch of one joins the one before it).

    A ``sampler`` (e.g. the balanced one of :mod:`training.engine.balance`) replaces shuffling.
    """
    generator = torch.Generator()
    generator.manual_seed(seed)
    if sampler is None:
        # what DataLoader(shuffle=...) would build: the same order from the same seed
        sampler = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
    return DataLoader(
        dataset,
        batch_sampler=TrainingBatches(sampler, batch_size, drop_last=drop_last),
        num_workers=num_workers,
        worker_init_fn=_seed_worker if num_workers > 0 else None,
        generator=generator,
        pin_memory=pin_memory,
        persistent_workers=False,
    )


class TrainingBatches(Sampler[list[int]]):
    """Batches of ``batch_size`` indices drawn from ``sampler``, where a last batch of one item
    joins the batch before it.

    BatchNorm in training mode cannot normalise one sample whose feature map is 1x1 ("Expected
    more than 1 value per channel when training"), so whether a run works would otherwise hang
    on ``len(sampler) % batch_size``. Joining (rather than dropping) keeps every item in every
    epoch. A training set of one item has no batch to join; the trainers refuse it.
    ``drop_last`` drops any incomplete last batch instead.
    """

    def __init__(self, sampler: Sampler | Sequence[int], batch_size: int, *,
                 drop_last: bool = False) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be positive")
        self.sampler, self.batch_size, self.drop_last = sampler, batch_size, drop_last

    def __iter__(self):
        batch: list[int] = []
        previous: list[int] | None = None  # held back until we know whether a lone item follows
        for index in self.sampler:
            batch.append(int(index))
            if len(batch) == self.batch_size:
                if previous is not None:
                    yield previous
                previous, batch = batch, []
        if self.drop_last:
            batch = []
        elif len(batch) == 1 and previous is not None:
            previous, batch = previous + batch, []
        if previous is not None:
            yield previous
        if batch:
            yield batch

    def __len__(self) -> int:
        return batches_per_epoch(len(self.sampler), self.batch_size, drop_last=self.drop_last)


def batches_per_epoch(n_items: int, batch_size: int, *, drop_last: bool = False) -> int:
    """How many batches :class:`TrainingBatches` makes of ``n_items`` (the LR schedule's steps)."""
    full, rest = divmod(n_items, batch_size)
    if drop_last:
        return full
    return full + (1 if rest > 1 or (rest == 1 and full == 0) else 0)


class TooFewItems(ValueError):
    """Training needs at least two items: BatchNorm cannot learn from a batch of one."""


def check_trainable(n_items: int, what: str = "training items") -> None:
    """Raise :class:`TooFewItems` for fewer than two items (nothing to normalise a batch over)."""
    if n_items < 2:
        raise TooFewItems(
            f"training needs at least 2 {what}, this run has {n_items}: label more items, or "
            f"move some out of the hold-out"
        )
