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

Convergence: crowd-kit's rule, so both stop at the same iteration. After each E-step and
the M-step that follows it, the criterion crowd-kit calls the evidence lower bound is
``sum_{j,l,k} n_jlk log pi_j[k, l] + sum_k (sum_{j,l} n_jlk) log p_k + H(T)``, per vote, with
``n_jlk`` the soft counts of the M-step (worker ``j`` said ``l``, true class ``k``) and ``H`` the
entropy of the posteriors floored at 1e-10; iteration stops at the first one where it gains
less than ``tol``, keeping that iteration's posteriors. It is not a true lower bound: the
class prior is counted once per vote rather than once per task, so it can fall where the
likelihood cannot (crowd-kit stops after 2 iterations on adult2 because of that, and ends
more accurate there than at convergence). It costs no pass over the votes: the first two
terms are dot products over the soft counts, and the kernel sums the entropy as it normalises
each posterior. The observed-data log-likelihood per vote, which the E-step yields for free,
is kept in ``loglik_history_``; ``stop="loglik"`` stops on its gain instead (what the one-coin
model does by default, see :mod:`one_coin`).

Speed: votes are sorted by task once, with an O(n) counting sort, into one int32 code per vote
(``worker * K + label``: the row of the flat log-confusion table it reads). Each iteration is
then one numba pass per chunk of tasks, compiled per number of classes so the class loops
unroll, a block of tasks at a time: the E-step as contiguous segment sums, one vectorised exp
over the block (a polynomial exp: libm's does not vectorise), then each task's normalised
posterior added to its votes' soft counts for the next M-step. The log-likelihood takes one log
per few hundred tasks (of the product of their normalisers). Chunks release the GIL and run on
the calling thread plus a small pool (one chunk per numba thread, each with its own soft
counts, summed afterwards; the pool is forgotten in a forked child, which would otherwise wait
on threads it does not have). The M-step and its log run in numba as well; the kernels cache on
disk (``warm_up`` compiles or loads them). Without numba the same algorithm runs on
``np.bincount`` segment sums (also the reference the tests compare the kernels with).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import numpy as np
import pandas as pd

from labeling.aggregation.base import (
    EPS,
    Aggregator,
    VoteMatrix,
    clamp_known,
    code_votes,
    confusion_counts,
)
from labeling.aggregation.majority_vote import normalise_rows

try:
    import numba
except ImportError:  # numba is a dependency; the NumPy path keeps the package importable without it
    numba = None

Backend = Literal["auto", "numba", "numpy"]
Stop = Literal["crowdkit", "loglik"]


def _sort_by_task_python(task_idx, worker_idx, label_idx, k, indptr, code, observed, worker_votes):
    """Counting sort of the votes by task (stable, O(n), no comparison sort).

    Fills ``indptr`` (each task's slice, CSR), ``code`` (``worker * k + label`` per vote in
    task order: the row of the flat confusion table the vote reads), ``observed``
    (``[n_workers * k]``: did the worker ever give that label) and ``worker_votes``.
    """
    n = task_idx.shape[0]
    n_tasks = indptr.shape[0] - 1
    indptr[:] = 0
    observed[:] = False
    worker_votes[:] = 0
    for i in range(n):
        indptr[task_idx[i] + 1] += 1
    for t in range(n_tasks):
        indptr[t + 1] += indptr[t]
    fill = indptr[:-1].copy()
    for i in range(n):
        t = task_idx[i]
        p = fill[t]
        fill[t] = p + 1
        w = worker_idx[i]
        c = w * k + label_idx[i]
        code[p] = c
        observed[c] = True
        worker_votes[w] += 1


# EM pass modes: what the pass does to each task's posterior before adding it to the counts
SCATTER, VOTE_SHARES, E_STEP = 0, 1, 2
# tasks per block: a block's log posteriors stay in L1 between the E-step, exp and scatter loops
_BLOCK = 256
# exp(-700) ~ 1e-304: a class that far below the top has posterior 0 to any tolerance
_EXP_FLOOR = -700.0
_LOG2E = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
# crowd-kit floors each posterior at EPS before its entropy: such a cell adds -EPS log EPS
_EPS_ENTROPY = -EPS * np.log(EPS)


def _exp_inplace_python(x, bits):
    """``x[:] = exp(x)`` for ``x <= 0``, written so LLVM vectorises it (libm's exp does not).

    Cody-Waite reduction ``x = n ln2 + r`` with ``|r| <= ln2 / 2``, a degree-13 Taylor polynomial
    for ``exp(r)`` (relative error below 4e-16) and ``2**n`` built from its exponent bits in
    ``bits`` (int64 scratch at least as long as ``x``).
    """
    m = x.shape[0]
    scale = bits[:m].view(np.float64)
    for i in range(m):
        xi = max(x[i], _EXP_FLOOR)
        n = np.floor(xi * _LOG2E + 0.5)
        x[i] = xi - n * _LN2_HI - n * _LN2_LO
        bits[i] = (np.int64(n) + 1023) << 52
    for i in range(m):
        r = x[i]
        p = 1.0 / 6227020800.0
        p = p * r + 1.0 / 479001600.0
        p = p * r + 1.0 / 39916800.0
        p = p * r + 1.0 / 3628800.0
        p = p * r + 1.0 / 362880.0
        p = p * r + 1.0 / 40320.0
        p = p * r + 1.0 / 5040.0
        p = p * r + 1.0 / 720.0
        p = p * r + 1.0 / 120.0
        p = p * r + 1.0 / 24.0
        p = p * r + 1.0 / 6.0
        p = p * r + 0.5
        p = p * r + 1.0
        x[i] = (p * r + 1.0) * scale[i]


def _make_em_pass(k):
    """The EM pass for ``k`` classes (a compile-time constant, so the class loops unroll).

    Returns a function ``em_pass(first, last, indptr, code, log_conf, log_prior, known, post,
    counts, post_sum, mode)`` that walks the tasks ``first:last`` of task-sorted votes
    (compiled by numba, one call per chunk of tasks and thread), a block of tasks at a time.
    ``mode`` says what happens to each task's posterior first: ``E_STEP`` replaces it by the
    E-step from the flat log confusions ``log_conf[(worker * k + label) * k + true]`` and
    ``log_prior`` (log-sum-exp shifted; the top class needs no exp), ``VOTE_SHARES`` by its
    vote shares (majority-vote initialisation), ``SCATTER`` keeps it; the first two then clamp
    known tasks one-hot. Either way it then adds the task's posterior to the soft counts of
    its votes (``counts``, flat like ``log_conf``: the next M-step's numerator) and to
    ``post_sum``. Returns ``(log_likelihood, entropy)`` of the chunk, both 0 unless ``E_STEP``:
    the data log-likelihood under the parameters used (each task's normaliser is multiplied
    into a running product, each lies in ``[1, k]``, and its log taken only when that product
    grows large) and the entropy of the posteriors with crowd-kit's floor (a cell below
    ``EPS`` counts as ``-EPS log EPS``), from ``-sum_c T_c log T_c = log total - sum_c T_c
    s_c`` with ``s_c`` the shifted log posterior kept from before the exp (so no extra log).
    """

    def em_pass(
        first, last, indptr, code, log_conf, log_prior, known, post, counts, post_sum, mode
    ):
        counts[:] = 0.0
        sums = np.zeros(k)
        flat = post.reshape(-1)
        tops = np.empty(_BLOCK)
        shifted = np.empty(_BLOCK * k)
        bits = np.empty(_BLOCK * k, dtype=np.int64)
        top_sum = 0.0
        log_totals = 0.0
        prod = 1.0
        # entropy: sum over free tasks of -sum_c T_c s_c, minus the log normalisers of clamped ones
        ent = 0.0
        for b0 in range(first, last, _BLOCK):
            b1 = min(b0 + _BLOCK, last)
            if mode == E_STEP:
                for t in range(b0, b1):
                    for c in range(k):
                        post[t, c] = log_prior[c]
                    for p in range(indptr[t], indptr[t + 1]):
                        base = code[p] * k
                        for c in range(k):
                            post[t, c] += log_conf[base + c]
                    top = post[t, 0]
                    for c in range(1, k):
                        top = max(top, post[t, c])
                    tops[t - b0] = top
                    for c in range(k):
                        post[t, c] -= top
                        shifted[(t - b0) * k + c] = post[t, c]
                _exp_inplace(flat[b0 * k : b1 * k], bits)
            elif mode == VOTE_SHARES:
                for t in range(b0, b1):
                    # a task without votes gets equal shares
                    fill = 1.0 if indptr[t + 1] == indptr[t] else 0.0
                    for c in range(k):
                        post[t, c] = fill
                    for p in range(indptr[t], indptr[t + 1]):
                        # unsigned: a modulo by a constant without the sign fix-up
                        post[t, np.uint64(code[p]) % np.uint64(k)] += 1.0
            for t in range(b0, b1):
                if mode != SCATTER:
                    total = 0.0
                    for c in range(k):
                        total += post[t, c]
                    if mode == E_STEP:
                        top_sum += tops[t - b0]
                        prod *= total
                        if prod > 1e250:
                            log_totals += np.log(prod)
                            prod = 1.0
                    kt = known[t]
                    if kt >= 0:
                        if mode == E_STEP:
                            # a one-hot row: k - 1 floored cells, and no share of the normalisers
                            ent += (k - 1) * _EPS_ENTROPY - np.log(total)
                        for c in range(k):
                            post[t, c] = 0.0
                        post[t, kt] = 1.0
                    else:
                        inv = 1.0 / total
                        for c in range(k):
                            post[t, c] *= inv
                        if mode == E_STEP:
                            h = 0.0
                            for c in range(k):
                                v = post[t, c]
                                s_c = shifted[(t - b0) * k + c]
                                h += _EPS_ENTROPY if v < EPS else -v * s_c
                            ent += h
                for c in range(k):
                    sums[c] += post[t, c]
                for p in range(indptr[t], indptr[t + 1]):
                    base = code[p] * k
                    for c in range(k):
                        counts[base + c] += post[t, c]
        for c in range(k):
            post_sum[c] = sums[c]
        log_totals += np.log(prod)
        # a task's log-likelihood is top + log total; its entropy log total - sum_c T_c s_c
        return top_sum + log_totals, ent + log_totals

    return em_pass


def _log_m_step_python(counts, observed, k, smoothing, eps, log_conf, mass):
    """Dawid-Skene M-step straight into log space, flat ``[worker, observed, true]`` layout.

    Same arithmetic as :meth:`DawidSkene._m_step` followed by ``log(max(conf, eps))``. Also
    returns ``sum counts * log_conf`` and fills ``mass[true]`` with the soft counts summed
    over workers and labels: the first two terms of crowd-kit's criterion, in the same loop.
    """
    n_workers = observed.shape[0] // k
    num = np.empty(k)
    mass[:] = 0.0
    expected = 0.0
    for w in range(n_workers):
        for c in range(k):
            total = 0.0
            for obs in range(k):
                v = counts[(w * k + obs) * k + c]
                mass[c] += v
                if smoothing > 0:
                    v += smoothing
                elif observed[w * k + obs]:
                    v = max(v, eps)
                else:
                    v = 0.0
                num[obs] = v
                total += v
            for obs in range(k):
                conf = num[obs] / total if total > 0 else 1.0 / k
                cell = (w * k + obs) * k + c
                log_conf[cell] = np.log(max(conf, eps))
                expected += counts[cell] * log_conf[cell]
    return expected


_jit = numba.njit(cache=True, nogil=True) if numba is not None else None
_sort_by_task = _jit(_sort_by_task_python) if numba is not None else None
_log_m_step_numba = _jit(_log_m_step_python) if numba is not None else None
# fused multiply-add in the polynomial (the only place it applies) is what lets it vectorise well
_exp_inplace = (
    numba.njit(cache=True, nogil=True, fastmath={"contract"})(_exp_inplace_python)
    if numba is not None
    else None
)
_em_passes: dict[int, object] = {}
_pool: ThreadPoolExecutor | None = None


def _forget_pool() -> None:
    """A forked child inherits the pool object but not its threads: it would wait forever."""
    global _pool
    _pool = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def _em_pass_for(k: int):
    """The compiled pass for ``k`` classes (compiled once per ``k``, cached on disk)."""
    if k not in _em_passes:
        _em_passes[k] = numba.njit(cache=True, nogil=True)(_make_em_pass(k))
    return _em_passes[k]


def _run_chunks(kernel, bounds, *args, counts_buf, post_sum_buf, mode) -> tuple[float, float]:
    """Run ``kernel`` over every chunk of tasks (the calling thread takes the first, the pool
    the rest; the kernel releases the GIL), then sum the chunks' soft counts and posterior
    sums into row 0. Returns the summed ``(log_likelihood, entropy)``."""
    global _pool
    n_chunks = len(bounds) - 1

    def one(ch: int) -> tuple[float, float]:
        return kernel(bounds[ch], bounds[ch + 1], *args, counts_buf[ch], post_sum_buf[ch], mode)

    if n_chunks == 1:
        ll, ent = one(0)
        return float(ll), float(ent)
    if _pool is None or _pool._max_workers < n_chunks - 1:
        _pool = ThreadPoolExecutor(max_workers=n_chunks - 1, thread_name_prefix="dawid-skene")
    others = [_pool.submit(one, ch) for ch in range(1, n_chunks)]
    ll, ent = one(0)
    for f in others:
        more_ll, more_ent = f.result()
        ll += more_ll
        ent += more_ent
    for ch in range(1, n_chunks):
        counts_buf[0] += counts_buf[ch]
        post_sum_buf[0] += post_sum_buf[ch]
    return float(ll), float(ent)


def _em_pass_numpy(
    votes: VoteMatrix,
    log_conf_t: np.ndarray,
    log_prior: np.ndarray,
    known: np.ndarray,
    post: np.ndarray,
    counts: np.ndarray,
    post_sum: np.ndarray,
) -> tuple[float, float]:
    """The same pass as the numba kernel, with one ``np.bincount`` per class; the entropy
    straight from crowd-kit's formula (posteriors floored at ``EPS``)."""
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
    floored = np.maximum(post, EPS)
    entropy = -float(np.sum(floored * np.log(floored)))
    return float((top + np.log(total)).sum()), entropy


def numba_available() -> bool:
    return numba is not None


def warm_up(n_classes: Iterable[int] = range(2, 9)) -> float:
    """Compile (or load from numba's disk cache) the kernels for these class counts.

    The EM pass is specialised per number of classes; a count not warmed up here compiles
    (or loads) on its first ``fit``. Returns the seconds it took.
    """
    if numba is None:
        return 0.0
    start = time.perf_counter()
    code_votes(pd.DataFrame({"task": [0, 0, 1], "worker": [0, 1, 1], "label": [0, 1, 1]}))
    for k in n_classes:
        votes = VoteMatrix.from_codes([0, 0, 1], [0, 1, 1], [0, 1, 1], n_classes=k)
        DawidSkene(n_iter=2, tol=-1, backend="numba").fit(votes)
    return time.perf_counter() - start


def _chunk_bounds(indptr: np.ndarray, n_cells: int) -> np.ndarray:
    """Split the tasks into chunks of about equal vote counts, one per numba thread.

    One chunk unless each thread gets enough votes to repay zeroing and summing its own copy
    of the ``n_cells`` soft counts every iteration.
    """
    n_tasks = len(indptr) - 1
    n_votes = int(indptr[-1])
    n_chunks = min(numba.get_num_threads(), max(1, n_votes // max(50_000, 4 * n_cells)))
    targets = np.linspace(0, n_votes, n_chunks + 1)[1:-1]
    inner = np.searchsorted(indptr, targets)
    bounds = np.concatenate([[0], inner, [n_tasks]]).astype(np.int64)
    return np.maximum.accumulate(np.minimum(bounds, n_tasks))


class DawidSkene(Aggregator):
    """Dawid-Skene EM (see module docstring).

    Parameters: ``n_iter`` (maximum EM iterations), ``tol`` and ``stop`` (iteration stops at
    the first iteration whose criterion per vote gains less than ``tol`` over the previous
    one, keeping that iteration's posteriors; the criterion is crowd-kit's, see the module
    docstring, with ``stop="crowdkit"``, so ``tol`` means what crowd-kit's does, or the
    observed-data log-likelihood with ``stop="loglik"``, which exact EM never lowers; 0 stops
    once the criterion stops rising, ``-inf`` runs all ``n_iter``), ``smoothing`` (Dirichlet
    pseudo-count on confusions and class prior), ``init`` (``"auto"``, ``"majority_vote"``,
    ``"gold"`` or ``"random"``), ``random_state`` (for ``init="random"``), ``backend``
    (``"auto"`` uses numba when importable).

    Learned: ``confusions_[w, true, observed]``, ``priors_``, ``loss_history_`` (crowd-kit's
    criterion per vote, one entry per iteration, same values as crowd-kit's attribute of that
    name), ``loglik_history_`` (observed-data log-likelihood per vote under the parameters of
    each E-step), ``n_iter_``, plus everything :class:`Aggregator` provides.
    """

    def __init__(
        self,
        n_iter: int = 100,
        tol: float = 1e-5,
        smoothing: float = 0.0,
        init: Literal["auto", "majority_vote", "gold", "random"] = "auto",
        random_state: int | None = 0,
        backend: Backend = "auto",
        stop: Stop = "crowdkit",
    ) -> None:
        self.n_iter = n_iter
        self.tol = tol
        self.smoothing = smoothing
        self.init = init
        self.random_state = random_state
        self.backend = backend
        self.stop = stop

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
        if self.backend == "numba" and numba is None:
            raise ValueError("backend='numba' but numba is not installed")
        if self.stop not in ("crowdkit", "loglik"):
            raise ValueError("stop must be 'crowdkit' or 'loglik'")

    def _use_numba(self) -> bool:
        return self.backend != "numpy" and numba is not None

    def _resolved_init(self, known: np.ndarray) -> str:
        if self.init == "auto":
            return "gold" if (known >= 0).any() else "majority_vote"
        return self.init

    def _initial_posteriors(self, votes: VoteMatrix, known: np.ndarray) -> np.ndarray:
        init = self._resolved_init(known)
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

    def _log_confusions(
        self, counts_t: np.ndarray, observed: np.ndarray, out: np.ndarray, mass: np.ndarray
    ) -> float:
        """``out[:] = log(max(M-step confusions, EPS))`` in kernel layout (flat or 3-d).

        Returns ``sum counts * out`` and fills ``mass[true]`` (the soft counts summed over
        workers and labels), the parts of crowd-kit's criterion that come from the soft counts
        (cells nobody used hold zero counts and a finite, floored log). No BLAS call: its
        threads spin after each call and would take the cores from the next EM pass.
        """
        if self._use_numba() and type(self)._m_step is DawidSkene._m_step:
            return _log_m_step_numba(
                counts_t.reshape(-1),
                observed.reshape(-1),
                observed.shape[-1],
                float(self.smoothing),
                EPS,
                out.reshape(-1),
                mass,
            )
        # subclasses with their own M-step (one-coin) and the NumPy backend
        log_conf = out.reshape(counts_t.shape)
        log_conf[...] = np.log(np.maximum(self._m_step(counts_t, observed), EPS))
        mass[:] = counts_t.sum(axis=(0, 1))
        return float(np.multiply(counts_t, log_conf).sum())

    # -- fit -----------------------------------------------------------------------------------
    def _fit_votes(self, votes: VoteMatrix, known: np.ndarray) -> np.ndarray:
        self._validate()
        k = votes.n_classes
        n_workers = votes.n_workers
        start = time.perf_counter()
        known = np.ascontiguousarray(known, dtype=np.int64)
        if self._use_numba():
            # counting sort by task once: each vote becomes one int32 row index worker * k + label
            code_dtype = np.int32 if n_workers * k * k < 2**31 else np.int64
            indptr = np.empty(votes.n_tasks + 1, dtype=np.int64)
            code = np.empty(votes.n_votes, dtype=code_dtype)
            observed_flat = np.empty(n_workers * k, dtype=np.bool_)
            worker_votes = np.empty(n_workers, dtype=np.int64)
            _sort_by_task(
                votes.task_idx, votes.worker_idx, votes.label_idx, k,
                indptr, code, observed_flat, worker_votes,
            )  # fmt: skip
            observed = observed_flat.reshape(n_workers, k)
            bounds = _chunk_bounds(indptr, n_workers * k * k)
            if self._resolved_init(known) == "majority_vote":
                post = np.empty((votes.n_tasks, k))
                first_mode = VOTE_SHARES
            else:
                post = np.ascontiguousarray(self._initial_posteriors(votes, known))
                first_mode = SCATTER
            # per-chunk soft counts; after each pass row 0 holds the total
            counts_buf = np.empty((len(bounds) - 1, n_workers * k * k))
            post_sum_buf = np.empty((len(bounds) - 1, k))
            log_conf = np.empty(n_workers * k * k)
            log_prior = np.zeros(k)
            kernel = _em_pass_for(k)
            _run_chunks(
                kernel, bounds, indptr, code, log_conf, log_prior, known, post,
                counts_buf=counts_buf, post_sum_buf=post_sum_buf, mode=first_mode,
            )  # fmt: skip
            counts_t = counts_buf[0].reshape(n_workers, k, k)
            post_sum = post_sum_buf[0]

            def em_pass() -> tuple[float, float]:
                return _run_chunks(
                    kernel, bounds, indptr, code, log_conf, log_prior, known, post,
                    counts_buf=counts_buf, post_sum_buf=post_sum_buf, mode=E_STEP,
                )  # fmt: skip

        else:
            worker_votes = np.bincount(votes.worker_idx, minlength=n_workers)
            observed = (
                np.bincount(votes.worker_idx * k + votes.label_idx, minlength=n_workers * k) > 0
            ).reshape(n_workers, k)
            post = self._initial_posteriors(votes, known)
            post_sum = post.sum(axis=0)
            counts_t = np.ascontiguousarray(confusion_counts(votes, post).transpose(0, 2, 1))
            log_conf = np.empty((n_workers, k, k))
            log_prior = np.zeros(k)

            def em_pass() -> tuple[float, float]:
                return _em_pass_numpy(votes, log_conf, log_prior, known, post, counts_t, post_sum)

        self.setup_seconds_ = time.perf_counter() - start

        loglik: list[float] = []
        losses: list[float] = []
        n_votes = max(votes.n_votes, 1)
        start = time.perf_counter()
        mass = np.empty(k)
        self._log_confusions(counts_t, observed, log_conf, mass)
        log_prior[:] = np.log(self._prior(post_sum, votes.n_tasks))
        for _ in range(self.n_iter):
            ll, entropy = em_pass()
            loglik.append(ll / n_votes)
            # M-step on the new posteriors; crowd-kit's criterion is measured right after it:
            # sum counts * log confusions + the class prior counted once per vote + entropy
            expected = self._log_confusions(counts_t, observed, log_conf, mass)
            log_prior[:] = np.log(self._prior(post_sum, votes.n_tasks))
            prior_term = float(np.multiply(mass, log_prior).sum())
            losses.append((expected + prior_term + entropy) / n_votes)
            watched = losses if self.stop == "crowdkit" else loglik
            if len(watched) > 1 and watched[-1] - watched[-2] < self.tol:
                break
        self.em_seconds_ = time.perf_counter() - start
        self.n_iter_ = len(losses)
        self.loglik_history_ = loglik
        self.loss_history_ = losses

        # final M-step so the confusions match the returned posterior (as crowd-kit does)
        self._conf_t = self._m_step(counts_t, observed)
        self.priors_ = self._prior(post_sum, votes.n_tasks)
        # each worker's expected share of right votes is the trace of its soft counts
        hits = np.einsum("wcc->w", counts_t)
        self._accuracy = np.divide(
            hits, worker_votes, out=np.full(n_workers, np.nan), where=worker_votes > 0
        )
        return post

    def _worker_accuracy(self, votes: VoteMatrix, posteriors: np.ndarray) -> np.ndarray:
        return self._accuracy

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
