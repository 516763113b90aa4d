"""Learning from crowds on PneumoniaMNIST: the same CNN trained from each label source.

Usage::

    .venv/bin/python benchmarks/learning_from_crowds.py --quick      # minutes on a laptop CPU
    .venv/bin/python benchmarks/learning_from_crowds.py              # full train split, 3 seeds
    .venv/bin/python benchmarks/learning_from_crowds.py --subset 1500 --size 48 --epochs 3

The train split gets a simulated crowd: ``--votes`` votes per item from a pool of workers of
whom ``--spammers`` answer at random and the rest are right with a probability drawn uniformly
from ``--accuracy`` (errors uniform), Dawid & Skene's generative model. The CNN (default the
ImageNet-pretrained ``tf_efficientnet_lite0``, images upsampled to ``--size``) is trained from:

* ``expert``: the true train labels (the ceiling),
* ``majority_vote``: hard majority vote,
* ``dawid_skene``: soft Dawid-Skene posteriors,
* ``aggnet``: EM with the CNN in the loop, started from Dawid-Skene,
* ``crowd_layer``: per-worker confusions learned end to end, started from Dawid-Skene,

and scored on the official test split (624 expert-labelled images). Prints hold-out accuracy
mean and standard deviation over ``--seeds`` seeds (each seed draws a new crowd and a new
training run), balanced accuracy, ROC AUC, the accuracy of the training targets against the
truth (for AggNet its final posteriors) and seconds per run. Majority vote and Dawid-Skene
come from ``labeling.aggregation`` (pure NumPy) when it is importable.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from training.engine import (  # noqa: E402
    AggNetEM,
    CrowdVotes,
    ItemSet,
    TrainConfig,
    evaluate,
    train,
)

DATA_DIR = Path(os.environ.get("QUORUM_DATA_DIR", ROOT / ".." / "shared" / "data"))
SOURCES = ("expert", "majority_vote", "dawid_skene", "aggnet", "crowd_layer")
NUM_CLASSES = 2


@dataclass
class Crowd:
    votes: CrowdVotes
    confusions: np.ndarray
    majority_vote: np.ndarray  # [N, K] posteriors
    dawid_skene: np.ndarray  # [N, K] posteriors
    dawid_skene_confusions: np.ndarray
    aggregation: str  # where MV and DS came from


@dataclass
class Scores:
    accuracy: list[float] = field(default_factory=list)
    balanced_accuracy: list[float] = field(default_factory=list)
    roc_auc: list[float] = field(default_factory=list)
    target_accuracy: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)


def worker_pool(
    n_workers: int, spammer_share: float, accuracy: tuple[float, float], rng: np.random.Generator
) -> np.ndarray:
    """``[n_workers, K, K]``: spammers answer uniformly, the others are right w.p. U(accuracy)."""
    n_spammers = int(round(n_workers * spammer_share))
    accuracies = rng.uniform(*accuracy, size=n_workers - n_spammers)
    confusions = np.empty((n_workers, NUM_CLASSES, NUM_CLASSES))
    eye = np.eye(NUM_CLASSES)
    confusions[: len(accuracies)] = accuracies[:, None, None] * eye + (
        1 - accuracies[:, None, None]
    ) * (1 - eye) / (NUM_CLASSES - 1)
    confusions[len(accuracies) :] = 1.0 / NUM_CLASSES
    return confusions[rng.permutation(n_workers)]


def simulate(
    truth: np.ndarray, confusions: np.ndarray, votes_per_item: int, seed: int
) -> CrowdVotes:
    try:
        from labeling.aggregation.simulation import simulate_votes

        items, workers, labels = simulate_votes(truth, confusions, votes_per_item, seed=seed)
    except ImportError:
        rng = np.random.default_rng(seed)
        chosen = np.argsort(rng.random((len(truth), len(confusions))), axis=1)[:, :votes_per_item]
        items = np.repeat(np.arange(len(truth)), votes_per_item)
        workers = chosen.reshape(-1)
        cdf = confusions[workers, truth[items]].cumsum(axis=1)
        labels = np.minimum((rng.random(len(items))[:, None] >= cdf).sum(axis=1), NUM_CLASSES - 1)
    return CrowdVotes(items, workers, labels, n_workers=len(confusions))


def aggregate(votes: CrowdVotes, n_items: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """(majority-vote posteriors, Dawid-Skene posteriors, Dawid-Skene confusions, origin)."""
    try:
        from labeling.aggregation import DawidSkene, MajorityVote, VoteMatrix

        matrix = VoteMatrix.from_codes(
            votes.items,
            votes.workers,
            votes.labels,
            tasks=np.arange(n_items),
            workers=np.arange(votes.n_workers),
            classes=np.arange(NUM_CLASSES),
        )
        majority = MajorityVote().fit(matrix)
        dawid_skene = DawidSkene().fit(matrix)
        order = np.argsort(np.asarray(dawid_skene.tasks_))
        worker_order = np.argsort(np.asarray(dawid_skene.workers_))
        return (
            np.asarray(majority.posteriors_)[np.argsort(np.asarray(majority.tasks_))],
            np.asarray(dawid_skene.posteriors_)[order],
            np.asarray(dawid_skene.confusions_)[worker_order],
            "labeling.aggregation",
        )
    except ImportError:
        shares = votes.vote_fractions(n_items, NUM_CLASSES)
        em = AggNetEM(votes, shares)
        for _ in range(50):  # Dawid-Skene is AggNet's EM with a flat classifier
            em.e_step(np.full_like(shares, 1.0 / NUM_CLASSES))
            em.m_step()
        return shares, em.posteriors_, em.confusions_, "engine fallback (flat prior EM)"


def make_crowd(truth: np.ndarray, args: argparse.Namespace, seed: int) -> Crowd:
    rng = np.random.default_rng(seed)
    confusions = worker_pool(args.workers, args.spammers, tuple(args.accuracy), rng)
    votes = simulate(truth, confusions, args.votes, seed)
    majority, dawid_skene, ds_confusions, origin = aggregate(votes, len(truth))
    return Crowd(votes, confusions, majority, dawid_skene, ds_confusions, origin)


def run_source(
    source: str,
    args: argparse.Namespace,
    seed: int,
    train_items: ItemSet,
    truth: np.ndarray,
    holdout: ItemSet,
    crowd: Crowd,
) -> tuple[dict, float, float]:
    config = TrainConfig(
        label_source=source,
        num_classes=NUM_CLASSES,
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
    started = time.perf_counter()
    if source == "expert":
        result = train(config, ItemSet(train_items.images, truth), holdout)
        target_accuracy = 1.0
    else:
        init = crowd.majority_vote if source == "majority_vote" else crowd.dawid_skene
        crowd_aware = source in ("aggnet", "crowd_layer")
        result = train(
            config,
            train_items,
            holdout,
            votes=crowd.votes if crowd_aware else None,
            init_posteriors=init,
            init_confusions=crowd.dawid_skene_confusions if crowd_aware else None,
        )
        final = result.train_posteriors if result.train_posteriors is not None else init
        target_accuracy = float((final.argmax(1) == truth).mean())
    seconds = time.perf_counter() - started
    report = evaluate(result.holdout_targets, result.holdout_probabilities)
    return report.to_dict(), target_accuracy, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="600 train items, 32 px, 2 epochs, 1 seed, 312 hold-out images",
    )
    parser.add_argument("--subset", type=int, default=0, help="train items (0: all 4708)")
    parser.add_argument("--holdout-subset", type=int, default=0, help="test images (0: all 624)")
    parser.add_argument("--size", type=int, default=64, help="image size fed to the CNN")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--augment", action="store_true")
    parser.add_argument("--model", default="tf_efficientnet_lite0")
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--sources", default=",".join(SOURCES))
    parser.add_argument("--votes", type=int, default=5, help="votes per item")
    parser.add_argument("--workers", type=int, default=20, help="size of the worker pool")
    parser.add_argument("--spammers", type=float, default=0.2, help="share of random voters")
    parser.add_argument(
        "--accuracy",
        type=float,
        nargs=2,
        default=(0.6, 0.8),
        help="accuracy range of the other workers",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers")
    parser.add_argument("--cache-dir", default=None, help="converted-weights cache")
    args = parser.parse_args()
    if args.quick:
        args.subset = args.subset or 600
        args.holdout_subset = args.holdout_subset or 312
        args.size, args.epochs, args.seeds = 32, 2, 1
    sources = [s.strip() for s in args.sources.split(",") if s.strip()]
    unknown = set(sources) - set(SOURCES)
    if unknown:
        parser.error(f"unknown sources {sorted(unknown)}; choose from {SOURCES}")
    if args.threads:
        torch.set_num_threads(args.threads)

    path = DATA_DIR / "pneumoniamnist" / "pneumoniamnist_28.npz"
    if not path.is_file():
        sys.exit(f"PneumoniaMNIST not found at {path}; set QUORUM_DATA_DIR")
    with np.load(path) as archive:
        train_images, train_labels = archive["train_images"], archive["train_labels"][:, 0]
        test_images, test_labels = archive["test_images"], archive["test_labels"][:, 0]

    results = {source: Scores() for source in sources}
    label_quality: list[tuple[float, float]] = []
    origin = ""
    for seed in range(args.seeds):
        rng = np.random.default_rng(1000 + seed)
        train_index = rng.permutation(len(train_labels))[: args.subset or None]
        test_index = np.sort(rng.permutation(len(test_labels))[: args.holdout_subset or None])
        truth = train_labels[train_index].astype(np.int64)
        train_items = ItemSet(list(train_images[train_index]))
        holdout = ItemSet(list(test_images[test_index]), test_labels[test_index])
        crowd = make_crowd(truth, args, seed)
        origin = crowd.aggregation
        label_quality.append(
            (
                float((crowd.majority_vote.argmax(1) == truth).mean()),
                float((crowd.dawid_skene.argmax(1) == truth).mean()),
            )
        )
        for source in sources:
            report, target_accuracy, seconds = run_source(
                source, args, seed, train_items, truth, holdout, crowd
            )
            scores = results[source]
            scores.accuracy.append(report["accuracy"])
            scores.balanced_accuracy.append(report["balanced_accuracy"])
            scores.roc_auc.append(report["roc_auc"] or float("nan"))
            scores.target_accuracy.append(target_accuracy)
            scores.seconds.append(seconds)
            print(
                f"  seed {seed} {source:<14} hold-out accuracy {report['accuracy']:.4f} "
                f"({seconds:.0f} s)",
                flush=True,
            )

    n_train = args.subset or len(train_labels)
    n_holdout = args.holdout_subset or len(test_labels)
    print()
    print(
        f"PneumoniaMNIST, {n_train} train items with a simulated crowd ({args.votes} votes/item, "
        f"{args.workers} workers, {args.spammers:.0%} spammers, others {args.accuracy[0]:.0%}-"
        f"{args.accuracy[1]:.0%} right); hold-out: {n_holdout} test images with expert labels"
    )
    print(
        f"{args.model} ({args.weights}) at {args.size} px, {args.epochs} epochs, batch "
        f"{args.batch_size}, lr {args.lr}, {args.seeds} seed(s), device "
        f"{'cuda' if torch.cuda.is_available() else 'cpu'}; MV/DS from {origin}"
    )
    mv, ds = np.mean(label_quality, axis=0)
    print(f"training-label accuracy vs truth: majority vote {mv:.4f}, Dawid-Skene {ds:.4f}")
    print()
    header = (
        f"{'label source':<14} {'accuracy':>17} {'balanced acc':>13} {'ROC AUC':>8} "
        f"{'target acc':>11} {'s/run':>7}"
    )
    print(header)
    print("-" * len(header))
    for source in sources:
        s = results[source]
        print(
            f"{source:<14} {np.mean(s.accuracy):>8.4f} ± {np.std(s.accuracy):.4f} "
            f"{np.mean(s.balanced_accuracy):>13.4f} {np.nanmean(s.roc_auc):>8.4f} "
            f"{np.mean(s.target_accuracy):>11.4f} {np.mean(s.seconds):>7.0f}"
        )
    if "expert" in results:
        expert = np.mean(results["expert"].accuracy)
        crowd_sources = [s for s in sources if s != "expert"]
        if crowd_sources:
            best = max(crowd_sources, key=lambda s: np.mean(results[s].accuracy))
            gap = 100 * (expert - np.mean(results[best].accuracy))
            print(f"\nbest crowd-trained source: {best}, {gap:+.2f} points behind expert-only")
    if "majority_vote" in results:
        mv_accuracy = np.mean(results["majority_vote"].accuracy)
        for source in ("aggnet", "crowd_layer"):
            if source in results:
                delta = 100 * (np.mean(results[source].accuracy) - mv_accuracy)
                print(f"{source} vs majority vote: {delta:+.2f} points")


if __name__ == "__main__":
    main()
