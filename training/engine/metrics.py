"""Hold-out evaluation of a trained model against expert labels, and report plots.

Expected calibration error follows Guo et al., "On Calibration of Modern Neural Networks",
ICML 2017, eq. (3): ``ECE = sum_b |B_b|/n * |acc(B_b) - conf(B_b)|`` over 15 equal-width bins of
the top-class confidence. Plots are drawn on a bare Agg canvas (no pyplot, no global backend
switch) and returned as PNG bytes.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

from training.engine.chart_style import GOOD, REFERENCE, styled

__all__ = [
    "EvaluationReport",
    "evaluate",
    "expected_calibration_error",
    "plot_confusion_matrix",
    "plot_reliability_diagram",
    "plot_roc_curves",
    "plot_training_curves",
]


@dataclass
class EvaluationReport:
    """Scores of probabilities ``[N, K]`` against expert classes ``[N]``.

    Per-class lists are indexed by class. A score that has no value is ``None``, never a 0
    that reads like a failure: ``recall`` and ``f1`` of a class with no hold-out item,
    ``precision`` of a class the model never predicted. ``roc_auc`` is the binary AUC for two
    classes and the one-vs-rest macro average otherwise, over the classes that occur in the
    hold-out; a class absent from it (or the only one present) has ``None`` in
    ``roc_auc_per_class``. ``predicted`` counts the hold-out items predicted as each class.
    """

    n_items: int
    class_names: list[str]
    accuracy: float
    balanced_accuracy: float
    precision: list[float | None]
    recall: list[float | None]
    f1: list[float | None]
    support: list[int]
    roc_auc: float | None
    roc_auc_per_class: list[float | None]
    confusion_matrix: list[list[int]]  # [expert class][predicted class]
    expected_calibration_error: float
    predicted: list[int] | None = None

    @property
    def macro_f1(self) -> float | None:
        """Mean F1 over the classes the hold-out has."""
        present = [f for f in self.f1 if f is not None]
        return float(np.mean(present)) if present else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (for a JSONField)."""
        return asdict(self)


def _validated(y_true: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true).astype(np.int64).reshape(-1)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2 or probabilities.shape[0] != y_true.shape[0]:
        raise ValueError(
            f"probabilities must be [N, K] with N = {y_true.shape[0]}, got {probabilities.shape}"
        )
    if probabilities.shape[1] < 2:
        raise ValueError("need at least two classes")
    if y_true.size == 0:
        raise ValueError("the hold-out is empty")
    if y_true.min() < 0 or y_true.max() >= probabilities.shape[1]:
        raise ValueError("expert classes must lie in [0, K)")
    return y_true, probabilities


def expected_calibration_error(
    y_true: np.ndarray, probabilities: np.ndarray, n_bins: int = 15
) -> float:
    """ECE over ``n_bins`` equal-width confidence bins (right-closed: (0, 1/15], ...)."""
    y_true, probabilities = _validated(y_true, probabilities)
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == y_true).astype(np.float64)
    bins = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        in_bin = bins == b
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def evaluate(
    y_true: np.ndarray,
    probabilities: np.ndarray,
    class_names: Sequence[str] | None = None,
    n_bins: int = 15,
) -> EvaluationReport:
    """All hold-out scores in one report (scikit-learn where it fits)."""
    y_true, probabilities = _validated(y_true, probabilities)
    num_classes = probabilities.shape[1]
    names = list(class_names) if class_names is not None else [str(k) for k in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for {num_classes} classes")
    predicted = probabilities.argmax(axis=1)
    labels = list(range(num_classes))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, predicted, labels=labels, zero_division=0
    )
    per_class_auc: list[float | None] = []
    for k in labels:
        positives = y_true == k
        if positives.all() or not positives.any():
            per_class_auc.append(None)
        else:
            per_class_auc.append(float(roc_auc_score(positives, probabilities[:, k])))
    if num_classes == 2:
        auc = per_class_auc[1]
    else:
        present = [a for a in per_class_auc if a is not None]
        auc = float(np.mean(present)) if present else None
    predicted_counts = np.bincount(predicted, minlength=num_classes)
    return EvaluationReport(
        n_items=int(y_true.size),
        class_names=names,
        accuracy=float(accuracy_score(y_true, predicted)),
        balanced_accuracy=float(_balanced_accuracy(y_true, predicted)),
        precision=[float(v) if n else None for v, n in zip(precision, predicted_counts, strict=True)],
        recall=[float(v) if n else None for v, n in zip(recall, support, strict=True)],
        f1=[float(v) if n else None for v, n in zip(f1, support, strict=True)],
        support=[int(v) for v in support],
        roc_auc=auc,
        roc_auc_per_class=per_class_auc,
        confusion_matrix=confusion_matrix(y_true, predicted, labels=labels).tolist(),
        expected_calibration_error=expected_calibration_error(y_true, probabilities, n_bins),
        predicted=[int(v) for v in predicted_counts],
    )


def _balanced_accuracy(y_true: np.ndarray, predicted: np.ndarray) -> float:
    # mean recall over the classes present in the hold-out (scikit-learn's definition)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true" is expected
        return balanced_accuracy_score(y_true, predicted)


def _png(figure: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def _figure(width: float = 4.5, height: float = 4.0) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


@styled
def plot_confusion_matrix(
    matrix: Sequence[Sequence[int]] | np.ndarray, class_names: Sequence[str]
) -> bytes:
    """Heatmap of ``matrix[expert][predicted]`` with counts written in the cells."""
    counts = np.asarray(matrix)
    figure = _figure()
    axes = figure.add_subplot()
    image = axes.imshow(counts, cmap="Blues")
    figure.colorbar(image, ax=axes, fraction=0.046)
    ticks = range(len(class_names))
    axes.set_xticks(ticks, class_names, rotation=45, ha="right")
    axes.set_yticks(ticks, class_names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("expert")
    threshold = counts.max() / 2 if counts.size else 0
    for (row, column), value in np.ndenumerate(counts):
        axes.text(
            column,
            row,
            str(value),
            ha="center",
            va="center",
            color="white" if value > threshold else "black",
        )
    return _png(figure)


@styled
def plot_roc_curves(
    y_true: np.ndarray, probabilities: np.ndarray, class_names: Sequence[str]
) -> bytes:
    """ROC curve per class (one-vs-rest; only the positive class when there are two)."""
    y_true, probabilities = _validated(y_true, probabilities)
    figure = _figure()
    axes = figure.add_subplot()
    classes = [1] if probabilities.shape[1] == 2 else range(probabilities.shape[1])
    for k in classes:
        positives = y_true == k
        if positives.all() or not positives.any():
            continue  # no curve without both positives and negatives
        fpr, tpr, _ = roc_curve(positives, probabilities[:, k])
        auc = roc_auc_score(positives, probabilities[:, k])
        axes.plot(fpr, tpr, label=f"{class_names[k]} (AUC {auc:.3f})")
    axes.plot([0, 1], [0, 1], linestyle="--", color=REFERENCE, linewidth=1)
    axes.set_xlabel("false positive rate")
    axes.set_ylabel("true positive rate")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.01)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(loc="lower right", fontsize="small")
    return _png(figure)


@styled
def plot_reliability_diagram(
    y_true: np.ndarray, probabilities: np.ndarray, n_bins: int = 15
) -> bytes:
    """Accuracy per confidence bin against the diagonal, with the ECE in the title."""
    y_true, probabilities = _validated(y_true, probabilities)
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == y_true
    bins = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    centres = (np.arange(n_bins) + 0.5) / n_bins
    accuracy = np.array(
        [correct[bins == b].mean() if (bins == b).any() else 0.0 for b in range(n_bins)]
    )
    figure = _figure()
    axes = figure.add_subplot()
    axes.bar(centres, accuracy, width=1 / n_bins, edgecolor="white", label="accuracy")
    axes.plot([0, 1], [0, 1], linestyle="--", color=REFERENCE, label="perfect calibration")
    axes.set_xlabel("confidence")
    axes.set_ylabel("accuracy")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    ece = expected_calibration_error(y_true, probabilities, n_bins)
    axes.set_title(f"ECE {ece:.3f}")
    axes.legend(loc="upper left", fontsize="small")
    return _png(figure)


@styled
def plot_training_curves(history: Sequence[Any]) -> bytes:
    """Train/hold-out loss and hold-out accuracy per epoch.

    ``history`` holds :class:`~training.engine.trainer.EpochRecord` objects or their dicts.
    """
    rows = [record if isinstance(record, dict) else asdict(record) for record in history]
    epochs = [row["epoch"] for row in rows]
    figure = _figure(8.0, 3.5)
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    loss_axes.plot(epochs, [row["train_loss"] for row in rows], marker="o", label="train")
    holdout_loss = [row.get("holdout_loss") for row in rows]
    if any(value is not None for value in holdout_loss):
        loss_axes.plot(
            epochs, [np.nan if v is None else v for v in holdout_loss], marker="o", label="hold-out"
        )
    loss_axes.set_xlabel("epoch")
    loss_axes.set_ylabel("loss")
    loss_axes.legend(fontsize="small")
    accuracy = [row.get("holdout_accuracy") for row in rows]
    accuracy_axes.plot(
        epochs, [np.nan if v is None else v for v in accuracy], marker="o", color=GOOD
    )
    accuracy_axes.set_xlabel("epoch")
    accuracy_axes.set_ylabel("hold-out accuracy")
    accuracy_axes.set_ylim(0, 1)
    return _png(figure)
