"""Dawid-Skene EM with a full confusion matrix per worker.

A. P. Dawid and A. M. Skene, "Maximum likelihood estimation of observer error-rates using
the EM algorithm", Journal of the Royal Statistical Society C 28(1):20-28, 1979.

Model: true class ``z_i ~ Categorical(p)``; worker ``j`` answers ``y_ij = l`` with
probability ``pi_j[k, l]`` when ``z_i = k``. EM alternates (paper, eq. 2.3-2.5):

* E-step (eq. 2.5): ``T_ik ∝ p_k * prod_{j voted on i} pi_j[k, y_ij]``, computed in log
  space with the log-sum-exp shift, so hundreds of votes per task do not underflow;
* M-step (eq. 2.3, 2.4): ``pi_j[k, l] = sum_i T_ik [y_ij = l] / sum_i T_ik`` and
  ``p_k = sum_i T_ik / n_tasks``; ``smoothing`` adds a Dirichlet pseudo-count to every cell
  of ``pi_j`` and of ``p`` (MAP instead of ML, which keeps one-vote workers from getting
  confusion rows of exact zeros and ones).

With ``smoothing=0`` the M-step matches crowd-kit's: counts of labels a worker did use are
floored at 1e-10 and labels a worker never used get probability 0. Initialisation is the
majority-vote share (``init="majority_vote"``, as in the paper's section 3), a random
Dirichlet draw (``init="random"``, seeded by ``random_state``) or, ``init="gold"``, one-hot
rows for tasks with a known answer and uniform rows elsewhere, so the first confusions come
from the known answers alone (this escapes the flipped optimum a majority of adversarial
workers leads majority-vote initialisation into). The default ``"auto"`` is ``"gold"`` when
``known_labels`` are given and ``"majority_vote"`` otherwise. Tasks with a known answer keep
a one-hot posterior throughout, so they anchor the confusions.

Convergence: the observed-data log-likelihood per vote, which the E-step yields for free (it
is the log normaliser of each task's posterior); iteration stops once it gains less than
``tol`` (crowd-kit measures the evidence lower bound after the M-step instead: the same
quantity one half-step later).

Speed: votes are sorted by task once; each iteration is then a single pass over the votes
(a numba kernel: E-step for one task, then its votes' contributions to the next M-step's
soft counts), so one iteration on 1M votes costs a few milliseconds. Without numba the same
algorithm runs on ``np.bincount`` segment sums.
"""

from __future__ import annotations

import time
from typing import Literal

import numpy as np

from labeling.aggregation.base import EPS, Aggregator, VoteMatrix, clamp_known, confusion_counts
from labeling.aggregation.majority_vote import normalise_rows

try:
    import numba
except ImportError:  # numba is a dependency; the NumPy path keeps the package importable without it
    numba = None

Backend = Literal["auto", "numba", "numpy"]


def _em_pass_python(
    indptr, votes_worker, votes_label, log_conf_t, log_prior, known, post, counts, post_sum
):
    """One EM pass over task-sorted votes (compiled by numba; see module docstring).

    Writes the new posterior into ``post``, its soft counts ``[worker, observed, true]`` into
    ``counts`` and its column sums (the next prior's numerator) into ``post_sum``; returns the
    log-likelihood of the data under the current parameters.
    """
    n_tasks = indptr.shape[0] - 1
    k = log_prior.shape[0]
    acc = np.empty(k)
    loglik = 0.0
    counts[:] = 0.0
    post_sum[:] = 0.0
    for t in range(n_tasks):
        for c in range(k):
            acc[c] = log_prior[c]
        for p in range(indptr[t], indptr[t + 1]):
            w = votes_worker[p]
            label = votes_label[p]
            for c in range(k):
                acc[c] += log_conf_t[w, label, c]
        top = acc[0]
        for c in range(1, k):
            if acc[c] > top:
                top = acc[c]
        total = 0.0
        for c in range(k):
            e = np.exp(acc[c] - top)
            post[t, c] = e
            total += e
        loglik += top + np.log(total)
        if known[t] >= 0:
            for c in range(k):
                post[t, c] = 0.0
            post[t, known[t]] = 1.0
        else:
            for c in range(k):
                post[t, c] /= total
        for c in range(k):
            post_sum[c] += post[t, c]
        for p in range(indptr[t], indptr[t + 1]):
            w = votes_worker[p]
            label = votes_label[p]
            for c in range(k):
                counts[w, label, c] += post[t, c]
    return loglik


_em_pass_numba = (
    numba.njit(cache=True, nogil=True, fastmath=False)(_em_pass_python)
    if numba is not None
    else None
)


def _em_pass_numpy(
    votes: VoteMatrix,
    log_conf_t: np.ndarray,
    log_prior: np.ndarray,
    known: np.ndarray,
    post: np.ndarray,
    counts: np.ndarray,
    post_sum: np.ndarray,
) -> float:
    """The same pass as the numba kernel, with one ``np.bincount`` per class."""
    k = votes.n_classes
    contrib = log_conf_t[votes.worker_idx, votes.label_idx]  # [n_votes, K]
    acc = np.empty((votes.n_tasks, k))
    for c in range(k):
        acc[:, c] = np.bincount(votes.task_idx, weights=contrib[:, c], minlength=votes.n_tasks)
    acc += log_prior
    top = acc.max(axis=1, keepdims=True)
    np.exp(acc - top, out=post)
    total = post.sum(axis=1, keepdims=True)
    post /= total
    clamp_known(post, known)
    counts[:] = confusion_counts(votes, post).transpose(0, 2, 1)
    post_sum[:] = post.sum(axis=0)
    return float((top + np.log(total)).sum())


def numba_available() -> bool:
    return _em_pass_numba is not None


def warm_up() -> float:
    """Compile (or load from cache) the numba kernel; return the seconds it took."""
    if _em_pass_numba is None:
        return 0.0
    start = time.perf_counter()
    indptr = np.array([0, 1], dtype=np.int64)
    one = np.zeros(1, dtype=np.int64)
    _em_pass_numba(
        indptr,
        one,
        one,
        np.zeros((1, 2, 2)),
        np.zeros(2),
        np.full(1, -1, dtype=np.int64),
        np.zeros((1, 2)),
        np.zeros((1, 2, 2)),
        np.zeros(2),
    )
    return time.perf_counter() - start


class DawidSkene(Aggregator):
    """Dawid-Skene EM (see module docstring).

    Parameters: ``n_iter`` (maximum EM iterations), ``tol`` (stop when the log-likelihood per
    vote gains less; 0 runs until it stops increasing, a negative value runs all ``n_iter``),
    ``smoothing`` (Dirichlet pseudo-count on confusions and class prior), ``init``
    (``"auto"``, ``"majority_vote"``, ``"gold"`` or ``"random"``), ``random_state`` (for ``init="random"``),
    ``backend`` (``"auto"`` uses numba when importable).

    Learned: ``confusions_[w, true, observed]``, ``priors_``, ``loglik_history_`` (per vote),
    ``n_iter_``, plus everything :class:`Aggregator` provides.
    """

    def __init__(
        self,
        n_iter: int = 100,
        tol: float = 1e-5,
        smoothing: float = 0.0,
        init: Literal["auto", "majority_vote", "gold", "random"] = "auto",
        random_state: int | None = 0,
        backend: Backend = "auto",
    ) -> None:
        self.n_iter = n_iter
        self.tol = tol
        self.smoothing = smoothing
        self.init = init
        self.random_state = random_state
        self.backend = backend

    # -- validation and set-up ----------------------------------------------------------------
    def _validate(self) -> None:
        if not isinstance(self.n_iter, int | np.integer) or self.n_iter < 0:
            raise ValueError("n_iter must be a non-negative integer")
        if self.smoothing < 0:
            raise ValueError("smoothing must be >= 0")
        if self.init not in ("auto", "majority_vote", "gold", "random"):
            raise ValueError("init must be 'auto', 'majority_vote', 'gold' or 'random'")
        if self.backend not in ("auto", "numba", "numpy"):
            raise ValueError("backend must be 'auto', 'numba' or 'numpy'")
        if self.backend == "numba" and _em_pass_numba is None:
            raise ValueError("backend='numba' but numba is not installed")

    def _use_numba(self) -> bool:
        return self.backend != "numpy" and _em_pass_numba is not None

    def _initial_posteriors(self, votes: VoteMatrix, known: np.ndarray) -> np.ndarray:
        init = self.init
        if init == "auto":
            init = "gold" if (known >= 0).any() else "majority_vote"
        if init == "random":
            rng = np.random.default_rng(self.random_state)
            post = rng.dirichlet(np.ones(votes.n_classes), size=votes.n_tasks)
        elif init == "gold":
            post = np.full((votes.n_tasks, votes.n_classes), 1.0 / votes.n_classes)
        else:
            post = normalise_rows(votes.vote_counts())
        clamp_known(post, known)
        return post

    # -- M-step ------------------------------------------------------------------------------
    def _m_step(self, counts_t: np.ndarray, observed: np.ndarray) -> np.ndarray:
        """Confusions in kernel layout ``[worker, observed, true]`` from soft counts."""
        s = self.smoothing
        if s > 0:
            num = counts_t + s
        else:
            # crowd-kit's ML estimate: floor used labels at EPS, unused labels stay at zero
            num = np.where(observed[:, :, None], np.maximum(counts_t, EPS), 0.0)
        totals = num.sum(axis=1, keepdims=True)
        k = counts_t.shape[1]
        return np.divide(num, totals, out=np.full_like(num, 1.0 / k), where=totals > 0)

    def _prior(self, post_sum: np.ndarray, n_tasks: int) -> np.ndarray:
        k = len(post_sum)
        prior = (post_sum + self.smoothing) / max(n_tasks + k * self.smoothing, EPS)
        return np.maximum(prior, EPS)

    # -- fit -----------------------------------------------------------------------------------
    def _fit_votes(self, votes: VoteMatrix, known: np.ndarray) -> np.ndarray:
        self._validate()
        k = votes.n_classes
        start = time.perf_counter()
        order, indptr = votes.task_order()
        sorted_worker = np.ascontiguousarray(votes.worker_idx[order])
        sorted_label = np.ascontiguousarray(votes.label_idx[order])
        observed = (
            np.bincount(
                votes.worker_idx * k + votes.label_idx, minlength=votes.n_workers * k
            ).reshape(votes.n_workers, k)
            > 0
        )
        post = self._initial_posteriors(votes, known)
        post_sum = post.sum(axis=0)
        counts_t = np.ascontiguousarray(confusion_counts(votes, post).transpose(0, 2, 1))
        self.setup_seconds_ = time.perf_counter() - start

        use_numba = self._use_numba()
        history: list[float] = []
        n_votes = max(votes.n_votes, 1)
        start = time.perf_counter()
        for _ in range(self.n_iter):
            conf_t = self._m_step(counts_t, observed)
            prior = self._prior(post_sum, votes.n_tasks)
            log_conf_t = np.log(np.maximum(conf_t, EPS))
            log_prior = np.log(prior)
            if use_numba:
                ll = _em_pass_numba(
                    indptr,
                    sorted_worker,
                    sorted_label,
                    log_conf_t,
                    log_prior,
                    known,
                    post,
                    counts_t,
                    post_sum,
                )
            else:
                ll = _em_pass_numpy(votes, log_conf_t, log_prior, known, post, counts_t, post_sum)
            history.append(ll / n_votes)
            if len(history) > 1 and history[-1] - history[-2] < self.tol:
                break
        self.em_seconds_ = time.perf_counter() - start
        self.n_iter_ = len(history)
        self.loglik_history_ = history

        # final M-step so the confusions match the returned posterior (as crowd-kit does)
        self._conf_t = self._m_step(counts_t, observed)
        self.priors_ = self._prior(post_sum, votes.n_tasks)
        return post

    def _confusions(self, votes: VoteMatrix, posteriors: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(self._conf_t.transpose(0, 2, 1))

    def _predict_votes(self, votes: VoteMatrix) -> np.ndarray:
        conf_t = self.confusions_.transpose(0, 2, 1)
        # new workers (last slot) get the average confusion
        conf_t = np.concatenate([conf_t, conf_t.mean(axis=0, keepdims=True)], axis=0)
        post = np.empty((votes.n_tasks, votes.n_classes))
        counts = np.empty_like(conf_t)
        no_known = np.full(votes.n_tasks, -1, dtype=np.int64)
        _em_pass_numpy(
            votes,
            np.log(np.maximum(conf_t, EPS)),
            np.log(self.priors_),
            no_known,
            post,
            counts,
            np.zeros(votes.n_classes),
        )
        return post
