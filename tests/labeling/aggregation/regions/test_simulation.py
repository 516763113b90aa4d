"""Simulated region crowds and the real-truth readers."""

import os
from pathlib import Path

import numpy as np
import pytest

from labeling.aggregation.regions.geometry import dice
from labeling.aggregation.regions.simulation import (
    ARCHETYPES,
    draw_mask,
    make_annotators,
    simulate_boxes,
    simulate_masks,
    simulate_points,
)

DATA_DIR = Path(
    os.environ.get(
        "QUORUM_DATA_DIR", Path(__file__).resolve().parents[4] / ".." / "shared" / "data"
    )
)


def test_annotator_errors_have_the_intended_direction():
    rng = np.random.default_rng(0)
    truth = np.zeros((60, 60), np.int32)
    truth[15:45, 15:45] = 1
    area = (truth > 0).sum()
    loose = draw_mask(truth, ARCHETYPES["loose"], rng)
    tight = draw_mask(truth, ARCHETYPES["tight"], rng)
    assert loose.sum() > area > tight.sum()
    assert dice(draw_mask(truth, ARCHETYPES["expert"], rng), truth > 0) > 0.95
    assert dice(draw_mask(truth, ARCHETYPES["spammer"], rng), truth > 0) < 0.5


def test_simulations_are_deterministic_and_shaped():
    annotators = make_annotators("expert:2,careless:1,spammer:1", seed=0, spread=0.1)
    truth_pts = [np.array([[10.0, 10.0], [30.0, 30.0]])] * 5
    a = simulate_points(truth_pts, annotators, per_item=3, image_size=(64, 48), seed=1)
    b = simulate_points(truth_pts, annotators, per_item=3, image_size=(64, 48), seed=1)
    assert len(a) == 15 and a["task"].nunique() == 5
    assert all(np.array_equal(x, y) for x, y in zip(a["points"], b["points"], strict=True))
    assert all(((p >= 0) & (p <= [63, 47])).all() for p in a["points"])
    boxes = simulate_boxes(
        [np.array([[5.0, 5.0, 20.0, 25.0]])] * 4, annotators, 4, (64, 48), seed=2
    )
    assert all((bx[:, 2:] >= bx[:, :2]).all() for bx in boxes["boxes"])
    masks = simulate_masks([np.ones((8, 8), np.int32)] * 2, annotators, 2, seed=3)
    assert masks["segmentation"].iloc[0].shape == (8, 8)
    with pytest.raises(ValueError, match="unknown archetype"):
        make_annotators("wizard:1")


def test_bccd_boxes_are_read():
    from labeling.aggregation.regions.datasets import bccd_boxes

    if not (DATA_DIR / "bccd").exists():
        pytest.skip("BCCD not found (set QUORUM_DATA_DIR)")
    boxes = bccd_boxes(DATA_DIR, limit=3)
    assert boxes[0].image == "BloodImage_00000"
    assert boxes[0].classes[0] == "WBC"
    np.testing.assert_array_equal(boxes[0].boxes[0], [260, 177, 491, 376])
