"""Label efficiency: accuracy against votes spent, fixed overlap against adaptive redundancy.

Usage::

    .venv/bin/python benchmarks/label_efficiency.py                       # five real crowds + PneumoniaMNIST
    .venv/bin/python benchmarks/label_efficiency.py --datasets face_sentiment --seeds 0 --no-model
    .venv/bin/python benchmarks/label_efficiency.py --datasets none        # the model-in-the-loop part only

Each real crowd in ``$QUORUM_DATA_DIR/crowd`` is replayed from the votes that really exist:
every item's votes are shuffled once per seed, and a policy only decides which item gets its
next one (an item is out when its real votes are used up). Policies
(``labeling.aggregation.adaptive.replay_budget``):

* ``fixed MV`` / ``fixed DS``: round robin, so fixed overlap k at every multiple of the item
  count, aggregated by majority vote / Dawid-Skene;
* ``adaptive DS``: one vote per item, then the next votes go to the items where one or two more
  votes from the crowd's average worker raise the chance of a right label the most (expected
  gain, ``adaptive.expected_gain``, under the posterior so far); re-aggregated every 1% of the
  pool, by Dawid-Skene, or by majority vote while fewer than 50 votes could be held out to
  compare methods on (what the product's ``auto`` does then: at one vote per item);
* ``adaptive DS, fewest votes`` (real crowds): Dawid-Skene, the items it is not yet sure of (top
  posterior below the threshold) get the next votes in the crowd queue's order (fewest votes
  first, among equals the least certain), then the rest (the previous policy);
* ``adaptive DS + model`` (PneumoniaMNIST only, below): expected gain on the crowd's Dawid-Skene
  posterior combined with a model as one more annotator with a learned confusion
  (``labeling.aggregation.model_annotator.ModelAnnotator``, the crowd held fixed; with
  ``--joint-model`` one EM over the workers and the model, ``dawid_skene_with_model``, as a
  Dawid-Skene aggregation run does: about 10 min per seed on 2 shared cores).

Curves start at one vote per item (every policy spends that first). Accuracy is on the tasks
with a truth, averaged over the seeds. The summary says, per set, the accuracy of majority vote
on every vote (the target), the share of the votes adaptive DS needed to reach it, where
adaptive redundancy would stop asking (every item confident at ``--threshold``, 0.95, on at least
2 votes, as the crowd service asks, or out of votes) and whether the adaptive curve is at or above both fixed-overlap curves at every 5% mark.

PneumoniaMNIST (the model-in-the-loop part): the 4,708 training images, a simulated crowd of 40
workers with class-dependent accuracies (each worker's accuracy per class uniform in 0.55-0.90,
4 of them spammers), 5 votes per image from distinct workers. The model is a logistic
regression on the images downsampled to 14x14 (196 pixels), trained on the crowd's Dawid-Skene
labels after the first vote of every image (no truth), its probabilities out of fold (5 folds:
each image is predicted by a model that did not see it).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from aggregation import DATA_DIR, DATASETS, load  # noqa: E402
from tqdm import tqdm  # noqa: E402

from labeling.aggregation import DawidSkene, MajorityVote, VoteMatrix  # noqa: E402
from labeling.aggregation.adaptive import (  # noqa: E402
    BudgetCurve,
    VotePool,
    draw_vote_pool,
    replay_budget,
)
from labeling.aggregation.base import code_votes  # noqa: E402
from labeling.aggregation.dawid_skene import warm_up  # noqa: E402
from labeling.aggregation.model_annotator import (  # noqa: E402
    ModelAnnotator,
    dawid_skene_with_model,
)
from labeling.aggregation.selection import MIN_HIDDEN_VOTES, held_out_folds  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
TARGET_SHARE = 0.60
THRESHOLD = 0.95


@dataclass
class SetResult:
    name: str
    n_items: int
    n_votes: int
    curves: dict[str, list[BudgetCurve]]  # policy -> one curve per seed


def majority(votes: VoteMatrix, counts: np.ndarray) -> np.ndarray:
    model = MajorityVote().fit(votes)
    # scored by its own labels: a tie goes to the class Dawid-Skene prefers (MajorityVote's
    # default), not to the first class the argmax of the shares would give it
    label = pd.Index(model.classes_).get_indexer(model.labels_.to_numpy())
    return model.posteriors_ + 1e-9 * np.eye(votes.n_classes)[label]


def dawid_skene(votes: VoteMatrix, counts: np.ndarray) -> np.ndarray:
    return DawidSkene().fit(votes).posteriors_


def dawid_skene_or_majority(votes: VoteMatrix, counts: np.ndarray) -> np.ndarray:
    """Dawid-Skene, but majority vote while too few votes can be held out to compare methods
    on (the product's ``auto`` falls back to majority vote then, ``selection.MIN_HIDDEN_VOTES``):
    with one vote per task Dawid-Skene learns each worker's confusion from a vote or two."""
    if (held_out_folds(votes) >= 0).sum() < MIN_HIDDEN_VOTES:
        return majority(votes, counts)
    return dawid_skene(votes, counts)


def with_model(probabilities: np.ndarray, joint: bool):
    def aggregate(votes: VoteMatrix, counts: np.ndarray) -> np.ndarray:
        crowd = DawidSkene().fit(votes).posteriors_
        if joint:
            # as an aggregation run of Dawid-Skene does: one EM over the workers and the model
            return dawid_skene_with_model(votes, probabilities, crowd)[0]
        return ModelAnnotator().fit_combine(crowd, probabilities, has_crowd=counts > 0)

    return aggregate


def replay(
    name: str,
    pools: list[VotePool],
    truth: np.ndarray,
    policies: dict[str, tuple[str, object]],
    step: float,
    threshold: float = THRESHOLD,
    lookahead: int = 2,
) -> SetResult:
    available = pools[0].available
    n_items, total = len(available), int(available.sum())
    # 1% steps from one vote per item to the whole pool (the 5% marks are a subset)
    marks = sorted({n_items, total, *np.linspace(0, total, int(round(1 / step)) + 1).astype(int)})
    marks = [m for m in marks if m >= n_items]
    batch = max(1, int(total * step))
    curves: dict[str, list[BudgetCurve]] = {p: [] for p in policies}
    todo = [(p, s) for s in range(len(pools)) for p in policies]
    for policy, seed in tqdm(todo, desc=name, leave=False):
        kind, aggregate = policies[policy]
        fixed_marks = [m for m in marks if m in _five_percent(marks, total, n_items)]
        # kind: "fixed", or the adaptive policy's ordering (adaptive.ORDERINGS)
        curve = replay_budget(
            pools[seed], truth, aggregate, "fixed" if kind == "fixed" else "adaptive",
            checkpoints=fixed_marks if kind == "fixed" else marks,
            batch=batch, min_votes=1, threshold=threshold, seed=seed, stop_min_votes=2,
            lookahead=lookahead,
            ordering="fewest_votes" if kind == "fixed" else kind,
        )  # fmt: skip
        curve.policy = policy
        curves[policy].append(curve)
    return SetResult(name, n_items, total, curves)


def _five_percent(marks: list[int], total: int, n_items: int) -> set[int]:
    grid = {int(x) for x in np.linspace(0, total, 21)}
    return {m for m in marks if m in grid or m in (n_items, total)}


def mean_curve(curves: list[BudgetCurve], marks: list[int]) -> np.ndarray:
    return np.array([[c.accuracy_at(m) for m in marks] for c in curves]).mean(axis=0)


def real_set(
    name: str, seeds: list[int], step: float, threshold: float = THRESHOLD, lookahead: int = 2
) -> SetResult:
    frame, truth_series = load(name)
    votes = code_votes(frame)
    classes = list(votes.classes)
    truth = np.full(votes.n_tasks, -1, dtype=np.int64)
    rows = np.searchsorted(votes.tasks, truth_series.index.to_numpy())
    present = (rows < votes.n_tasks) & (
        votes.tasks[np.minimum(rows, votes.n_tasks - 1)] == truth_series.index.to_numpy()
    )
    # a truth outside the voted classes can never be matched: code it past the last class
    codes = np.array([classes.index(t) if t in classes else len(classes) for t in truth_series])
    truth[rows[present]] = codes[present]
    pools = [VotePool.from_votes(votes, seed) for seed in seeds]
    policies = {
        "fixed MV": ("fixed", majority),
        "fixed DS": ("fixed", dawid_skene),
        "adaptive DS": ("expected_gain", dawid_skene_or_majority),
        "adaptive DS, fewest votes": ("fewest_votes", dawid_skene),
    }
    return replay(name, pools, truth, policies, step, threshold, lookahead)


def pneumonia_set(
    seeds: list[int],
    step: float,
    with_model_policy: bool,
    threshold: float = THRESHOLD,
    joint: bool = False,
    lookahead: int = 2,
) -> SetResult:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    data = np.load(DATA_DIR / "pneumoniamnist" / "pneumoniamnist_28.npz")
    images = data["train_images"].astype(np.float64) / 255.0
    truth = data["train_labels"].ravel().astype(np.int64)
    pixels = images.reshape(len(images), 14, 2, 14, 2).mean(axis=(2, 4)).reshape(len(images), -1)
    policies: dict[str, tuple[str, object]] = {
        "fixed MV": ("fixed", majority),
        "fixed DS": ("fixed", dawid_skene),
        "adaptive DS": ("expected_gain", dawid_skene_or_majority),
    }
    pools = []
    models = []
    for seed in seeds:
        rng = np.random.default_rng(1000 + seed)
        n_workers, k = 40, 2
        accuracy = rng.uniform(0.55, 0.90, size=(n_workers, k))
        confusions = np.empty((n_workers, k, k))
        confusions[:, 0, 0], confusions[:, 0, 1] = accuracy[:, 0], 1 - accuracy[:, 0]
        confusions[:, 1, 1], confusions[:, 1, 0] = accuracy[:, 1], 1 - accuracy[:, 1]
        confusions[:4] = 0.5
        pool = draw_vote_pool(truth, confusions, k_max=5, seed=rng)
        pools.append(pool)
        if with_model_policy:
            # the first training run: the crowd's labels after one vote per image, no truth
            first = pool.take(np.ones(len(truth), dtype=np.int64))
            labels = DawidSkene().fit(first).posteriors_.argmax(axis=1)
            probabilities = np.empty((len(truth), k))
            folds = StratifiedKFold(5, shuffle=True, random_state=seed)
            for train, held in folds.split(pixels, labels):
                model = LogisticRegression(C=0.1, max_iter=2000).fit(pixels[train], labels[train])
                probabilities[held] = model.predict_proba(pixels[held])
            models.append(probabilities)
            acc = float((probabilities.argmax(axis=1) == truth).mean())
            print(
                f"  pneumoniamnist seed {seed}: model out-of-fold accuracy {acc:.3f}",
                file=sys.stderr,
            )
    result = replay("pneumoniamnist", pools, truth, policies, step, threshold, lookahead)
    if not with_model_policy:
        return result
    model_curves = []
    for seed, probabilities in enumerate(models):
        one = replay(
            "pneumoniamnist+model", [pools[seed]], truth,
            {"adaptive DS + model": ("expected_gain", with_model(probabilities, joint))},
            step, threshold, lookahead,
        )  # fmt: skip
        model_curves += one.curves["adaptive DS + model"]
    result.curves["adaptive DS + model"] = model_curves
    return result


def summarise(result: SetResult) -> dict:
    n, total = result.n_items, result.n_votes
    marks5 = sorted(_five_percent([*range(n, total + 1)], total, n)) if total > n else [total]
    fixed_mv = mean_curve(result.curves["fixed MV"], marks5)
    fixed_ds = mean_curve(result.curves["fixed DS"], marks5)
    target = float(fixed_mv[-1])
    adaptive = result.curves["adaptive DS"]
    fine = sorted({v for c in adaptive for v in c.votes})
    mean_adaptive = mean_curve(adaptive, fine)
    reached = [v for v, a in zip(fine, mean_adaptive, strict=True) if a >= target - 1e-12]
    share = reached[0] / total if reached else None
    above = mean_curve(adaptive, marks5) >= np.maximum(fixed_mv, fixed_ds) - 1e-12
    stops = [c.stop_votes / total for c in adaptive if c.stop_votes is not None]
    stop_acc = [c.stop_accuracy for c in adaptive if c.stop_accuracy is not None]
    out = {
        "name": result.name,
        "items": n,
        "votes": total,
        "target": target,
        "fixed_ds_all": float(fixed_ds[-1]),
        "adaptive_all": float(mean_adaptive[-1]),
        "share": share,
        "at_60": float(mean_curve(adaptive, [int(TARGET_SHARE * total)])[0]),
        "mv_at_60": float(mean_curve(result.curves["fixed MV"], [int(TARGET_SHARE * total)])[0]),
        "ds_at_60": float(mean_curve(result.curves["fixed DS"], [int(TARGET_SHARE * total)])[0]),
        "above": bool(above.all()),
        "below_at": [round(m / total, 2) for m, ok in zip(marks5, above, strict=True) if not ok],
        "stop": float(np.mean(stops)) if stops else None,
        "stop_acc": float(np.mean(stop_acc)) if stop_acc else None,
        "marks": marks5,
        "curves": {p: mean_curve(c, marks5) for p, c in result.curves.items()},
    }
    if "adaptive DS + model" in result.curves:
        model = result.curves["adaptive DS + model"]
        mean_model = mean_curve(model, fine)
        hit = [v for v, a in zip(fine, mean_model, strict=True) if a >= target - 1e-12]
        out["model_share"] = hit[0] / total if hit else None
        out["model_at_60"] = float(mean_curve(model, [int(TARGET_SHARE * total)])[0])
        out["model_above"] = bool(
            (mean_curve(model, marks5) >= np.maximum(fixed_mv, fixed_ds) - 1e-12).all()
        )
    return out


def fmt(x: float | None, pct: bool = False) -> str:
    if x is None:
        return "not reached"
    return f"{100 * x:.0f}%" if pct else f"{x:.3f}"


def print_tables(summaries: list[dict]) -> None:
    print()
    print(
        "| set | items | votes | MV all votes (target) | DS all votes | adaptive DS reaches target at "
        "| at 60% of votes: fixed MV / fixed DS / adaptive DS | adaptive >= both fixed at every 5% mark "
        "| adaptive stops at (acc) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for s in summaries:
        below = (
            "yes"
            if s["above"]
            else "no (below at " + ", ".join(f"{100 * b:.0f}%" for b in s["below_at"]) + ")"
        )
        print(
            f"| {s['name']} | {s['items']:,} | {s['votes']:,} | {fmt(s['target'])} | {fmt(s['fixed_ds_all'])} "
            f"| {fmt(s['share'], pct=True)} | {fmt(s['mv_at_60'])} / {fmt(s['ds_at_60'])} / {fmt(s['at_60'])} "
            f"| {below} | {fmt(s['stop'], pct=True)} ({fmt(s['stop_acc'])}) |"
        )
    for s in summaries:
        if "model_share" in s:
            print()
            print(
                f"{s['name']} with the model: adaptive DS + model reaches the target at "
                f"{fmt(s['model_share'], pct=True)} of the votes, {fmt(s['model_at_60'])} at 60% "
                f"(adaptive DS {fmt(s['at_60'])}); at or above both fixed curves everywhere: "
                f"{'yes' if s['model_above'] else 'no'}"
            )
    print()
    for s in summaries:
        policies = list(s["curves"])
        print(f"{s['name']}: accuracy by share of the votes spent")
        print("| votes | " + " | ".join(policies) + " |")
        print("|---|" + "---|" * len(policies))
        for j, m in enumerate(s["marks"]):
            cells = " | ".join(f"{s['curves'][p][j]:.3f}" for p in policies)
            print(f"| {100 * m / s['votes']:.0f}% ({m:,}) | {cells} |")
        print()


def plot(summaries: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(15, 9))
    for ax, s in zip(axes.ravel(), summaries, strict=False):
        shares = np.array(s["marks"]) / s["votes"]
        for policy, curve in s["curves"].items():
            ax.plot(shares, curve, marker=".", label=policy)
        ax.axhline(s["target"], color="grey", linestyle=":", label="MV, all votes")
        ax.axvline(TARGET_SHARE, color="grey", linestyle="--", linewidth=0.8)
        ax.set_title(f"{s['name']} ({s['votes']:,} votes)")
        ax.set_xlabel("share of the votes spent")
        ax.set_ylabel("accuracy")
        ax.legend(fontsize=8)
    for ax in axes.ravel()[len(summaries) :]:
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    print(f"plot: {path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(DATASETS), help="real crowds, or 'none'")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument(
        "--step", type=float, default=0.01, help="re-aggregate every this share of the pool"
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=THRESHOLD,
        help="posterior at which adaptive redundancy stops asking for an item",
    )
    parser.add_argument(
        "--lookahead", type=int, default=2,
        help="votes ahead the adaptive policy's expected gain looks (adaptive.expected_gain)",
    )  # fmt: skip
    parser.add_argument("--no-model", action="store_true", help="skip the PneumoniaMNIST part")
    parser.add_argument(
        "--joint-model", action="store_true",
        help="model in the loop as one EM with the workers (dawid_skene_with_model)",
    )  # fmt: skip
    parser.add_argument("--plot", type=Path, default=RESULTS / "label_efficiency.png")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    warm_up()
    summaries = []
    start = time.perf_counter()
    for name in [d for d in args.datasets.split(",") if d and d != "none"]:
        if not (DATA_DIR / "crowd" / name / "answer.csv").exists():
            print(f"  {name}: missing under {DATA_DIR}, skipped", file=sys.stderr)
            continue
        result = real_set(name, seeds, args.step, args.threshold, args.lookahead)
        summaries.append(summarise(result))
        print(f"  {name} done ({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
    if not args.no_model:
        if (DATA_DIR / "pneumoniamnist" / "pneumoniamnist_28.npz").exists():
            summaries.append(
                summarise(
                    pneumonia_set(
                        seeds, args.step, True, args.threshold, args.joint_model, args.lookahead
                    )
                )
            )
        else:
            print("  pneumoniamnist: missing, skipped", file=sys.stderr)
    print_tables(summaries)
    if summaries and args.plot:
        plot(summaries, args.plot)


if __name__ == "__main__":
    main()
