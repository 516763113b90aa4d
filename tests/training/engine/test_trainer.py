"""The training loop: callbacks, cancellation, atomic checkpoints, exact resumption."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from training.engine import (
    CheckpointError,
    ItemDataset,
    ItemSet,
    TrainConfig,
    load_trained_model,
    predict,
    train,
)
from training.engine import checkpoints as checkpoints_module

from .conftest import blob_images


@pytest.fixture(scope="module")
def tiny_task() -> tuple[ItemSet, ItemSet]:
    rng = np.random.default_rng(1)
    train_truth, holdout_truth = rng.integers(0, 3, 96), rng.integers(0, 3, 48)
    return (
        ItemSet(list(blob_images(train_truth, rng)), train_truth),
        ItemSet(
            list(blob_images(holdout_truth, rng)), holdout_truth, ids=[f"h{i}" for i in range(48)]
        ),
    )


def tiny_config(tmp_path, **overrides) -> TrainConfig:
    values = dict(
        label_source="expert",
        num_classes=3,
        model_name="test_resnet",
        weights="none",
        in_chans=1,
        image_size=16,
        epochs=2,
        batch_size=16,
        lr=3e-3,
        augment=True,
        seed=7,
        checkpoint_dir=str(tmp_path),
    )
    values.update(overrides)
    return TrainConfig(**values)


class Recorder:
    def __init__(self, stop_after: int | None = None) -> None:
        self.records = []
        self.stop_after = stop_after

    def on_epoch_end(self, record) -> None:
        self.records.append(record)

    def should_stop(self) -> bool:
        return self.stop_after is not None and len(self.records) >= self.stop_after


def test_reports_every_epoch_and_returns_holdout_predictions(tmp_path, tiny_task):
    train_set, holdout = tiny_task
    recorder = Recorder()
    result = train(tiny_config(tmp_path), train_set, holdout, callbacks=recorder)
    assert result.status == "completed" and result.epochs_completed == 2
    assert [r.epoch for r in recorder.records] == [1, 2] and recorder.records == result.history
    for record in result.history:
        assert record.train_loss > 0 and record.images_per_second > 0 and record.seconds > 0
        assert 0 <= record.holdout_accuracy <= 1 and record.holdout_loss > 0
    assert result.holdout_ids == holdout.item_ids
    assert result.holdout_probabilities.shape == (48, 3)
    np.testing.assert_allclose(result.holdout_probabilities.sum(axis=1), 1, atol=1e-5)
    assert result.device == "cpu" and result.annotator_confusions is None

    model, preprocessing = load_trained_model(result.model_path)
    assert preprocessing.image_size == (16, 16) and not preprocessing.augment
    again = predict(model, ItemDataset(holdout, 3, preprocessing))
    np.testing.assert_allclose(again, result.holdout_probabilities, atol=1e-6)


def test_resume_after_cancellation_matches_an_uninterrupted_run(tmp_path, tiny_task):
    train_set, holdout = tiny_task
    straight = train(tiny_config(tmp_path / "straight"), train_set, holdout)

    first = train(
        tiny_config(tmp_path / "split"), train_set, holdout, callbacks=Recorder(stop_after=1)
    )
    assert first.status == "cancelled" and first.cancelled and first.epochs_completed == 1
    assert first.model_path is None and first.checkpoint_path.is_file()

    resumed = train(
        tiny_config(tmp_path / "split"), train_set, holdout, resume_from=first.checkpoint_path
    )
    assert resumed.status == "completed"
    assert [dataclasses.replace(r, seconds=0, images_per_second=0) for r in resumed.history] == [
        dataclasses.replace(r, seconds=0, images_per_second=0) for r in straight.history
    ]
    straight_model, _ = load_trained_model(straight.model_path)
    resumed_model, _ = load_trained_model(resumed.model_path)
    for (name, a), b in zip(
        straight_model.state_dict().items(), resumed_model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    np.testing.assert_array_equal(straight.holdout_probabilities, resumed.holdout_probabilities)


def test_cancellation_inside_an_epoch(tmp_path, tiny_task):
    train_set, holdout = tiny_task

    class StopAtOnce:
        calls = 0

        def should_stop(self) -> bool:
            self.calls += 1
            return self.calls > 1  # allow the epoch to start, stop at the first batch check

    result = train(
        tiny_config(tmp_path, cancel_check_every=2), train_set, holdout, callbacks=StopAtOnce()
    )
    assert result.status == "cancelled" and result.epochs_completed == 0
    assert result.checkpoint_path is None


def test_resume_refuses_a_changed_run(tmp_path, tiny_task):
    train_set, holdout = tiny_task
    first = train(tiny_config(tmp_path), train_set, holdout, callbacks=Recorder(stop_after=1))
    with pytest.raises(CheckpointError, match="lr"):
        train(tiny_config(tmp_path, lr=1e-2), train_set, holdout, resume_from=first.checkpoint_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        train(tiny_config(tmp_path), train_set, holdout, resume_from=tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot be read"):
        train(tiny_config(tmp_path), train_set, holdout, resume_from=garbage)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    checkpoints_module.save_checkpoint({"format": "x", "epoch": 1}, path)

    def crash_midway(state, target):
        with open(target, "wb") as handle:
            handle.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoints_module.torch, "save", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        checkpoints_module.save_checkpoint({"format": "x", "epoch": 2}, path)
    monkeypatch.undo()
    assert checkpoints_module.load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_label_sources_check_their_inputs(tmp_path, tiny_task):
    train_set, holdout = tiny_task
    unlabeled = ItemSet(train_set.images)
    with pytest.raises(ValueError, match="label_source must be one of"):
        tiny_config(tmp_path, label_source="crowd")
    with pytest.raises(ValueError, match="needs targets"):
        train(tiny_config(tmp_path), unlabeled, holdout)
    with pytest.raises(ValueError, match="needs init_posteriors"):
        train(tiny_config(tmp_path, label_source="dawid_skene"), unlabeled, holdout)
    with pytest.raises(ValueError, match="needs the crowd votes"):
        train(tiny_config(tmp_path, label_source="crowd_layer"), unlabeled, holdout)
    with pytest.raises(ValueError, match="init_posteriors must have shape"):
        train(
            tiny_config(tmp_path, label_source="dawid_skene"),
            unlabeled,
            holdout,
            init_posteriors=np.full((5, 3), 1 / 3),
        )


def test_dawid_skene_soft_targets_train(tmp_path, tiny_task):
    train_set, holdout = tiny_task
    soft = np.full((len(train_set), 3), 0.1)
    soft[np.arange(len(train_set)), train_set.targets] = 0.8
    result = train(
        tiny_config(tmp_path, label_source="dawid_skene", epochs=1),
        ItemSet(train_set.images),
        holdout,
        init_posteriors=soft,
    )
    assert result.status == "completed" and result.history[0].train_loss > 0
