"""Aggregation benchmark: Quorum's labeling.aggregation against crowd-kit, side by side.

Usage::

    .venv/bin/python benchmarks/aggregation.py                 # every real dataset + 1M and 10M synthetic
    .venv/bin/python benchmarks/aggregation.py --quick         # small datasets, 1M synthetic, no slow peer cells
    .venv/bin/python benchmarks/aggregation.py --datasets face_sentiment,adult2 --synthetic 1M
    .venv/bin/python benchmarks/aggregation.py --skip-slow-peers   # no crowd-kit GLAD/MACE on big sets

Prints one table: per dataset and method, accuracy against the ground truth (on the tasks that
have one) and wall time (time.perf_counter, whole ``fit`` from the vote frame, both sides). For
Dawid-Skene on the synthetic crowds it also splits set-up time from time per EM iteration, at a
fixed 20 iterations (``tol=-1`` for both, so neither stops early) and at each one's own
convergence (``tol=1e-5``). numba's compile (or cache load) happens once before any timing and
is reported separately. Real data is read from ``$QUORUM_DATA_DIR`` (default ``../shared/data``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from labeling.aggregation import GLAD, MACE, DawidSkene, MajorityVote, OneCoinDawidSkene  # noqa: E402
from labeling.aggregation.dawid_skene import warm_up  # noqa: E402
from labeling.aggregation.simulation import confusions_from_accuracy, simulate_votes  # noqa: E402

DATA_DIR = Path(os.environ.get("QUORUM_DATA_DIR", ROOT / ".." / "shared" / "data"))
DATASETS = ["face_sentiment", "product_matching", "web_relevance", "adult2", "trec2011"]
QUICK_DATASETS = ["face_sentiment", "product_matching", "web_relevance"]
METHOD_NAMES = ["MV", "DS", "OneCoin", "GLAD", "MACE"]
# crowd-kit cells known to take minutes on this machine (README: GLAD up to 4 min, MACE 50 s on adult2)
SLOW_PEER = {"GLAD", "MACE"}
SLOW_PEER_VOTES = 50_000


@dataclass
class Row:
    dataset: str
    method: str
    votes: int
    ours_acc: float | None = None
    peer_acc: float | None | str = None
    # crowd-kit run so that a known defect of 1.4.2 does not apply (see ``peer_fixed``)
    fixed_acc: float | None | str = None
    ours_s: float | None = None
    peer_s: float | None | str = None
    notes: list[str] = field(default_factory=list)


def ours(method: str) -> Callable[[], object]:
    return {
        "MV": MajorityVote,
        "DS": DawidSkene,
        "OneCoin": OneCoinDawidSkene,
        "GLAD": GLAD,
        "MACE": MACE,
    }[method]


def peer(method: str) -> Callable[[], object] | None:
    try:
        import crowdkit.aggregation as ck
    except ImportError:
        return None
    return {
        "MV": ck.MajorityVote,
        "DS": ck.DawidSkene,
        "OneCoin": ck.OneCoinDawidSkene,
        "GLAD": ck.GLAD,
        "MACE": ck.MACE,
    }[method]


def consistent_worker_names(votes: pd.DataFrame) -> pd.DataFrame:
    """Workers renamed so that sorted names follow first appearance (crowd-kit 1.4.2's MACE
    indexes its strategies by sorted name but reads them by first-appearance code)."""
    codes, _ = pd.factorize(votes["worker"])
    return votes.assign(worker=[f"w{c:07d}" for c in codes])


def peer_fixed(method: str) -> Callable[[pd.DataFrame], object] | None:
    """crowd-kit run around a defect of 1.4.2, for the methods that have one (README)."""
    try:
        import crowdkit.aggregation as ck
    except ImportError:
        return None
    if method == "DS":
        # its stopping criterion can fall (it counts the class prior once per vote, so it is no
        # lower bound): run all 100 iterations instead of stopping there
        return lambda votes: ck.DawidSkene(n_iter=100, tol=-np.inf).fit(votes)
    if method == "MACE":
        return lambda votes: ck.MACE().fit(consistent_worker_names(votes))
    return None


def load(name: str) -> tuple[pd.DataFrame, pd.Series]:
    folder = DATA_DIR / "crowd" / name
    # keep_default_na=False: trec2011 has a worker literally called "NA" that pandas would drop
    votes = pd.read_csv(folder / "answer.csv", keep_default_na=False, dtype=str)
    truth = pd.read_csv(folder / "truth.csv", keep_default_na=False, dtype=str).set_index("task")[
        "truth"
    ]
    return votes, truth


def accuracy(labels: pd.Series, truth: pd.Series) -> float:
    return float((labels.reindex(truth.index).astype(str) == truth.astype(str)).mean())


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def run_peer(fn: Callable[[], object]) -> tuple[object | None, float | str]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return timed(fn)
    except Exception as exc:  # a failing peer is a result to report, not a crash
        print(
            f"  crowd-kit failed: {type(exc).__name__}: {exc}".splitlines()[0][:200],
            file=sys.stderr,
        )
        if os.environ.get("BENCH_DEBUG"):
            traceback.print_exc()
        return None, "error"


def bench_dataset(name: str, methods: list[str], args: argparse.Namespace) -> list[Row]:
    votes, truth = load(name)
    rows = []
    for method in methods:
        row = Row(name, method, len(votes))
        model, row.ours_s = timed(lambda m=method: ours(m)().fit(votes))
        row.ours_acc = accuracy(model.labels_, truth)
        if hasattr(model, "n_iter_") and method != "MV":
            row.notes.append(f"ours {model.n_iter_} it")
        factory = peer(method)
        if factory is None or args.no_peer:
            row.peer_acc, row.peer_s = "n/a", "n/a"
        elif args.skip_slow_peers and method in SLOW_PEER and len(votes) > SLOW_PEER_VOTES:
            row.peer_acc, row.peer_s = "skipped", "skipped"
        else:
            fitted, row.peer_s = run_peer(lambda f=factory: f().fit(votes))
            if fitted is None:
                row.peer_acc = "error"
            else:
                row.peer_acc = accuracy(fitted.labels_, truth)
                history = getattr(fitted, "loss_history_", None)
                if history is not None and method != "MV":
                    row.notes.append(f"crowd-kit {len(history)} it")
                    if method in ("DS", "OneCoin") and len(history) != model.n_iter_:
                        # the same EM: at crowd-kit's iteration count the two agree
                        same = ours(method)(n_iter=len(history), tol=-1.0).fit(votes)
                        row.notes.append(
                            f"ours at {len(history)} it {accuracy(same.labels_, truth):.3f}"
                        )
            fixed = peer_fixed(method)
            if fixed is not None:
                refit, _ = run_peer(lambda f=fixed: f(votes))
                row.fixed_acc = "error" if refit is None else accuracy(refit.labels_, truth)
        rows.append(row)
        print(f"  {name:17s} {method:8s} done", file=sys.stderr, flush=True)
    return rows


def synthetic(n_votes: int, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """n_votes / 5 tasks x 5 votes, 3 classes, 2,000 workers with accuracy uniform in [0.45, 0.95]."""
    rng = np.random.default_rng(seed)
    n_tasks = n_votes // 5
    truth = rng.integers(0, 3, size=n_tasks)
    conf = confusions_from_accuracy(rng.uniform(0.45, 0.95, size=2000), 3)
    items, workers, labels = simulate_votes(truth, conf, 5, rng)
    return pd.DataFrame({"task": items, "worker": workers, "label": labels}), truth


def synthetic_accuracy(labels: pd.Series, truth: np.ndarray) -> float:
    return float((labels.sort_index().to_numpy() == truth).mean())


def bench_synthetic(label: str, n_votes: int, args: argparse.Namespace) -> list[Row]:
    frame, truth = synthetic(n_votes)
    name = f"synthetic {label}"
    rows = []
    run_peer_here = (
        not args.no_peer and peer("DS") is not None and (n_votes <= 2_000_000 or args.peer_10m)
    )
    for mode, kwargs in (
        ("DS n_iter=20", dict(n_iter=20, tol=-1.0)),
        ("DS tol=1e-5", dict(n_iter=1000, tol=1e-5)),
    ):
        row = Row(name, mode, len(frame))
        model, row.ours_s = timed(lambda kw=kwargs: DawidSkene(**kw).fit(frame))
        row.ours_acc = synthetic_accuracy(model.labels_, truth)
        per_iter = model.em_seconds_ / max(model.n_iter_, 1)
        row.notes.append(
            f"ours {model.n_iter_} it, set-up {row.ours_s - model.em_seconds_:.2f} s, {per_iter * 1e3:.1f} ms/it"
        )
        if run_peer_here:
            ck = peer("DS")
            fitted, row.peer_s = run_peer(lambda kw=kwargs, ck=ck: ck(**kw).fit(frame))
            if fitted is None:
                row.peer_acc = "error"
            else:
                row.peer_acc = synthetic_accuracy(fitted.labels_, truth)
                n_it = len(fitted.loss_history_)
                if mode == "DS n_iter=20":
                    # crowd-kit's set-up (majority vote + first M-step) is what n_iter=0 costs
                    _, setup = run_peer(lambda ck=ck: ck(n_iter=0).fit(frame))
                    if isinstance(setup, float) and isinstance(row.peer_s, float):
                        row.notes.append(
                            f"crowd-kit set-up {setup:.2f} s, {(row.peer_s - setup) / n_it * 1e3:.0f} ms/it"
                        )
                else:
                    row.notes.append(f"crowd-kit {n_it} it")
        else:
            row.peer_acc, row.peer_s = "skipped", "skipped"
        rows.append(row)
        print(f"  {name:17s} {mode} done", file=sys.stderr, flush=True)
    return rows


def fmt(value: float | str | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return f"{value:.{digits}f}"


def speedup(row: Row) -> str:
    if isinstance(row.ours_s, float) and isinstance(row.peer_s, float) and row.ours_s > 0:
        return f"{row.peer_s / row.ours_s:.0f}x"
    return "-"


def render(rows: list[Row], footer: list[str]) -> None:
    header = [
        "dataset",
        "method",
        "votes",
        "acc ours",
        "acc crowd-kit",
        "acc crowd-kit*",
        "time ours (s)",
        "time crowd-kit (s)",
        "speed-up",
        "notes",
    ]
    body = [
        [
            r.dataset,
            r.method,
            f"{r.votes:,}",
            fmt(r.ours_acc),
            fmt(r.peer_acc),
            fmt(r.fixed_acc),
            fmt(r.ours_s, 3),
            fmt(r.peer_s, 2),
            speedup(r),
            "; ".join(r.notes),
        ]
        for r in rows
    ]
    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(
            title="Aggregation: Quorum vs crowd-kit",
            caption="\n".join(footer),
            caption_justify="left",
        )
        for h in header:
            table.add_column(
                h, justify="right" if h not in ("dataset", "method", "notes") else "left"
            )
        for line in body:
            table.add_row(*line)
        Console(width=220).print(table)
    except ImportError:
        widths = [max(len(h), *(len(line[i]) for line in body)) for i, h in enumerate(header)]
        print(" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
        print("-+-".join("-" * w for w in widths))
        for line in body:
            print(" | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)))
        print("\n".join(footer))


def parse_size(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 1_000, "M": 1_000_000}.get(text[-1], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="small datasets, 1M synthetic, skip slow peer cells"
    )
    parser.add_argument(
        "--datasets", help=f"comma list out of {','.join(DATASETS)} ('none' for none)"
    )
    parser.add_argument(
        "--methods",
        default=",".join(METHOD_NAMES),
        help="comma list out of MV,DS,OneCoin,GLAD,MACE",
    )
    parser.add_argument(
        "--synthetic", help="comma list of vote counts, e.g. 1M,10M ('none' for none)"
    )
    parser.add_argument(
        "--skip-slow-peers",
        action="store_true",
        help=f"no crowd-kit GLAD/MACE above {SLOW_PEER_VOTES:,} votes",
    )
    parser.add_argument("--no-peer", action="store_true", help="run ours only")
    parser.add_argument(
        "--peer-10m",
        action="store_true",
        help="also run crowd-kit DS on synthetic sets above 2M votes",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.skip_slow_peers = True
    datasets = args.datasets or ",".join(QUICK_DATASETS if args.quick else DATASETS)
    datasets = [] if datasets == "none" else [d.strip() for d in datasets.split(",")]
    sizes = args.synthetic or ("1M" if args.quick else "1M,10M")
    sizes = [] if sizes == "none" else [s.strip() for s in sizes.split(",")]
    methods = [m.strip() for m in args.methods.split(",")]
    unknown = [m for m in methods if m not in METHOD_NAMES]
    if unknown:
        parser.error(f"unknown methods {unknown}")

    compile_s = warm_up()
    rows: list[Row] = []
    for name in datasets:
        if not (DATA_DIR / "crowd" / name / "answer.csv").exists():
            print(f"  {name}: missing under {DATA_DIR}, skipped", file=sys.stderr)
            continue
        rows.extend(bench_dataset(name, methods, args))
    for size in sizes:
        rows.extend(bench_synthetic(size, parse_size(size), args))

    try:
        import crowdkit

        peer_version = getattr(crowdkit, "__version__", "installed")
    except ImportError:
        peer_version = "not installed"
    footer = [
        f"numba compile/cache load before timing: {compile_s:.2f} s (not in any cell). crowd-kit {peer_version}; "
        f"{os.cpu_count()} CPU cores; times are whole fit() calls from the vote frame.",
        "acc crowd-kit*: crowd-kit run around a 1.4.2 defect: DS without its stop on a falling criterion (100 iterations), "
        "MACE with workers renamed so its two worker orders agree (benchmarks/README.md).",
        "DS n_iter=20 runs both with tol=-1 (exactly 20 iterations); DS tol=1e-5 runs each to its stopping rule, "
        "the same for both (crowd-kit's 'ELBO' per vote, which ours computes from its soft counts). "
        "OneCoin: ours stops on the log-likelihood (tol 1e-6), crowd-kit on its criterion. "
        "GLAD: both stop on crowd-kit's criterion with its CG M-step (tol 1e-2).",
    ]
    render(rows, footer)


if __name__ == "__main__":
    main()
