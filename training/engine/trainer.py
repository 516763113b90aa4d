"""One training loop for every label source.

``label_source``:
  - ``"expert"``: the training items' own targets (expert labels, hard or soft);
  - ``"majority_vote"``: hard majority vote (argmax of ``init_posteriors`` or of the vote shares,
    ties broken by the seed);
  - ``"dawid_skene"``: the soft Dawid-Skene posteriors passed as ``init_posteriors``;
  - ``"aggnet"``: EM with the CNN in the loop (see :mod:`training.engine.aggnet`);
  - ``"crowd_layer"``: per-annotator confusions learned end to end, in the form
    ``crowd_layer_form`` (Rodrigues & Pereira's MW/VW/VB/VW+B, the normalised confusion with
    Tanno's trace penalty, or CoNAL) started per ``crowd_layer_init``
    (see :mod:`training.engine.crowd_layer` and :mod:`training.engine.conal`).

The loop is AdamW with a cosine schedule, mixed precision (autocast + GradScaler) on CUDA,
an atomic checkpoint after every epoch, cancellation between batches, and exact resumption.
"""

from __future__ import annotations

import dataclasses
import os
import random
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from training.engine.aggnet import AggNetEM, confusions_from_posteriors
from training.engine.backbones import build_model
from training.engine.balance import BALANCE_MODES, plan_class_balance
from training.engine.checkpoints import (
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
    save_model_file,
)
from training.engine.crowd_layer import (
    CROWD_LAYER_FORMS,
    CROWD_LAYER_INITS,
    BaseCrowdLayer,
    make_crowd_layer,
)
from training.engine.data import (
    CrowdVotes,
    ItemDataset,
    ItemSet,
    Preprocessing,
    batches_per_epoch,
    check_trainable,
    make_loader,
)
from training.engine.inference import predict

__all__ = [
    "LABEL_SOURCES",
    "EpochRecord",
    "TrainConfig",
    "TrainingCallbacks",
    "TrainingResult",
    "train",
]

LabelSource = Literal["expert", "majority_vote", "dawid_skene", "aggnet", "crowd_layer"]
LABEL_SOURCES: tuple[str, ...] = ("expert", "majority_vote", "dawid_skene", "aggnet", "crowd_layer")
CHECKPOINT_FORMAT = "quorum-training-checkpoint/1"
CHECKPOINT_NAME = "last.pt"
MODEL_NAME = "model.safetensors"

# a resumed run must have been started with the same values for these
_RESUME_MUST_MATCH = (
    "label_source",
    "num_classes",
    "model_name",
    "in_chans",
    "image_size",
    "epochs",
    "batch_size",
    "lr",
    "weight_decay",
    "seed",
    "augment",
    "schedule",
    "crowd_layer_form",
    "crowd_layer_init",
)
# settings added after checkpoints already existed: a checkpoint without them used these
_RESUME_DEFAULTS = {"crowd_layer_form": "confusion_trace", "crowd_layer_init": "dawid_skene"}


@dataclass
class TrainConfig:
    """Hyperparameters of one training run (plain values, so it round-trips through JSON)."""

    label_source: LabelSource = "expert"
    num_classes: int = 2
    model_name: str = "tf_efficientnet_lite0"
    weights: str = "imagenet"  # "imagenet" | "none" | "hub:<tag>" | path to a state dict
    in_chans: int = 3
    image_size: int | None = None  # None: the backbone's native size
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    schedule: Literal["cosine", "constant"] = "cosine"
    drop_rate: float = 0.0
    augment: bool = True
    num_workers: int = 0
    seed: int = 0
    device: str | None = None  # None: CUDA if available, else CPU
    amp: bool = True  # mixed precision, used on CUDA only
    channels_last: bool = True  # NHWC convolutions: much faster on CPU (oneDNN) and tensor cores
    threads: int | None = None  # torch CPU threads; None leaves torch's default
    checkpoint_dir: str | None = None  # None: a fresh temporary folder
    cache_dir: str | None = None  # where converted pretrained weights are cached
    # crowd layer: one of CROWD_LAYER_FORMS, started from "dawid_skene" (falls back to the
    # identity when there is nothing to estimate it from) or "identity"
    crowd_layer_form: str = "confusion_trace"
    crowd_layer_init: str = "dawid_skene"
    crowd_layer_trace_weight: float = 0.01  # Tanno's lambda, for the confusion_trace form
    crowd_layer_lr_scale: float = 10.0  # confusions start near a good value and need to move fast
    aggnet_smoothing: float = 1.0
    # class imbalance: "auto" (weighted loss when the classes are skewed), "none", "loss",
    # "sampler"; see training/engine/balance.py
    class_balance: str = "auto"
    class_balance_threshold: float = 1.5  # auto: largest / smallest class mass above this
    cancel_check_every: int = 10  # batches between should_stop() calls

    def __post_init__(self) -> None:
        if self.label_source not in LABEL_SOURCES:
            raise ValueError(
                f"label_source must be one of {LABEL_SOURCES}, got {self.label_source!r}"
            )
        if self.num_classes < 2:
            raise ValueError("num_classes must be at least 2")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be positive")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError("schedule must be 'cosine' or 'constant'")
        if self.class_balance not in BALANCE_MODES:
            raise ValueError(f"class_balance must be one of {BALANCE_MODES}")
        if self.crowd_layer_form not in CROWD_LAYER_FORMS:
            raise ValueError(
                f"crowd_layer_form must be one of {CROWD_LAYER_FORMS}, got {self.crowd_layer_form!r}"
            )
        if self.crowd_layer_init not in CROWD_LAYER_INITS:
            raise ValueError(
                f"crowd_layer_init must be one of {CROWD_LAYER_INITS}, got {self.crowd_layer_init!r}"
            )


@dataclass
class EpochRecord:
    """What the trainer reports after each epoch (1-based ``epoch``)."""

    epoch: int
    train_loss: float
    holdout_loss: float | None
    holdout_accuracy: float | None
    seconds: float  # whole epoch, including hold-out evaluation and AggNet's E-step
    images_per_second: float  # training steps only
    learning_rate: float


class TrainingCallbacks(Protocol):
    """What the caller plugs in. Every method is optional on the object passed to train()."""

    def on_epoch_end(self, record: EpochRecord) -> None:
        """Called after each epoch, once its checkpoint is on disk."""

    def should_stop(self) -> bool:
        """Polled before each epoch and every ``cancel_check_every`` batches."""

    def on_resume(self, epoch: int) -> None:
        """Called once when training continues from the checkpoint written after ``epoch``."""


@dataclass
class TrainingResult:
    """Outcome of :func:`train`. ``status`` is "completed" or "cancelled"."""

    status: Literal["completed", "cancelled"]
    epochs_completed: int
    history: list[EpochRecord]
    model_path: Path | None  # safetensors + metadata, only when completed
    checkpoint_path: Path | None  # last good epoch; resume_from this
    preprocessing: Preprocessing
    device: str
    annotator_confusions: np.ndarray | None = None  # [n_workers, K, K], [worker, true, observed]
    train_posteriors: np.ndarray | None = None  # AggNet's final soft targets per training item
    holdout_ids: list[Any] = field(default_factory=list)
    holdout_targets: np.ndarray | None = None
    holdout_probabilities: np.ndarray | None = None  # [n_holdout, K], from the final model
    class_balance: dict[str, Any] | None = None  # the imbalance remedy applied (balance.py)

    @property
    def cancelled(self) -> bool:
        return self.status == "cancelled"


def train(
    config: TrainConfig,
    train_data: ItemSet,
    holdout_data: ItemSet | None = None,
    votes: CrowdVotes | None = None,
    init_posteriors: np.ndarray | None = None,
    init_confusions: np.ndarray | None = None,
    callbacks: Any | None = None,
    resume_from: str | os.PathLike[str] | None = None,
) -> TrainingResult:
    """Train ``config.model_name`` on ``train_data`` with the labels ``config.label_source`` names.

    ``votes`` index ``train_data`` by position; ``init_posteriors`` ``[N, K]`` are majority-vote
    or Dawid-Skene posteriors (required for "dawid_skene", the start of "aggnet");
    ``init_confusions`` ``[n_workers, K, K]`` (Dawid-Skene's) start AggNet and the crowd layer
    (else they are estimated from ``init_posteriors``; the crowd layer falls back to near
    identity). ``holdout_data`` carries expert labels.
    """
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    use_amp = config.amp and device.type == "cuda"
    checkpoint_dir = Path(config.checkpoint_dir or tempfile.mkdtemp(prefix="quorum-run-"))
    checkpoint_path = checkpoint_dir / CHECKPOINT_NAME
    seed_everything(config.seed)

    resumed = load_checkpoint(resume_from) if resume_from is not None else None
    if resumed is not None:
        _check_resumable(resumed, config)
    model, data_config = build_model(
        config.model_name,
        config.num_classes,
        "none" if resumed is not None else config.weights,  # the checkpoint overwrites weights
        in_chans=config.in_chans,
        cache_dir=config.cache_dir,
        drop_rate=config.drop_rate,
    )
    model.to(device)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    preprocessing = Preprocessing.for_model(data_config, config.image_size, augment=config.augment)
    evaluation = preprocessing.without_augmentation()

    n_items = len(train_data)
    check_trainable(n_items)
    if votes is not None:
        votes.check(n_items, config.num_classes)
    targets = _initial_targets(config, train_data, votes, init_posteriors)
    # weights come from the starting targets (for AggNet: before its first E-step)
    balance = plan_class_balance(config.class_balance, targets, config.class_balance_threshold)
    class_weights, item_weights = balance.loss_class_weights(device), balance.loss_item_weights()
    train_set = ItemSet(train_data.images, targets, train_data.ids)
    train_dataset = ItemDataset(train_set, config.num_classes, preprocessing)
    train_eval_dataset = ItemDataset(train_set, config.num_classes, evaluation)
    holdout_dataset = (
        ItemDataset(holdout_data, config.num_classes, evaluation)
        if holdout_data is not None
        else None
    )

    aggnet: AggNetEM | None = None
    crowd_layer: BaseCrowdLayer | None = None
    vote_workers = vote_labels = None
    if config.label_source == "aggnet":
        aggnet = AggNetEM(
            votes,  # type: ignore[arg-type]
            targets,
            smoothing=config.aggnet_smoothing,
            init_confusions=init_confusions,
        )
    elif config.label_source == "crowd_layer":
        assert votes is not None
        crowd_layer, vote_workers, vote_labels = build_crowd_layer(
            votes, n_items, config.num_classes, device, init_confusions, init_posteriors,
            smoothing=config.aggnet_smoothing, form=config.crowd_layer_form,
            init=config.crowd_layer_init, feature_dim=getattr(model, "num_features", None),
        )  # fmt: skip

    optimizer, scheduler, scaler = build_optimization(
        config, model, crowd_layer, batches_per_epoch(n_items, config.batch_size), use_amp
    )
    history: list[EpochRecord] = []
    start_epoch = 0
    if resumed is not None:
        history, start_epoch = restore_state(
            resumed, model, optimizer, scheduler, scaler, crowd_layer
        )
        if aggnet is not None:
            aggnet.load_state_dict(resumed["aggnet"])
            train_dataset.set_targets(aggnet.posteriors_)
        _restore_rng(resumed["rng"])
    stop_requested = stop_check(callbacks)
    if resumed is not None and hasattr(callbacks, "on_resume"):
        callbacks.on_resume(start_epoch)

    def result(
        status: Literal["completed", "cancelled"], model_path: Path | None
    ) -> TrainingResult:
        holdout_probabilities = (
            predict(model, holdout_dataset, batch_size=config.batch_size * 2, device=device)
            if holdout_dataset is not None and status == "completed"
            else None
        )
        confusions = (
            crowd_layer_confusions(
                crowd_layer, votes, model, train_eval_dataset, config.batch_size * 2, device
            )
            if crowd_layer is not None and status == "completed"
            else crowd_layer.annotator_confusions()
            if crowd_layer is not None
            else aggnet.confusions_.copy()
            if aggnet is not None
            else None
        )
        return TrainingResult(
            status=status,
            epochs_completed=len(history),
            history=history,
            model_path=model_path,
            checkpoint_path=checkpoint_path if checkpoint_path.is_file() else None,
            preprocessing=preprocessing,
            device=str(device),
            annotator_confusions=confusions,
            train_posteriors=aggnet.posteriors_.copy() if aggnet is not None else None,
            holdout_ids=holdout_data.item_ids if holdout_data is not None else [],
            holdout_targets=(
                holdout_data.hard_targets()
                if holdout_data is not None and holdout_data.targets is not None
                else None
            ),
            holdout_probabilities=holdout_probabilities,
            class_balance=balance.summary(),
        )

    autocast = amp_autocast(use_amp)
    for epoch in range(start_epoch, config.epochs):
        if stop_requested():
            return result("cancelled", None)
        epoch_started = time.perf_counter()
        epoch_seed = seed_epoch(config.seed, epoch)
        loader = make_loader(
            train_dataset,
            config.batch_size,
            shuffle=True,
            seed=epoch_seed,
            num_workers=config.num_workers,
            pin_memory=device.type == "cuda",
            sampler=balance.sampler(epoch_seed),
        )
        model.train()
        loss_sum = torch.zeros((), device=device)
        images_seen = 0
        for step, (images, batch_targets, indices) in enumerate(loader):
            if step and step % config.cancel_check_every == 0 and stop_requested():
                return result("cancelled", None)
            images = images.to(device, non_blocking=True, memory_format=memory_format)
            features = None
            with autocast():
                if crowd_layer is not None and crowd_layer.needs_features:
                    # CoNAL mixes its confusions by the image: it reads the pooled features
                    feature_maps = model.forward_features(images)
                    features = model.forward_head(feature_maps, pre_logits=True)
                    logits = model.forward_head(feature_maps)
                else:
                    logits = model(images)
            if crowd_layer is not None:
                loss = crowd_layer.loss(
                    logits,
                    vote_workers[indices].to(device, non_blocking=True),
                    vote_labels[indices].to(device, non_blocking=True),
                    config.crowd_layer_trace_weight,
                    item_weights[indices].to(device) if item_weights is not None else None,
                    features=features,
                )
            else:
                batch_targets = batch_targets.to(device, non_blocking=True)
                loss = soft_cross_entropy(logits, batch_targets, class_weights)
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
        train_loss = float(loss_sum) / max(images_seen, 1)

        if aggnet is not None:
            classifier_probabilities = predict(
                model, train_eval_dataset, batch_size=config.batch_size * 2, device=device
            )
            aggnet.e_step(
                classifier_probabilities.astype(np.float64),
                np.asarray(balance.class_weights) if balance.applied != "none" else None,
            )
            aggnet.m_step()
            train_dataset.set_targets(aggnet.posteriors_)

        holdout_loss = holdout_accuracy = None
        if (
            holdout_dataset is not None
            and holdout_data is not None
            and holdout_data.targets is not None
        ):
            probabilities = predict(
                model, holdout_dataset, batch_size=config.batch_size * 2, device=device
            )
            holdout_loss, holdout_accuracy = holdout_scores(
                probabilities, holdout_data.soft_targets(config.num_classes)
            )

        end_epoch(
            epoch=epoch, started=epoch_started, train_seconds=train_seconds,
            samples_seen=images_seen, train_loss=train_loss, holdout_loss=holdout_loss,
            holdout_accuracy=holdout_accuracy, history=history, checkpoint_path=checkpoint_path,
            checkpoint_format=CHECKPOINT_FORMAT, config=config, model=model, optimizer=optimizer,
            scheduler=scheduler, scaler=scaler, callbacks=callbacks,
            extra_state={
                "crowd_layer": crowd_layer.state_dict() if crowd_layer is not None else None,
                "aggnet": aggnet.state_dict() if aggnet is not None else None,
            },
        )

    model_path = save_model_file(
        model,
        checkpoint_dir / MODEL_NAME,
        {
            "model_name": config.model_name,
            "num_classes": config.num_classes,
            "in_chans": config.in_chans,
            "label_source": config.label_source,
            "preprocessing": {**dataclasses.asdict(evaluation), "augment": False},
        },
    )
    return result("completed", model_path)


# -- pieces the image trainer and MIL (training/engine/mil.py) share ------------------------------


def build_crowd_layer(
    votes: CrowdVotes,
    n_items: int,
    num_classes: int,
    device: torch.device,
    init_confusions: np.ndarray | None,
    init_posteriors: np.ndarray | None,
    smoothing: float | None = None,
    form: str = "confusion_trace",
    init: str = "dawid_skene",
    feature_dim: int | None = None,
) -> tuple[BaseCrowdLayer, torch.Tensor, torch.Tensor]:
    """The crowd layer ``form`` and the padded vote tensors its loss reads by item index.

    ``init="dawid_skene"`` starts it from ``init_confusions``, or from the M-step of
    ``init_posteriors`` with ``smoothing`` (its default when None), or, with neither, from the
    identity (what the layer always did); ``feature_dim`` is needed by CoNAL only.
    """
    if init == "dawid_skene" and init_confusions is None and init_posteriors is not None:
        extra = {} if smoothing is None else {"smoothing": smoothing}
        init_confusions = confusions_from_posteriors(
            np.asarray(init_posteriors, dtype=np.float64), votes, **extra
        )
    if init_confusions is None:
        init = "identity"
    crowd_layer = make_crowd_layer(
        form, init, votes.n_workers, num_classes, init_confusions, feature_dim=feature_dim
    ).to(device)
    padded_workers, padded_labels = votes.padded(n_items)
    return crowd_layer, torch.from_numpy(padded_workers), torch.from_numpy(padded_labels)


def crowd_layer_confusions(
    crowd_layer: BaseCrowdLayer,
    votes: CrowdVotes | None,
    model: torch.nn.Module,
    train_dataset: Any,
    batch_size: int,
    device: torch.device,
) -> np.ndarray:
    """The layer's annotator confusions; the vector forms' are estimated from the classifier's
    probabilities on the training items (see :mod:`training.engine.crowd_layer`)."""
    if crowd_layer.form not in ("vw", "vb", "vw+b") or votes is None:
        return crowd_layer.annotator_confusions()
    probabilities = predict(model, train_dataset, batch_size=batch_size, device=device)
    return crowd_layer.annotator_confusions(probabilities.astype(np.float64), votes)


def build_optimization(
    config: Any, model: torch.nn.Module, crowd_layer: BaseCrowdLayer | None, steps_per_epoch: int,
    use_amp: bool,
) -> tuple[torch.optim.Optimizer, Any, torch.amp.GradScaler]:
    """AdamW (the crowd layer at ``lr * crowd_layer_lr_scale``, undecayed), the schedule over
    ``config.epochs`` and the AMP grad scaler; ``config`` is a TrainConfig or a MILConfig."""
    parameter_groups: list[dict[str, Any]] = [{"params": list(model.parameters())}]
    if crowd_layer is not None:
        parameter_groups.append(
            {
                "params": list(crowd_layer.parameters()),
                "lr": config.lr * config.crowd_layer_lr_scale,
                "weight_decay": 0.0,  # decay would pull confusions toward uniform
            }
        )
    optimizer = torch.optim.AdamW(parameter_groups, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs * steps_per_epoch)
        if config.schedule == "cosine"
        else torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    )
    return optimizer, scheduler, torch.amp.GradScaler("cuda", enabled=use_amp)


def restore_state(
    resumed: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer,
    scheduler: Any, scaler: torch.amp.GradScaler, crowd_layer: BaseCrowdLayer | None,
) -> tuple[list[EpochRecord], int]:
    """Load a checkpoint's shared state; returns its history and the epoch to continue from."""
    model.load_state_dict(resumed["model"])
    optimizer.load_state_dict(resumed["optimizer"])
    scheduler.load_state_dict(resumed["scheduler"])
    scaler.load_state_dict(resumed["scaler"])
    if crowd_layer is not None:
        crowd_layer.load_state_dict(resumed["crowd_layer"])
    return [EpochRecord(**record) for record in resumed["history"]], int(resumed["epoch"])


def soft_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, class_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean over the batch of ``-sum_k w_k t_k log p_k`` (``w`` = 1 without class weights)."""
    terms = targets * F.log_softmax(logits.float(), dim=-1)
    if class_weights is not None:
        terms = terms * class_weights
    return -terms.sum(dim=-1).mean()


def stop_check(callbacks: Any) -> Any:
    """``() -> bool``: whether the callbacks ask the run to stop (never, without should_stop)."""
    check = getattr(callbacks, "should_stop", None)
    return (lambda: bool(check())) if check is not None else (lambda: False)


def _initial_targets(
    config: TrainConfig,
    train_data: ItemSet,
    votes: CrowdVotes | None,
    init_posteriors: np.ndarray | None,
) -> np.ndarray:
    """``[N, K]`` starting soft targets for the label source (crowd layer: unused placeholder)."""
    n_items, num_classes = len(train_data), config.num_classes
    source = config.label_source
    if init_posteriors is not None:
        init_posteriors = np.asarray(init_posteriors, dtype=np.float64)
        if init_posteriors.shape != (n_items, num_classes):
            raise ValueError(
                f"init_posteriors must have shape {(n_items, num_classes)}, got {init_posteriors.shape}"
            )
    if source == "expert":
        if train_data.targets is None:
            raise ValueError("label_source 'expert' needs targets on the training items")
        return train_data.soft_targets(num_classes)
    if source in ("aggnet", "crowd_layer") and votes is None:
        raise ValueError(f"label_source {source!r} needs the crowd votes")
    if source == "dawid_skene":
        if init_posteriors is None:
            raise ValueError(
                "label_source 'dawid_skene' needs init_posteriors (Dawid-Skene posteriors)"
            )
        return (init_posteriors / init_posteriors.sum(axis=1, keepdims=True)).astype(np.float32)
    if init_posteriors is not None:
        shares = init_posteriors
    elif votes is not None:
        shares = votes.vote_fractions(n_items, num_classes)
    elif source == "majority_vote" and train_data.targets is not None:
        shares = train_data.soft_targets(num_classes).astype(np.float64)
    else:
        raise ValueError(f"label_source {source!r} needs votes or init_posteriors")
    if source == "majority_vote":
        # ties go to a seeded random winner rather than always to the lowest class index
        jitter = np.random.default_rng(config.seed).uniform(0, 1e-6, size=shares.shape)
        return np.eye(num_classes, dtype=np.float32)[(shares + jitter).argmax(axis=1)]
    return (shares / shares.sum(axis=1, keepdims=True)).astype(np.float32)


def _check_resumable(checkpoint: dict[str, Any], config: TrainConfig) -> None:
    if checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"unsupported checkpoint format {checkpoint.get('format')!r}")
    saved = checkpoint["config"]
    different = [
        f"{key}: checkpoint {saved.get(key, _RESUME_DEFAULTS.get(key))!r} "
        f"vs now {getattr(config, key)!r}"
        for key in _RESUME_MUST_MATCH
        if saved.get(key, _RESUME_DEFAULTS.get(key)) != getattr(config, key)
    ]
    if different:
        raise CheckpointError("cannot resume, the run's settings changed: " + "; ".join(different))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_epoch(seed: int, epoch: int) -> int:
    """Reseed every generator from ``(seed, epoch)`` and return the epoch's seed: an epoch's
    stream depends on nothing before it, so a resumed run replays exactly the same one."""
    epoch_seed = seed * 100_003 + epoch
    seed_everything(epoch_seed)
    return epoch_seed


def amp_autocast(use_amp: bool) -> Callable[[], AbstractContextManager]:
    """A context factory: fp16 autocast on CUDA when mixed precision is on, else nothing."""
    if use_amp:
        return lambda: torch.autocast(device_type="cuda", dtype=torch.float16)
    return nullcontext


def holdout_scores(probabilities: np.ndarray, expected: np.ndarray) -> tuple[float, float]:
    """An epoch's hold-out cross-entropy against the soft ``expected`` targets, and accuracy."""
    loss = float(-(expected * np.log(np.clip(probabilities, 1e-12, None))).sum(1).mean())
    return loss, float((probabilities.argmax(1) == expected.argmax(1)).mean())


def end_epoch(
    *,
    epoch: int,
    started: float,
    train_seconds: float,
    samples_seen: int,
    train_loss: float,
    holdout_loss: float | None,
    holdout_accuracy: float | None,
    history: list[EpochRecord],
    checkpoint_path: Path,
    checkpoint_format: str,
    config: Any,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    callbacks: Any,
    extra_state: dict[str, Any] | None = None,
) -> EpochRecord:
    """What every trainer does once an epoch (0-based ``epoch``) has run: record it, save the
    checkpoint a resume starts from (the common state, the RNG state and the trainer's
    ``extra_state``), then tell the callbacks. ``samples_seen`` are what the backbone processed
    (images, or MIL's patches), so they measure throughput."""
    record = EpochRecord(
        epoch=epoch + 1,
        train_loss=train_loss,
        holdout_loss=holdout_loss,
        holdout_accuracy=holdout_accuracy,
        seconds=time.perf_counter() - started,
        images_per_second=samples_seen / max(train_seconds, 1e-9),
        learning_rate=float(optimizer.param_groups[0]["lr"]),
    )
    history.append(record)
    save_checkpoint(
        {
            "format": checkpoint_format,
            "epoch": epoch + 1,
            "config": dataclasses.asdict(config),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            **(extra_state or {}),
            "history": [dataclasses.asdict(r) for r in history],
            "rng": _rng_state(),
        },
        checkpoint_path,
    )
    on_epoch_end = getattr(callbacks, "on_epoch_end", None)
    if on_epoch_end is not None:
        on_epoch_end(record)
    return record


def _rng_state() -> dict[str, Any]:
    numpy_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
            "position": int(numpy_state[2]),
            "has_gauss": int(numpy_state[3]),
            "cached_gaussian": float(numpy_state[4]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _restore_rng(state: dict[str, Any]) -> None:
    python_state = state["python"]
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
