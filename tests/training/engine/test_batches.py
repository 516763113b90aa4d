"""Any item count trains: a last batch of one (which BatchNorm cannot normalise when the feature
map is 1x1) joins the batch before it, for images and MIL bags; one item is refused clearly."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from torch.utils.data import DataLoader

from training.engine import (
    ItemDataset,
    ItemSet,
    MILConfig,
    Preprocessing,
    TrainConfig,
    train,
    train_mil,
)
from training.engine.data import TooFewItems, TrainingBatches, batches_per_epoch, make_loader


@pytest.mark.parametrize("batch_size", [1, 2, 3, 4, 16])
def test_batches_hold_every_item_once_and_never_a_lone_item(batch_size):
    for n in range(1, 3 * batch_size + 3):
        batches = list(TrainingBatches(range(n), batch_size))
        assert sorted(i for b in batches for i in b) == list(range(n))
        assert len(batches) == batches_per_epoch(n, batch_size) == len(
            TrainingBatches(range(n), batch_size)
        )
        sizes = [len(b) for b in batches]
        assert all(size > 1 for size in sizes) or n == 1 or batch_size == 1, (n, sizes)
        assert max(sizes) <= batch_size + 1


def test_the_edge_counts():
    sizes = lambda n, b: [len(x) for x in TrainingBatches(range(n), b)]  # noqa: E731
    assert sizes(65, 16) == [16, 16, 16, 17]  # the project that failed
    assert sizes(66, 16) == [16, 16, 16, 16, 2]
    assert sizes(64, 16) == [16, 16, 16, 16]
    assert sizes(5, 16) == [5] and sizes(1, 16) == [1]
    assert sizes(17, 16) == [17]
    assert [len(x) for x in TrainingBatches(range(65), 16, drop_last=True)] == [16] * 4


def test_shuffled_order_is_what_the_loader_drew_before():
    """A run resumed from an older checkpoint replays the same item order."""
    dataset = ItemDataset(
        ItemSet(list(np.zeros((37, 4, 4), np.float32)), np.arange(37) % 2),
        2,
        Preprocessing((4, 4), in_chans=1, mean=(0.5,), std=(0.5,)),
    )
    generator = torch.Generator()
    generator.manual_seed(11)
    before = DataLoader(dataset, batch_size=8, shuffle=True, generator=generator)
    now = make_loader(dataset, 8, shuffle=True, seed=11)
    order = lambda loader: torch.cat([batch[2] for batch in loader]).tolist()  # noqa: E731
    assert order(now) == order(before)


def _images(n: int, rng: np.random.Generator) -> ItemSet:
    labels = np.arange(n) % 2
    images = [rng.random((16, 16)).astype(np.float32) + label for label in labels]
    return ItemSet(images, labels)


def _config(tmp_path, **overrides) -> TrainConfig:
    values = dict(
        label_source="expert", num_classes=2, model_name="test_resnet", weights="none",
        in_chans=1, image_size=16, epochs=1, batch_size=16, augment=False,
        checkpoint_dir=str(tmp_path),
    )
    return TrainConfig(**{**values, **overrides})


def test_the_backbone_cannot_learn_from_one_item_at_this_size():
    """What the tests below guard against: test_resnet at 16 px ends in a 1x1 map."""
    model = timm.create_model("test_resnet", num_classes=2, in_chans=1).train()
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        model(torch.zeros(1, 1, 16, 16))


@pytest.mark.parametrize("n, batch_size", [(65, 16), (17, 16), (33, 16), (5, 16), (2, 16), (7, 2)])
def test_any_item_count_trains(tmp_path, n, batch_size):
    rng = np.random.default_rng(n)
    result = train(_config(tmp_path, batch_size=batch_size), _images(n, rng), _images(4, rng))
    assert result.status == "completed" and result.epochs_completed == 1
    assert np.isfinite(result.history[0].train_loss)


def test_one_training_item_is_refused_with_the_reason(tmp_path):
    with pytest.raises(TooFewItems, match="training needs at least 2 training items, this run has 1"):
        train(_config(tmp_path), _images(1, np.random.default_rng(0)))


def test_any_bag_count_trains_even_with_one_patch_per_bag(tmp_path):
    """Bags as small as one patch: a last batch of one bag is one sample for BatchNorm."""
    rng = np.random.default_rng(0)
    config = MILConfig(
        label_source="expert", num_classes=2, model_name="test_resnet", weights="none",
        in_chans=1, patch_size=16, patch_stride=16, patch_input_size=16, attention_dim=8,
        epochs=1, bags_per_batch=4, augment=False, checkpoint_dir=str(tmp_path / "run"),
    )
    result = train_mil(config, _images(9, rng), _images(3, rng))
    assert result.status == "completed" and result.epochs_completed == 1
    with pytest.raises(TooFewItems, match="at least 2 training bags"):
        train_mil(config, _images(1, rng))
