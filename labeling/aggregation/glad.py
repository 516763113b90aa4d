"""GLAD: worker ability and item difficulty.

J. Whitehill, P. Ruvolo, T. Wu, J. Bergsma and J. Movellan, "Whose vote should count more:
optimal integration of labels from labelers of unknown expertise", NIPS 2009.

Model (paper eq. 1): worker ``j`` labels item ``i`` correctly with probability
``sigma(alpha_j * beta_i)``, ``alpha_j`` the worker's ability (negative: adversarial),
``beta_i = exp(b_i) > 0`` the item's inverse difficulty; a wrong answer is uniform over the
other ``K - 1`` classes (the multi-class extension of section 2). EM (section 3):

* E-step (eq. 3): ``p(z_i = k) ∝ p_k * prod_j sigma(alpha_j beta_i)^[y_ij = k]
  * ((1 - sigma(alpha_j beta_i)) / (K - 1))^[y_ij != k]``, in log space;
* M-step (eq. 4-6): maximise the expected complete log-likelihood
  ``Q = sum_ij q_ij log sigma(x_ij) + (1 - q_ij) log((1 - sigma(x_ij)) / (K - 1))``,
  ``x_ij = alpha_j beta_i``, ``q_ij = p(z_i = y_ij)``, plus Gaussian priors
  ``alpha_j ~ N(1, 1)`` and ``b_i ~ N(1, 1)``, whose gradients are
  ``dQ/dalpha_j = sum_i (q_ij - sigma(x_ij)) beta_i - (alpha_j - 1)`` and
  ``dQ/db_i = sum_j (q_ij - sigma(x_ij)) alpha_j beta_i - (b_i - 1)``; both are segment sums
  (``np.bincount``), and a few steps of a gradient optimiser per EM iteration follow them
  (``m_step_max_iter``; a partial M-step, so generalised EM): conjugate gradients with
  ``tol=1e-2`` by default, crowd-kit's, or L-BFGS-B (``m_step_method``).

The class prior ``p`` is fixed (uniform unless ``priors`` is given), as in the paper and
crowd-kit; priors and initial values (alpha = 1, b = 1) follow crowd-kit so results compare.

Convergence (``stop``): by default crowd-kit's rule, so that with its M-step ours runs
crowd-kit's algorithm. Its criterion, ``loss_history_``, is ``Q`` of each M-step (the
objective above with the priors' full log densities) at the new parameters, under the
posteriors that M-step maximised, per vote and class; iteration stops at the first M-step
whose criterion gains less than ``tol``, keeping the posteriors it was measured under (the
E-step before that M-step) and the parameters that M-step fitted to them. ``Q`` leaves out the
posteriors' entropy, so it is no bound on the likelihood and can fall early: on face_sentiment
it falls at the second M-step, and the posteriors after one are one task more accurate than
the converged model's (.630 against .628 of 584). ``stop="loglik"`` stops instead once the
penalised observed-data log-likelihood per vote (``loglik_history_``, after each E-step)
moves by less than ``tol``. Both rules and both optimisers were measured on the five real sets
of ``benchmarks/aggregation.py`` (README there); the defaults are the combination that is at
least as accurate as crowd-kit on all five, which stopping on the likelihood is not.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import expit

from labeling.aggregation.base import EPS, Aggregator, VoteMatrix, clamp_known
from labeling.aggregation.dawid_skene import Stop

Optimizer = Literal["L-BFGS-B", "CG"]
_HALF_LOG_2PI = 0.5 * np.log(2.0 * np.pi)


def _log_sigmoid(x: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -x)


class GLAD(Aggregator):
    """GLAD EM (see module docstring).

    Parameters: ``n_iter`` (most M-steps), ``tol`` and ``stop`` (module docstring),
    ``m_step_max_iter``, ``m_step_method`` (``"CG"`` or ``"L-BFGS-B"``) and ``m_step_tol``
    (scipy's ``tol`` for it; ``None`` is scipy's default), the prior means, and ``priors`` (a
    fixed class prior). ``stop="loglik", m_step_method="L-BFGS-B", m_step_tol=None`` is the
    rule this class had before it followed crowd-kit.

    Learned: ``alphas_`` (ability per worker), ``betas_`` (log inverse difficulty ``b`` per
    task, crowd-kit's convention; ``exp(betas_)`` is ``beta``), ``loss_history_`` (crowd-kit's
    criterion after each M-step, the values of crowd-kit's attribute of that name),
    ``loglik_history_`` (after each E-step that followed one), ``n_iter_`` (M-steps run);
    ``confusions_`` is the one-coin matrix of each worker's mean probability of
    being right over the items they labelled.
    """

    def __init__(
        self,
        n_iter: int = 100,
        tol: float = 1e-5,
        m_step_max_iter: int = 25,
        alpha_prior_mean: float = 1.0,
        beta_prior_mean: float = 1.0,
        priors: Sequence[float] | None = None,
        stop: Stop = "crowdkit",
        m_step_method: Optimizer = "CG",
        m_step_tol: float | None = 1e-2,
    ) -> None:
        self.n_iter = n_iter
        self.tol = tol
        self.m_step_max_iter = m_step_max_iter
        self.alpha_prior_mean = alpha_prior_mean
        self.beta_prior_mean = beta_prior_mean
        self.priors = priors
        self.stop = stop
        self.m_step_method = m_step_method
        self.m_step_tol = m_step_tol

    def _class_prior(self, k: int) -> np.ndarray:
        if self.priors is None:
            return np.full(k, 1.0 / k)
        p = np.asarray(self.priors, dtype=np.float64)
        if p.shape != (k,) or (p < 0).any() or not np.isclose(p.sum(), 1.0):
            raise ValueError("priors must be n_classes non-negative numbers summing to 1")
        return p

    @staticmethod
    def _log_joint(
        votes: VoteMatrix, alphas: np.ndarray, b: np.ndarray, log_prior: np.ndarray
    ) -> np.ndarray:
        """``[n_tasks, K]`` log p(z_i = k, votes of i)."""
        k = votes.n_classes
        x = alphas[votes.worker_idx] * np.exp(b[votes.task_idx])
        log_right = _log_sigmoid(x)
        log_wrong = _log_sigmoid(-x) - np.log(max(k - 1, 1))
        base = np.bincount(votes.task_idx, weights=log_wrong, minlength=votes.n_tasks)
        bonus = np.bincount(
            votes.task_idx * k + votes.label_idx,
            weights=log_right - log_wrong,
            minlength=votes.n_tasks * k,
        ).reshape(votes.n_tasks, k)
        return bonus + base[:, None] + log_prior

    def _e_step(
        self, votes: VoteMatrix, alphas: np.ndarray, b: np.ndarray, log_prior: np.ndarray
    ) -> tuple[np.ndarray, float]:
        acc = self._log_joint(votes, alphas, b, log_prior)
        top = acc.max(axis=1, keepdims=True)
        post = np.exp(acc - top)
        total = post.sum(axis=1, keepdims=True)
        post /= total
        return post, float((top + np.log(total)).sum())

    def _m_step(
        self, votes: VoteMatrix, post: np.ndarray, alphas: np.ndarray, b: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, float]:
        """New ``(alphas, b)`` and the objective ``Q`` (with the priors' log densities) there."""
        q = post[votes.task_idx, votes.label_idx]
        k = votes.n_classes
        w_idx, t_idx = votes.worker_idx, votes.task_idx
        n_w = votes.n_workers
        log_k1 = np.log(max(k - 1, 1))
        mu_a, mu_b = self.alpha_prior_mean, self.beta_prior_mean

        def negative_q(theta: np.ndarray) -> tuple[float, np.ndarray]:
            a, bb = theta[:n_w], theta[n_w:]
            beta = np.exp(bb)
            x = a[w_idx] * beta[t_idx]
            value = np.sum(q * _log_sigmoid(x) + (1.0 - q) * (_log_sigmoid(-x) - log_k1))
            value -= 0.5 * np.sum((a - mu_a) ** 2) + 0.5 * np.sum((bb - mu_b) ** 2)
            resid = q - expit(x)
            grad_a = np.bincount(w_idx, weights=resid * beta[t_idx], minlength=n_w) - (a - mu_a)
            grad_b = np.bincount(t_idx, weights=resid * x, minlength=votes.n_tasks) - (bb - mu_b)
            return -value, -np.concatenate([grad_a, grad_b])

        res = minimize(
            negative_q,
            np.concatenate([alphas, b]),
            jac=True,
            method=self.m_step_method,
            tol=self.m_step_tol,
            options={"maxiter": self.m_step_max_iter},
        )
        value = -float(res.fun) - _HALF_LOG_2PI * len(res.x)
        return res.x[:n_w].copy(), res.x[n_w:].copy(), value

    def _fit_votes(self, votes: VoteMatrix, known: np.ndarray) -> np.ndarray:
        if self.n_iter < 0 or self.m_step_max_iter < 1:
            raise ValueError("n_iter must be >= 0 and m_step_max_iter >= 1")
        if self.stop not in ("crowdkit", "loglik"):
            raise ValueError("stop must be 'crowdkit' or 'loglik'")
        if self.m_step_method not in ("L-BFGS-B", "CG"):
            raise ValueError("m_step_method must be 'L-BFGS-B' or 'CG'")
        log_prior = np.log(np.maximum(self._class_prior(votes.n_classes), EPS))
        alphas = np.full(votes.n_workers, 1.0)
        b = np.full(votes.n_tasks, 1.0)
        post, _ = self._e_step(votes, alphas, b, log_prior)
        clamp_known(post, known)
        loglik: list[float] = []
        losses: list[float] = []
        n_votes = max(votes.n_votes, 1)
        for it in range(self.n_iter):
            alphas, b, value = self._m_step(votes, post, alphas, b)
            # crowd-kit's criterion: Q at the new parameters under the posteriors it maximised
            losses.append(value / (n_votes * votes.n_classes))
            if self.stop == "crowdkit":
                if len(losses) > 1 and losses[-1] - losses[-2] < self.tol:
                    break
                if it == self.n_iter - 1:
                    break  # keep the posteriors the last criterion was measured under
            post, ll = self._e_step(votes, alphas, b, log_prior)
            clamp_known(post, known)
            penalty = 0.5 * np.sum((alphas - self.alpha_prior_mean) ** 2) + 0.5 * np.sum(
                (b - self.beta_prior_mean) ** 2
            )
            loglik.append((ll - penalty) / n_votes)
            if (
                self.stop == "loglik"
                and len(loglik) > 1
                and abs(loglik[-1] - loglik[-2]) < self.tol
            ):
                break
        self.n_iter_ = len(losses)
        self.loglik_history_ = loglik
        self.loss_history_ = losses
        self.alphas_ = alphas
        self.betas_ = b
        self.priors_ = np.exp(log_prior)
        self._log_prior = log_prior
        return post

    def _confusions(self, votes: VoteMatrix, posteriors: np.ndarray) -> np.ndarray:
        k = votes.n_classes
        p_right = expit(self.alphas_[votes.worker_idx] * np.exp(self.betas_[votes.task_idx]))
        n = np.bincount(votes.worker_idx, minlength=votes.n_workers)
        s = np.bincount(votes.worker_idx, weights=p_right, minlength=votes.n_workers)
        skill = np.divide(s, n, out=expit(self.alphas_ * np.exp(self.beta_prior_mean)), where=n > 0)
        off = (1.0 - skill) / max(k - 1, 1)
        conf = np.broadcast_to(off[:, None, None], (votes.n_workers, k, k)).copy()
        conf[:, np.arange(k), np.arange(k)] = skill[:, None]
        return conf

    def _predict_votes(self, votes: VoteMatrix) -> np.ndarray:
        alphas = np.append(
            self.alphas_, self.alphas_.mean() if len(self.alphas_) else self.alpha_prior_mean
        )
        # tasks seen in fit keep their difficulty; new ones start at the prior mean
        where = pd.Index(self.tasks_).get_indexer(votes.tasks)
        b = np.where(where >= 0, self.betas_[np.maximum(where, 0)], self.beta_prior_mean)
        post, _ = self._e_step(votes, alphas, b, self._log_prior)
        return post
