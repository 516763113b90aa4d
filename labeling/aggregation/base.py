"""Integer-coded votes and the estimator base class shared by every aggregation method.

Votes arrive as a pandas frame with columns ``task``, ``worker``, ``label`` (crowd-kit's
names; any hashable ids, labels often strings) or as an already coded :class:`VoteMatrix`.
They are coded once into dense ``int64`` arrays; every method then works on those arrays and
:class:`Aggregator` turns the resulting ``[n_tasks, n_classes]`` posterior back into the
crowd-kit style frames (``probas_``, ``labels_``, ``errors_``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Self

import numpy as np
import pandas as pd

try:
    import numba
except ImportError:  # numba is a dependency; NumPy does the same work without it, slower
    numba = None

VOTE_COLUMNS = ("task", "worker", "label")

# Floor for probabilities before taking logs (crowd-kit uses the same 1e-10).
EPS = 1e-10

KnownLabels = Mapping[Any, Any] | pd.Series | np.ndarray | None


@dataclass(frozen=True)
class VoteMatrix:
    """Votes coded as dense integer arrays, one entry per vote.

    ``task_idx[v]``, ``worker_idx[v]`` and ``label_idx[v]`` index into ``tasks``, ``workers``
    and ``classes`` (the code -> name lookups). A task or worker may have no vote at all when
    the lookups were given explicitly; a class nobody used still has its column.
    """

    task_idx: np.ndarray
    worker_idx: np.ndarray
    label_idx: np.ndarray
    tasks: np.ndarray
    workers: np.ndarray
    classes: np.ndarray
    _task_order: list[np.ndarray] = field(default_factory=list, repr=False, compare=False)

    def __post_init__(self) -> None:
        n = len(self.task_idx)
        if len(self.worker_idx) != n or len(self.label_idx) != n:
            raise ValueError("task_idx, worker_idx and label_idx must have the same length")
        for name, codes, size in (
            ("task_idx", self.task_idx, self.n_tasks),
            ("worker_idx", self.worker_idx, self.n_workers),
            ("label_idx", self.label_idx, self.n_classes),
        ):
            if codes.dtype.kind not in "iu":
                raise ValueError(f"{name} must be an integer array, got {codes.dtype}")
            if n:
                lo, hi = _value_range(codes)
                if lo < 0 or hi >= size:
                    raise ValueError(f"{name} has codes outside [0, {size})")
        if self.n_classes < 1:
            raise ValueError("at least one class is needed")

    @property
    def n_votes(self) -> int:
        return int(len(self.task_idx))

    @property
    def n_tasks(self) -> int:
        return int(len(self.tasks))

    @property
    def n_workers(self) -> int:
        return int(len(self.workers))

    @property
    def n_classes(self) -> int:
        return int(len(self.classes))

    @classmethod
    def from_codes(
        cls,
        task_idx: np.ndarray | Sequence[int],
        worker_idx: np.ndarray | Sequence[int],
        label_idx: np.ndarray | Sequence[int],
        n_tasks: int | None = None,
        n_workers: int | None = None,
        n_classes: int | None = None,
        tasks: Sequence[Any] | np.ndarray | None = None,
        workers: Sequence[Any] | np.ndarray | None = None,
        classes: Sequence[Any] | np.ndarray | None = None,
    ) -> VoteMatrix:
        """Wrap arrays that are already integer codes (the array entry point).

        Sizes default to ``max code + 1`` (or the length of the given lookup); lookups
        default to ``arange(n)``.
        """
        arrays = [
            np.ascontiguousarray(a, dtype=np.int64) for a in (task_idx, worker_idx, label_idx)
        ]
        lookups = []
        for codes, n, names in zip(
            arrays, (n_tasks, n_workers, n_classes), (tasks, workers, classes), strict=True
        ):
            if names is not None:
                names = np.asarray(names)
                if n is not None and n != len(names):
                    raise ValueError("explicit size and lookup length disagree")
            else:
                if n is None:
                    n = int(codes.max()) + 1 if len(codes) else 0
                names = np.arange(n)
            lookups.append(names)
        return cls(arrays[0], arrays[1], arrays[2], lookups[0], lookups[1], lookups[2])

    def task_order(self) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(order, indptr)``: votes sorted by task and each task's slice (CSR).

        Computed once and cached, since the EM kernels walk votes task by task.
        """
        if not self._task_order:
            order = np.argsort(self.task_idx, kind="stable")
            counts = np.bincount(self.task_idx, minlength=self.n_tasks)
            indptr = np.zeros(self.n_tasks + 1, dtype=np.int64)
            np.cumsum(counts, out=indptr[1:])
            self._task_order.extend([order, indptr])
        return self._task_order[0], self._task_order[1]

    def vote_counts(self, weights: np.ndarray | None = None) -> np.ndarray:
        """Votes per (task, class) as a ``[n_tasks, n_classes]`` float array.

        ``weights`` (one per worker) turns the counts into weighted votes.
        """
        flat = self.task_idx * self.n_classes + self.label_idx
        w = None if weights is None else weights[self.worker_idx]
        counts = np.bincount(flat, weights=w, minlength=self.n_tasks * self.n_classes)
        return counts.reshape(self.n_tasks, self.n_classes).astype(np.float64)

    def to_frame(self) -> pd.DataFrame:
        """The votes as a crowd-kit frame with the original ids and class names."""
        return pd.DataFrame(
            {
                "task": self.tasks[self.task_idx],
                "worker": self.workers[self.worker_idx],
                "label": self.classes[self.label_idx],
            }
        )


def code_votes(data: pd.DataFrame, classes: Sequence[Any] | None = None) -> VoteMatrix:
    """Code a ``task, worker, label`` frame into a :class:`VoteMatrix` (one pass, no loop).

    ``classes`` fixes the class list and its order (the project's classes), so a class nobody
    voted for still gets a column; without it the classes are the sorted distinct labels.
    """
    missing = [c for c in VOTE_COLUMNS if c not in data.columns]
    if missing:
        raise ValueError(f"votes frame lacks column(s) {missing}; expected {list(VOTE_COLUMNS)}")
    for column in VOTE_COLUMNS:
        # plain NumPy integer columns cannot hold a missing value; skip the scan for them
        if not _plain_int(data[column]) and data[column].isna().to_numpy().any():
            raise ValueError("votes frame has missing values in task, worker or label")
    task_idx, tasks = _factorize_sorted(data["task"])
    worker_idx, workers = _factorize_sorted(data["worker"])
    if classes is None:
        label_idx, class_names = _factorize_sorted(data["label"])
    else:
        class_names = _as_class_array(classes)
        label_idx = pd.Index(class_names).get_indexer(data["label"])
        if (label_idx < 0).any():
            unknown = pd.unique(data["label"].to_numpy()[label_idx < 0])[:5]
            raise ValueError(f"labels {list(unknown)} are not among classes {list(class_names)}")
    return VoteMatrix(
        np.asarray(task_idx, dtype=np.int64),
        np.asarray(worker_idx, dtype=np.int64),
        np.asarray(label_idx, dtype=np.int64),
        np.asarray(tasks),
        np.asarray(workers),
        class_names,
    )


def _plain_int(column: pd.Series) -> bool:
    return isinstance(column.dtype, np.dtype) and column.dtype.kind in "iu"


def _factorize_sorted(column: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """``pd.factorize(column, sort=True)`` as ``(int64 codes, sorted uniques)``.

    Integer ids spanning a range not much larger than the column are coded through a table
    over the range instead of a hash table and a sort (same codes and uniques).
    """
    if _plain_int(column) and len(column):
        values = column.to_numpy()
        lo, hi = _value_range(values)
        if hi - lo <= 4 * len(values) + 1024:
            return _dense_codes(values, lo, hi)
    codes, uniques = pd.factorize(column, sort=True)
    return np.asarray(codes, dtype=np.int64), np.asarray(uniques)


def _value_range_python(values):
    """``(min, max)`` of a non-empty integer array in one pass."""
    lo = values[0]
    hi = values[0]
    for v in values:
        lo = min(lo, v)
        hi = max(hi, v)
    return lo, hi


def _dense_codes_python(values, lo, present, codes):
    """Mark the values present in ``[lo, lo + len(present))``, number them in order, code each value."""
    for v in values:
        present[v - lo] = 1
    n = 0
    for i in range(present.shape[0]):
        if present[i]:
            present[i] = n
            n += 1
        else:
            present[i] = -1
    for i in range(values.shape[0]):
        codes[i] = present[values[i] - lo]
    return n


if numba is not None:
    _value_range_numba = numba.njit(cache=True, nogil=True)(_value_range_python)
    _dense_codes_numba = numba.njit(cache=True, nogil=True)(_dense_codes_python)


def _value_range(values: np.ndarray) -> tuple[int, int]:
    if numba is not None:
        lo, hi = _value_range_numba(values)
        return int(lo), int(hi)
    return int(values.min()), int(values.max())


def _dense_codes(values: np.ndarray, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted-factorize codes of integer ``values`` within ``[lo, hi]`` by a table over the range."""
    if numba is not None and values.dtype != np.uint64:  # uint64 - int64 is float in numba
        table = np.zeros(hi - lo + 1, dtype=np.int64)
        codes = np.empty(len(values), dtype=np.int64)
        _dense_codes_numba(values, lo, table, codes)
        uniques = (np.flatnonzero(table >= 0) + lo).astype(values.dtype)
        return codes, uniques
    shifted = (values - lo).astype(np.intp, copy=False)
    present = np.bincount(shifted, minlength=hi - lo + 1) > 0
    lookup = np.cumsum(present) - 1
    uniques = (np.flatnonzero(present) + lo).astype(values.dtype)
    return lookup[shifted], uniques


def _as_class_array(classes: Sequence[Any]) -> np.ndarray:
    names = np.asarray(list(classes))
    if names.ndim != 1 or len(names) == 0:
        raise ValueError("classes must be a non-empty flat sequence")
    if len(pd.unique(names)) != len(names):
        raise ValueError("classes must be distinct")
    return names


def as_votes(data: pd.DataFrame | VoteMatrix, classes: Sequence[Any] | None = None) -> VoteMatrix:
    """Accept either input form; a given ``classes`` must match a VoteMatrix's classes."""
    if isinstance(data, VoteMatrix):
        if classes is not None and list(_as_class_array(classes)) != list(data.classes):
            raise ValueError("classes disagree with the VoteMatrix's classes")
        return data
    if isinstance(data, pd.DataFrame):
        return code_votes(data, classes)
    raise ValueError(f"expected a DataFrame or a VoteMatrix, got {type(data).__name__}")


def code_known_labels(known_labels: KnownLabels, votes: VoteMatrix) -> np.ndarray:
    """Known (expert or gold) answers as an ``int64`` array ``[n_tasks]``, -1 where unknown.

    Accepts a mapping or Series from task id to class name (tasks without votes are ignored)
    or an int array of class codes aligned with ``votes.tasks``.
    """
    known = np.full(votes.n_tasks, -1, dtype=np.int64)
    if known_labels is None:
        return known
    if isinstance(known_labels, np.ndarray):
        if known_labels.shape != (votes.n_tasks,) or known_labels.dtype.kind not in "iu":
            raise ValueError("known_labels as an array must be int codes of shape (n_tasks,)")
        if (known_labels >= votes.n_classes).any() or (known_labels < -1).any():
            raise ValueError("known_labels has codes outside [-1, n_classes)")
        return known_labels.astype(np.int64)
    series = known_labels if isinstance(known_labels, pd.Series) else pd.Series(dict(known_labels))
    if series.empty:
        return known
    class_codes = pd.Index(votes.classes).get_indexer(series.to_numpy())
    if (class_codes < 0).any():
        bad = list(series[class_codes < 0].unique()[:5])
        raise ValueError(f"known labels {bad} are not among classes {list(votes.classes)}")
    task_codes = pd.Index(votes.tasks).get_indexer(series.index)
    present = task_codes >= 0
    known[task_codes[present]] = class_codes[present]
    return known


def clamp_known(posteriors: np.ndarray, known: np.ndarray) -> None:
    """Overwrite, in place, the rows of tasks with a known answer by one-hot rows."""
    rows = np.flatnonzero(known >= 0)
    if len(rows):
        posteriors[rows] = 0.0
        posteriors[rows, known[rows]] = 1.0


def expected_confusions(
    votes: VoteMatrix, posteriors: np.ndarray, smoothing: float = 0.0
) -> np.ndarray:
    """Soft confusion counts ``[n_workers, K_true, K_observed]`` normalised per true class.

    ``counts[w, k, j] = sum over w's votes j of posteriors[task, k]`` (the Dawid-Skene M-step);
    ``smoothing`` is a Dirichlet pseudo-count added to every cell. Rows with no mass at all
    (a true class the worker never met) fall back to uniform.
    """
    counts = confusion_counts(votes, posteriors)
    counts += smoothing
    totals = counts.sum(axis=2, keepdims=True)
    k = votes.n_classes
    return np.divide(counts, totals, out=np.full_like(counts, 1.0 / k), where=totals > 0)


def confusion_counts(votes: VoteMatrix, posteriors: np.ndarray) -> np.ndarray:
    """Unnormalised soft counts ``[n_workers, K_true, K_observed]`` via one bincount per class."""
    k = votes.n_classes
    flat = votes.worker_idx * k + votes.label_idx
    out = np.empty((votes.n_workers, k, k), dtype=np.float64)
    for true in range(k):
        out[:, true, :] = np.bincount(
            flat, weights=posteriors[votes.task_idx, true], minlength=votes.n_workers * k
        ).reshape(votes.n_workers, k)
    return out


def tie_broken_argmax(scores: np.ndarray, tie_scores: np.ndarray | None = None) -> np.ndarray:
    """Row-wise argmax. Among classes with exactly the top score, the highest ``tie_scores``
    (same shape) wins; remaining ties go to the class listed first (crowd-kit's ``idxmax`` does
    the same with its sorted labels), so the project's class order decides them,
    deterministically."""
    n, k = scores.shape
    if numba is not None and scores.dtype == np.float64 and n:
        scores = np.ascontiguousarray(scores)
        ties = scores if tie_scores is None else np.ascontiguousarray(tie_scores, dtype=np.float64)
        out = np.empty(n, dtype=np.int64)
        _argmax_rows_numba(scores, ties, out)
        return out
    if not scores.size:
        return np.zeros(n, dtype=np.int64)
    if tie_scores is None:
        return np.argmax(scores, axis=1)
    tied = scores == scores.max(axis=1, keepdims=True)
    return np.argmax(np.where(tied, tie_scores, -np.inf), axis=1)


def _argmax_rows_python(scores, tie_scores, out):
    """``tie_broken_argmax`` in one pass (NumPy's argmax over short rows is slow)."""
    for i in range(scores.shape[0]):
        best = 0
        for c in range(1, scores.shape[1]):
            s = scores[i, c]
            b = scores[i, best]
            if s > b or (s == b and tie_scores[i, c] > tie_scores[i, best]):
                best = c
        out[i] = best


if numba is not None:
    _argmax_rows_numba = numba.njit(cache=True, nogil=True)(_argmax_rows_python)


class Aggregator:
    """Base class: crowd-kit's interface over integer-coded votes.

    Subclasses implement ``_fit_votes(votes, known)`` returning the posterior ``[n_tasks, K]``
    and setting their own parameters, and ``_predict_votes(votes)`` returning the posterior
    for new votes with the learned parameters (workers unseen in ``fit`` have code -1).

    After ``fit``: ``posteriors_`` (ndarray), ``probas_`` (DataFrame task x class),
    ``labels_`` (Series), ``confusions_`` (ndarray ``[n_workers, true, observed]``),
    ``errors_`` (crowd-kit layout: index (worker, observed label), columns true label),
    ``worker_accuracy_`` (ndarray: expected share of each worker's votes that are correct
    under the posterior), ``tasks_``, ``workers_``, ``classes_`` (code -> name lookups).
    """

    posteriors_: np.ndarray
    confusions_: np.ndarray
    worker_accuracy_: np.ndarray
    priors_: np.ndarray
    tasks_: np.ndarray
    workers_: np.ndarray
    classes_: np.ndarray
    probas_: pd.DataFrame
    labels_: pd.Series
    errors_: pd.DataFrame
    n_iter_: int = 0

    def fit(
        self,
        data: pd.DataFrame | VoteMatrix,
        classes: Sequence[Any] | None = None,
        known_labels: KnownLabels = None,
    ) -> Self:
        """Learn from votes; ``known_labels`` (task -> class) are clamped as certain."""
        votes = as_votes(data, classes)
        known = code_known_labels(known_labels, votes)
        # methods with a learned class prior set priors_ in _fit_votes; others get the posterior mean
        self.__dict__.pop("priors_", None)
        posteriors = self._fit_votes(votes, known)
        clamp_known(posteriors, known)
        self._store(votes, posteriors, known)
        return self

    def fit_predict(
        self,
        data: pd.DataFrame | VoteMatrix,
        classes: Sequence[Any] | None = None,
        known_labels: KnownLabels = None,
    ) -> pd.Series:
        return self.fit(data, classes=classes, known_labels=known_labels).labels_

    def fit_predict_proba(
        self,
        data: pd.DataFrame | VoteMatrix,
        classes: Sequence[Any] | None = None,
        known_labels: KnownLabels = None,
    ) -> pd.DataFrame:
        return self.fit(data, classes=classes, known_labels=known_labels).probas_

    def predict_proba(self, data: pd.DataFrame | VoteMatrix) -> pd.DataFrame:
        """Posterior for (possibly new) votes using the parameters learned in ``fit``."""
        votes = self._recode(data)
        posteriors = self._predict_votes(votes)
        return pd.DataFrame(
            posteriors,
            index=_named_index(votes.tasks, "task"),
            columns=_named_index(self.classes_, "label"),
        )

    def predict(self, data: pd.DataFrame | VoteMatrix) -> pd.Series:
        votes = self._recode(data)
        posteriors = self._predict_votes(votes)
        codes = self._predicted_label_codes(votes, posteriors)
        index = _named_index(votes.tasks, "task")
        return pd.Series(self.classes_[codes], index=index, name="agg_label")

    # -- subclass hooks ---------------------------------------------------------------------
    def _fit_votes(self, votes: VoteMatrix, known: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _predict_votes(self, votes: VoteMatrix) -> np.ndarray:
        raise NotImplementedError

    def _confusions(self, votes: VoteMatrix, posteriors: np.ndarray) -> np.ndarray:
        """Per-worker confusion; methods without their own use one soft M-step."""
        return expected_confusions(votes, posteriors, smoothing=0.0)

    def _label_codes(
        self, votes: VoteMatrix, posteriors: np.ndarray, known: np.ndarray
    ) -> np.ndarray:
        """Each task's label code after ``fit``; methods whose posteriors tie often resolve ties
        their way."""
        return tie_broken_argmax(posteriors)

    def _predicted_label_codes(self, votes: VoteMatrix, posteriors: np.ndarray) -> np.ndarray:
        """Each task's label code in ``predict`` (new votes, learned parameters)."""
        return tie_broken_argmax(posteriors)

    def _worker_accuracy(self, votes: VoteMatrix, posteriors: np.ndarray) -> np.ndarray:
        """Expected share of each worker's votes that are right; EM methods may reuse counts."""
        return worker_accuracy(votes, posteriors)

    # -- shared machinery -------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "posteriors_"):
            raise ValueError(f"{type(self).__name__} is not fitted yet; call fit first")

    def _recode(self, data: pd.DataFrame | VoteMatrix) -> VoteMatrix:
        """Code new votes against the fitted classes; map workers to fitted codes (-1 if new)."""
        self._check_fitted()
        votes = as_votes(
            data.to_frame() if isinstance(data, VoteMatrix) else data, list(self.classes_)
        )
        fitted = pd.Index(self.workers_).get_indexer(votes.workers)
        worker_codes = fitted[votes.worker_idx]
        # unseen workers share one extra slot at index n_workers (the "average worker")
        n = len(self.workers_)
        worker_codes = np.where(worker_codes < 0, n, worker_codes)
        return VoteMatrix(
            votes.task_idx,
            worker_codes.astype(np.int64),
            votes.label_idx,
            votes.tasks,
            np.append(np.asarray(self.workers_, dtype=object), None),
            votes.classes,
        )

    def _store(self, votes: VoteMatrix, posteriors: np.ndarray, known: np.ndarray) -> None:
        self.tasks_ = votes.tasks
        self.workers_ = votes.workers
        self.classes_ = votes.classes
        self.posteriors_ = posteriors
        if "priors_" not in self.__dict__:
            self.priors_ = (
                posteriors.mean(axis=0)
                if len(posteriors)
                else np.full(votes.n_classes, 1.0 / votes.n_classes)
            )
        self.confusions_ = self._confusions(votes, posteriors)
        self.worker_accuracy_ = self._worker_accuracy(votes, posteriors)
        self.probas_ = pd.DataFrame(
            posteriors,
            index=_named_index(votes.tasks, "task"),
            columns=_named_index(votes.classes, "label"),
        )
        codes = self._label_codes(votes, posteriors, known)
        self.labels_ = pd.Series(votes.classes[codes], index=self.probas_.index, name="agg_label")
        self.errors_ = errors_frame(self.confusions_, votes.workers, votes.classes)


def worker_accuracy(votes: VoteMatrix, posteriors: np.ndarray) -> np.ndarray:
    """Expected fraction of each worker's votes that are correct: mean of posterior[task, vote]."""
    hit = posteriors[votes.task_idx, votes.label_idx]
    n = np.bincount(votes.worker_idx, minlength=votes.n_workers)
    s = np.bincount(votes.worker_idx, weights=hit, minlength=votes.n_workers)
    return np.divide(s, n, out=np.full(votes.n_workers, np.nan), where=n > 0)


def errors_frame(confusions: np.ndarray, workers: np.ndarray, classes: np.ndarray) -> pd.DataFrame:
    """crowd-kit's ``errors_`` layout: rows (worker, observed label), columns true label."""
    n_workers, k, _ = confusions.shape
    values = confusions.transpose(0, 2, 1).reshape(n_workers * k, k)
    index = pd.MultiIndex.from_arrays(
        [np.repeat(workers, k), np.tile(classes, n_workers)], names=["worker", "label"]
    )
    return pd.DataFrame(values, index=index, columns=_named_index(classes, "label"))


def _named_index(values: np.ndarray, name: str) -> pd.Index:
    return pd.Index(values, name=name)
