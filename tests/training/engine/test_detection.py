"""Centre heatmaps: targets and decoding on known cases, points and boxes learned on a separable
task, counts, and the detection metrics at the match rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.engine.detection import OUTPUT_STRIDE, centre_loss, centre_targets, decode_centres
from training.engine.region_metrics import detection_scores, plot_region_comparison
from training.engine.region_trainer import RegionConfig, RegionItemSet, RegionTarget, train_regions

SIDE = 64


def cells(n: int, seed: int = 0) -> tuple[list[np.ndarray], list[RegionTarget]]:
    """Grey images with 1-3 bright 8 px squares of two classes (bright: class 0, dim: 1)."""
    rng = np.random.default_rng(seed)
    images, targets = [], []
    for _ in range(n):
        image = rng.normal(0.2, 0.04, (SIDE, SIDE, 3)).astype(np.float32)
        boxes, labels = [], []
        for _ in range(rng.integers(1, 4)):
            for _attempt in range(20):  # squares apart, so every object is its own peak
                x, y = rng.integers(2, SIDE - 10, 2)
                if all(abs(x - b[0]) > 10 or abs(y - b[1]) > 10 for b in boxes):
                    break
            label = int(rng.integers(0, 2))
            image[y : y + 8, x : x + 8] += 0.7 if label == 0 else 0.35
            boxes.append([x, y, x + 8, y + 8])
            labels.append(label)
        boxes = np.asarray(boxes, dtype=np.float64)
        images.append(np.clip(image, 0, 1))
        targets.append(RegionTarget(points=(boxes[:, :2] + boxes[:, 2:]) / 2, boxes=boxes,
                                    labels=np.asarray(labels)))
    return images, targets


def test_targets_put_a_peak_and_the_offset_at_each_centre():
    dense = centre_targets(
        np.array([[10.0, 21.0], [40.0, 8.0]]), np.array([0, 1]), np.array([1.0, 0.6]),
        np.array([[8.0, 8.0], [16.0, 4.0]]), 2, (16, 16), point_sigma=3.0,
    )  # fmt: skip
    assert dense["heatmap"][0, 5, 2] == 1.0 and dense["heatmap"][1, 2, 10] == 1.0
    assert dense["positive"][0, 5, 2] == 1.0 and dense["positive"][1, 2, 10] == pytest.approx(0.6)
    assert dense["positive"].sum() == pytest.approx(1.6)
    np.testing.assert_allclose(dense["offset"][:, 5, 2], [10 / 4 - 2, 21 / 4 - 5])
    np.testing.assert_allclose(dense["size"][:, 2, 10], np.log([16 / 4, 4 / 4]))
    assert 0 < dense["heatmap"][0, 5, 3] < 1 and dense["heatmap"][1, 5, 2] < 0.01


def test_decoding_finds_the_peaks_and_suppresses_their_neighbours():
    heat = torch.full((1, 2, 16, 16), -8.0)
    heat[0, 0, 5, 2], heat[0, 0, 5, 3] = 3.0, 2.0  # a peak and a lower neighbour
    heat[0, 1, 12, 12] = 0.0  # p = 0.5
    heat[0, 1, 1, 14] = -2.0  # p = 0.12: below the threshold
    offset = torch.zeros(1, 2, 16, 16)
    offset[0, :, 5, 2] = torch.tensor([0.5, 0.25])
    size = torch.zeros(1, 2, 16, 16)
    size[0, :, 5, 2] = torch.log(torch.tensor([2.0, 3.0]))
    [found] = decode_centres({"heatmap": heat, "offset": offset, "size": size}, threshold=0.3)
    np.testing.assert_array_equal(found["labels"], [0, 1])
    np.testing.assert_allclose(found["points"], [[2.5 * OUTPUT_STRIDE, 5.25 * OUTPUT_STRIDE],
                                                 [12 * OUTPUT_STRIDE, 12 * OUTPUT_STRIDE]])
    np.testing.assert_allclose(found["boxes"][0], [10 - 4, 21 - 6, 10 + 4, 21 + 6])
    assert found["scores"][0] > found["scores"][1]


def test_focal_loss_is_lowest_at_the_target():
    dense = centre_targets(np.array([[10.0, 10.0]]), np.array([0]), np.array([1.0]), None, 1,
                           (8, 8), point_sigma=3.0)
    targets = {k: torch.from_numpy(v)[None] for k, v in dense.items()}
    logit = torch.logit(torch.from_numpy(dense["heatmap"]).clamp(1e-4, 1 - 1e-4))[None]
    good = {"heatmap": logit, "offset": targets["offset"]}
    bad = {"heatmap": torch.zeros_like(logit), "offset": targets["offset"] + 1}
    assert centre_loss(good, targets) < centre_loss(bad, targets) / 10


@pytest.mark.parametrize(("task", "threshold"), [("points", 4.0), ("boxes", 0.5)])
def test_learns_separable_points_and_boxes(task, threshold, tmp_path):
    images, targets = cells(40)
    holdout_images, holdout_targets = cells(10, seed=1)
    config = RegionConfig(
        task=task, num_classes=2, model_name="test_resnet", weights="none", image_size=SIDE,
        epochs=5, batch_size=4, lr=3e-3, match_distance=threshold, match_iou=threshold,
        checkpoint_dir=str(tmp_path),
    )  # fmt: skip
    result = train_regions(
        config, RegionItemSet(images, targets), RegionItemSet(holdout_images, holdout_targets)
    )
    scores = result.holdout_scores
    assert scores["headline"] == "f1" and scores["task"] == task
    assert scores["f1"] > 0.7, scores  # an untrained head (every cell at p = 0.1) finds nothing
    assert scores["count_error"] < 1.0
    prediction = result.holdout_predictions[0]
    assert set(prediction) >= {"points", "labels", "scores"} and (task == "boxes") == (
        "boxes" in prediction
    )


def test_trains_with_a_last_batch_of_one_and_images_without_objects(tmp_path):
    images, targets = cells(5)
    targets[2] = RegionTarget(points=np.zeros((0, 2)), boxes=np.zeros((0, 4)), labels=np.zeros(0))
    config = RegionConfig(task="boxes", num_classes=2, model_name="test_resnet", weights="none",
                          image_size=SIDE, epochs=1, batch_size=4, checkpoint_dir=str(tmp_path))
    result = train_regions(config, RegionItemSet(images, targets))
    assert result.status == "completed" and np.isfinite(result.history[0].train_loss)


def test_detection_scores_on_a_known_answer():
    truth = [
        (np.array([[10, 10], [30, 30], [50, 50]]), np.array([0, 0, 1])),
        (np.zeros((0, 2)), np.zeros(0)),
    ]
    predicted = [
        # one hit within 5 px, one of the wrong class, one miss, one false mark
        (np.array([[12, 11], [30, 31], [80, 80]]), np.array([0, 1, 0])),
        (np.array([[5, 5]]), np.array([1])),
    ]
    scores = detection_scores(predicted, truth, "points", 5.0, ["a", "b"])
    a, b = scores["per_class"]["a"], scores["per_class"]["b"]
    assert (a["precision"], a["recall"], a["support"], a["predicted"]) == (0.5, 0.5, 2, 2)
    assert (b["precision"], b["recall"]) == (0.0, 0.0)
    assert a["count_error"] == 0.0 and b["count_error"] == 0.5  # b: |1 - 1|, then |1 - 0|
    assert scores["f1"] == pytest.approx(2 * 1 / (4 + 3))
    assert scores["count_error"] == pytest.approx((0 + 1) / 2)
    boxes = detection_scores(
        [(np.array([[0, 0, 10, 10]]), np.array([0]))], [(np.array([[0, 0, 10, 12]]), np.array([0]))],
        "boxes", 0.5, ["a"],
    )  # fmt: skip
    assert boxes["f1"] == 1.0 and boxes["match"] == {"iou": 0.5}


def test_detection_picture_is_a_png():
    image = np.zeros((40, 40, 3), dtype=np.uint8)
    answer = {"boxes": np.array([[2.0, 2.0, 10.0, 10.0]]), "labels": np.array([0])}
    png = plot_region_comparison(image, answer, answer, "boxes", ["WBC"])
    assert png.startswith(b"\x89PNG")
