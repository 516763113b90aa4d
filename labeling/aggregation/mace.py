"""MACE: multi-annotator competence estimation (spammer detection).

D. Hovy, T. Berg-Kirkpatrick, A. Vaswani and E. Hovy, "Learning whom to trust with MACE",
NAACL-HLT 2013, pages 1120-1130.

Model (paper section 2, figure 1): the true label ``T_i`` is uniform over the ``K`` classes;
worker ``j`` spams on item ``i`` with probability ``1 - theta_j`` (``S_ij ~ Bernoulli(1 -
theta_j)``); when not spamming the answer is the truth, when spamming it is drawn from the
worker's own strategy ``xi_j`` (a distribution over classes). So (paper eq. 1)
``P(A_ij = a | T_i = k) = theta_j [a = k] + (1 - theta_j) xi_j[a]``.

EM (section 2.2): the E-step gives ``P(T_i = k | A) ∝ prod_j (theta_j [a_ij = k] + (1 -
theta_j) xi_j[a_ij])`` and, per vote, the expected "knowing" count ``P(T_i = a_ij, S_ij =
0 | A) = P(T_i = a_ij | A) theta_j / (theta_j + (1 - theta_j) xi_j[a_ij])``; its complement is
the expected spam count, which also goes to ``xi_j[a_ij]``. The M-step either normalises the
counts with an additive ``smoothing`` (``method="em"``) or, the paper's default,
takes the variational-Bayes update with Beta(``alpha``, ``beta``) = Beta(0.5, 0.5) priors on
``theta_j`` and a symmetric Dirichlet(10) prior on ``xi_j`` (``method="vb"``:
``exp(digamma(count + prior)) / exp(digamma(total + prior total))``, section 2.3).

Initialisation: every worker half trustworthy with a uniform strategy (the first E-step is
then a soft majority vote), which is deterministic; ``n_restarts > 1`` adds random starts
(drawn from ``random_state``) and keeps the one with the best marginal likelihood, as the
paper's tool does.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy.special import digamma

from labeling.aggregation.base import EPS, Aggregator, VoteMatrix, clamp_known


class MACE(Aggregator):
    """MACE (see module docstring).

    Learned: ``competence_`` (``theta_j``, probability a worker is not spamming; low values
    flag spammers), ``strategies_`` (``xi_j``, ``[n_workers, K]``), ``n_iter_``,
    ``loglik_history_``; ``confusions_[j, k, a] = theta_j [a = k] + (1 - theta_j) xi_j[a]``.
    """

    def __init__(
        self,
        n_iter: int = 50,
        tol: float = 1e-5,
        method: Literal["vb", "em"] = "vb",
        smoothing: float | None = None,
        alpha: float = 0.5,
        beta: float = 0.5,
        strategy_prior: float = 10.0,
        n_restarts: int = 1,
        random_state: int | None = 0,
    ) -> None:
        self.n_iter = n_iter
        self.tol = tol
        self.method = method
        self.smoothing = smoothing
        self.alpha = alpha
        self.beta = beta
        self.strategy_prior = strategy_prior
        self.n_restarts = n_restarts
        self.random_state = random_state

    def _e_step(
        self, votes: VoteMatrix, theta: np.ndarray, xi: np.ndarray, known: np.ndarray
    ) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
        """Posterior over T, marginal log-likelihood, knowing and spam count per vote.

        ``theta`` is ``[n_workers, 2]``: (weight of spamming, weight of knowing); they sum to
        one under EM and to a little less under VB.
        """
        k = votes.n_classes
        th = theta[votes.worker_idx, 1]
        spam = np.maximum(theta[votes.worker_idx, 0] * xi[votes.worker_idx, votes.label_idx], EPS)
        log_spam = np.log(spam)
        log_hit = np.log(spam + th)
        acc = np.bincount(
            votes.task_idx * k + votes.label_idx,
            weights=log_hit - log_spam,
            minlength=votes.n_tasks * k,
        ).reshape(votes.n_tasks, k)
        acc += np.bincount(votes.task_idx, weights=log_spam, minlength=votes.n_tasks)[:, None]
        acc -= np.log(k)
        top = acc.max(axis=1, keepdims=True)
        post = np.exp(acc - top)
        total = post.sum(axis=1, keepdims=True)
        post /= total
        loglik = float((top + np.log(total)).sum())
        clamp_known(post, known)
        knowing = post[votes.task_idx, votes.label_idx] * th / (spam + th)
        return post, loglik, knowing, 1.0 - knowing

    def _m_step(
        self, votes: VoteMatrix, knowing: np.ndarray, spamming: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        k = votes.n_classes
        n_w = votes.n_workers
        know = np.bincount(votes.worker_idx, weights=knowing, minlength=n_w)
        spam = np.bincount(votes.worker_idx, weights=spamming, minlength=n_w)
        strategy = np.bincount(
            votes.worker_idx * k + votes.label_idx, weights=spamming, minlength=n_w * k
        ).reshape(n_w, k)
        if self.method == "vb":
            denom = np.exp(digamma(know + spam + self.alpha + self.beta))[:, None]
            theta = np.exp(digamma(np.stack([spam + self.alpha, know + self.beta], axis=1))) / denom
            xi = np.exp(digamma(strategy + self.strategy_prior))
            xi /= np.exp(digamma(strategy.sum(axis=1, keepdims=True) + k * self.strategy_prior))
        else:
            s = 0.01 / k if self.smoothing is None else self.smoothing
            theta = np.stack([spam + s, know + s], axis=1) / (know + spam + 2 * s)[:, None]
            xi = (strategy + s) / (strategy.sum(axis=1, keepdims=True) + k * s)
        return theta, xi

    def _run(
        self, votes: VoteMatrix, known: np.ndarray, theta: np.ndarray, xi: np.ndarray
    ) -> tuple:
        post, ll, knowing, spamming = self._e_step(votes, theta, xi, known)
        history: list[float] = []
        n_votes = max(votes.n_votes, 1)
        for _ in range(self.n_iter):
            theta, xi = self._m_step(votes, knowing, spamming)
            post, ll, knowing, spamming = self._e_step(votes, theta, xi, known)
            history.append(ll / n_votes)
            if len(history) > 1 and abs(history[-1] - history[-2]) < self.tol:
                break
        return ll, post, theta, xi, history

    def _fit_votes(self, votes: VoteMatrix, known: np.ndarray) -> np.ndarray:
        if self.method not in ("vb", "em"):
            raise ValueError("method must be 'vb' or 'em'")
        if self.n_restarts < 1 or self.n_iter < 0:
            raise ValueError("n_restarts must be >= 1 and n_iter >= 0")
        k, n_w = votes.n_classes, votes.n_workers
        rng = np.random.default_rng(self.random_state)
        best = None
        for restart in range(self.n_restarts):
            if restart == 0:
                theta, xi = np.full((n_w, 2), 0.5), np.full((n_w, k), 1.0 / k)
            else:
                know = rng.uniform(0.2, 0.8, size=n_w)
                theta = np.stack([1.0 - know, know], axis=1)
                xi = rng.dirichlet(np.ones(k), size=n_w)
            result = self._run(votes, known, theta, xi)
            if best is None or result[0] > best[0]:
                best = result
        _, post, theta, xi, history = best
        self.n_iter_ = len(history)
        self.loglik_history_ = history
        # VB parameters are sub-normalised; report them as probabilities
        self.competence_ = theta[:, 1] / theta.sum(axis=1)
        self.strategies_ = xi / xi.sum(axis=1, keepdims=True)
        self._theta, self._xi = theta, xi
        self.priors_ = np.full(k, 1.0 / k)
        return post

    def _confusions(self, votes: VoteMatrix, posteriors: np.ndarray) -> np.ndarray:
        k = votes.n_classes
        c = self.competence_[:, None, None]
        return c * np.eye(k)[None] + (1.0 - c) * self.strategies_[:, None, :]

    def _predict_votes(self, votes: VoteMatrix) -> np.ndarray:
        theta = np.vstack([self._theta, self._theta.mean(axis=0, keepdims=True)])
        xi = np.vstack([self._xi, self._xi.mean(axis=0, keepdims=True)])
        post, _, _, _ = self._e_step(votes, theta, xi, np.full(votes.n_tasks, -1, dtype=np.int64))
        return post
