"""Picking an aggregation method per project (``auto``), with or without a ground truth.

No Django. Given coded votes and, when the project has them, gold answers and expert hold-out
labels (task code -> class code, ``-1`` = none), :func:`select_method` scores each candidate
method and returns the best one, every candidate's scores, the criterion it used and the reason,
and the chosen method fitted on all the votes (gold clamped, as a normal run would).

Criteria, the first that applies:

1. ``expert``: the expert hold-out when it has at least ``min_reference`` items. Each method is
   fitted on all votes with the gold clamped; the expert labels are never shown to it, so they
   are a fair test: accuracy, then mean log-likelihood of the expert label, decide.
2. ``gold``: the gold answers, when there are at least ``min_reference``. The gold is split into
   folds; each fold is scored by a fit that clamps the other folds' gold, never its own.
3. ``held_out_votes``: no truth at all. The votes are split into ``n_folds`` folds; each method
   is fitted without one fold and scored by how well it predicts the hidden votes: the
   probability of a hidden vote ``l`` by worker ``w`` on task ``t`` is
   ``(1 - m) * sum_c posterior[t, c] * confusion[w, c, l] + m * share[t, l]``, ``share`` the
   task's visible vote shares (see below).

Fairness of the held-out-vote score: every method is scored through the *same* worker model,
a confusion matrix per worker estimated from the method's posterior on the visible votes
(shrunk towards the crowd's pooled confusion), not through its own. A method with more worker
parameters therefore gains nothing from them at scoring time; only the quality of its task
posteriors (computed without the hidden vote) counts. Calibration is not judged either: each
method's posterior is raised to the power ``a`` (renormalised; ``a < 1`` softens) with the ``a`` out of
a short grid that predicts its hidden votes best (one number per method, fitted on tens of thousands of
votes), so DS's overconfidence or majority vote's underconfidence does not decide. Nor does echoing
the votes: real items are ambiguous (two workers who err on an item tend to err alike), so the
visible votes on a task predict its hidden vote beyond its true class, and majority vote's
posterior, which is those vote shares, led on face_sentiment mostly by that (0.012 nats per vote
ahead of Dawid-Skene; 0.0006 once every method has the shares at hand, weight ``m`` from a
short grid per method). Votes are hidden only where the task and
the worker keep other votes, so the hidden vote's task and worker are still known to the fit.

The reference, and noise: whatever the criterion, Dawid-Skene (``REFERENCE``, the model every
crowd-trained source starts from) is kept unless the best method's lead over it is beyond the
noise of the comparison: a one-sided paired test at 5% (``z >= 1.645``) on the per-unit scores
(each hidden vote's log-likelihood, or each reference item's hit), summed per task because votes
on one task are not independent. On face_sentiment every method is within 0.004 nats per vote
of Dawid-Skene (majority vote ahead by 0.0006 = 0.23 standard errors), and which one leads
changes with the fold split; picking the leader there picked noise (majority vote, 2 tasks of 584
below Dawid-Skene). Each score records its ``z`` against the reference (``z_vs_reference``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Self

import numpy as np
import pandas as pd

from labeling.aggregation.base import (
    EPS,
    Aggregator,
    KnownLabels,
    VoteMatrix,
    as_votes,
    code_known_labels,
    confusion_counts,
)

Factory = Callable[[], Aggregator]

CRITERIA = ("expert", "gold", "held_out_votes", "too_few_votes")
# fewer reference items than this and a hold-out's accuracy is too noisy to choose by
MIN_REFERENCE = 30
# fewer votes that can be hidden (task and worker keep others) than this: nothing to compare on
MIN_HIDDEN_VOTES = 50
# what a project too young to compare methods on gets: no worker parameters to overfit
FALLBACK = "majority_vote"
# the model every crowd-trained source starts from; another method replaces it only when its
# lead is beyond the noise: a one-sided paired test at 5% (z of the per-task summed differences)
REFERENCE = "dawid_skene"
Z_TO_LEAVE_REFERENCE = 1.645


@dataclass
class MethodScore:
    """One candidate's score under the criterion used (higher is better for both numbers)."""

    method: str
    log_likelihood: float | None = None  # mean per scored vote or reference item
    accuracy: float | None = None  # share of scored votes / reference items predicted right
    n_scored: int = 0
    seconds: float = 0.0
    error: str | None = None
    power: float | None = None
    mix: float | None = None
    # paired z of this method's lead over the reference (positive: ahead); None for the reference
    z: float | None = None
    # the ranking metric per scored unit (hidden vote or reference item) and its task, for the
    # paired comparison with the reference; not part of the stored record
    units: np.ndarray | None = field(default=None, repr=False)
    unit_tasks: np.ndarray | None = field(default=None, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "log_likelihood": _rounded(self.log_likelihood),
            "accuracy": _rounded(self.accuracy),
            "n_scored": self.n_scored,
            "seconds": round(self.seconds, 3),
            **({"power": self.power} if self.power is not None else {}),
            **({"ambiguity": self.mix} if self.mix is not None else {}),
            **({"z_vs_reference": round(self.z, 2)} if self.z is not None else {}),
            **({"error": self.error} if self.error else {}),
        }


@dataclass
class Selection:
    """The outcome of :func:`select_method`."""

    method: str
    criterion: str
    scores: dict[str, MethodScore]
    reason: str
    model: Aggregator
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready record of the choice (what an aggregation run stores)."""
        return {
            "chosen": self.method,
            "criterion": self.criterion,
            "reason": self.reason,
            "scores": {name: s.as_dict() for name, s in self.scores.items()},
            **self.details,
        }


def select_method(
    votes: VoteMatrix,
    candidates: Mapping[str, Factory],
    *,
    gold: np.ndarray | None = None,
    expert: np.ndarray | None = None,
    min_reference: int = MIN_REFERENCE,
    n_folds: int = 5,
    random_state: int = 0,
) -> Selection:
    """Choose among ``candidates`` (name -> zero-argument factory of an unfitted estimator).

    ``gold`` and ``expert`` are int arrays aligned with ``votes.tasks`` (class code, ``-1`` for
    none). The gold is clamped in the final fit whatever the criterion. A candidate that raises
    is recorded with its error and left out of the choice; if all fail the last error is raised.
    """
    if not candidates:
        raise ValueError("no candidate methods to choose from")
    if n_folds < 2:
        raise ValueError("n_folds must be >= 2")
    n = votes.n_tasks
    gold = _codes_or_none(gold, n, "gold")
    expert = _codes_or_none(expert, n, "expert")
    # an expert label on a gold item tells nothing the clamped gold does not
    if expert is not None:
        expert = np.where(gold >= 0, -1, expert)
    n_gold = int((gold >= 0).sum())
    n_expert = 0 if expert is None else int((expert >= 0).sum())

    if n_expert >= min_reference:
        criterion = "expert"
        score = lambda f: _score_reference(votes, f, gold, expert)  # noqa: E731
        details = {"n_expert": n_expert}
    elif n_gold >= min_reference:
        criterion = "gold"
        score = lambda f: _score_gold_folds(votes, f, gold, n_folds, random_state)  # noqa: E731
        details = {"n_gold": n_gold}
    else:
        criterion = "held_out_votes"
        folds = held_out_folds(votes, n_folds, random_state)
        score = lambda f: _score_held_out_votes(votes, f, gold, folds)  # noqa: E731
        details = {"n_folds": n_folds, "n_hidden": int((folds >= 0).sum())}
        if details["n_hidden"] < MIN_HIDDEN_VOTES:
            return _fallback(votes, candidates, gold, {**details, "min_reference": min_reference})

    scores: dict[str, MethodScore] = {}
    last_error: Exception | None = None
    for name, factory in candidates.items():
        start = time.perf_counter()
        try:
            s = score(factory)
        except Exception as exc:  # a failing method is a result to report, not the end
            s = MethodScore(name, error=f"{type(exc).__name__}: {exc}"[:200])
            last_error = exc
        s.method = name
        s.seconds = time.perf_counter() - start
        scores[name] = s

    ranked = [s for s in scores.values() if s.error is None]
    if not ranked:
        assert last_error is not None
        raise last_error
    best = max(ranked, key=lambda s: _rank_key(s, criterion))
    reference = scores.get(REFERENCE)
    kept_reference = False
    if reference is not None and reference.error is None:
        for s in ranked:
            s.z = None if s is reference else _paired_z(s, reference)
        details = {**details, "reference": REFERENCE, "z_to_leave_reference": Z_TO_LEAVE_REFERENCE}
        if best is not reference and (best.z is None or best.z < Z_TO_LEAVE_REFERENCE):
            kept_reference = best
            best = reference
    model = candidates[best.method]().fit(votes, known_labels=gold if n_gold else None)
    return Selection(
        method=best.method,
        criterion=criterion,
        scores=scores,
        reason=_reason(best, ranked, criterion, details, kept_reference or None),
        model=model,
        details=details,
    )


def _fallback(
    votes: VoteMatrix, candidates: Mapping[str, Factory], gold: np.ndarray, details: dict
) -> Selection:
    name = FALLBACK if FALLBACK in candidates else next(iter(candidates))
    model = candidates[name]().fit(votes, known_labels=gold if (gold >= 0).any() else None)
    reason = (
        f"only {details['n_hidden']} votes can be held out (fewer than {MIN_HIDDEN_VOTES}) and "
        f"too few gold or expert items (fewer than the {details['min_reference']} needed): {name} until "
        "there is enough to compare methods on"
    )
    return Selection(name, "too_few_votes", {}, reason, model, details)


def _rank_key(score: MethodScore, criterion: str) -> tuple[float, float]:
    ll = -np.inf if score.log_likelihood is None else score.log_likelihood
    acc = -np.inf if score.accuracy is None else score.accuracy
    # against a truth, accuracy is what the project wants, the likelihood breaks ties; held-out
    # votes are noisy per vote, so their likelihood (which uses the whole posterior) decides
    return (acc, ll) if criterion in ("expert", "gold") else (ll, acc)


def _paired_z(score: MethodScore, reference: MethodScore) -> float | None:
    """z of ``score``'s mean lead over ``reference`` on the same units, blocked by task (votes
    on one task share its ambiguity, so the task is the independent unit, not the vote)."""
    if score.units is None or reference.units is None or len(score.units) != len(reference.units):
        return None
    diff = score.units - reference.units
    if not len(diff):
        return None
    _, per_task = np.unique(score.unit_tasks, return_inverse=True)
    task_sums = np.bincount(per_task, weights=diff)
    lead = float(diff.mean())
    spread = task_sums.std(ddof=1) if len(task_sums) > 1 else 0.0
    se = float(np.sqrt(len(task_sums)) * spread) / len(diff)
    if se == 0.0:
        return 0.0 if lead == 0.0 else float(np.copysign(np.inf, lead))
    return lead / se


def _reason(
    best: MethodScore,
    ranked: list[MethodScore],
    criterion: str,
    details: dict,
    leader: MethodScore | None = None,
) -> str:
    what = {
        "expert": f"accuracy on the expert hold-out ({details.get('n_expert')} items)",
        "gold": f"accuracy on gold answers hidden from the fit ({details.get('n_gold')} items)",
        "held_out_votes": (
            f"log-likelihood of held-out votes ({details.get('n_folds')}-fold, "
            f"{details.get('n_hidden')} votes hidden)"
        ),
    }[criterion]
    parts = [
        f"{s.method} {_fmt(s.accuracy if criterion != 'held_out_votes' else s.log_likelihood)}"
        for s in sorted(ranked, key=lambda s: _rank_key(s, criterion), reverse=True)
    ]
    if leader is not None:
        z = "no paired comparison" if leader.z is None else f"{leader.z:.2f} standard errors"
        return (
            f"{what}: " + ", ".join(parts) + f"; {leader.method}'s lead over {best.method} is "
            f"{z} (paired by task), within the noise (it needs {Z_TO_LEAVE_REFERENCE}), so "
            f"{best.method}, the reference model, is kept"
        )
    if best.z is not None and best.method != details.get("reference"):
        parts[0] += (
            f" ({best.z:.2f} standard errors ahead of {details['reference']}, paired by task)"
        )
    return f"best {what}: " + ", ".join(parts)


def _fmt(x: float | None) -> str:
    # from the stored (rounded) number, so the reason and the scores shown beside it agree
    return "-" if x is None else f"{_rounded(x):.4f}"


def _rounded(x: float | None) -> float | None:
    return None if x is None else round(float(x), 6)


def _codes_or_none(codes: np.ndarray | None, n: int, name: str) -> np.ndarray | None:
    if codes is None:
        return None if name == "expert" else np.full(n, -1, dtype=np.int64)
    codes = np.asarray(codes, dtype=np.int64)
    if codes.shape != (n,):
        raise ValueError(f"{name} must have one entry per task ({n}), got shape {codes.shape}")
    return codes


# -- truth-based criteria ----------------------------------------------------------------------


def _reference_score(posteriors: np.ndarray, reference: np.ndarray, rows: np.ndarray) -> tuple:
    p = posteriors[rows, reference[rows]]
    hits = posteriors[rows].argmax(axis=1) == reference[rows]
    return float(np.log(np.maximum(p, EPS)).sum()), hits.astype(np.float64)


def _score_reference(
    votes: VoteMatrix, factory: Factory, gold: np.ndarray, expert: np.ndarray
) -> MethodScore:
    model = factory().fit(votes, known_labels=gold if (gold >= 0).any() else None)
    rows = np.flatnonzero(expert >= 0)
    ll, hits = _reference_score(model.posteriors_, expert, rows)
    return MethodScore("", ll / len(rows), hits.mean(), len(rows), units=hits, unit_tasks=rows)


def _score_gold_folds(
    votes: VoteMatrix, factory: Factory, gold: np.ndarray, n_folds: int, random_state: int
) -> MethodScore:
    rows = np.flatnonzero(gold >= 0)
    fold_of = np.random.default_rng(random_state).permutation(len(rows)) % n_folds
    ll = 0.0
    hits = []
    tasks = []
    for fold in range(n_folds):
        hidden = rows[fold_of == fold]
        if not len(hidden):
            continue
        shown = gold.copy()
        shown[hidden] = -1
        model = factory().fit(votes, known_labels=shown if (shown >= 0).any() else None)
        fold_ll, fold_hits = _reference_score(model.posteriors_, gold, hidden)
        ll += fold_ll
        hits.append(fold_hits)
        tasks.append(hidden)
    hit = np.concatenate(hits)
    return MethodScore(
        "", ll / len(rows), hit.mean(), len(rows), units=hit, unit_tasks=np.concatenate(tasks)
    )


# -- held-out votes ----------------------------------------------------------------------------


def held_out_folds(votes: VoteMatrix, n_folds: int = 5, random_state: int = 0) -> np.ndarray:
    """Fold of each vote (``-1``: never hidden), so every fold hides about ``1 / n_folds``.

    A vote is hidden only if its task and its worker keep at least one vote in every fold's
    fit: its task and worker are then still known to the estimator that predicts it. Per task,
    the votes are dealt to folds round-robin after a shuffle, so no fold takes all of a task.
    """
    rng = np.random.default_rng(random_state)
    n = votes.n_votes
    fold = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return fold
    order = rng.permutation(n)
    order = order[np.argsort(votes.task_idx[order], kind="stable")]
    task_sorted = votes.task_idx[order]
    starts = np.r_[0, np.flatnonzero(np.diff(task_sorted)) + 1]
    rank = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))
    offset = rng.integers(0, n_folds, size=votes.n_tasks)
    per_task = np.bincount(votes.task_idx, minlength=votes.n_tasks)
    # a task with fewer votes than folds would lose its only vote(s) in some folds: keep >= 1
    keep = per_task[task_sorted] >= 2
    candidate = np.where(keep, (rank + offset[task_sorted]) % n_folds, -1)
    # a task with v votes (2 <= v < n_folds) has each fold hide at most one: fine
    fold[order] = candidate
    # workers: leave out of the hidden set a worker whose votes would all be hidden in a fold
    per_worker = np.bincount(votes.worker_idx, minlength=votes.n_workers)
    hidden = fold >= 0
    for f in range(n_folds):
        in_f = fold == f
        lost = np.bincount(votes.worker_idx[in_f], minlength=votes.n_workers)
        alone = lost >= per_worker
        fold[in_f & alone[votes.worker_idx]] = -1
    del hidden
    return fold


def vote_predictive(
    visible: VoteMatrix, posteriors: np.ndarray, pooled_weight: float = 2.0
) -> np.ndarray:
    """Per-worker confusion ``[n_workers, true, observed]`` from a posterior on visible votes,
    shrunk towards the crowd's pooled confusion by ``pooled_weight`` pseudo-votes per row (the
    common worker model every method is scored through)."""
    counts = confusion_counts(visible, posteriors)
    pooled = counts.sum(axis=0)
    k = visible.n_classes
    pooled = (pooled + 1.0) / (pooled.sum(axis=1, keepdims=True) + k)
    shrunk = counts + pooled_weight * pooled[None]
    return shrunk / shrunk.sum(axis=2, keepdims=True)


def _subset(votes: VoteMatrix, mask: np.ndarray) -> VoteMatrix:
    return VoteMatrix(
        votes.task_idx[mask],
        votes.worker_idx[mask],
        votes.label_idx[mask],
        votes.tasks,
        votes.workers,
        votes.classes,
    )


def _score_held_out_votes(
    votes: VoteMatrix, factory: Factory, gold: np.ndarray, folds: np.ndarray
) -> MethodScore:
    known = gold if (gold >= 0).any() else None
    fits = []
    for f in range(int(folds.max()) + 1 if len(folds) else 0):
        hide = folds == f
        if not hide.any():
            continue
        visible = _subset(votes, ~hide)
        model = factory().fit(visible, known_labels=known)
        # the hidden vote's task's visible vote shares (add-one-class smoothed): the same for
        # every method, so a method gains nothing from posteriors that merely echo them
        shares = visible.vote_counts()[votes.task_idx[hide]]
        shares = (shares + 1.0 / votes.n_classes) / (shares.sum(axis=1, keepdims=True) + 1.0)
        fits.append((visible, model.posteriors_, hide, shares))
    n_scored = sum(int(h.sum()) for _, _, h, _ in fits)
    if n_scored == 0:
        raise ValueError("no vote could be held out (every task or worker has a single vote)")
    best = None
    for power in POWERS:
        parts = []
        for visible, post, hide, shares in fits:
            post = _powered(post, power)
            conf = vote_predictive(visible, post)
            t = votes.task_idx[hide]
            w = votes.worker_idx[hide]
            lab = votes.label_idx[hide]
            # p(vote) = sum_c post[t, c] * conf[w, c, :]
            pred = np.einsum("vc,vcl->vl", post[t], conf[w])
            parts.append((pred, shares, lab))
        for mix in AMBIGUITY:
            per_vote = []
            hits = 0
            for pred, share, lab in parts:
                p = (1 - mix) * pred + mix * share
                per_vote.append(np.log(np.maximum(p[np.arange(len(lab)), lab], EPS)))
                hits += int((p.argmax(axis=1) == lab).sum())
            ll = float(sum(v.sum() for v in per_vote))
            if best is None or ll > best[0]:
                best = (ll, hits, power, mix, per_vote)
    ll, hits, power, mix, per_vote = best
    tasks = np.concatenate([votes.task_idx[hide] for _, _, hide, _ in fits])
    return MethodScore(
        "", ll / n_scored, hits / n_scored, n_scored, power=power, mix=mix,
        units=np.concatenate(per_vote), unit_tasks=tasks,
    )  # fmt: skip


# weight of the task's own vote shares in the predictive: real items are ambiguous (votes on
# one item agree beyond their true class), which a posterior that echoes the vote shares (majority
# vote's) would otherwise be rewarded for; each method gets the weight that suits it best
AMBIGUITY = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7)


# posterior ** a, renormalised: each method's posteriors get the power that predicts
# its held-out votes best, so an over- or under-confident posterior is not what decides
POWERS = (0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0)


def _powered(post: np.ndarray, power: float) -> np.ndarray:
    if power == 1.0:
        return post
    logp = np.log(np.maximum(post, EPS)) * power
    logp -= logp.max(axis=1, keepdims=True)
    out = np.exp(logp)
    return out / out.sum(axis=1, keepdims=True)


def default_candidates(names: Sequence[str] | None = None) -> dict[str, Factory]:
    """Factories for the named methods with their default parameters."""
    from labeling.aggregation import METHODS

    return {name: METHODS[name] for name in (names or AUTO_CANDIDATES)}


class AutoSelect(Aggregator):
    """``auto``: the estimator that picks a method per project with :func:`select_method`.

    ``fit`` scores the candidates, then takes on the chosen method's fitted result (posteriors,
    labels, worker confusions and accuracies) and keeps the choice in ``selection_``
    (:class:`Selection`) and ``chosen_`` (the method name). ``holdout`` (task -> class code,
    ``-1`` none, aligned with the coded tasks) is the expert hold-out, used only to choose.
    """

    def __init__(
        self,
        candidates: Sequence[str] | None = None,
        n_folds: int = 5,
        min_reference: int = MIN_REFERENCE,
        random_state: int = 0,
    ) -> None:
        self.candidates = candidates
        self.n_folds = n_folds
        self.min_reference = min_reference
        self.random_state = random_state

    def fit(
        self,
        data: pd.DataFrame | VoteMatrix,
        classes: Sequence[Any] | None = None,
        known_labels: KnownLabels = None,
        holdout: np.ndarray | None = None,
    ) -> Self:
        from labeling.aggregation import METHODS

        names = list(self.candidates or AUTO_CANDIDATES)
        unknown = [n for n in names if n not in METHODS or n == "auto"]
        if unknown or not names:
            raise ValueError(f"auto cannot choose among {unknown or names}")
        votes = as_votes(data, classes)
        gold = code_known_labels(known_labels, votes)
        self.selection_ = select_method(
            votes,
            {name: METHODS[name] for name in names},
            gold=gold,
            expert=holdout,
            min_reference=self.min_reference,
            n_folds=self.n_folds,
            random_state=self.random_state,
        )
        self.chosen_ = self.selection_.method
        chosen = self.selection_.model
        for attr in (
            "posteriors_", "priors_", "confusions_", "worker_accuracy_", "tasks_", "workers_",
            "classes_", "probas_", "labels_", "errors_", "n_iter_",
        ):  # fmt: skip
            setattr(self, attr, getattr(chosen, attr))
        return self

    def predict_proba(self, data: pd.DataFrame | VoteMatrix) -> pd.DataFrame:
        self._check_fitted()
        return self.selection_.model.predict_proba(data)

    def predict(self, data: pd.DataFrame | VoteMatrix) -> pd.Series:
        self._check_fitted()
        return self.selection_.model.predict(data)


AUTO_CANDIDATES = ("majority_vote", "dawid_skene", "one_coin", "glad", "mace")
