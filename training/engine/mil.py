"""Attention-based deep multiple-instance learning (MIL) on bags of image patches.

Ilse, Tomczak & Welling, "Attention-based Deep Multiple Instance Learning", ICML 2018. A bag is
one large image cut into a grid of patches (:class:`~training.engine.patches.PatchGrid`); a
timm backbone without its classifier (``num_classes=0``) embeds each patch as ``h_k``, and the
gated attention of eq. (9) pools them:

    a_k = exp(w^T (tanh(V h_k) * sigm(U h_k))) / sum_j exp(w^T (tanh(V h_j) * sigm(U h_j)))
    z   = sum_k a_k h_k                                            (eq. 7)

with ``*`` the element-wise product. A linear classifier on ``z`` gives the bag's class
probabilities, and ``a`` (rows x cols) is the attention map the UI shows as a heatmap.

Bag labels, as in :func:`training.engine.train`: ``expert`` (the items' own targets),
``majority_vote`` (hard), ``dawid_skene`` (the aggregated posteriors as soft targets) or
``crowd_layer`` (raw votes through per-annotator confusions, Rodrigues & Pereira 2018, see
:mod:`training.engine.crowd_layer`). The loop matches the trainer's conventions: AdamW with a
cosine schedule, CUDA autocast + GradScaler, one atomic checkpoint per epoch and exact resume
(every epoch reseeds from ``(seed, epoch)``), :class:`EpochRecord` through the same callbacks.
"""

from __future__ import annotations

import dataclasses
import os
import random
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler, SequentialSampler

from training.engine.backbones import build_model
from training.engine.balance import BALANCE_MODES, plan_class_balance
from training.engine.checkpoints import (
    CheckpointError,
    load_checkpoint,
    load_model_file,
    save_model_file,
)
from training.engine.crowd_layer import CrowdLayer
from training.engine.data import (
    CrowdVotes,
    ItemSet,
    TrainingBatches,
    as_probabilities,
    batches_per_epoch,
    check_trainable,
    load_image,
    match_channels,
)
from training.engine.patches import PatchGrid
from training.engine.trainer import (
    CHECKPOINT_NAME,
    MODEL_NAME,
    EpochRecord,
    amp_autocast,
    build_crowd_layer,
    build_optimization,
    end_epoch,
    holdout_scores,
    restore_state,
    seed_epoch,
    seed_everything,
    soft_cross_entropy,
    stop_check,
)

__all__ = [
    "MIL_LABEL_SOURCES",
    "BagDataset",
    "BagPreprocessing",
    "GatedAttentionMIL",
    "MILConfig",
    "MILResult",
    "load_mil_model",
    "predict_bags",
    "train_mil",
]

MILLabelSource = Literal["expert", "majority_vote", "dawid_skene", "crowd_layer"]
MIL_LABEL_SOURCES: tuple[str, ...] = ("expert", "majority_vote", "dawid_skene", "crowd_layer")
CHECKPOINT_FORMAT = "quorum-mil-checkpoint/1"

# a resumed run must have been started with the same values for these
_RESUME_MUST_MATCH = (
    "label_source",
    "num_classes",
    "model_name",
    "in_chans",
    "patch_size",
    "patch_stride",
    "patch_input_size",
    "attention_dim",
    "epochs",
    "bags_per_batch",
    "lr",
    "weight_decay",
    "seed",
    "augment",
    "schedule",
)


@dataclass
class MILConfig:
    """Hyperparameters of one MIL run; the shared ones mean what they mean in TrainConfig."""

    label_source: MILLabelSource = "dawid_skene"
    num_classes: int = 2
    model_name: str = "tf_efficientnet_lite0"
    weights: str = "imagenet"  # as TrainConfig.weights
    in_chans: int = 3
    patch_size: int = 128  # patch side in the image's pixels
    patch_stride: int = 128
    patch_input_size: int | None = None  # side a patch is resized to for the backbone; None: as is
    attention_dim: int = 128  # L in the paper
    epochs: int = 10
    bags_per_batch: int = 4
    lr: float = 1e-3
    weight_decay: float = 0.01
    schedule: Literal["cosine", "constant"] = "cosine"
    drop_rate: float = 0.0
    augment: bool = True  # random flips of the whole bag
    seed: int = 0
    device: str | None = None
    amp: bool = True  # CUDA only
    channels_last: bool = True  # NHWC convolutions, as TrainConfig.channels_last
    threads: int | None = None
    checkpoint_dir: str | None = None
    cache_dir: str | None = None
    crowd_layer_trace_weight: float = 0.01
    crowd_layer_lr_scale: float = 10.0
    class_balance: str = "auto"  # as TrainConfig.class_balance, over bags
    class_balance_threshold: float = 1.5
    cancel_check_every: int = 10

    def __post_init__(self) -> None:
        if self.label_source not in MIL_LABEL_SOURCES:
            raise ValueError(
                f"MIL label_source must be one of {MIL_LABEL_SOURCES}, got {self.label_source!r}"
            )
        if self.num_classes < 2:
            raise ValueError("num_classes must be at least 2")
        if self.epochs < 1 or self.bags_per_batch < 1 or self.attention_dim < 1:
            raise ValueError("epochs, bags_per_batch and attention_dim must be positive")
        if self.patch_size < 1 or not 1 <= self.patch_stride <= self.patch_size:
            raise ValueError("need patch_size >= 1 and 1 <= patch_stride <= patch_size")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError("schedule must be 'cosine' or 'constant'")
        if self.class_balance not in BALANCE_MODES:
            raise ValueError(f"class_balance must be one of {BALANCE_MODES}")


@dataclass(frozen=True)
class BagPreprocessing:
    """How an image becomes a bag of normalised patch tensors."""

    patch_size: int
    patch_stride: int
    patch_input_size: int
    in_chans: int = 3
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    intensity_percentiles: tuple[float, float] | None = (0.5, 99.5)
    augment: bool = False

    def without_augmentation(self) -> BagPreprocessing:
        return dataclasses.replace(self, augment=False)

    def grid(self, height: int, width: int) -> PatchGrid:
        return PatchGrid.for_image(height, width, self.patch_size, self.patch_stride)


class BagDataset(Dataset):
    """Torch dataset of ``(patches [n, C, p, p], target [K], index, (rows, cols))``."""

    def __init__(self, items: ItemSet, num_classes: int, preprocessing: BagPreprocessing) -> None:
        if len(preprocessing.mean) != preprocessing.in_chans:
            raise ValueError("mean/std must have one value per input channel")
        self.items = items
        self.num_classes = num_classes
        self.preprocessing = preprocessing
        self.targets = (
            torch.from_numpy(items.soft_targets(num_classes))
            if items.targets is not None
            else torch.zeros(len(items), num_classes)
        )
        self._mean = torch.tensor(preprocessing.mean, dtype=torch.float32).view(1, -1, 1, 1)
        self._std = torch.tensor(preprocessing.std, dtype=torch.float32).view(1, -1, 1, 1)

    def __len__(self) -> int:
        return len(self.items)

    def set_targets(self, probabilities: np.ndarray) -> None:
        self.targets = torch.from_numpy(as_probabilities(probabilities, self.num_classes))

    def patches(self, index: int) -> tuple[torch.Tensor, PatchGrid]:
        """One image as ``[rows * cols, C, p, p]`` normalised patches (row-major) and its grid."""
        prep = self.preprocessing
        array = load_image(self.items.images[index], prep.intensity_percentiles)
        image = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
        image = match_channels(image, prep.in_chans)
        height, width = image.shape[1:]
        grid = prep.grid(height, width)
        padded_h, padded_w = grid.padded_size
        image = image[None]
        if (padded_h, padded_w) != (height, width):
            # replicate, not zeros: a black border would be a feature the network could attend to
            image = F.pad(image, (0, padded_w - width, 0, padded_h - height), mode="replicate")
        side = prep.patch_input_size
        step = max(1, round(grid.stride * side / grid.patch_size))
        size = ((grid.rows - 1) * step + side, (grid.cols - 1) * step + side)
        if size != (padded_h, padded_w):
            image = F.interpolate(
                image, size=size, mode="bilinear", antialias=True, align_corners=False
            ).clamp_(0.0, 1.0)
        if prep.augment:
            # flips keep the patch grid a grid; the attention of a training bag is never shown
            if random.random() < 0.5:
                image = image.flip(3)
            if random.random() < 0.5:
                image = image.flip(2)
        cut = image[0].unfold(1, side, step).unfold(2, side, step)  # [C, rows, cols, p, p]
        cut = cut.permute(1, 2, 0, 3, 4).reshape(grid.n_patches, prep.in_chans, side, side)
        return (cut - self._mean) / self._std, grid

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int, tuple[int, int]]:
        patches, grid = self.patches(index)
        return patches, self.targets[index], index, grid.shape


def collate_bags(
    batch: list[tuple[torch.Tensor, torch.Tensor, int, tuple[int, int]]],
) -> tuple[torch.Tensor, list[int], torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
    """Bags of different sizes in one batch: all patches concatenated, plus each bag's count."""
    patches = torch.cat([b[0] for b in batch])
    sizes = [b[0].shape[0] for b in batch]
    targets = torch.stack([b[1] for b in batch])
    indices = torch.tensor([b[2] for b in batch], dtype=torch.int64)
    return patches, sizes, targets, indices, [b[3] for b in batch]


class GatedAttentionMIL(nn.Module):
    """Backbone embeddings, gated attention pooling (Ilse et al. eq. 9) and a bag classifier."""

    def __init__(
        self, backbone: nn.Module, num_classes: int, attention_dim: int = 128, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.backbone = backbone
        features = int(backbone.num_features)
        self.attention_v = nn.Linear(features, attention_dim)
        self.attention_u = nn.Linear(features, attention_dim)
        self.attention_w = nn.Linear(attention_dim, 1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(features, num_classes)
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(
        self, patches: torch.Tensor, bag_sizes: list[int] | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``patches`` ``[sum(bag_sizes), C, p, p]`` -> (logits ``[B, K]``, attention per bag)."""
        bag_sizes = bag_sizes if bag_sizes is not None else [patches.shape[0]]
        # float32 from here: softmax over many patches and the bag sum are precision-sensitive
        embeddings = self.backbone(patches).float()
        scores = self.attention_w(
            torch.tanh(self.attention_v(embeddings)) * torch.sigmoid(self.attention_u(embeddings))
        ).squeeze(-1)
        pooled, attentions = [], []
        for bag_embeddings, bag_scores in zip(
            embeddings.split(bag_sizes), scores.split(bag_sizes), strict=True
        ):
            weights = bag_scores.softmax(dim=0)
            pooled.append(weights @ bag_embeddings)
            attentions.append(weights)
        logits = self.classifier(self.dropout(torch.stack(pooled)))
        return logits, attentions


@dataclass
class MILResult:
    """Outcome of :func:`train_mil`; like TrainingResult plus the hold-out attention maps."""

    status: Literal["completed", "cancelled"]
    epochs_completed: int
    history: list[EpochRecord]
    model_path: Path | None
    checkpoint_path: Path | None
    preprocessing: BagPreprocessing
    device: str
    annotator_confusions: np.ndarray | None = None
    holdout_ids: list[Any] = field(default_factory=list)
    holdout_targets: np.ndarray | None = None
    holdout_probabilities: np.ndarray | None = None  # [n_holdout, K]
    holdout_attention: list[np.ndarray] = field(default_factory=list)  # each [rows, cols]
    class_balance: dict[str, Any] | None = None

    @property
    def cancelled(self) -> bool:
        return self.status == "cancelled"


def build_mil_model(
    config: MILConfig, weights: str | None = None
) -> tuple[GatedAttentionMIL, BagPreprocessing]:
    """The timm backbone (classifier removed) inside the attention head, and its preprocessing."""
    # build_model wants a head; a one-class head is built, then removed for features
    backbone, data_config = build_model(
        config.model_name,
        1,
        config.weights if weights is None else weights,
        in_chans=config.in_chans,
        cache_dir=config.cache_dir,
        drop_rate=config.drop_rate,
    )
    backbone.reset_classifier(0)
    model = GatedAttentionMIL(backbone, config.num_classes, config.attention_dim, config.drop_rate)
    preprocessing = BagPreprocessing(
        patch_size=config.patch_size,
        patch_stride=config.patch_stride,
        patch_input_size=config.patch_input_size or config.patch_size,
        in_chans=data_config.in_chans,
        mean=data_config.mean,
        std=data_config.std,
        augment=config.augment,
    )
    return model, preprocessing


def train_mil(
    config: MILConfig,
    train_data: ItemSet,
    holdout_data: ItemSet | None = None,
    votes: CrowdVotes | None = None,
    init_posteriors: np.ndarray | None = None,
    init_confusions: np.ndarray | None = None,
    callbacks: Any | None = None,
    resume_from: str | os.PathLike[str] | None = None,
) -> MILResult:
    """Train an attention-MIL model on the bags of ``train_data`` (one image = one bag).

    Arguments as in :func:`training.engine.train`: ``votes`` index ``train_data`` by position,
    ``init_posteriors`` ``[N, K]`` are the aggregated bag labels ("dawid_skene", and the start
    of the crowd layer's confusions when ``init_confusions`` is not given), ``holdout_data``
    carries expert labels.
    """
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    use_amp = config.amp and device.type == "cuda"
    checkpoint_dir = Path(config.checkpoint_dir or tempfile.mkdtemp(prefix="quorum-mil-"))
    checkpoint_path = checkpoint_dir / CHECKPOINT_NAME
    seed_everything(config.seed)

    resumed = load_checkpoint(resume_from) if resume_from is not None else None
    if resumed is not None:
        _check_resumable(resumed, config)
    model, preprocessing = build_mil_model(config, "none" if resumed is not None else None)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format)
    evaluation = preprocessing.without_augmentation()

    n_bags = len(train_data)
    check_trainable(n_bags, "training bags")
    if votes is not None:
        votes.check(n_bags, config.num_classes)
    targets = _bag_targets(config, train_data, votes, init_posteriors)
    balance = plan_class_balance(config.class_balance, targets, config.class_balance_threshold)
    class_weights, item_weights = balance.loss_class_weights(device), balance.loss_item_weights()
    train_dataset = BagDataset(
        ItemSet(train_data.images, targets, train_data.ids), config.num_classes, preprocessing
    )
    holdout_dataset = (
        BagDataset(holdout_data, config.num_classes, evaluation)
        if holdout_data is not None
        else None
    )

    crowd_layer: CrowdLayer | None = None
    vote_workers = vote_labels = None
    if config.label_source == "crowd_layer":
        assert votes is not None
        crowd_layer, vote_workers, vote_labels = build_crowd_layer(
            votes, n_bags, config.num_classes, device, init_confusions, init_posteriors
        )

    optimizer, scheduler, scaler = build_optimization(
        config, model, crowd_layer, batches_per_epoch(n_bags, config.bags_per_batch), use_amp
    )
    history: list[EpochRecord] = []
    start_epoch = 0
    if resumed is not None:
        history, start_epoch = restore_state(
            resumed, model, optimizer, scheduler, scaler, crowd_layer
        )
    stop_requested = stop_check(callbacks)
    if resumed is not None and hasattr(callbacks, "on_resume"):
        callbacks.on_resume(start_epoch)

    def result(status: Literal["completed", "cancelled"], model_path: Path | None) -> MILResult:
        probabilities, attention = (
            predict_bags(
                model, holdout_dataset, config.bags_per_batch * 2, device, config.channels_last
            )
            if holdout_dataset is not None and status == "completed"
            else (None, [])
        )
        return MILResult(
            status=status,
            epochs_completed=len(history),
            history=history,
            model_path=model_path,
            checkpoint_path=checkpoint_path if checkpoint_path.is_file() else None,
            preprocessing=evaluation,
            device=str(device),
            annotator_confusions=(
                crowd_layer.annotator_confusions() if crowd_layer is not None else None
            ),
            holdout_ids=holdout_data.item_ids if holdout_data is not None else [],
            holdout_targets=(
                holdout_data.hard_targets()
                if holdout_data is not None and holdout_data.targets is not None
                else None
            ),
            holdout_probabilities=probabilities,
            holdout_attention=attention,
            class_balance=balance.summary(),
        )

    autocast = amp_autocast(use_amp)
    for epoch in range(start_epoch, config.epochs):
        if stop_requested():
            return result("cancelled", None)
        epoch_started = time.perf_counter()
        epoch_seed = seed_epoch(config.seed, epoch)
        loader = _loader(
            train_dataset, config.bags_per_batch, shuffle=True, seed=epoch_seed,
            sampler=balance.sampler(epoch_seed),
        )
        model.train()
        loss_sum = torch.zeros((), device=device)
        bags_seen = patches_seen = 0
        for step, (patches, sizes, batch_targets, indices, _) in enumerate(loader):
            if step and step % config.cancel_check_every == 0 and stop_requested():
                return result("cancelled", None)
            patches = patches.to(device, non_blocking=True, memory_format=memory_format)
            with autocast():
                logits, _ = model(patches, sizes)
            logits = logits.float()
            if crowd_layer is not None:
                loss = crowd_layer.loss(
                    logits,
                    vote_workers[indices].to(device),
                    vote_labels[indices].to(device),
                    config.crowd_layer_trace_weight,
                    item_weights[indices].to(device) if item_weights is not None else None,
                )
            else:
                batch_targets = batch_targets.to(device, non_blocking=True)
                loss = soft_cross_entropy(logits, batch_targets, class_weights)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            loss_sum += loss.detach() * len(sizes)
            bags_seen += len(sizes)
            patches_seen += patches.shape[0]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_seconds = time.perf_counter() - epoch_started

        holdout_loss = holdout_accuracy = None
        if (
            holdout_dataset is not None
            and holdout_data is not None
            and holdout_data.targets is not None
        ):
            probabilities, _ = predict_bags(
                model, holdout_dataset, config.bags_per_batch * 2, device, config.channels_last
            )
            holdout_loss, holdout_accuracy = holdout_scores(
                probabilities, holdout_data.soft_targets(config.num_classes)
            )

        end_epoch(
            epoch=epoch, started=epoch_started, train_seconds=train_seconds,
            samples_seen=patches_seen, train_loss=float(loss_sum) / max(bags_seen, 1),
            holdout_loss=holdout_loss, holdout_accuracy=holdout_accuracy, history=history,
            checkpoint_path=checkpoint_path, checkpoint_format=CHECKPOINT_FORMAT, config=config,
            model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
            callbacks=callbacks,
            extra_state={
                "crowd_layer": crowd_layer.state_dict() if crowd_layer is not None else None
            },
        )

    model_path = save_model_file(
        model,
        checkpoint_dir / MODEL_NAME,
        {
            "kind": "mil",
            "model_name": config.model_name,
            "num_classes": config.num_classes,
            "in_chans": config.in_chans,
            "attention_dim": config.attention_dim,
            "label_source": config.label_source,
            "preprocessing": dataclasses.asdict(evaluation),
        },
    )
    return result("completed", model_path)


@torch.no_grad()
def predict_bags(
    model: GatedAttentionMIL,
    dataset: BagDataset,
    bags_per_batch: int = 8,
    device: str | torch.device | None = None,
    channels_last: bool = True,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Class probabilities ``[N, K]`` and one ``[rows, cols]`` attention map per bag, in order.

    The model is left in eval mode (and in channels-last layout if asked).
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    model.eval()
    autocast = (
        torch.autocast(device_type="cuda", dtype=torch.float16)
        if device.type == "cuda"
        else nullcontext()
    )
    probabilities, attention = [], []
    for patches, sizes, _, _, shapes in _loader(dataset, bags_per_batch, shuffle=False, seed=0):
        with autocast:
            logits, weights = model(
                patches.to(device, non_blocking=True, memory_format=memory_format), sizes
            )
        probabilities.append(logits.float().softmax(dim=-1).cpu())
        attention += [
            w.float().cpu().numpy().reshape(shape) for w, shape in zip(weights, shapes, strict=True)
        ]
    if not probabilities:
        return np.zeros((0, 0), dtype=np.float32), []
    return torch.cat(probabilities).numpy(), attention


def load_mil_model(
    path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> tuple[GatedAttentionMIL, BagPreprocessing]:
    """Rebuild a model from :func:`train_mil`'s ``model.safetensors`` with its preprocessing."""
    state_dict, metadata = load_model_file(path)
    if metadata.get("kind") != "mil":
        raise CheckpointError(f"{path} is not a MIL model file")
    prep = metadata["preprocessing"]
    config = MILConfig(
        num_classes=int(metadata["num_classes"]),
        model_name=metadata["model_name"],
        weights="none",
        in_chans=int(metadata["in_chans"]),
        attention_dim=int(metadata["attention_dim"]),
        patch_size=int(prep["patch_size"]),
        patch_stride=int(prep["patch_stride"]),
    )
    model, _ = build_mil_model(config)
    model.load_state_dict(state_dict, strict=True)
    preprocessing = BagPreprocessing(
        patch_size=int(prep["patch_size"]),
        patch_stride=int(prep["patch_stride"]),
        patch_input_size=int(prep["patch_input_size"]),
        in_chans=int(prep["in_chans"]),
        mean=tuple(prep["mean"]),
        std=tuple(prep["std"]),
        intensity_percentiles=(
            tuple(prep["intensity_percentiles"]) if prep["intensity_percentiles"] else None
        ),
    )
    return model.to(device).eval(), preprocessing


def _loader(
    dataset: BagDataset, bags_per_batch: int, *, shuffle: bool, seed: int, sampler=None
) -> DataLoader:
    generator = torch.Generator()
    generator.manual_seed(seed)
    if sampler is None:
        sampler = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
    # a last batch of one bag joins the one before it (TrainingBatches: BatchNorm)
    return DataLoader(
        dataset,
        batch_sampler=TrainingBatches(sampler, bags_per_batch),
        generator=generator,
        collate_fn=collate_bags,
    )


def _bag_targets(
    config: MILConfig,
    train_data: ItemSet,
    votes: CrowdVotes | None,
    init_posteriors: np.ndarray | None,
) -> np.ndarray:
    """``[N, K]`` soft targets for the label source (crowd layer: a placeholder it ignores)."""
    n_bags, num_classes = len(train_data), config.num_classes
    source = config.label_source
    if source == "expert":
        if train_data.targets is None:
            raise ValueError("label_source 'expert' needs targets on the training bags")
        return train_data.soft_targets(num_classes)
    if init_posteriors is not None:
        shares = np.asarray(init_posteriors, dtype=np.float64)
        if shares.shape != (n_bags, num_classes):
            raise ValueError(
                f"init_posteriors must have shape {(n_bags, num_classes)}, got {shares.shape}"
            )
    elif votes is not None:
        shares = votes.vote_fractions(n_bags, num_classes)
    else:
        raise ValueError(f"label_source {source!r} needs votes or init_posteriors")
    if source == "crowd_layer" and votes is None:
        raise ValueError("label_source 'crowd_layer' needs the crowd votes")
    if source == "majority_vote":
        # ties go to a seeded random winner rather than always to the lowest class index
        jitter = np.random.default_rng(config.seed).uniform(0, 1e-6, size=shares.shape)
        return np.eye(num_classes, dtype=np.float32)[(shares + jitter).argmax(axis=1)]
    return (shares / shares.sum(axis=1, keepdims=True)).astype(np.float32)


def _check_resumable(checkpoint: dict[str, Any], config: MILConfig) -> None:
    if checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"unsupported MIL checkpoint format {checkpoint.get('format')!r}")
    saved = checkpoint["config"]
    different = [
        f"{key}: checkpoint {saved.get(key)!r} vs now {getattr(config, key)!r}"
        for key in _RESUME_MUST_MATCH
        if saved.get(key) != getattr(config, key)
    ]
    if different:
        raise CheckpointError("cannot resume, the run's settings changed: " + "; ".join(different))


