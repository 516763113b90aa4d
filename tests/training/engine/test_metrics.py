"""Hold-out metrics against values worked out by hand; plots are real PNGs."""

from __future__ import annotations

import numpy as np
import pytest

from training.engine import (
    EpochRecord,
    evaluate,
    plot_confusion_matrix,
    plot_reliability_diagram,
    plot_roc_curves,
    plot_training_curves,
)
from training.engine.metrics import expected_calibration_error

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

BINARY_TRUTH = np.array([0, 0, 1, 1])
BINARY_PROBABILITIES = np.array([[0.9, 0.1], [0.4, 0.6], [0.6, 0.4], [0.1, 0.9]])

# class 2 never occurs in the hold-out
THREE_CLASS_TRUTH = np.array([0, 0, 1, 1])
THREE_CLASS_PROBABILITIES = np.array(
    [[0.7, 0.2, 0.1], [0.3, 0.5, 0.2], [0.2, 0.6, 0.2], [0.5, 0.4, 0.1]]
)


def test_binary_report():
    report = evaluate(BINARY_TRUTH, BINARY_PROBABILITIES, ["normal", "pneumonia"])
    assert report.n_items == 4
    assert report.accuracy == 0.5 and report.balanced_accuracy == 0.5
    assert report.confusion_matrix == [[1, 1], [1, 1]]
    assert (
        report.precision == [0.5, 0.5] and report.recall == [0.5, 0.5] and report.f1 == [0.5, 0.5]
    )
    assert report.support == [2, 2]
    # positives score 0.4 and 0.9, negatives 0.1 and 0.6: 3 of 4 pairs ranked right
    assert report.roc_auc == pytest.approx(0.75)
    # bins: confidence 0.9 (both right) and 0.6 (both wrong): 0.5*0.1 + 0.5*0.6
    assert report.expected_calibration_error == pytest.approx(0.35)
    assert report.to_dict()["class_names"] == ["normal", "pneumonia"]


def test_multiclass_report_with_a_class_absent_from_the_holdout():
    report = evaluate(THREE_CLASS_TRUTH, THREE_CLASS_PROBABILITIES)
    assert report.accuracy == 0.5
    assert report.balanced_accuracy == 0.5  # mean recall over the classes present
    assert report.confusion_matrix == [[1, 1, 0], [1, 1, 0], [0, 0, 0]]
    assert report.roc_auc_per_class == [pytest.approx(0.75), pytest.approx(0.75), None]
    assert report.roc_auc == pytest.approx(0.75)
    # class 2: no hold-out item and never predicted, so none of its scores exists (not 0)
    assert report.support[2] == 0 and report.predicted == [2, 2, 0]
    assert report.precision[2] is None and report.recall[2] is None and report.f1[2] is None
    assert report.macro_f1 == pytest.approx(0.5)  # over the two classes the hold-out has


def test_a_model_that_predicts_one_class_on_a_skewed_holdout():
    # 13 of 15 items are pneumonia and the model says pneumonia every time: accuracy 0.867
    # looks good, balanced accuracy (0.5) and normal's recall (0) tell the truth
    truth = np.array([0] * 2 + [1] * 13)
    probabilities = np.tile([0.3, 0.7], (15, 1))
    report = evaluate(truth, probabilities, ["normal", "pneumonia"])
    assert report.accuracy == pytest.approx(13 / 15)
    assert report.balanced_accuracy == pytest.approx(0.5)
    assert report.recall == [0.0, 1.0] and report.predicted == [0, 15]
    assert report.precision[0] is None  # never predicted: undefined, not 0
    assert report.f1[0] == 0.0  # recall 0 makes F1 0 whatever the precision


def test_single_class_holdout_has_no_auc():
    report = evaluate(np.array([1, 1]), np.array([[0.2, 0.8], [0.6, 0.4]]))
    assert report.roc_auc is None and report.accuracy == 0.5


def test_perfectly_calibrated_bins_have_zero_ece():
    # ten items at confidence 0.8 of which eight are right
    truth = np.array([0] * 8 + [1] * 2)
    probabilities = np.tile([0.8, 0.2], (10, 1))
    assert expected_calibration_error(truth, probabilities) == pytest.approx(0.0)


def test_invalid_input():
    with pytest.raises(ValueError, match="probabilities must be"):
        evaluate(np.array([0, 1]), np.array([0.5, 0.5]))
    with pytest.raises(ValueError, match="lie in"):
        evaluate(np.array([0, 3]), BINARY_PROBABILITIES[:2])
    with pytest.raises(ValueError, match="class names"):
        evaluate(BINARY_TRUTH, BINARY_PROBABILITIES, ["only one"])


def test_plots_are_png_bytes():
    report = evaluate(THREE_CLASS_TRUTH, THREE_CLASS_PROBABILITIES, ["a", "b", "c"])
    history = [
        EpochRecord(1, 1.0, 0.9, 0.5, 1.0, 100.0, 1e-3),
        EpochRecord(2, 0.7, None, None, 1.0, 100.0, 5e-4),
    ]
    images = [
        plot_confusion_matrix(report.confusion_matrix, report.class_names),
        plot_roc_curves(THREE_CLASS_TRUTH, THREE_CLASS_PROBABILITIES, report.class_names),
        plot_roc_curves(BINARY_TRUTH, BINARY_PROBABILITIES, ["normal", "pneumonia"]),
        plot_reliability_diagram(BINARY_TRUTH, BINARY_PROBABILITIES),
        plot_training_curves(history),
        plot_training_curves([vars(record) for record in history]),
    ]
    for image in images:
        assert image.startswith(PNG_SIGNATURE) and len(image) > 2000
