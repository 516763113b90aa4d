"""Agreement coefficients against published worked examples."""

import numpy as np
import pandas as pd
import pytest

from labeling.aggregation import fleiss_kappa, krippendorff_alpha, worker_agreement

# Fleiss (1971) style worked example as tabulated on Wikipedia's "Fleiss' kappa" page:
# 10 subjects, 14 raters each, 5 categories; kappa = 0.210.
WIKIPEDIA_TABLE = np.array(
    [
        [0, 0, 0, 0, 14],
        [0, 2, 6, 4, 2],
        [0, 0, 3, 5, 6],
        [0, 3, 9, 2, 0],
        [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0],
        [3, 2, 6, 3, 0],
        [2, 5, 3, 2, 2],
        [6, 5, 2, 1, 0],
        [0, 2, 2, 3, 7],
    ]
)

# Krippendorff (2011), "Computing Krippendorff's alpha-reliability", section C:
# 4 observers, 12 units, missing values; nominal alpha = 0.743.
KRIPPENDORFF_2011 = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
]


def _reliability_frame(matrix) -> pd.DataFrame:
    rows = [
        {"task": unit, "worker": f"coder{c}", "label": value}
        for c, values in enumerate(matrix)
        for unit, value in enumerate(values)
        if value is not None
    ]
    return pd.DataFrame(rows)


def test_fleiss_wikipedia_example():
    assert fleiss_kappa(WIKIPEDIA_TABLE) == pytest.approx(0.210, abs=5e-4)


def test_fleiss_varying_raters_hand_computed():
    # P_i = 1, 0, 1 -> P_bar = 2/3; shares (6/7, 1/7) -> P_e = 37/49; kappa = -13/36
    assert fleiss_kappa(np.array([[2, 0], [1, 1], [3, 0], [1, 0]])) == pytest.approx(-13 / 36)


def test_krippendorff_2011_example():
    assert krippendorff_alpha(_reliability_frame(KRIPPENDORFF_2011)) == pytest.approx(
        0.743, abs=5e-4
    )


def test_krippendorff_equals_fleiss_corrected_for_small_samples():
    # with complete data, alpha differs from Fleiss' kappa only by the (n-1)/n sample correction
    n = WIKIPEDIA_TABLE.sum()
    kappa = fleiss_kappa(WIKIPEDIA_TABLE)
    alpha = krippendorff_alpha(WIKIPEDIA_TABLE)
    assert alpha == pytest.approx(1 - (1 - kappa) * (n - 1) / n, abs=1e-3)


def test_perfect_agreement_is_one():
    table = np.array([[3, 0, 0], [0, 4, 0], [0, 0, 2]])
    assert fleiss_kappa(table) == pytest.approx(1.0)
    assert krippendorff_alpha(table) == pytest.approx(1.0)
    one_class = pd.DataFrame({"task": [1, 1, 2, 2], "worker": list("abab"), "label": ["x"] * 4})
    assert fleiss_kappa(one_class) == 1.0
    assert krippendorff_alpha(one_class) == 1.0


def test_needs_pairable_ratings():
    with pytest.raises(ValueError):
        fleiss_kappa(np.array([[1, 0], [0, 1]]))
    with pytest.raises(ValueError):
        krippendorff_alpha(np.array([[1, 0]]))


def test_worker_agreement_with_consensus():
    frame = pd.DataFrame(
        {
            "task": [1, 1, 1, 2, 2, 2],
            "worker": list("abcabc"),
            "label": ["x", "x", "y", "y", "y", "y"],
        }
    )
    share = worker_agreement(frame)
    assert share.to_dict() == {"a": 1.0, "b": 1.0, "c": 0.5}
    given = worker_agreement(frame, consensus=pd.Series({1: "y"}))
    assert given.to_dict() == {"a": 0.0, "b": 0.0, "c": 1.0}
