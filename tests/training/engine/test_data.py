"""Items become model inputs: intensity scaling, channels, size, targets, votes, loaders."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from training.engine import CrowdVotes, ItemDataset, ItemSet, Preprocessing, make_loader
from training.engine.data import load_image


def test_eight_bit_images_are_divided_by_255():
    image = np.array([[0, 255], [51, 102]], dtype=np.uint8)
    np.testing.assert_allclose(load_image(image)[:, :, 0], [[0, 1], [0.2, 0.4]])


def test_float_arrays_are_windowed():
    ct = np.linspace(-1000, 3000, 101, dtype=np.float32).reshape(1, 101)  # Hounsfield units
    scaled = load_image(ct, intensity_percentiles=None)[0, :, 0]
    assert scaled[0] == 0 and scaled[-1] == 1 and scaled[50] == pytest.approx(0.5)
    clipped = load_image(ct, intensity_percentiles=(10, 90))[0, :, 0]
    assert clipped[:10].max() == 0 and clipped[-10:].min() == 1
    assert load_image(np.full((4, 4), 7.0)).max() == 0  # flat image: no division by zero
    sixteen_bit = load_image(np.array([[0, 4095]], dtype=np.uint16), intensity_percentiles=None)
    np.testing.assert_allclose(sixteen_bit[0, :, 0], [0, 1])


def test_shapes_alpha_and_bad_input(tmp_path):
    assert load_image(np.zeros((5, 6, 4), dtype=np.uint8)).shape == (5, 6, 3)
    with pytest.raises(ValueError, match="HxW"):
        load_image(np.zeros((2, 3, 4, 5)))
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "missing.png")


def test_files_and_channel_conversion(tmp_path):
    rgb = np.zeros((8, 8, 3), dtype=np.uint8)
    rgb[..., 1] = 255  # pure green
    path = tmp_path / "green.png"
    Image.fromarray(rgb).save(path)
    gray_path = tmp_path / "gray.png"
    Image.fromarray(np.full((8, 8), 255, dtype=np.uint8)).save(gray_path)

    unit = dict(mean=(0.0,), std=(1.0,))
    gray = ItemDataset(ItemSet([path]), 2, Preprocessing((8, 8), in_chans=1, **unit))
    assert gray.image(0).shape == (1, 8, 8)
    assert gray.image(0).mean().item() == pytest.approx(0.587, abs=1e-5)  # luma of green

    to_rgb = ItemDataset(ItemSet([gray_path]), 2, Preprocessing((4, 6), in_chans=3))
    image = to_rgb.image(0)
    assert image.shape == (3, 4, 6)
    torch.testing.assert_close(image, torch.ones(3, 4, 6))  # (1 - 0.5) / 0.5


def test_targets_hard_soft_and_invalid():
    images = [np.zeros((4, 4), dtype=np.uint8)] * 2
    prep = Preprocessing((4, 4), in_chans=1, mean=(0.5,), std=(0.5,))
    hard = ItemDataset(ItemSet(images, np.array([[1], [0]])), 3, prep)
    assert hard[0][1].tolist() == [0, 1, 0] and hard[1][2] == 1
    soft = ItemDataset(ItemSet(images, np.array([[0.2, 0.8], [0.5, 0.5]])), 2, prep)
    assert soft[0][1].tolist() == pytest.approx([0.2, 0.8])
    with pytest.raises(ValueError, match="sum to 1"):
        ItemDataset(ItemSet(images, np.array([[0.2, 0.2], [0.5, 0.5]])), 2, prep)
    with pytest.raises(ValueError, match="class indices"):
        ItemDataset(ItemSet(images, np.array([0, 5])), 3, prep)
    with pytest.raises(ValueError, match="2 images but 3 targets"):
        ItemSet(images, np.array([0, 1, 1]))


def test_crowd_votes_per_item():
    votes = CrowdVotes.from_per_item([[(0, 1), (2, 1), (1, 0)], [], [(1, 2)]], n_workers=4)
    assert len(votes) == 4 and votes.n_workers == 4
    workers, labels = votes.padded(3)
    assert workers.tolist() == [[0, 2, 1], [-1, -1, -1], [1, -1, -1]]
    assert labels.tolist() == [[1, 1, 0], [-1, -1, -1], [2, -1, -1]]
    np.testing.assert_allclose(
        votes.vote_fractions(3, 3), [[1 / 3, 2 / 3, 0], [1 / 3, 1 / 3, 1 / 3], [0, 0, 1]]
    )
    with pytest.raises(ValueError, match="item 2"):
        votes.check(2, 3)
    with pytest.raises(ValueError, match="worker codes"):
        CrowdVotes(np.array([0]), np.array([5]), np.array([0]), n_workers=2)


@pytest.mark.parametrize("num_workers", [0, 1])
def test_loader_is_deterministic_given_the_seed(num_workers):
    rng = np.random.default_rng(0)
    images = list(rng.random((12, 10, 10)).astype(np.float32))
    dataset = ItemDataset(
        ItemSet(images, np.arange(12) % 2),
        2,
        Preprocessing((8, 8), in_chans=1, mean=(0.5,), std=(0.5,), augment=True),
    )

    def first_batch(seed: int):
        torch.manual_seed(seed)
        loader = make_loader(dataset, 6, shuffle=True, seed=seed, num_workers=num_workers)
        return next(iter(loader))

    a, b, c = first_batch(3), first_batch(3), first_batch(4)
    assert torch.equal(a[0], b[0]) and torch.equal(a[2], b[2])
    assert not torch.equal(a[2], c[2])
