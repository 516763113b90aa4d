"""Learning from crowds: the same classifier trained from each label source, on a realistic crowd.

Usage::

    # the table of the closing note: frozen ImageNet features, both datasets, 3 seeds
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/learning_from_crowds.py
    # the network trained end to end (the product's run) on PneumoniaMNIST, a few sources
    .venv/bin/python benchmarks/learning_from_crowds.py --backbone finetune \\
        --datasets pneumoniamnist --sources expert,dawid_skene,crowd_layer/mw/identity
    .venv/bin/python benchmarks/learning_from_crowds.py --quick      # minutes on a laptop CPU
    .venv/bin/python benchmarks/learning_from_crowds.py --crowd uniform --votes 5   # round one

Datasets (``--datasets``): PneumoniaMNIST (all 4,708 train images, upsampled to ``--size``;
the official 624 test images are the expert hold-out) and BCCD's three-class cell crops (RBC,
WBC, platelet: one square crop per expert box, the smears of ``ImageSets/Main/test.txt`` are
the hold-out, the others the training items).

The crowd (``--crowd``): ``realistic`` (default) is
:func:`labeling.aggregation.simulation.simulate_sparse_crowd`: about 83 annotators of whom each
labels a few percent of the items, 2-3 votes per item (``--votes`` 2.5 on average), a long tail
of skill (near-experts, a mediocre majority, some pairing one class with another, spammers)
and class-dependent confusions drawn per annotator. ``uniform`` is round one's crowd:
``--votes`` votes per item from ``--workers`` workers, ``--spammers`` of them random, the others
right with a probability in ``--accuracy``.

Label sources (``--sources``, default all): ``expert`` (the true labels: the ceiling),
``majority_vote`` (hard), ``dawid_skene`` (soft posteriors), ``aggnet`` (EM with the classifier
in the loop, from Dawid-Skene), ``crossfit_em`` (the same EM with each item's classifier prior
predicted by a head trained on the other folds, :mod:`training.engine.crossfit_em`; frozen
backbone only), ``crowd_layer/<form>/<init>`` for every form of
:mod:`training.engine.crowd_layer` (``confusion_trace``, ``mw``, ``vw``, ``vb``, ``vw+b``,
``conal``) and init (``identity``, ``dawid_skene``), and ``auto``: the crowd-trained variant
that :func:`training.engine.selection.pick_by_validation` picks on ``--validation`` training
items whose expert answer is known (as gold questions would be), scored on the hold-out.

Backbone (``--backbone``): ``frozen`` (default) computes the ImageNet-pretrained
``tf_efficientnet_lite0``'s pooled features once per dataset and size (cached under
``$QUORUM_VAR_DIR/benchmarks/``, default ``var/benchmarks/``) and trains a small head (one
hidden layer of ``--hidden`` units) + the crowd model on them for every source: what fits a
2-core CPU for 3 seeds x 14 sources x 2 datasets. The product's run (``finetune``, the
engine's :func:`training.engine.train`) fine-tunes the whole network end to end with the same
crowd layers; that path is slow on a CPU.

Prints one table per dataset: hold-out accuracy and balanced accuracy, mean ± standard
deviation over ``--seeds`` seeds (each seed draws a new crowd and a new initialisation), ROC
AUC, and the share of the gap between Dawid-Skene-soft and expert training each source closes.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402
from tqdm import tqdm  # noqa: E402

from labeling.aggregation import DawidSkene, MajorityVote, VoteMatrix  # noqa: E402
from labeling.aggregation.simulation import simulate_sparse_crowd, simulate_votes  # noqa: E402
from training.engine import (  # noqa: E402
    AggNetEM,
    CrowdVotes,
    ItemDataset,
    ItemSet,
    Preprocessing,
    TrainConfig,
    build_model,
    evaluate,
    plan_class_balance,
    train,
)
from training.engine.aggnet import undo_class_weights  # noqa: E402
from training.engine.crossfit_em import cross_fitted_em  # noqa: E402
from training.engine.crowd_layer import (  # noqa: E402
    CROWD_LAYER_FORMS,
    CROWD_LAYER_INITS,
    make_crowd_layer,
)
from training.engine.selection import pick_by_validation  # noqa: E402
from training.engine.trainer import build_optimization, soft_cross_entropy  # noqa: E402

DATA_DIR = Path(os.environ.get("QUORUM_DATA_DIR", ROOT / ".." / "shared" / "data"))
VAR_DIR = Path(os.environ.get("QUORUM_VAR_DIR", ROOT / "var"))
CROWD_LAYER_SOURCES = tuple(
    f"crowd_layer/{form}/{init}" for form in CROWD_LAYER_FORMS for init in CROWD_LAYER_INITS
)
SOURCES = (
    "expert", "majority_vote", "dawid_skene", "aggnet", "crossfit_em", *CROWD_LAYER_SOURCES,
    "auto",
)  # fmt: skip
# round one's names still work: "crowd_layer" is the confusion_trace form from Dawid-Skene
ALIASES = {"crowd_layer": "crowd_layer/confusion_trace/dawid_skene"}
DATASETS = ("pneumoniamnist", "bccd")
BCCD_CLASSES = ("RBC", "WBC", "Platelets")
_BORDER = 400  # pixels around a smear; wider than half the largest box


# --- data -----------------------------------------------------------------------------------


@dataclass
class Dataset:
    name: str
    class_names: tuple[str, ...]
    train_images: list[np.ndarray]
    train_labels: np.ndarray
    test_images: list[np.ndarray]
    test_labels: np.ndarray

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def load_pneumoniamnist() -> Dataset:
    path = DATA_DIR / "pneumoniamnist" / "pneumoniamnist_28.npz"
    if not path.is_file():
        sys.exit(f"PneumoniaMNIST not found at {path}; set QUORUM_DATA_DIR")
    with np.load(path) as archive:
        return Dataset(
            "PneumoniaMNIST",
            ("normal", "pneumonia"),
            list(archive["train_images"]),
            archive["train_labels"][:, 0].astype(np.int64),
            list(archive["test_images"]),
            archive["test_labels"][:, 0].astype(np.int64),
        )


def load_bccd_cells(crop_size: int = 64) -> Dataset:
    """One square crop (the box's longer side plus 10%, centred) per expert box, resized."""
    from PIL import Image, ImageOps

    from labeling.aggregation.regions.datasets import bccd_boxes

    folder = DATA_DIR / "bccd"
    if not folder.is_dir():
        sys.exit(f"BCCD not found at {folder}; set QUORUM_DATA_DIR")
    test_names = set((folder / "ImageSets" / "Main" / "test.txt").read_text().split())
    parts: dict[bool, tuple[list[np.ndarray], list[int]]] = {True: ([], []), False: ([], [])}
    for truth in bccd_boxes(DATA_DIR):
        with Image.open(folder / "JPEGImages" / f"{truth.image}.jpg") as opened:
            # a grey border, so that crops of cells at the edge stay square
            image = ImageOps.expand(opened.convert("RGB"), border=_BORDER, fill=(128, 128, 128))
        images, labels = parts[truth.image in test_names]
        for (x0, y0, x1, y1), name in zip(truth.boxes, truth.classes, strict=True):
            if name not in BCCD_CLASSES:
                continue
            centre_x, centre_y = (x0 + x1) / 2, (y0 + y1) / 2
            half = 0.55 * max(x1 - x0, y1 - y0)
            centre_x, centre_y = centre_x + _BORDER, centre_y + _BORDER
            box = (centre_x - half, centre_y - half, centre_x + half, centre_y + half)
            crop = image.resize((crop_size, crop_size), Image.Resampling.BILINEAR, box=box)
            images.append(np.asarray(crop))
            labels.append(BCCD_CLASSES.index(name))
    return Dataset(
        "BCCD cells",
        BCCD_CLASSES,
        parts[False][0],
        np.array(parts[False][1], dtype=np.int64),
        parts[True][0],
        np.array(parts[True][1], dtype=np.int64),
    )


@torch.no_grad()
def cached_features(dataset: Dataset, args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    """The frozen backbone's pooled features ``(train [N, D], test [M, D])``, cached on disk."""
    tag = f"{dataset.name.replace(' ', '_').lower()}_{args.model}_{args.weights}_{args.size}"
    path = VAR_DIR / "benchmarks" / f"features_{tag}.npz"
    if path.is_file():
        with np.load(path) as archive:
            return archive["train"], archive["test"]
    model, data_config = build_model(
        args.model, dataset.num_classes, args.weights, cache_dir=args.cache_dir
    )
    model.eval()
    preprocessing = Preprocessing.for_model(data_config, args.size, augment=False)
    outputs = []
    for images in (dataset.train_images, dataset.test_images):
        items = ItemDataset(ItemSet(images), dataset.num_classes, preprocessing)
        loader = torch.utils.data.DataLoader(items, batch_size=128)
        chunks = []
        for batch, _, _ in tqdm(loader, desc=f"features {dataset.name}", leave=False):
            chunks.append(model.forward_head(model.forward_features(batch), pre_logits=True))
        outputs.append(torch.cat(chunks).numpy().astype(np.float32))
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, train=outputs[0], test=outputs[1])
    return outputs[0], outputs[1]


def project(
    train_features: np.ndarray, test_features: np.ndarray, components: int, whiten: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Standardise by the training items and keep their first ``components`` principal axes
    (0: all), which cuts the head's cost tenfold; ``whiten`` also scales every kept axis to
    unit variance (a head on whitened features fits noisy labels much less: it narrows the
    Dawid-Skene -> expert gap the crowd models are there to close)."""
    mean, std = train_features.mean(axis=0), train_features.std(axis=0) + 1e-6
    train_features = (train_features - mean) / std
    test_features = (test_features - mean) / std
    if not components or components >= train_features.shape[1]:
        return train_features, test_features
    _, singular, axes = np.linalg.svd(train_features, full_matrices=False)
    basis = axes[:components].T
    if whiten:
        basis = basis / (singular[:components] / np.sqrt(len(train_features)))
    return (
        (train_features @ basis).astype(np.float32),
        (test_features @ basis).astype(np.float32),
    )


# --- the crowd ------------------------------------------------------------------------------


@dataclass
class Crowd:
    votes: CrowdVotes
    confusions: np.ndarray
    majority_vote: np.ndarray  # [N, K] vote shares
    dawid_skene: np.ndarray  # [N, K] posteriors
    dawid_skene_confusions: np.ndarray
    annotators: int


def worker_pool(
    n_workers: int,
    spammer_share: float,
    accuracy: tuple[float, float],
    num_classes: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Round one's pool ``[n_workers, K, K]``: spammers uniform, the rest right w.p. U(accuracy)."""
    n_spammers = int(round(n_workers * spammer_share))
    accuracies = rng.uniform(*accuracy, size=n_workers - n_spammers)
    eye = np.eye(num_classes)
    confusions = np.full((n_workers, num_classes, num_classes), 1.0 / num_classes)
    confusions[: len(accuracies)] = accuracies[:, None, None] * eye + (
        1 - accuracies[:, None, None]
    ) * (1 - eye) / (num_classes - 1)
    return confusions[rng.permutation(n_workers)]


def aggregate(votes: CrowdVotes, n_items: int, num_classes: int) -> tuple[np.ndarray, ...]:
    """(majority-vote shares, Dawid-Skene posteriors, Dawid-Skene confusions)."""
    matrix = VoteMatrix.from_codes(
        votes.items,
        votes.workers,
        votes.labels,
        tasks=np.arange(n_items),
        workers=np.arange(votes.n_workers),
        classes=np.arange(num_classes),
    )
    majority = MajorityVote().fit(matrix)
    dawid_skene = DawidSkene().fit(matrix)
    return (
        np.asarray(majority.posteriors_)[np.argsort(np.asarray(majority.tasks_))],
        np.asarray(dawid_skene.posteriors_)[np.argsort(np.asarray(dawid_skene.tasks_))],
        np.asarray(dawid_skene.confusions_)[np.argsort(np.asarray(dawid_skene.workers_))],
    )


def make_crowd(truth: np.ndarray, num_classes: int, args: argparse.Namespace, seed: int) -> Crowd:
    if args.crowd == "realistic":
        simulated = simulate_sparse_crowd(
            truth, num_classes, n_workers=args.workers, votes_per_item=args.votes, seed=seed
        )
        items, workers, labels = (
            simulated.votes.task_idx,
            simulated.votes.worker_idx,
            simulated.votes.label_idx,
        )
        confusions = simulated.confusions
    else:
        rng = np.random.default_rng(seed)
        confusions = worker_pool(
            args.workers, args.spammers, tuple(args.accuracy), num_classes, rng
        )
        items, workers, labels = simulate_votes(truth, confusions, int(args.votes), seed=seed)
    votes = CrowdVotes(items, workers, labels, n_workers=len(confusions))
    majority, dawid_skene, ds_confusions = aggregate(votes, len(truth), num_classes)
    return Crowd(votes, confusions, majority, dawid_skene, ds_confusions, len(confusions))


def hard_majority(shares: np.ndarray, seed: int) -> np.ndarray:
    """One-hot majority vote, ties to a seeded random winner (as the trainer does)."""
    jitter = np.random.default_rng(seed).uniform(0, 1e-6, size=shares.shape)
    return np.eye(shares.shape[1])[(shares + jitter).argmax(axis=1)]


# --- frozen features + head -----------------------------------------------------------------


class Head(nn.Module):
    """The classifier on frozen features: one hidden layer (its output is CoNAL's ``h(x)``)."""

    def __init__(self, in_features: int, hidden: int, num_classes: int, dropout: float):
        super().__init__()
        self.hidden = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.hidden(features)
        return self.classifier(hidden), hidden


def fit_head(
    source: str,
    train_features: np.ndarray,
    test_features: np.ndarray,
    truth: np.ndarray,
    crowd: Crowd,
    num_classes: int,
    args: argparse.Namespace,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Train the head from ``source``; returns (train probabilities, test probabilities)."""
    torch.manual_seed(seed)
    n_items = len(train_features)
    x_train = torch.from_numpy(train_features)
    x_test = torch.from_numpy(test_features)
    config = TrainConfig(
        num_classes=num_classes,
        epochs=args.epochs,
        lr=args.lr,
        weight_decay=args.weight_decay,
        crowd_layer_lr_scale=args.crowd_layer_lr_scale,
    )
    head = Head(x_train.shape[1], args.hidden, num_classes, args.dropout)
    if source == "expert":
        targets = np.eye(num_classes)[truth]
    elif source == "majority_vote":
        targets = hard_majority(crowd.majority_vote, seed)
    elif source == "crossfit_em":
        targets = crossfit_targets(train_features, truth, crowd, num_classes, args, seed)
    else:  # Dawid-Skene's soft labels; also AggNet's and the crowd layer's starting point
        targets = crowd.dawid_skene
    balance = plan_class_balance("auto", targets)
    class_weights, item_weights = balance.loss_class_weights(torch.device("cpu")), None
    if balance.applied == "loss":
        item_weights = torch.as_tensor(balance.item_weights, dtype=torch.float32)
    target_tensor = torch.as_tensor(targets, dtype=torch.float32)

    crowd_layer = aggnet = None
    trace_weight = 0.0
    if source.startswith("crowd_layer/"):
        _, form, init = source.split("/")
        crowd_layer = make_crowd_layer(
            form, init, crowd.annotators, num_classes,
            crowd.dawid_skene_confusions if init == "dawid_skene" else None,
            feature_dim=args.hidden,
        )  # fmt: skip
        trace_weight = config.crowd_layer_trace_weight
        padded = crowd.votes.padded(n_items)
        vote_workers, vote_labels = (torch.from_numpy(a) for a in padded)
    elif source == "aggnet":
        aggnet = AggNetEM(
            crowd.votes, crowd.dawid_skene, init_confusions=crowd.dawid_skene_confusions
        )

    steps = -(-n_items // args.batch_size)
    optimizer, scheduler, _ = build_optimization(config, head, crowd_layer, steps, False)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(args.epochs):
        head.train()
        for batch in torch.randperm(n_items, generator=generator).split(args.batch_size):
            logits, hidden = head(x_train[batch])
            if crowd_layer is not None:
                loss = crowd_layer.loss(
                    logits,
                    vote_workers[batch],
                    vote_labels[batch],
                    trace_weight,
                    item_weights[batch] if item_weights is not None else None,
                    features=hidden if crowd_layer.needs_features else None,
                )
            else:
                loss = soft_cross_entropy(logits, target_tensor[batch], class_weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        if aggnet is not None:
            aggnet.e_step(
                probabilities(head, x_train).astype(np.float64),
                np.asarray(balance.class_weights) if balance.applied != "none" else None,
            )
            aggnet.m_step()
            target_tensor = torch.as_tensor(aggnet.posteriors_, dtype=torch.float32)
    return probabilities(head, x_train), probabilities(head, x_test)


def crossfit_targets(
    train_features: np.ndarray,
    truth: np.ndarray,
    crowd: Crowd,
    num_classes: int,
    args: argparse.Namespace,
    seed: int,
) -> np.ndarray:
    """Soft targets of :func:`training.engine.crossfit_em.cross_fitted_em` from Dawid-Skene's:
    every fold's head is this benchmark's Dawid-Skene-soft head (``--crossfit-epochs``), trained
    on the other folds' current posteriors."""
    fold_args = argparse.Namespace(**{**vars(args), "epochs": args.crossfit_epochs})

    def fit_predict(
        trained_on: np.ndarray, targets: np.ndarray, held_out: np.ndarray, fold_seed: int
    ) -> np.ndarray:
        fold_crowd = replace(crowd, dawid_skene=targets)  # the "dawid_skene" source's targets
        _, held_out_p = fit_head(
            "dawid_skene", train_features[trained_on], train_features[held_out],
            truth[trained_on], fold_crowd, num_classes, fold_args, fold_seed,
        )  # fmt: skip
        balance = plan_class_balance("auto", targets)
        weights = np.asarray(balance.class_weights) if balance.applied != "none" else None
        return undo_class_weights(held_out_p, weights)

    result = cross_fitted_em(
        crowd.votes, crowd.dawid_skene, fit_predict, crowd.dawid_skene_confusions,
        n_folds=args.crossfit_folds, max_rounds=args.crossfit_rounds, seed=seed,
    )  # fmt: skip
    return result.posteriors


@torch.no_grad()
def probabilities(head: Head, features: torch.Tensor) -> np.ndarray:
    head.eval()
    return head(features)[0].softmax(dim=-1).numpy()


# --- the network end to end (the product's run) --------------------------------------------


def finetune(
    source: str,
    dataset: Dataset,
    truth: np.ndarray,
    crowd: Crowd,
    args: argparse.Namespace,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The engine's trainer end to end; returns (train probabilities, test probabilities)."""
    from training.engine import predict

    form, init = "confusion_trace", "dawid_skene"
    label_source = source
    if source.startswith("crowd_layer/"):
        label_source, form, init = source.split("/")
    config = TrainConfig(
        label_source=label_source,
        crowd_layer_form=form,
        crowd_layer_init=init,
        num_classes=dataset.num_classes,
        model_name=args.model,
        weights=args.weights,
        image_size=args.size,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        augment=args.augment,
        seed=seed,
        threads=args.threads,
        num_workers=args.num_workers,
        cache_dir=args.cache_dir,
    )
    holdout = ItemSet(dataset.test_images, dataset.test_labels)
    if source == "expert":
        train_items = ItemSet(dataset.train_images, truth)
        result = train(config, train_items, holdout)
    else:
        train_items = ItemSet(dataset.train_images)
        init_posteriors = crowd.majority_vote if source == "majority_vote" else crowd.dawid_skene
        crowd_aware = label_source in ("aggnet", "crowd_layer")
        result = train(
            config,
            train_items,
            holdout,
            votes=crowd.votes if crowd_aware else None,
            init_posteriors=init_posteriors,
            init_confusions=crowd.dawid_skene_confusions if crowd_aware else None,
        )
    from training.engine import load_trained_model

    model, preprocessing = load_trained_model(result.model_path)
    train_probabilities = predict(
        model, ItemDataset(train_items, dataset.num_classes, preprocessing), batch_size=128
    )
    return train_probabilities, result.holdout_probabilities


# --- the benchmark --------------------------------------------------------------------------


@dataclass
class Scores:
    accuracy: list[float] = field(default_factory=list)
    balanced_accuracy: list[float] = field(default_factory=list)
    roc_auc: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    picked: list[str] = field(default_factory=list)


def run_dataset(
    dataset: Dataset, sources: list[str], args: argparse.Namespace
) -> tuple[dict[str, Scores], dict[str, float]]:
    results = {source: Scores() for source in sources}
    crowd_stats: dict[str, list[float]] = {"mv": [], "ds": [], "annotators": [], "coverage": []}
    trained = [s for s in sources if s != "auto"]
    if "auto" in sources:  # auto picks among the crowd-trained sources, so it needs them trained
        skipped = (
            ("expert", "auto") if args.backbone == "frozen" else ("expert", "auto", "crossfit_em")
        )
        trained = list(dict.fromkeys(trained + [s for s in SOURCES if s not in skipped]))
    if args.backbone == "frozen":
        train_features, test_features = project(
            *cached_features(dataset, args), args.pca, args.whiten
        )
    progress = tqdm(total=args.seeds * len(trained), desc=dataset.name)
    for seed in range(args.seeds):
        rng = np.random.default_rng(1000 + seed)
        order = rng.permutation(len(dataset.train_labels))[: args.subset or None]
        truth = dataset.train_labels[order]
        crowd = make_crowd(truth, dataset.num_classes, args, seed)
        crowd_stats["mv"].append(
            float((hard_majority(crowd.majority_vote, seed).argmax(1) == truth).mean())
        )
        crowd_stats["ds"].append(float((crowd.dawid_skene.argmax(1) == truth).mean()))
        crowd_stats["annotators"].append(crowd.annotators)
        per_annotator = np.bincount(crowd.votes.workers, minlength=crowd.annotators)
        crowd_stats["coverage"].append(float(np.median(per_annotator) / len(truth)))
        # gold-like validation items: training items whose expert answer is known
        validation = np.random.default_rng(2000 + seed).choice(
            len(truth), size=min(args.validation, len(truth)), replace=False
        )
        validation_probabilities: dict[str, np.ndarray] = {}
        test_probabilities: dict[str, np.ndarray] = {}
        for source in trained:
            started = time.perf_counter()
            if args.backbone == "frozen":
                train_p, test_p = fit_head(
                    source, train_features[order], test_features, truth, crowd,
                    dataset.num_classes, args, seed,
                )  # fmt: skip
            else:
                subset = Dataset(
                    dataset.name, dataset.class_names, [dataset.train_images[i] for i in order],
                    truth, dataset.test_images, dataset.test_labels,
                )  # fmt: skip
                train_p, test_p = finetune(source, subset, truth, crowd, args, seed)
            seconds = time.perf_counter() - started
            test_probabilities[source] = test_p
            if source != "expert":
                validation_probabilities[source] = train_p[validation]
            if source in results:
                record(results[source], dataset, test_p, seconds)
            progress.update()
        if "auto" in results:
            pick = pick_by_validation(validation_probabilities, truth[validation])
            record(results["auto"], dataset, test_probabilities[pick.chosen], 0.0)
            results["auto"].picked.append(pick.chosen)
    progress.close()
    return results, {key: float(np.mean(values)) for key, values in crowd_stats.items()}


def record(scores: Scores, dataset: Dataset, test_p: np.ndarray, seconds: float) -> None:
    report = evaluate(dataset.test_labels, test_p, list(dataset.class_names))
    scores.accuracy.append(report.accuracy)
    scores.balanced_accuracy.append(report.balanced_accuracy)
    scores.roc_auc.append(report.roc_auc if report.roc_auc is not None else float("nan"))
    scores.seconds.append(seconds)


def gap_closed(
    results: dict[str, Scores], source: str, metric: Callable[[Scores], list[float]]
) -> str:
    if "expert" not in results or "dawid_skene" not in results:
        return ""
    expert = np.mean(metric(results["expert"]))
    ds = np.mean(metric(results["dawid_skene"]))
    if expert - ds <= 1e-9:
        return "n/a"
    return f"{100 * (np.mean(metric(results[source])) - ds) / (expert - ds):+.0f}%"


def print_table(
    dataset: Dataset, n_train: int, results: dict[str, Scores], stats: dict[str, float],
    args: argparse.Namespace,
) -> None:  # fmt: skip
    crowd_text = (
        f"realistic sparse crowd: {stats['annotators']:.0f} annotators, {args.votes} votes/item "
        f"on average, median annotator labels {100 * stats['coverage']:.1f}% of the items"
        if args.crowd == "realistic"
        else f"uniform crowd: {args.votes} votes/item, {args.workers} workers, "
        f"{args.spammers:.0%} spammers, others {args.accuracy[0]:.0%}-{args.accuracy[1]:.0%} right"
    )
    backbone = (
        f"frozen {args.model} ({args.weights}) features at {args.size} px"
        + (
            f" (first {args.pca} principal axes{', whitened' if args.whiten else ''})"
            if args.pca
            else ""
        )
        + f" + a {args.hidden}-unit head, {args.epochs} epochs, batch {args.batch_size}, lr {args.lr}"
        if args.backbone == "frozen"
        else f"{args.model} ({args.weights}) fine-tuned end to end at {args.size} px, "
        f"{args.epochs} epochs, lr {args.lr}"
    )
    print()
    print(
        f"{dataset.name}: {n_train} training items, {crowd_text}; hold-out {len(dataset.test_labels)} "
        f"expert-labelled items"
    )
    print(
        f"{backbone}; {args.seeds} seed(s); auto picks on {args.validation} expert-answered training items"
    )
    print(
        f"training labels vs truth: majority vote {stats['mv']:.3f}, Dawid-Skene {stats['ds']:.3f}"
    )
    header = (
        f"{'label source':<40} {'accuracy':>15} {'gap closed':>10} {'balanced acc':>15} "
        f"{'gap closed':>10} {'ROC AUC':>8} {'s/run':>6}"
    )
    print(header)
    print("-" * len(header))
    for source, s in results.items():
        print(
            f"{source:<40} {np.mean(s.accuracy):.3f} ± {np.std(s.accuracy):.3f} "
            f"{gap_closed(results, source, lambda r: r.accuracy):>10} "
            f"{np.mean(s.balanced_accuracy):.3f} ± {np.std(s.balanced_accuracy):.3f} "
            f"{gap_closed(results, source, lambda r: r.balanced_accuracy):>10} "
            f"{np.nanmean(s.roc_auc):>8.3f} {np.mean(s.seconds):>6.1f}"
        )
    crowd_sources = [s for s in results if s not in ("expert", "dawid_skene", "auto")]
    if crowd_sources and "expert" in results and "dawid_skene" in results:
        best = max(crowd_sources, key=lambda s: np.mean(results[s].accuracy))
        print(
            f"best crowd-trained source by accuracy: {best}, closes "
            f"{gap_closed(results, best, lambda r: r.accuracy)} of the Dawid-Skene -> expert gap"
        )
    if "auto" in results:
        print(f"auto picked: {', '.join(results['auto'].picked)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="600 items, 1 seed, few epochs")
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--backbone", choices=("frozen", "finetune"), default="frozen")
    parser.add_argument("--crowd", choices=("realistic", "uniform"), default="realistic")
    parser.add_argument("--subset", type=int, default=0, help="train items (0: all)")
    parser.add_argument("--size", type=int, default=64, help="image size fed to the CNN")
    parser.add_argument("--epochs", type=int, default=None, help="default 20 frozen, 3 finetune")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=None, help="default 256 / 32")
    parser.add_argument("--lr", type=float, default=None, help="default 1e-3 both")
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--pca", type=int, default=0, help="frozen: principal axes kept (0: all)")
    parser.add_argument("--whiten", action="store_true", help="frozen: whiten the axes")
    parser.add_argument("--hidden", type=int, default=128, help="frozen: head hidden units")
    parser.add_argument("--dropout", type=float, default=0.2, help="frozen: head dropout")
    parser.add_argument("--crowd-layer-lr-scale", type=float, default=10.0)
    parser.add_argument("--crossfit-folds", type=int, default=4, help="crossfit_em's folds")
    parser.add_argument("--crossfit-rounds", type=int, default=3, help="crossfit_em's most rounds")
    parser.add_argument(
        "--crossfit-epochs", type=int, default=10, help="crossfit_em: each fold head's epochs"
    )
    parser.add_argument("--validation", type=int, default=100, help="auto's expert items")
    parser.add_argument("--augment", action="store_true")
    parser.add_argument("--model", default="tf_efficientnet_lite0")
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--sources", default=",".join(SOURCES))
    parser.add_argument("--votes", type=float, default=None, help="per item (2.5 / 5)")
    parser.add_argument("--workers", type=int, default=None, help="pool size (auto / 20)")
    parser.add_argument("--spammers", type=float, default=0.2, help="uniform: random voters")
    parser.add_argument("--accuracy", type=float, nargs=2, default=(0.6, 0.8))
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers")
    parser.add_argument("--cache-dir", default=None, help="converted-weights cache")
    args = parser.parse_args()
    frozen = args.backbone == "frozen"
    args.epochs = args.epochs or (20 if frozen else 3)
    args.batch_size = args.batch_size or (256 if frozen else 32)
    args.lr = args.lr or 1e-3
    args.votes = args.votes or (2.5 if args.crowd == "realistic" else 5)
    if args.crowd == "uniform" and args.workers is None:
        args.workers = 20
    if args.quick:
        args.subset = args.subset or 600
        args.seeds = 1
        args.epochs = min(args.epochs, 10 if frozen else 2)
        args.size = 32 if not frozen else args.size
    sources = [ALIASES.get(s.strip(), s.strip()) for s in args.sources.split(",") if s.strip()]
    unknown = set(sources) - set(SOURCES)
    if unknown:
        parser.error(f"unknown sources {sorted(unknown)}; choose from {SOURCES}")
    if not frozen and "crossfit_em" in sources:
        parser.error("crossfit_em trains one head per fold and round: --backbone frozen only")
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    if set(datasets) - set(DATASETS):
        parser.error(f"unknown datasets; choose from {DATASETS}")
    torch.set_num_threads(args.threads or 1)

    for name in datasets:
        dataset = load_pneumoniamnist() if name == "pneumoniamnist" else load_bccd_cells()
        results, stats = run_dataset(dataset, sources, args)
        n_train = min(args.subset or len(dataset.train_labels), len(dataset.train_labels))
        print_table(dataset, n_train, results, stats, args)


if __name__ == "__main__":
    main()
