"""Class-imbalance remedies: weights worked out by hand, and each label source's path trains."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.engine import (
    CrowdLayer,
    CrowdVotes,
    ItemSet,
    MILConfig,
    TrainConfig,
    train,
    train_mil,
)
from training.engine.balance import plan_class_balance
from training.engine.trainer import soft_cross_entropy

# 6 items of class 0, 2 of class 1: ratio 3
SKEWED = np.eye(2)[[0, 0, 0, 0, 0, 0, 1, 1]]


def test_auto_weights_skewed_classes_by_inverse_frequency():
    balance = plan_class_balance("auto", SKEWED)
    assert balance.applied == "loss" and balance.ratio == pytest.approx(3.0)
    # w_k = N / (K n_k): 8/12 and 8/4, so both classes weigh the same in total
    assert balance.class_weights == pytest.approx([2 / 3, 2.0])
    assert balance.item_weights.mean() == pytest.approx(1.0)
    assert balance.summary()["class_counts"] == [6.0, 2.0]


def test_auto_leaves_balanced_classes_alone_and_explicit_modes_apply():
    even = np.eye(2)[[0, 1, 0, 1, 0]]  # ratio 1.5: not above the threshold
    assert plan_class_balance("auto", even).applied == "none"
    assert plan_class_balance("auto", even, threshold=1.2).applied == "loss"
    off = plan_class_balance("none", SKEWED)
    assert off.applied == "none" and off.loss_class_weights(torch.device("cpu")) is None
    assert off.sampler(0) is None
    with pytest.raises(ValueError, match="class_balance must be one of"):
        plan_class_balance("oversample", SKEWED)


def test_soft_targets_count_their_expected_class_mass():
    # Dawid-Skene posteriors: expected counts 2.4 and 0.6 (ratio 4)
    soft = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3]])
    balance = plan_class_balance("loss", soft)
    assert balance.class_counts == pytest.approx([2.4, 0.6])
    expected = np.array([3 / (2 * 2.4), 3 / (2 * 0.6)])
    items = soft @ expected
    assert balance.class_weights == pytest.approx(expected / items.mean())
    assert balance.item_weights == pytest.approx(items / items.mean())


def test_a_class_without_training_items_gets_no_weight():
    balance = plan_class_balance("auto", np.eye(3)[[0, 0, 1]])
    assert balance.ratio is None and balance.applied == "loss"
    assert balance.class_weights[2] == 0.0 and np.isfinite(balance.item_weights).all()


def test_sampler_draws_the_minority_as_often_as_the_majority():
    balance = plan_class_balance("sampler", SKEWED)
    drawn = np.array(list(balance.sampler(seed=0)) + list(balance.sampler(seed=1)))
    assert len(drawn) == 16
    minority = np.isin(drawn, [6, 7]).mean()
    assert 0.2 < minority < 0.8  # 0.25 without the sampler, 0.5 expected with it
    assert list(balance.sampler(seed=3)) == list(balance.sampler(seed=3))  # resumable


def test_weighted_cross_entropy_is_pytorchs_with_probability_targets():
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.5], [-1.0, 1.0]])
    targets = torch.tensor([[1.0, 0.0], [0.7, 0.3], [0.0, 1.0]])
    weights = torch.tensor([0.5, 2.0])
    reference = torch.nn.CrossEntropyLoss(weight=weights)(logits, targets)
    assert soft_cross_entropy(logits, targets, weights) == pytest.approx(float(reference))
    assert soft_cross_entropy(logits, targets) == pytest.approx(
        float(torch.nn.CrossEntropyLoss()(logits, targets))
    )


def test_crowd_layer_weights_each_vote_by_its_item():
    layer = CrowdLayer(2, 2)
    logits = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    workers = torch.tensor([[0, 1], [0, -1]])
    labels = torch.tensor([[0, 1], [1, -1]])
    with torch.no_grad():
        plain = float(layer.loss(logits, workers, labels))
        same = float(layer.loss(logits, workers, labels, item_weights=torch.ones(2)))
        # the vote on item 1 counts double
        heavier = float(layer.loss(logits, workers, labels, item_weights=torch.tensor([1.0, 2.0])))
        per_vote = [float(layer.loss(logits[i : i + 1], workers[i : i + 1], labels[i : i + 1]))
                    for i in range(2)]
    assert same == pytest.approx(plain)
    # three votes: two on item 0 (mean per_vote[0]), one on item 1 weighted 2
    assert heavier == pytest.approx((2 * per_vote[0] + 2 * per_vote[1]) / 3, rel=1e-5)


def _tiny_images(n: int, size: int = 16) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (size, size), dtype=np.uint8) for _ in range(n)]


@pytest.mark.parametrize(
    "source, mode",
    [("expert", "auto"), ("dawid_skene", "sampler"), ("aggnet", "loss"), ("crowd_layer", "loss")],
)
def test_every_label_source_trains_with_a_remedy(source, mode, tmp_path):
    images = _tiny_images(12)
    truth = np.array([0] * 9 + [1] * 3)
    posteriors = np.where(np.eye(2)[truth] == 1, 0.9, 0.1)
    votes = CrowdVotes.from_per_item([[(0, int(t)), (1, int(t))] for t in truth])
    config = TrainConfig(
        label_source=source, model_name="test_resnet", weights="none", image_size=16, epochs=1,
        batch_size=4, augment=False, checkpoint_dir=str(tmp_path), class_balance=mode,
    )
    result = train(
        config, ItemSet(images, truth), ItemSet(images[:4], truth[:4]),
        votes=votes if source in ("aggnet", "crowd_layer") else None,
        init_posteriors=None if source == "expert" else posteriors,
    )
    assert result.class_balance["requested"] == mode
    assert result.class_balance["applied"] == ("loss" if mode == "auto" else mode)
    # hard labels 9:3; the 0.9/0.1 posteriors' expected counts 8.4:3.6
    assert result.class_balance["ratio"] == pytest.approx(3 if source == "expert" else 7 / 3, abs=1e-4)
    assert np.isfinite(result.history[0].train_loss)


@pytest.mark.parametrize("source, mode", [("dawid_skene", "loss"), ("crowd_layer", "sampler")])
def test_mil_trains_with_a_remedy(source, mode, tmp_path):
    images = _tiny_images(6, size=32)
    truth = np.array([0, 0, 0, 0, 1, 1])
    posteriors = np.where(np.eye(2)[truth] == 1, 0.8, 0.2)
    votes = CrowdVotes.from_per_item([[(0, int(t))] for t in truth])
    config = MILConfig(
        label_source=source, model_name="test_resnet", weights="none", patch_size=16,
        patch_stride=16, epochs=1, bags_per_batch=2, augment=False, checkpoint_dir=str(tmp_path),
        class_balance=mode,
    )
    result = train_mil(
        config, ItemSet(images, truth), None,
        votes=votes if source == "crowd_layer" else None, init_posteriors=posteriors,
    )
    assert result.class_balance["applied"] == mode
    assert np.isfinite(result.history[0].train_loss)
