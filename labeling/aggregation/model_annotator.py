"""A trained model as one more annotator in the crowd's posterior, with a learned reliability.

V. C. Raykar et al., "Learning from crowds", JMLR 11:1297-1322, 2010, and S. Albarqouni et al.,
"AggNet: deep learning from crowds for mitosis detection in breast cancer histology images",
IEEE TMI 35(5):1313-1321, 2016: the E-step multiplies the classifier's opinion of an item into
the annotators' likelihoods (Raykar eq. 8, AggNet eq. 3). Here the classifier is not trusted
as it stands: like any voter of Dawid & Skene (1979) it gets a confusion matrix, learned from
the data, so a poor or miscalibrated model is weighed for what it is worth.

The model's answer on item ``i`` is coded as one symbol ``s_i = (argmax, confidence bin)``:
its top class and which of ``n_bins`` quantile bins its top probability falls in (``n_bins = 1``
is the argmax with a learned confusion). Its reliability is ``theta[k, s]``, the probability of
symbol ``s`` when the true class is ``k``: binning lets the same EM calibrate the model (a
"sure" answer may be worth more than an "unsure" one, or not). Combined posterior::

    T_ik ∝ C_ik * theta[k, s_i] ** w_i

with ``C`` the crowd's posterior from the votes (any method's: it is ``p_k prod_j pi_j[k, y_ij]``
for Dawid-Skene) and ``w_i`` the model's weight on that item.

``theta`` is learned by EM with the crowd's posterior held fixed: the E-step is the line above,
the M-step the Dawid-Skene one, ``theta[k, s] ∝ smoothing + sum_i w_i T_ik [s_i = s]``, over the
items with crowd evidence (a vote or a clamped answer). Holding ``C`` fixed lets any aggregation
method supply it. Learning ``theta`` against ``C`` alone (the E-step without the model's own
factor) was tried and rejected: the crowd's own errors then count as the model's, and on a
simulated crowd a model 84% right was rated 54% and combined below its own accuracy (.78).

:func:`dawid_skene_with_model` goes one step further, as AggNet does: the workers' confusions
are re-learned from the combined posterior too (all confusions in one EM), which on one or two
votes per item learns the workers much better than the crowd alone can (simulated: a 90% model
on 1-2 votes per item, combined .82 with the crowd held fixed, .93 jointly).

Guards against the model dominating the posterior:

* items without crowd evidence teach ``theta`` nothing: there the posterior is the model's own
  factor times the prior, and counting it would let the model vouch for itself;
* predictions on items the model was trained on echo the crowd labels it learned from (their
  errors included) and are overconfident there: mark them ``in_sample``. They weigh
  ``in_sample_weight`` (default 0.5) in the combination, and ``theta`` is learned from
  out-of-sample items only once there are ``min_out_of_sample`` of them with crowd evidence;
* a Dirichlet pseudo-count ``smoothing`` on every cell of ``theta``, so a few items cannot make
  the model look infallible.
"""

from __future__ import annotations

from typing import Self

import numpy as np

from labeling.aggregation.base import EPS, VoteMatrix, clamp_known, expected_confusions


def confidence_edges(probabilities: np.ndarray, n_bins: int) -> np.ndarray:
    """Inner edges ``[n_bins - 1]`` of quantile bins of the model's top probability (evenly
    spaced over ``[1/K, 1]`` when there is nothing to take quantiles of)."""
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    top = probabilities.max(axis=1)
    if not len(top):
        return np.linspace(1.0 / probabilities.shape[1], 1.0, n_bins + 1)[1:-1]
    return np.quantile(top, np.arange(1, n_bins) / n_bins)


def model_symbols(probabilities: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Each item's symbol ``argmax * n_bins + confidence bin`` (``n_bins = len(edges) + 1``)."""
    n_bins = len(edges) + 1
    top_class = probabilities.argmax(axis=1)
    bins = np.searchsorted(edges, probabilities.max(axis=1), side="right")
    return (top_class * n_bins + bins).astype(np.int64)


def check_model_probabilities(
    probabilities: np.ndarray, n_items: int, n_classes: int
) -> np.ndarray:
    """``[n_items, K]`` floats; a row of NaN means "no prediction"; other rows are distributions."""
    probs = np.asarray(probabilities, dtype=np.float64)
    if probs.shape != (n_items, n_classes):
        raise ValueError(
            f"model probabilities must have shape ({n_items}, {n_classes}), got {probs.shape}"
        )
    missing = np.isnan(probs)
    if (missing.any(axis=1) & ~missing.all(axis=1)).any():
        raise ValueError("a model probability row is either all NaN (no prediction) or complete")
    rows = probs[~missing.any(axis=1)]
    if (rows < 0).any() or not np.allclose(rows.sum(axis=1), 1.0, atol=1e-3):
        raise ValueError("each model probability row must be a distribution over the classes")
    return probs


class ModelAnnotator:
    """The model as a voter with a learned confusion (see module docstring).

    Parameters: ``n_bins`` (confidence bins per predicted class), ``smoothing`` (Dirichlet
    pseudo-count per cell of ``theta``), ``n_iter`` and ``tol`` (EM stops when no posterior
    cell moves more than ``tol``), ``in_sample_weight`` (the weight ``w_i`` of a prediction
    on an item the model was trained on; 1 for the others), ``min_out_of_sample`` (out-of-sample
    items with crowd evidence needed before ``theta`` is learned from them alone).

    Learned by :meth:`fit`: ``confusion_`` ``[K, K * n_bins]`` (true class x symbol),
    ``confusion_argmax_`` ``[K, K]`` (true class x predicted class, the bins summed: the
    annotator's confusion as people read it), ``accuracy_`` (probability of a right answer on an
    item drawn from the crowd's class prior), ``edges_`` (the confidence bins), ``n_fit_items_``,
    ``fit_on_`` (``"out_of_sample"`` or ``"all"``: which predictions ``theta`` came from) and
    ``n_iter_``.
    """

    confusion_: np.ndarray
    confusion_argmax_: np.ndarray
    accuracy_: float
    edges_: np.ndarray
    n_fit_items_: int
    fit_on_: str

    def __init__(
        self,
        n_bins: int = 3,
        smoothing: float = 1.0,
        in_sample_weight: float = 0.5,
        min_out_of_sample: int = 30,
        n_iter: int = 100,
        tol: float = 1e-6,
    ) -> None:
        self.n_iter = n_iter
        self.tol = tol
        self.n_bins = n_bins
        self.smoothing = smoothing
        self.in_sample_weight = in_sample_weight
        self.min_out_of_sample = min_out_of_sample

    def _validate(self) -> None:
        if not isinstance(self.n_bins, int | np.integer) or self.n_bins < 1:
            raise ValueError("n_bins must be a positive integer")
        if self.smoothing <= 0:
            raise ValueError("smoothing must be > 0 (theta would take logs of zero)")
        if not 0.0 <= self.in_sample_weight <= 1.0:
            raise ValueError("in_sample_weight must be in [0, 1]")
        if not isinstance(self.n_iter, int | np.integer) or self.n_iter < 1:
            raise ValueError("n_iter must be a positive integer")
        if self.min_out_of_sample < 0:
            raise ValueError("min_out_of_sample must be >= 0")

    def _weights(self, predicted: np.ndarray, in_sample: np.ndarray | None) -> np.ndarray:
        w = predicted.astype(np.float64)
        if in_sample is not None:
            w[np.asarray(in_sample, dtype=bool) & predicted] = self.in_sample_weight
        return w

    def fit(
        self,
        crowd_posteriors: np.ndarray,
        model_probabilities: np.ndarray,
        has_crowd: np.ndarray,
        in_sample: np.ndarray | None = None,
    ) -> Self:
        """Learn ``theta`` against the crowd's posterior (``[n_items, K]``, rows summing to 1).

        ``has_crowd`` marks the items whose crowd posterior rests on evidence (a vote or a
        clamped answer); the others carry only the class prior and teach ``theta`` nothing.
        """
        self._validate()
        crowd = np.asarray(crowd_posteriors, dtype=np.float64)
        n, k = crowd.shape
        probs = check_model_probabilities(model_probabilities, n, k)
        evidence = np.asarray(has_crowd, dtype=bool)
        if evidence.shape != (n,):
            raise ValueError("has_crowd must have one entry per item")
        predicted = ~np.isnan(probs).any(axis=1)
        weights = self._weights(predicted, in_sample)
        teach = predicted & evidence
        trained_on = np.zeros(n, bool) if in_sample is None else np.asarray(in_sample, dtype=bool)
        out_of_sample = teach & ~trained_on
        if out_of_sample.sum() >= self.min_out_of_sample or not (teach & trained_on).any():
            teach, self.fit_on_ = out_of_sample, "out_of_sample"
            weights_fit = teach.astype(np.float64)
        else:
            self.fit_on_ = "all"
            weights_fit = np.where(teach, weights, 0.0)
        self.edges_ = confidence_edges(probs[teach], self.n_bins)
        n_symbols = k * self.n_bins
        symbols = model_symbols(np.where(predicted[:, None], probs, 1.0 / k), self.edges_)
        log_crowd = np.log(np.maximum(crowd, EPS))
        post = crowd
        self.n_iter_ = 0
        for _ in range(self.n_iter):
            counts = np.empty((k, n_symbols))
            for true in range(k):
                counts[true] = np.bincount(
                    symbols, weights=post[:, true] * weights_fit, minlength=n_symbols
                )
            counts += self.smoothing
            self.confusion_ = counts / counts.sum(axis=1, keepdims=True)
            self.n_iter_ += 1
            log_post = log_crowd + np.log(self.confusion_)[:, symbols].T * weights[:, None]
            new = np.exp(log_post - log_post.max(axis=1, keepdims=True))
            new /= new.sum(axis=1, keepdims=True)
            change = float(np.abs(new - post).max()) if len(post) else 0.0
            post = new
            if change < self.tol:
                break
        self.confusion_argmax_ = self.confusion_.reshape(k, k, self.n_bins).sum(axis=2)
        prior = crowd[evidence].mean(axis=0) if evidence.any() else np.full(k, 1.0 / k)
        self.accuracy_ = float(prior @ np.diag(self.confusion_argmax_))
        self.n_fit_items_ = int(teach.sum())
        self._k = k
        return self

    def log_likelihood(
        self, model_probabilities: np.ndarray, in_sample: np.ndarray | None = None
    ) -> np.ndarray:
        """The model's factor ``w_i log theta[k, s_i]`` per item and class (0 without a prediction)."""
        if not hasattr(self, "confusion_"):
            raise ValueError("ModelAnnotator is not fitted yet; call fit first")
        k = self._k
        probs = check_model_probabilities(model_probabilities, len(model_probabilities), k)
        predicted = ~np.isnan(probs).any(axis=1)
        symbols = model_symbols(np.where(predicted[:, None], probs, 1.0 / k), self.edges_)
        log_theta = np.log(np.maximum(self.confusion_, EPS))
        return log_theta[:, symbols].T * self._weights(predicted, in_sample)[:, None]

    def combine(
        self,
        crowd_posteriors: np.ndarray,
        model_probabilities: np.ndarray,
        in_sample: np.ndarray | None = None,
        known: np.ndarray | None = None,
    ) -> np.ndarray:
        """The combined posterior ``T ∝ C * theta[:, s] ** w``; ``known`` (class codes, -1 where
        none) stay one-hot."""
        crowd = np.asarray(crowd_posteriors, dtype=np.float64)
        log_post = np.log(np.maximum(crowd, EPS)) + self.log_likelihood(
            model_probabilities, in_sample
        )
        log_post -= log_post.max(axis=1, keepdims=True)
        post = np.exp(log_post)
        post /= post.sum(axis=1, keepdims=True)
        # a crowd posterior of exact zeros (a clamped row) stays exact
        post[crowd == 0.0] = 0.0
        post /= post.sum(axis=1, keepdims=True)
        if known is not None:
            clamp_known(post, np.asarray(known, dtype=np.int64))
        return post

    def fit_combine(
        self,
        crowd_posteriors: np.ndarray,
        model_probabilities: np.ndarray,
        has_crowd: np.ndarray,
        in_sample: np.ndarray | None = None,
        known: np.ndarray | None = None,
    ) -> np.ndarray:
        self.fit(crowd_posteriors, model_probabilities, has_crowd, in_sample)
        return self.combine(crowd_posteriors, model_probabilities, in_sample, known)

    def agrees(self, combined: np.ndarray, model_probabilities: np.ndarray) -> np.ndarray:
        """Items with a prediction whose top class is the combined posterior's top class."""
        probs = np.asarray(model_probabilities, dtype=np.float64)
        predicted = ~np.isnan(probs).any(axis=1)
        top = np.where(predicted[:, None], probs, -1.0).argmax(axis=1)
        return predicted & (top == np.asarray(combined).argmax(axis=1))


def dawid_skene_with_model(
    votes: VoteMatrix,
    model_probabilities: np.ndarray,
    crowd_posteriors: np.ndarray,
    known: np.ndarray | None = None,
    in_sample: np.ndarray | None = None,
    annotator: ModelAnnotator | None = None,
    n_iter: int = 50,
    tol: float = 1e-5,
    smoothing: float = 0.01,
) -> tuple[np.ndarray, ModelAnnotator, np.ndarray]:
    """Dawid-Skene with the model as one more annotator, all confusions learned together.

    AggNet's E-step (Albarqouni et al. 2016, eq. 3; Raykar et al. 2010, eq. 8) with Dawid &
    Skene's M-step: ``T ∝ p_k prod_j pi_j[k, y_ij] * theta[k, s_i] ** w_i``; the workers'
    confusions ``pi`` (pseudo-count ``smoothing``) and the prior come from ``T``, so a good model
    also sharpens what is learned of each worker (on one or two votes per item the crowd alone
    cannot tell its workers apart), and ``theta`` comes from ``annotator.fit`` against the crowd
    part of ``T``. Starts from ``crowd_posteriors`` (a Dawid-Skene fit). Returns the combined
    posterior, the fitted annotator and the workers' confusions ``[n_workers, true, observed]``.
    """
    annotator = annotator if annotator is not None else ModelAnnotator()
    k = votes.n_classes
    known_codes = np.full(votes.n_tasks, -1) if known is None else np.asarray(known)
    has_crowd = (np.bincount(votes.task_idx, minlength=votes.n_tasks) > 0) | (known_codes >= 0)
    post = np.asarray(crowd_posteriors, dtype=np.float64)
    confusions = expected_confusions(votes, post, smoothing)
    for _ in range(n_iter):
        confusions = expected_confusions(votes, post, smoothing)
        log_crowd = np.tile(np.log(np.maximum(post.mean(axis=0), EPS)), (votes.n_tasks, 1))
        per_vote = np.log(np.maximum(confusions, EPS))[votes.worker_idx, :, votes.label_idx]
        for c in range(k):
            log_crowd[:, c] += np.bincount(
                votes.task_idx, weights=per_vote[:, c], minlength=votes.n_tasks
            )
        crowd = np.exp(log_crowd - log_crowd.max(axis=1, keepdims=True))
        crowd /= crowd.sum(axis=1, keepdims=True)
        clamp_known(crowd, known_codes)
        new = annotator.fit_combine(crowd, model_probabilities, has_crowd, in_sample, known_codes)
        change = float(np.abs(new - post).max()) if len(post) else 0.0
        post = new
        if change < tol:
            break
    return post, annotator, confusions
