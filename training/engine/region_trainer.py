"""The training loop of region runs: masks (segmentation) and points or boxes (centre heatmaps).

The same machinery as :func:`training.engine.trainer.train`, reused rather than repeated:
AdamW with its schedule and AMP scaler (``build_optimization``), batches where a last batch of
one joins the one before (``make_loader``: BatchNorm), an atomic checkpoint after every epoch
with the RNG state, exact resumption (``restore_state``), cancellation between batches
(``stop_check``) and the same callbacks (``on_epoch_end`` with an :class:`EpochRecord`,
``should_stop``, ``on_resume``). ``holdout_accuracy`` of each epoch holds the region headline
on the hold-out: mean Dice (masks) or F1 at the match rule (points, boxes).

Targets per item, in the item's own pixels: a soft ``[C, H, W]`` map (STAPLE's, or a hard
mask) for masks; points or boxes with a class and a confidence for detection. Images and
targets are resized together to ``image_size`` square (a multiple of 32, the encoder's
deepest stride); predictions are mapped back to each item's size.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from training.engine.checkpoints import (
    CheckpointError,
    load_checkpoint,
    load_model_file,
    save_model_file,
)
from training.engine.data import (
    ImageSource,
    batches_per_epoch,
    check_trainable,
    load_image,
    make_loader,
    match_channels,
)
from training.engine.detection import (
    OUTPUT_STRIDE,
    CentreNet,
    centre_loss,
    centre_targets,
    decode_centres,
)
from training.engine.region_metrics import detection_scores, mask_scores
from training.engine.segmentation import (
    DEFAULT_DECODER_CHANNELS,
    SegmentationNet,
    build_encoder,
    mask_loss,
)
from training.engine.trainer import (
    CHECKPOINT_NAME,
    MODEL_NAME,
    EpochRecord,
    _restore_rng,
    amp_autocast,
    build_optimization,
    end_epoch,
    restore_state,
    seed_epoch,
    seed_everything,
    stop_check,
)

__all__ = [
    "REGION_TASKS",
    "RegionConfig",
    "RegionItemSet",
    "RegionResult",
    "RegionTarget",
    "load_region_model",
    "predict_regions",
    "train_regions",
]

RegionTask = Literal["masks", "points", "boxes"]
REGION_TASKS: tuple[str, ...] = ("masks", "points", "boxes")
ENCODER_STRIDE = 32
CHECKPOINT_FORMAT = "quorum-region-checkpoint/1"
# a resumed run must have been started with the same values for these
_RESUME_MUST_MATCH = (
    "task", "label_source", "num_classes", "model_name", "in_chans", "image_size", "epochs",
    "batch_size", "lr", "weight_decay", "schedule", "augment", "seed", "decoder_channels",
    "dice_weight", "match_distance", "size_weight",
)


@dataclass
class RegionConfig:
    """Hyperparameters of one region run (plain values, so it round-trips through JSON)."""

    task: RegionTask = "masks"
    label_source: str = "consensus"  # recorded (and checked on resume); targets come as given
    num_classes: int = 1
    model_name: str = "tf_efficientnet_lite0"
    weights: str = "imagenet"  # as TrainConfig.weights
    in_chans: int = 3
    image_size: int = 256  # square side, a multiple of 32
    epochs: int = 10
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.01
    schedule: Literal["cosine", "constant"] = "cosine"
    augment: bool = True  # random horizontal and vertical flips of image and target together
    num_workers: int = 0
    seed: int = 0
    device: str | None = None
    amp: bool = True
    channels_last: bool = True
    threads: int | None = None
    checkpoint_dir: str | None = None
    cache_dir: str | None = None
    cancel_check_every: int = 10
    decoder_channels: tuple[int, ...] = DEFAULT_DECODER_CHANNELS
    dice_weight: float = 1.0  # masks: loss = BCE + dice_weight * soft Dice
    mask_threshold: float = 0.5  # masks: a pixel is foreground at this probability
    match_distance: float = 10.0  # points: the match rule (px), and 3x the Gaussian's sigma
    match_iou: float = 0.5  # boxes: the match rule
    peak_threshold: float = 0.3  # detection: a heatmap peak at least this is an object
    max_objects: int = 300
    size_weight: float = 0.1  # boxes: weight of the log-size L1 term

    def __post_init__(self) -> None:
        if self.task not in REGION_TASKS:
            raise ValueError(f"task must be one of {REGION_TASKS}, got {self.task!r}")
        if self.num_classes < 1:
            raise ValueError("num_classes must be at least 1")
        if self.image_size < ENCODER_STRIDE or self.image_size % ENCODER_STRIDE:
            raise ValueError(
                f"image_size must be a positive multiple of {ENCODER_STRIDE}, got {self.image_size}"
            )
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be positive")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError("schedule must be 'cosine' or 'constant'")
        self.decoder_channels = tuple(int(c) for c in self.decoder_channels)

    @property
    def is_detection(self) -> bool:
        return self.task != "masks"


@dataclass
class RegionTarget:
    """One item's regions in its own pixels: ``masks`` ``[C, H, W]`` in [0, 1] (masks), or
    ``points`` ``[n, 2]`` / ``boxes`` ``[n, 4]`` with ``labels`` ``[n]`` and ``weights`` ``[n]``
    (confidence, default 1)."""

    masks: np.ndarray | None = None
    points: np.ndarray | None = None
    boxes: np.ndarray | None = None
    labels: np.ndarray | None = None
    weights: np.ndarray | None = None

    def objects(self, task: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """``(centres [n, 2], labels, weights, sizes [n, 2] or None)`` for detection."""
        if task == "boxes":
            boxes = np.asarray(self.boxes if self.boxes is not None else [], np.float64)
            boxes = boxes.reshape(-1, 4)
            centres, sizes = (boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]
        else:
            centres = np.asarray(self.points if self.points is not None else [], np.float64)
            centres, sizes = centres.reshape(-1, 2), None
        labels = np.asarray(self.labels if self.labels is not None else [], np.int64).reshape(-1)
        if len(labels) != len(centres):
            raise ValueError(f"{len(centres)} objects but {len(labels)} labels")
        weights = (
            np.ones(len(centres)) if self.weights is None else np.asarray(self.weights, np.float64)
        )
        return centres, labels, weights, sizes


@dataclass
class RegionItemSet:
    """Images (arrays or files, as :class:`training.engine.data.ItemSet`) with optional targets."""

    images: Sequence[ImageSource]
    targets: Sequence[RegionTarget] | None = None
    ids: Sequence[Any] | None = None

    def __post_init__(self) -> None:
        if self.targets is not None and len(self.targets) != len(self.images):
            raise ValueError(f"{len(self.images)} images but {len(self.targets)} targets")
        if self.ids is not None and len(self.ids) != len(self.images):
            raise ValueError(f"{len(self.images)} images but {len(self.ids)} ids")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def item_ids(self) -> list[Any]:
        return list(self.ids) if self.ids is not None else list(range(len(self.images)))


@dataclass(frozen=True)
class RegionPreprocessing:
    image_size: int
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    intensity_percentiles: tuple[float, float] | None = (0.5, 99.5)


class RegionDataset(Dataset):
    """``(image [C, S, S], targets {name: tensor}, index, (H, W) of the item)``."""

    def __init__(
        self, items: RegionItemSet, config: RegionConfig, preprocessing: RegionPreprocessing,
        augment: bool,
    ) -> None:
        self.items, self.config, self.preprocessing, self.augment = items, config, preprocessing, augment
        self._mean = torch.tensor(preprocessing.mean, dtype=torch.float32).view(-1, 1, 1)
        self._std = torch.tensor(preprocessing.std, dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        prep, side = self.preprocessing, self.preprocessing.image_size
        array = load_image(self.items.images[index], prep.intensity_percentiles)
        height, width = array.shape[:2]
        image = match_channels(
            torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))), prep.in_chans
        )
        image = _resize(image, side).clamp_(0.0, 1.0)
        flips = (
            tuple(bool(f) for f in torch.randint(0, 2, (2,)).tolist()) if self.augment else (False, False)
        )
        image = _flip(image, flips)
        targets: dict[str, torch.Tensor] = {}
        target = self.items.targets[index] if self.items.targets is not None else None
        if target is not None:
            targets = self._targets(target, (height, width), flips)
        return (image - self._mean) / self._std, targets, index, torch.tensor([height, width])

    def _targets(
        self, target: RegionTarget, shape: tuple[int, int], flips: tuple[bool, bool]
    ) -> dict[str, torch.Tensor]:
        config, side = self.config, self.preprocessing.image_size
        height, width = shape
        if not config.is_detection:
            masks = np.asarray(target.masks, dtype=np.float32)
            if masks.shape != (config.num_classes, height, width):
                raise ValueError(
                    f"target masks must be [{config.num_classes}, {height}, {width}] (classes, "
                    f"the image's height and width), got {list(masks.shape)}"
                )
            resized = _resize(torch.from_numpy(masks), side).clamp_(0.0, 1.0)
            return {"masks": _flip(resized, flips)}
        centres, labels, weights, sizes = target.objects(config.task)
        scale = np.array([side / width, side / height])
        centres = centres * scale
        if sizes is not None:
            sizes = sizes * scale
        if flips[0]:
            centres[:, 0] = side - centres[:, 0]
        if flips[1]:
            centres[:, 1] = side - centres[:, 1]
        dense = centre_targets(
            centres, labels, weights, sizes, config.num_classes,
            (side // OUTPUT_STRIDE, side // OUTPUT_STRIDE), config.match_distance / 3.0 * scale.mean(),
        )  # fmt: skip
        return {name: torch.from_numpy(value) for name, value in dense.items()}


def _resize(tensor: torch.Tensor, side: int) -> torch.Tensor:
    if tuple(tensor.shape[-2:]) == (side, side):
        return tensor.float()
    return F.interpolate(
        tensor[None].float(), size=(side, side), mode="bilinear", antialias=True, align_corners=False
    )[0]


def _flip(tensor: torch.Tensor, flips: tuple[bool, bool]) -> torch.Tensor:
    dims = [d for d, flip in ((-1, flips[0]), (-2, flips[1])) if flip]
    return tensor.flip(dims) if dims else tensor


@dataclass
class RegionResult:
    """Outcome of :func:`train_regions`; ``holdout_predictions`` as :func:`predict_regions`."""

    status: Literal["completed", "cancelled"]
    epochs_completed: int
    history: list[EpochRecord]
    model_path: Path | None
    checkpoint_path: Path | None
    device: str
    holdout_ids: list[Any] = field(default_factory=list)
    holdout_predictions: list[dict[str, np.ndarray]] | None = None
    holdout_scores: dict[str, Any] | None = None

    @property
    def cancelled(self) -> bool:
        return self.status == "cancelled"


def build_region_model(
    config: RegionConfig, weights: str | None = None
) -> tuple[nn.Module, RegionPreprocessing]:
    """The run's network (U-Net for masks, centre heatmaps for points and boxes) and its input."""
    encoder, data_config = build_encoder(
        config.model_name,
        config.weights if weights is None else weights,
        in_chans=config.in_chans,
        cache_dir=config.cache_dir,
    )
    model: nn.Module = (
        CentreNet(encoder, config.num_classes, config.task, config.decoder_channels)  # type: ignore[arg-type]
        if config.is_detection
        else SegmentationNet(encoder, config.num_classes, config.decoder_channels)
    )
    preprocessing = RegionPreprocessing(
        config.image_size, config.in_chans, data_config.mean, data_config.std
    )
    return model, preprocessing


def region_loss(config: RegionConfig, outputs: Any, targets: dict[str, torch.Tensor]) -> torch.Tensor:
    if config.is_detection:
        return centre_loss(outputs, targets, config.size_weight)
    return mask_loss(outputs, targets["masks"], config.dice_weight)


def train_regions(
    config: RegionConfig,
    train_data: RegionItemSet,
    holdout_data: RegionItemSet | None = None,
    callbacks: Any | None = None,
    resume_from: str | os.PathLike[str] | None = None,
) -> RegionResult:
    """Train the region model on ``train_data``'s targets; score each epoch on ``holdout_data``
    (expert regions) when it has targets. Callbacks and resumption as :func:`train`."""
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    use_amp = config.amp and device.type == "cuda"
    checkpoint_dir = Path(config.checkpoint_dir or tempfile.mkdtemp(prefix="quorum-regions-"))
    checkpoint_path = checkpoint_dir / CHECKPOINT_NAME
    seed_everything(config.seed)

    resumed = load_checkpoint(resume_from) if resume_from is not None else None
    if resumed is not None:
        _check_resumable(resumed, config)
    check_trainable(len(train_data))
    if train_data.targets is None:
        raise ValueError("region training needs a target for every training item")
    model, preprocessing = build_region_model(config, "none" if resumed is not None else None)
    model.to(device)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    train_dataset = RegionDataset(train_data, config, preprocessing, augment=config.augment)
    scored = holdout_data is not None and holdout_data.targets is not None and len(holdout_data) > 0
    holdout_dataset = (
        RegionDataset(holdout_data, config, preprocessing, augment=False) if scored else None  # type: ignore[arg-type]
    )
    optimizer, scheduler, scaler = build_optimization(
        config, model, None, batches_per_epoch(len(train_data), config.batch_size), use_amp
    )
    history: list[EpochRecord] = []
    start_epoch = 0
    if resumed is not None:
        history, start_epoch = restore_state(resumed, model, optimizer, scheduler, scaler, None)
        _restore_rng(resumed["rng"])
    stop_requested = stop_check(callbacks)
    if resumed is not None and hasattr(callbacks, "on_resume"):
        callbacks.on_resume(start_epoch)
    autocast = amp_autocast(use_amp)

    def evaluate() -> tuple[float | None, list[dict[str, np.ndarray]], dict[str, Any]]:
        loss, predictions = _predict(model, holdout_dataset, config, device, memory_format, autocast)
        return loss, predictions, score_regions(config, predictions, holdout_data.targets)  # type: ignore[union-attr]

    def result(status: Literal["completed", "cancelled"], model_path: Path | None) -> RegionResult:
        predictions = scores = None
        if holdout_dataset is not None and status == "completed":
            _, predictions, scores = evaluate()
        return RegionResult(
            status=status,
            epochs_completed=len(history),
            history=history,
            model_path=model_path,
            checkpoint_path=checkpoint_path if checkpoint_path.is_file() else None,
            device=str(device),
            holdout_ids=holdout_data.item_ids if holdout_data is not None else [],
            holdout_predictions=predictions,
            holdout_scores=scores,
        )

    for epoch in range(start_epoch, config.epochs):
        if stop_requested():
            return result("cancelled", None)
        epoch_started = time.perf_counter()
        epoch_seed = seed_epoch(config.seed, epoch)
        loader = make_loader(
            train_dataset, config.batch_size, shuffle=True, seed=epoch_seed,
            num_workers=config.num_workers, pin_memory=device.type == "cuda",
        )  # fmt: skip
        model.train()
        loss_sum = torch.zeros((), device=device)
        images_seen = 0
        for step, (images, targets, _, _) in enumerate(loader):
            if step and step % config.cancel_check_every == 0 and stop_requested():
                return result("cancelled", None)
            images = images.to(device, non_blocking=True, memory_format=memory_format)
            targets = {name: t.to(device, non_blocking=True) for name, t in targets.items()}
            with autocast():
                outputs = model(images)
            loss = region_loss(config, outputs, targets)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            loss_sum += loss.detach() * images.shape[0]
            images_seen += images.shape[0]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_seconds = time.perf_counter() - epoch_started
        holdout_loss = holdout_score = None
        if holdout_dataset is not None:
            holdout_loss, _, scores = evaluate()
            holdout_score = scores["headline_value"]
        end_epoch(
            epoch=epoch, started=epoch_started, train_seconds=train_seconds,
            samples_seen=images_seen, train_loss=float(loss_sum) / max(images_seen, 1),
            holdout_loss=holdout_loss, holdout_accuracy=holdout_score, history=history,
            checkpoint_path=checkpoint_path, checkpoint_format=CHECKPOINT_FORMAT, config=config,
            model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
            callbacks=callbacks,
        )

    model_path = save_model_file(
        model, checkpoint_dir / MODEL_NAME, {"kind": "regions", **_model_metadata(config, preprocessing)}
    )
    return result("completed", model_path)


def score_regions(
    config: RegionConfig,
    predictions: Sequence[dict[str, np.ndarray]],
    truth: Sequence[RegionTarget],
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The region metrics (``region_metrics``) of predictions against expert targets."""
    names = list(class_names) if class_names is not None else [str(k) for k in range(config.num_classes)]
    if not config.is_detection:
        return mask_scores(
            [p["masks"] for p in predictions],
            [np.asarray(t.masks) >= 0.5 for t in truth],
            names,
        )
    key = config.task
    threshold = config.match_distance if key == "points" else config.match_iou
    expected = []
    for t in truth:
        centres, labels, _, sizes = t.objects(config.task)
        coordinates = centres if key == "points" else np.asarray(t.boxes, np.float64).reshape(-1, 4)
        expected.append((coordinates, labels))
    return detection_scores(
        [(p[key], p["labels"]) for p in predictions], expected, key, threshold, names  # type: ignore[arg-type]
    )


def _check_resumable(checkpoint: dict[str, Any], config: RegionConfig) -> None:
    if checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"not a region-run checkpoint (format {checkpoint.get('format')!r}); launch a new run"
        )
    saved, now = checkpoint["config"], dataclasses.asdict(config)
    different = [
        f"{key}: checkpoint {saved.get(key)!r} vs now {now[key]!r}"
        for key in _RESUME_MUST_MATCH
        if saved.get(key) != now[key]
    ]
    if different:
        raise CheckpointError("cannot resume, the run's settings changed: " + "; ".join(different))


@torch.no_grad()
def _predict(
    model: nn.Module, dataset: RegionDataset, config: RegionConfig, device: torch.device,
    memory_format: torch.memory_format, autocast: Any,
) -> tuple[float | None, list[dict[str, np.ndarray]]]:
    """Predictions at each item's size (and the mean loss where the dataset has targets)."""
    model.eval()
    loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=False,
                        num_workers=config.num_workers)
    predictions: list[dict[str, np.ndarray]] = []
    loss_sum, n_scored = 0.0, 0
    for images, targets, _, sizes in loader:
        images = images.to(device, non_blocking=True, memory_format=memory_format)
        with autocast():
            outputs = model(images)
        if targets:
            targets = {name: t.to(device) for name, t in targets.items()}
            loss_sum += float(region_loss(config, outputs, targets)) * images.shape[0]
            n_scored += images.shape[0]
        side = images.shape[-1]
        if not config.is_detection:
            for logits, (height, width) in zip(outputs, sizes.tolist(), strict=True):
                probabilities = torch.sigmoid(
                    F.interpolate(logits[None].float(), size=(height, width), mode="bilinear",
                                  align_corners=False)[0]
                ).cpu().numpy()
                predictions.append(
                    {"probabilities": probabilities, "masks": probabilities >= config.mask_threshold}
                )
            continue
        for found, (height, width) in zip(
            decode_centres(outputs, config.peak_threshold, config.max_objects), sizes.tolist(),
            strict=True,
        ):
            scale = np.array([width / side, height / side])
            found["points"] = found["points"] * scale
            if "boxes" in found:
                found["boxes"] = found["boxes"] * np.tile(scale, 2)
                found["boxes"][:, [0, 2]] = found["boxes"][:, [0, 2]].clip(0, width - 1)
                found["boxes"][:, [1, 3]] = found["boxes"][:, [1, 3]].clip(0, height - 1)
            predictions.append(found)
    return (loss_sum / n_scored if n_scored else None), predictions


def predict_regions(
    model: nn.Module, config: RegionConfig, preprocessing: RegionPreprocessing,
    images: Sequence[ImageSource], device: str | torch.device = "cpu",
) -> list[dict[str, np.ndarray]]:
    """Each image's prediction at its own size: ``{"probabilities", "masks"}`` ``[C, H, W]``
    (masks) or ``{"points", "labels", "scores"[, "boxes"]}`` (points, boxes)."""
    device = torch.device(device)
    dataset = RegionDataset(RegionItemSet(images), config, preprocessing, augment=False)
    autocast = (
        (lambda: torch.autocast(device_type="cuda", dtype=torch.float16))
        if device.type == "cuda" and config.amp
        else nullcontext
    )
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model.to(device=device, memory_format=memory_format)
    return _predict(model, dataset, config, device, memory_format, autocast)[1]


def _model_metadata(config: RegionConfig, preprocessing: RegionPreprocessing) -> dict[str, Any]:
    return {
        "config": {**dataclasses.asdict(config), "checkpoint_dir": None, "cache_dir": None},
        "preprocessing": dataclasses.asdict(preprocessing),
    }


def load_region_model(
    path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> tuple[nn.Module, RegionConfig, RegionPreprocessing]:
    """Rebuild a region model from the ``model.safetensors`` :func:`train_regions` wrote."""
    state_dict, metadata = load_model_file(path)
    if metadata.get("kind") != "regions":
        raise CheckpointError(f"{path} is not a region model")
    config = RegionConfig(**{**metadata["config"], "weights": "none"})
    model, _ = build_region_model(config)
    model.load_state_dict(state_dict, strict=True)
    prep = metadata["preprocessing"]
    preprocessing = RegionPreprocessing(
        int(prep["image_size"]), int(prep["in_chans"]), tuple(prep["mean"]), tuple(prep["std"]),
        tuple(prep["intensity_percentiles"]) if prep["intensity_percentiles"] else None,
    )
    return model.to(device).eval(), config, preprocessing
