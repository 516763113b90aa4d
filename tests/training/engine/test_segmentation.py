"""The U-Net over a timm encoder: it learns a separable soft target, trains at any item count,
cancels and resumes exactly, reloads from its model file; the mask metrics on known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.engine.checkpoints import CheckpointError
from training.engine.data import TooFewItems
from training.engine.region_metrics import mask_scores, plot_region_comparison
from training.engine.region_trainer import (
    RegionConfig,
    RegionItemSet,
    RegionTarget,
    load_region_model,
    predict_regions,
    train_regions,
)
from training.engine.segmentation import build_encoder, mask_loss, soft_dice_loss

SIDE = 32
TINY = dict(task="masks", model_name="test_resnet", weights="none", image_size=SIDE,
            batch_size=4, lr=3e-3, augment=True, seed=0)


def squares(n: int, seed: int = 0, soft: bool = True) -> tuple[list[np.ndarray], list[RegionTarget]]:
    """Grey images with a bright square; the target is 0.9 on it and 0.05 elsewhere (a soft
    map, as STAPLE gives where raters agree), or the hard mask."""
    rng = np.random.default_rng(seed)
    images, targets = [], []
    for _ in range(n):
        image = rng.normal(0.3, 0.05, (SIDE, SIDE)).astype(np.float32)
        mask = np.zeros((1, SIDE, SIDE), dtype=np.float32)
        y, x = rng.integers(2, SIDE - 12, 2)
        image[y : y + 10, x : x + 10] += 0.5
        mask[0, y : y + 10, x : x + 10] = 1.0
        images.append(np.clip(image, 0, 1))
        targets.append(RegionTarget(masks=np.where(mask > 0, 0.9, 0.05) if soft else mask))
    return images, targets


class Recorder:
    def __init__(self, stop_after: int | None = None) -> None:
        self.records, self.resumed, self.stop_after = [], [], stop_after

    def on_epoch_end(self, record) -> None:
        self.records.append(record)

    def should_stop(self) -> bool:
        return self.stop_after is not None and len(self.records) >= self.stop_after

    def on_resume(self, epoch: int) -> None:
        self.resumed.append(epoch)


def test_learns_a_separable_soft_target(tmp_path):
    images, targets = squares(24)
    holdout_images, holdout_targets = squares(8, seed=1, soft=False)
    recorder = Recorder()
    result = train_regions(
        RegionConfig(**TINY, epochs=4, checkpoint_dir=str(tmp_path)),
        RegionItemSet(images, targets),
        RegionItemSet(holdout_images, holdout_targets, ids=list(range(100, 108))),
        callbacks=recorder,
    )
    assert result.status == "completed" and result.epochs_completed == 4
    assert [r.epoch for r in recorder.records] == [1, 2, 3, 4]
    assert recorder.records[-1].train_loss < recorder.records[0].train_loss
    scores = result.holdout_scores
    assert scores["headline"] == "dice" and scores["n_items"] == 8
    # chance (everything foreground) would score about 2 * 100 / (1024 + 100) = 0.18
    assert scores["dice"] > 0.8, scores
    assert recorder.records[-1].holdout_accuracy == pytest.approx(scores["dice"])
    assert result.holdout_ids == list(range(100, 108))
    prediction = result.holdout_predictions[0]
    assert prediction["masks"].shape == (1, SIDE, SIDE) and prediction["masks"].dtype == bool

    model, config, preprocessing = load_region_model(result.model_path)
    again = predict_regions(model, config, preprocessing, holdout_images[:2])
    np.testing.assert_allclose(again[0]["probabilities"], prediction["probabilities"], atol=1e-5)


@pytest.mark.parametrize(("n_items", "batch_size"), [(2, 4), (3, 2), (5, 4), (9, 4)])
def test_any_item_count_trains(n_items, batch_size, tmp_path):
    # 3 with batches of 2 and 9 with 4 leave a last batch of one: it joins the batch before,
    # since BatchNorm cannot normalise a single 1x1 feature map at the encoder's bottom
    images, targets = squares(n_items)
    result = train_regions(
        RegionConfig(**{**TINY, "batch_size": batch_size}, epochs=1, checkpoint_dir=str(tmp_path)),
        RegionItemSet(images, targets),
    )
    assert result.status == "completed" and result.history[0].train_loss > 0
    assert result.holdout_scores is None


def test_one_item_is_refused():
    images, targets = squares(1)
    with pytest.raises(TooFewItems, match="at least 2"):
        train_regions(RegionConfig(**TINY, epochs=1), RegionItemSet(images, targets))


def test_target_of_the_wrong_shape_names_it():
    images, targets = squares(3)
    targets[1] = RegionTarget(masks=np.zeros((1, SIDE, SIDE + 1), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\[1, 32, 32\].*got \[1, 32, 33\]"):
        train_regions(RegionConfig(**TINY, epochs=1), RegionItemSet(images, targets))


def test_cancel_then_resume_matches_an_uninterrupted_run(tmp_path):
    images, targets = squares(6)
    config = dict(**TINY, epochs=3)
    straight = train_regions(
        RegionConfig(**config, checkpoint_dir=str(tmp_path / "straight")),
        RegionItemSet(images, targets),
    )
    stopper = Recorder(stop_after=1)
    cancelled = train_regions(
        RegionConfig(**config, checkpoint_dir=str(tmp_path / "resumed")),
        RegionItemSet(images, targets), callbacks=stopper,
    )  # fmt: skip
    assert cancelled.status == "cancelled" and cancelled.epochs_completed == 1
    assert cancelled.model_path is None and cancelled.checkpoint_path is not None
    resumer = Recorder()
    resumed = train_regions(
        RegionConfig(**config, checkpoint_dir=str(tmp_path / "resumed")),
        RegionItemSet(images, targets), callbacks=resumer, resume_from=cancelled.checkpoint_path,
    )  # fmt: skip
    assert resumer.resumed == [1] and [r.epoch for r in resumer.records] == [2, 3]
    assert [r.train_loss for r in resumed.history] == pytest.approx(
        [r.train_loss for r in straight.history], rel=1e-5
    )
    with pytest.raises(CheckpointError, match="epochs: checkpoint 3 vs now 4"):
        train_regions(
            RegionConfig(**{**config, "epochs": 4}), RegionItemSet(images, targets),
            resume_from=cancelled.checkpoint_path,
        )  # fmt: skip


def test_encoder_takes_the_offline_imagenet_weights(weights_cache):
    from training.engine.backbones import build_model

    encoder, data_config = build_encoder("tf_efficientnet_lite0", "imagenet", cache_dir=weights_cache)
    classifier, _ = build_model("tf_efficientnet_lite0", 1000, "imagenet", cache_dir=weights_cache)
    for key, value in encoder.state_dict().items():
        torch.testing.assert_close(value, classifier.state_dict()[key])
    assert encoder.feature_info.reduction() == [2, 4, 8, 16, 32]
    assert data_config.mean == pytest.approx((0.5, 0.5, 0.5))  # EfficientNet-Lite's TF stats
    random_encoder, _ = build_encoder("tf_efficientnet_lite0", "none")
    assert not torch.equal(
        random_encoder.state_dict()["conv_stem.weight"], encoder.state_dict()["conv_stem.weight"]
    )


def test_losses_are_lowest_at_the_target():
    target = torch.zeros(2, 1, 8, 8)
    target[:, :, 2:6, 2:6] = 1.0
    right, wrong = (target * 2 - 1) * 12, (1 - target * 2) * 12
    assert soft_dice_loss(right, target) < 0.01 < 0.9 < soft_dice_loss(wrong, target)
    assert mask_loss(right, target) < mask_loss(torch.zeros_like(target), target)


def test_mask_scores_on_known_masks():
    truth = np.zeros((2, 1, 4, 4), dtype=bool)
    truth[0, 0, :2] = True  # 8 pixels
    predicted = np.zeros_like(truth)
    predicted[0, 0, :1] = True  # 4 of them
    # image 1: neither marks anything (Dice 1 by convention)
    scores = mask_scores(list(predicted), list(truth), ["nucleus"])
    assert scores["per_class"]["nucleus"]["dice"] == pytest.approx((2 * 4 / 12 + 1) / 2)
    assert scores["per_class"]["nucleus"]["iou"] == pytest.approx((4 / 8 + 1) / 2)
    assert scores["per_class"]["nucleus"]["pooled_dice"] == pytest.approx(8 / 12)
    nucleus = scores["per_class"]["nucleus"]
    assert (nucleus["precision"], nucleus["recall"], nucleus["f1"]) == (1.0, 0.5, 8 / 12)
    assert scores["per_class"]["nucleus"]["support"] == 1
    with pytest.raises(ValueError, match="prediction"):
        mask_scores([predicted[0][:, :3]], [truth[0]], ["nucleus"])


def test_comparison_picture_is_a_png():
    image = np.zeros((20, 30), dtype=np.uint8)
    masks = np.zeros((1, 20, 30), dtype=bool)
    masks[0, 5:10, 5:15] = True
    png = plot_region_comparison(image, {"masks": masks}, {"masks": masks}, "masks", ["nucleus"])
    assert png.startswith(b"\x89PNG")
