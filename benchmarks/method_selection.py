"""``auto`` method selection against the best single crowd-kit method, per real crowd.

Usage::

    .venv/bin/python benchmarks/method_selection.py                    # five real sets
    .venv/bin/python benchmarks/method_selection.py --skip-slow-peers  # no crowd-kit GLAD/MACE > 50k votes
    .venv/bin/python benchmarks/method_selection.py --datasets face_sentiment --candidates majority_vote,dawid_skene

Per dataset: the method ``auto`` picks without any truth (held-out votes, see
``labeling.aggregation.selection``; Dawid-Skene unless a method leads it beyond the noise), its
scores with each one's paired z against Dawid-Skene, the accuracy of its labels on the tasks with a
ground truth, the time the whole selection took, and every crowd-kit method's accuracy from the
same run with the best of them. The truth is read only to score the result.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from aggregation import (  # noqa: E402
    DATA_DIR,
    DATASETS,
    SLOW_PEER,
    SLOW_PEER_VOTES,
    accuracy,
    load,
    peer,
    run_peer,
)

from labeling.aggregation.base import code_votes  # noqa: E402
from labeling.aggregation.dawid_skene import warm_up  # noqa: E402
from labeling.aggregation.selection import default_candidates, select_method  # noqa: E402

PEER_METHODS = ["MV", "DS", "OneCoin", "GLAD", "MACE"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--candidates", default="majority_vote,dawid_skene,one_coin,glad,mace")
    parser.add_argument("--skip-slow-peers", action="store_true")
    parser.add_argument("--no-peer", action="store_true")
    args = parser.parse_args(argv)
    warm_up()
    lines = [
        "| dataset | votes | auto's pick | auto acc | best crowd-kit (same run) | crowd-kit MV / DS / "
        "OneCoin / GLAD / MACE | auto time (s) | held-out log-lik per vote (power, ambiguity weight, "
        "z of the lead over dawid_skene) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in args.datasets.split(","):
        if not (DATA_DIR / "crowd" / name / "answer.csv").exists():
            print(f"  {name}: missing under {DATA_DIR}, skipped", file=sys.stderr)
            continue
        votes, truth = load(name)
        coded = code_votes(votes)
        start = time.perf_counter()
        chosen = select_method(coded, default_candidates(args.candidates.split(",")))
        seconds = time.perf_counter() - start
        auto_acc = accuracy(chosen.model.labels_, truth)
        peers: dict[str, float | str] = {}
        for method in PEER_METHODS:
            factory = None if args.no_peer else peer(method)
            if factory is None:
                peers[method] = "n/a"
            elif args.skip_slow_peers and method in SLOW_PEER and len(votes) > SLOW_PEER_VOTES:
                peers[method] = "skipped"
            else:
                fitted, _ = run_peer(lambda f=factory, v=votes: f().fit(v))
                peers[method] = "error" if fitted is None else accuracy(fitted.labels_, truth)
            print(f"  {name} crowd-kit {method}: {peers[method]}", file=sys.stderr, flush=True)
        numeric = {m: a for m, a in peers.items() if isinstance(a, float)}
        best = max(numeric, key=numeric.get) if numeric else None
        scores = ", ".join(
            f"{m} {s.log_likelihood:.4f} ({s.power}, {s.mix}"
            + ("" if s.z is None else f", z {s.z:+.2f}")
            + ")"
            if s.error is None
            else f"{m} error"
            for m, s in chosen.scores.items()
        )
        lines.append(
            f"| {name} | {len(votes):,} | {chosen.method} | {auto_acc:.3f} | "
            + (f"{numeric[best]:.3f} {best}" if best else "-")
            + " | "
            + " / ".join(f"{a:.3f}" if isinstance(a, float) else a for a in peers.values())
            + f" | {seconds:.1f} | {scores} |"
        )
        print(lines[-1], file=sys.stderr, flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
