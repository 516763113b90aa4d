"""Fixtures for the training engine: a shared weights cache, a planted crowd (one torch thread:
the suite's conftest)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from training.engine import CrowdVotes

REPO = Path(__file__).resolve().parents[3]
NUM_CLASSES = 3


@pytest.fixture(scope="session")
def weights_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache folder per session, so the packaged ImageNet weights are converted once."""
    return tmp_path_factory.mktemp("weights")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return Path(os.environ.get("QUORUM_DATA_DIR", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def pneumoniamnist(data_dir: Path) -> dict[str, np.ndarray]:
    path = data_dir / "pneumoniamnist" / "pneumoniamnist_28.npz"
    if not path.is_file():
        pytest.skip(f"PneumoniaMNIST not found at {path} (set QUORUM_DATA_DIR)")
    with np.load(path) as archive:
        return {key: archive[key] for key in archive.files}


def blob_images(labels: np.ndarray, rng: np.random.Generator, size: int = 16) -> np.ndarray:
    """Noisy grayscale images whose class is the position of a bright square."""
    images = rng.normal(0.0, 0.35, size=(len(labels), size, size)).astype(np.float32)
    centres = [(4, 4), (4, 11), (11, 8)]
    for index, label in enumerate(labels):
        row, column = centres[label]
        images[index, row - 2 : row + 2, column - 2 : column + 2] += 1.0
    return images


def _diagonal(accuracy: float) -> np.ndarray:
    confusion = np.full((NUM_CLASSES, NUM_CLASSES), (1 - accuracy) / (NUM_CLASSES - 1))
    np.fill_diagonal(confusion, accuracy)
    return confusion


# three reliable workers, three spammers, three who call class 2 "1", one adversarial
PLANTED_CONFUSIONS = np.array(
    [_diagonal(0.9)] * 3
    + [np.full((NUM_CLASSES, NUM_CLASSES), 1 / NUM_CLASSES)] * 3
    + [np.array([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.05, 0.8, 0.15]])] * 3
    + [np.array([[0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.8, 0.1, 0.1]])]
)


@dataclass
class PlantedCrowd:
    train_images: np.ndarray
    train_truth: np.ndarray
    holdout_images: np.ndarray
    holdout_truth: np.ndarray
    votes: CrowdVotes
    confusions: np.ndarray


def simulate_votes(
    truth: np.ndarray, confusions: np.ndarray, rng: np.random.Generator, votes_per_item: int = 5
) -> CrowdVotes:
    """Each item gets votes from distinct random workers drawn from their confusion rows."""
    n_workers = len(confusions)
    workers = np.argsort(rng.random((len(truth), n_workers)), axis=1)[:, :votes_per_item]
    items = np.repeat(np.arange(len(truth)), votes_per_item)
    workers = workers.reshape(-1)
    rows = confusions[workers, truth[items]]  # [n_votes, K]
    labels = (rng.random(len(rows))[:, None] > rows.cumsum(axis=1)).sum(axis=1)
    return CrowdVotes(items, workers, np.minimum(labels, NUM_CLASSES - 1), n_workers)


@pytest.fixture(scope="session")
def planted_crowd() -> PlantedCrowd:
    rng = np.random.default_rng(0)
    train_truth = rng.integers(0, NUM_CLASSES, 600)
    holdout_truth = rng.integers(0, NUM_CLASSES, 300)
    return PlantedCrowd(
        train_images=blob_images(train_truth, rng),
        train_truth=train_truth,
        holdout_images=blob_images(holdout_truth, rng),
        holdout_truth=holdout_truth,
        votes=simulate_votes(train_truth, PLANTED_CONFUSIONS, rng),
        confusions=PLANTED_CONFUSIONS,
    )
