"""Region agreement measures and the review order, on cases with a known answer."""

import numpy as np
import pandas as pd
import pytest

from labeling.aggregation.regions.agreement import (
    detection_agreement,
    detection_f1,
    mask_agreement,
    review_order,
)
from labeling.aggregation.regions.geometry import box_iou, dice, ellipse_masks, iou, polygon_mask


def test_dice_iou_and_box_iou():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[:2] = True  # 8 pixels
    b[1:3] = True  # 8 pixels, 4 shared
    assert dice(a, b) == pytest.approx(0.5)
    assert iou(a, b) == pytest.approx(4 / 12)
    assert dice(np.zeros(3, bool), np.zeros(3, bool)) == 1.0
    np.testing.assert_allclose(
        box_iou(np.array([[0, 0, 2, 2.0]]), np.array([[1, 1, 3, 3.0], [5, 5, 6, 6.0]])),
        [[1 / 7, 0.0]],
    )


def test_polygon_and_ellipse_masks():
    square = np.array([[1, 1], [4, 1], [4, 3], [1, 3]], dtype=float)
    m = polygon_mask(square, (6, 6))
    expected = np.zeros((6, 6), bool)
    expected[1:4, 1:5] = True  # outline pixels included
    np.testing.assert_array_equal(m, expected)
    # an irregular star with no vertex on a pixel centre: the same pixels as matplotlib's test
    from matplotlib.path import Path

    angle = np.linspace(0, 2 * np.pi, 23, endpoint=False)
    radius = np.where(np.arange(23) % 2, 6.3, 14.7)
    star = np.c_[20.1 + radius * np.cos(angle), 18.2 + radius * np.sin(angle)]
    yy, xx = np.mgrid[:40, :42]
    inside = Path(star).contains_points(np.c_[xx.ravel(), yy.ravel()]).reshape(40, 42)
    np.testing.assert_array_equal(polygon_mask(star, (40, 42), include_outline=False), inside)
    labels = ellipse_masks(np.array([[10, 10, 20, 20.0]]), (32, 32))
    assert labels[15, 15] == 1 and labels[10, 10] == 0 and labels[15, 10] == 1
    assert abs((labels == 1).sum() - np.pi * 5.5**2) < 10


def test_detection_f1_known_answer():
    truth = np.array([[0.0, 0.0], [10.0, 10.0], [20.0, 20.0]])
    pred = np.array([[1.0, 0.0], [10.0, 12.0], [50.0, 50.0], [60.0, 60.0]])
    f1, precision, recall = detection_f1(pred, truth, "points", 3.0)
    assert (f1, precision, recall) == pytest.approx((4 / 7, 0.5, 2 / 3))
    assert detection_f1(np.zeros((0, 2)), np.zeros((0, 2)), "points", 3.0) == (1.0, 1.0, 1.0)


def test_pairwise_agreement_per_task_and_worker():
    full = np.ones((3, 3), bool)
    half = np.zeros((3, 3), bool)
    half[:, :1] = True  # 3 of 9
    frame = pd.DataFrame(
        {
            "task": ["a", "a", "a", "b", "b"],
            "worker": [1, 2, 3, 1, 2],
            "segmentation": [full, full, half, full, full],
        }
    )
    per_task, per_worker = mask_agreement(frame)
    d = 2 * 3 / 12
    assert per_task["a"] == pytest.approx((1 + d + d) / 3) and per_task["b"] == 1.0
    assert per_worker[3] == pytest.approx(d) and per_worker[1] == pytest.approx((1 + d + 1) / 3)
    points = pd.DataFrame(
        {
            "task": 0,
            "worker": [1, 2],
            "points": [np.array([[0.0, 0], [9, 9]]), np.array([[0.5, 0]])],
        }
    )
    per_task, per_worker = detection_agreement(points, "points", 2.0)
    assert per_task[0] == pytest.approx(2 / 3) and per_worker[2] == pytest.approx(2 / 3)


def test_review_order_most_uncertain_first():
    u = pd.Series([0.1, 0.5, np.nan, 0.5], index=["a", "b", "c", "d"])
    assert list(review_order(u)) == ["c", "b", "d", "a"]
