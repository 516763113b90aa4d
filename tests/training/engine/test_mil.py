"""Attention MIL on synthetic bags whose one positive instance is planted, and the patch grid.

Every bag is a 32 x 32 noisy image cut into 4 x 4 patches of 8 px. Every bag holds a bright
bar (a decoy: brightness alone says nothing); positive bags also hold one bright square, the
planted instance. A working attention-MIL model classifies the bags and puts its largest
attention weight on the square's patch.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from training.engine import (
    BagDataset,
    BagPreprocessing,
    CheckpointError,
    CrowdVotes,
    ItemSet,
    MILConfig,
    PatchGrid,
    attention_heatmap,
    load_mil_model,
    localisation_scores,
    overlay_attention,
    predict_bags,
    train_mil,
)

SIDE, PATCH = 32, 8
GRID = SIDE // PATCH


def planted_bags(
    n: int, rng: np.random.Generator
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Images, labels (alternating) and the planted patch index (-1 for negatives)."""
    images, labels, planted = [], [], []
    for index in range(n):
        image = rng.normal(0.0, 0.3, (SIDE, SIDE)).astype(np.float32)
        label = index % 2
        square, bar = rng.permutation(GRID * GRID)[:2]
        row, col = divmod(int(bar), GRID)
        image[row * PATCH + 1 : row * PATCH + 7, col * PATCH + 3 : col * PATCH + 5] += 1.5
        if label:
            row, col = divmod(int(square), GRID)
            image[row * PATCH + 2 : row * PATCH + 6, col * PATCH + 2 : col * PATCH + 6] += 1.5
        images.append(image)
        labels.append(label)
        planted.append(int(square) if label else -1)
    return images, np.array(labels), np.array(planted)


def tiny_config(tmp_path, **overrides) -> MILConfig:
    values = dict(
        label_source="expert",
        model_name="test_resnet",
        weights="none",
        in_chans=1,
        patch_size=PATCH,
        patch_stride=PATCH,
        patch_input_size=16,
        attention_dim=32,
        epochs=8,
        bags_per_batch=8,
        lr=3e-3,
        augment=False,
        seed=0,
        checkpoint_dir=str(tmp_path / "run"),
    )
    return MILConfig(**{**values, **overrides})


@pytest.fixture(scope="module")
def bags() -> dict:
    rng = np.random.default_rng(0)
    train_images, train_labels, _ = planted_bags(64, rng)
    holdout_images, holdout_labels, planted = planted_bags(32, rng)
    return {
        "train": ItemSet(train_images, train_labels),
        "holdout": ItemSet(holdout_images, holdout_labels, ids=[f"h{i}" for i in range(32)]),
        "planted": planted,
    }


def test_attention_finds_the_planted_instance(tmp_path, bags):
    result = train_mil(tiny_config(tmp_path), bags["train"], bags["holdout"])
    assert result.status == "completed" and result.epochs_completed == 8
    accuracy = (result.holdout_probabilities.argmax(1) == bags["holdout"].targets).mean()
    assert accuracy >= 0.9
    assert result.holdout_ids == [f"h{i}" for i in range(32)]
    assert all(a.shape == (GRID, GRID) for a in result.holdout_attention)
    assert all(np.isclose(a.sum(), 1.0, atol=1e-5) for a in result.holdout_attention)
    positives = np.flatnonzero(bags["planted"] >= 0)
    peaks = np.array([result.holdout_attention[i].argmax() for i in positives])
    assert (peaks == bags["planted"][positives]).mean() >= 0.8

    # the saved model file reproduces the hold-out probabilities and attention
    model, preprocessing = load_mil_model(result.model_path)
    probabilities, attention = predict_bags(
        model, BagDataset(bags["holdout"], 2, preprocessing), bags_per_batch=16
    )
    np.testing.assert_allclose(probabilities, result.holdout_probabilities, atol=1e-5)
    np.testing.assert_allclose(attention[3], result.holdout_attention[3], atol=1e-5)


class StopAfter:
    def __init__(self, epochs: int) -> None:
        self.epochs, self.seen = epochs, []

    def on_epoch_end(self, record) -> None:
        self.seen.append(record.epoch)

    def should_stop(self) -> bool:
        return len(self.seen) >= self.epochs


def test_cancel_then_resume_matches_an_uninterrupted_run(tmp_path, bags):
    train = ItemSet(bags["train"].images[:16], bags["train"].targets[:16])
    holdout = ItemSet(bags["holdout"].images[:6], bags["holdout"].targets[:6])
    config = tiny_config(tmp_path, epochs=2, augment=True, bags_per_batch=4)
    straight = train_mil(config, train, holdout)

    resumed_config = tiny_config(tmp_path / "b", epochs=2, augment=True, bags_per_batch=4)
    stopper = StopAfter(1)
    first = train_mil(resumed_config, train, holdout, callbacks=stopper)
    assert first.cancelled and first.epochs_completed == 1 and stopper.seen == [1]
    assert first.holdout_probabilities is None
    second = train_mil(resumed_config, train, holdout, resume_from=first.checkpoint_path)
    assert second.epochs_completed == 2
    assert [r.train_loss for r in second.history] == pytest.approx(
        [r.train_loss for r in straight.history], rel=1e-6
    )
    np.testing.assert_allclose(
        second.holdout_probabilities, straight.holdout_probabilities, atol=1e-6
    )
    with pytest.raises(CheckpointError, match="patch_size"):
        train_mil(
            tiny_config(tmp_path / "c", epochs=2, augment=True, bags_per_batch=4, patch_size=16),
            train,
            holdout,
            resume_from=first.checkpoint_path,
        )


def test_crowd_layer_and_soft_posteriors_as_bag_labels(tmp_path, bags):
    n = 12
    train = ItemSet(bags["train"].images[:n])
    truth = bags["train"].targets[:n]
    votes = CrowdVotes.from_per_item([[(0, t), (1, t), (2, 1 - t)] for t in truth])
    soft = np.eye(2)[truth] * 0.8 + 0.1
    layer = train_mil(
        tiny_config(tmp_path, label_source="crowd_layer", epochs=1),
        train,
        votes=votes,
        init_posteriors=soft,
    )
    assert layer.annotator_confusions.shape == (3, 2, 2)
    posterior = train_mil(
        tiny_config(tmp_path / "ds", label_source="dawid_skene", epochs=1),
        train,
        init_posteriors=soft,
    )
    assert posterior.status == "completed" and posterior.annotator_confusions is None
    with pytest.raises(ValueError, match="needs votes or init_posteriors"):
        train_mil(tiny_config(tmp_path / "x", label_source="dawid_skene", epochs=1), train)


def test_grid_pads_the_last_row_and_column():
    grid = PatchGrid.for_image(480, 640, 160, 160)
    assert grid.shape == (3, 4) and grid.padded_size == (480, 640)
    uneven = PatchGrid.for_image(100, 70, 32, 32)
    assert uneven.shape == (4, 3) and uneven.padded_size == (128, 96)
    overlapping = PatchGrid.for_image(64, 64, 32, 16)
    assert overlapping.shape == (3, 3)
    with pytest.raises(ValueError, match="stride"):
        PatchGrid.for_image(64, 64, 16, 32)

    # a 100 x 70 RGB image becomes 12 patches; padding repeats the edge
    prep = BagPreprocessing(patch_size=32, patch_stride=32, patch_input_size=16)
    image = np.zeros((100, 70, 3), dtype=np.uint8)
    image[:, -1] = 255
    patches, shape = BagDataset(ItemSet([image]), 2, prep).patches(0)
    assert patches.shape == (12, 3, 16, 16) and shape.shape == (4, 3)
    assert torch.all(patches[2, :, :, -1] > 0.9)  # the padded right edge repeats the white column


def test_localisation_scores_and_heatmap():
    grid = PatchGrid.for_image(40, 40, 20, 20)  # 2 x 2
    attention = [np.array([[0.1, 0.7], [0.1, 0.1]]), np.array([[0.4, 0.2], [0.2, 0.2]])]
    regions = [[(25.0, 5.0, 35.0, 15.0)], [(30.0, 30.0, 30.0, 30.0), (5, 25, 15, 35)]]
    scores = localisation_scores(attention, [grid, grid], regions, top_fraction=0.25)
    # image 1: its box centre is in the top patch; image 2: neither point nor centre is
    assert scores["n_items"] == 2 and scores["n_points"] == 3
    assert scores["point_hit_rate"] == pytest.approx(1 / 3)
    assert scores["argmax_box_overlap"] == pytest.approx(0.5)
    assert scores["chance_point_hit_rate"] == pytest.approx(0.25)
    assert scores["chance_argmax_box_overlap"] == pytest.approx((0.25 + 0.5) / 2)
    assert localisation_scores(attention, [grid, grid], [[], []])["n_items"] == 0

    heat = attention_heatmap(attention[0], grid, 40, 40)
    assert heat.shape == (40, 40) and heat[0, 39] == pytest.approx(0.7)
    png = overlay_attention(np.full((40, 40), 0.5), attention[0], grid, max_side=None)
    with Image.open(io.BytesIO(png)) as picture:
        assert picture.size == (40, 40)
        pixels = np.asarray(picture.convert("RGB")).astype(int)
    assert abs(pixels[5, 35] - pixels[35, 5]).sum() > 30  # the hot patch is tinted differently
