"""AggNet and the crowd layer recover planted annotator confusions and beat majority vote."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.engine import (
    AggNetEM,
    CrowdLayer,
    CrowdVotes,
    ItemSet,
    TrainConfig,
    sensitivity_specificity,
    train,
)
from training.engine.aggnet import confusions_from_posteriors, posteriors_from_votes

from .conftest import NUM_CLASSES


def diagonals(confusions: np.ndarray) -> np.ndarray:
    return np.diagonal(confusions, axis1=1, axis2=2)


# --- AggNet's closed-form steps -------------------------------------------------------------


def test_m_step_counts_votes_weighted_by_posteriors():
    # two items, worker 0 votes 0 on both; item 1 is 50/50 between the classes
    votes = CrowdVotes(np.array([0, 1]), np.array([0, 0]), np.array([0, 0]), n_workers=1)
    posteriors = np.array([[1.0, 0.0], [0.5, 0.5]])
    confusion = confusions_from_posteriors(posteriors, votes, smoothing=0.5)[0]
    # row 0: counts [1.5, 0] + 0.5 -> [2, 0.5]; row 1: counts [0.5, 0] + 0.5 -> [1, 0.5]
    np.testing.assert_allclose(confusion, [[2 / 2.5, 0.5 / 2.5], [1 / 1.5, 0.5 / 1.5]])


def test_e_step_multiplies_prior_and_voter_confusions():
    confusions = np.array([[[0.8, 0.2], [0.3, 0.7]], [[0.6, 0.4], [0.1, 0.9]]])
    votes = CrowdVotes(np.array([0, 0]), np.array([0, 1]), np.array([1, 1]), n_workers=2)
    prior = np.array([[0.7, 0.3]])
    unnormalised = np.array([0.7 * 0.2 * 0.4, 0.3 * 0.7 * 0.9])
    np.testing.assert_allclose(
        posteriors_from_votes(prior, confusions, votes)[0], unnormalised / unnormalised.sum()
    )


def test_em_without_a_network_recovers_planted_confusions(planted_crowd):
    crowd = planted_crowd
    n_items = len(crowd.train_truth)
    em = AggNetEM(crowd.votes, crowd.votes.vote_fractions(n_items, NUM_CLASSES))
    for _ in range(30):
        em.e_step(np.full((n_items, NUM_CLASSES), 1 / NUM_CLASSES))
        em.m_step()
    assert np.abs(diagonals(em.confusions_) - diagonals(crowd.confusions)).max() < 0.12
    assert (em.posteriors_.argmax(1) == crowd.train_truth).mean() > 0.9
    np.testing.assert_allclose(em.reliabilities(), diagonals(em.confusions_))


def test_sensitivity_and_specificity_are_the_two_class_diagonal():
    confusions = np.array([[[0.9, 0.1], [0.25, 0.75]]])
    sensitivity, specificity = sensitivity_specificity(confusions)
    assert sensitivity[0] == 0.75 and specificity[0] == 0.9
    with pytest.raises(ValueError):
        sensitivity_specificity(np.ones((1, 3, 3)) / 3)


# --- crowd layer ----------------------------------------------------------------------------


def test_crowd_layer_loss_by_hand():
    confusions = np.array([[[0.8, 0.2], [0.3, 0.7]], [[0.6, 0.4], [0.1, 0.9]]])
    layer = CrowdLayer(2, 2, init_confusions=confusions, floor=0.0)
    np.testing.assert_allclose(layer.annotator_confusions(), confusions, atol=1e-6)
    logits = torch.log(torch.tensor([[0.7, 0.3], [0.2, 0.8]]))
    # item 0: worker 0 says 1, worker 1 says 0; item 1: worker 1 says 1, second slot empty
    workers = torch.tensor([[0, 1], [1, -1]])
    labels = torch.tensor([[1, 0], [1, -1]])
    p_votes = [0.7 * 0.2 + 0.3 * 0.7, 0.7 * 0.6 + 0.3 * 0.1, 0.2 * 0.4 + 0.8 * 0.9]
    expected = -np.mean(np.log(p_votes))
    assert layer.loss(logits, workers, labels).item() == pytest.approx(expected, rel=1e-5)
    traces = [1.5, 1.5, 1.5]  # one entry per vote: workers 0, 1, 1
    with_trace = layer.loss(logits, workers, labels, trace_weight=0.1).item()
    assert with_trace == pytest.approx(expected + 0.1 * np.mean(traces), rel=1e-5)
    no_votes = layer.loss(logits, torch.full((2, 2), -1), torch.full((2, 2), -1))
    assert no_votes.item() == 0.0


def test_crowd_layer_starts_near_identity():
    confusions = CrowdLayer(4, 3).annotator_confusions()
    assert confusions.shape == (4, 3, 3)
    np.testing.assert_allclose(confusions.sum(axis=2), 1, atol=1e-6)
    assert (diagonals(confusions) > 0.85).all()


# --- with the network in the loop -----------------------------------------------------------


def crowd_config(label_source: str, tmp_path) -> TrainConfig:
    return TrainConfig(
        label_source=label_source,
        num_classes=NUM_CLASSES,
        model_name="test_resnet",
        weights="none",
        in_chans=1,
        image_size=16,
        epochs=6,  # beats majority vote by .18 and recovers the diagonals within .08 (8: .22, .06)
        batch_size=32,
        lr=3e-3,
        augment=False,
        seed=0,
        checkpoint_dir=str(tmp_path),
    )


def run(label_source: str, crowd, tmp_path):
    n_items = len(crowd.train_truth)
    return train(
        crowd_config(label_source, tmp_path),
        ItemSet(list(crowd.train_images)),
        ItemSet(list(crowd.holdout_images), crowd.holdout_truth),
        votes=crowd.votes,
        init_posteriors=crowd.votes.vote_fractions(n_items, NUM_CLASSES),
    )


@pytest.fixture(scope="module")
def majority_vote_accuracy(planted_crowd, tmp_path_factory) -> float:
    result = run("majority_vote", planted_crowd, tmp_path_factory.mktemp("mv"))
    return result.history[-1].holdout_accuracy


@pytest.mark.slow
@pytest.mark.parametrize("label_source", ["aggnet", "crowd_layer"])
def test_recovers_planted_reliabilities_and_beats_majority_vote(
    label_source, planted_crowd, majority_vote_accuracy, tmp_path
):
    crowd = planted_crowd
    n_items = len(crowd.train_truth)
    majority_correct = (
        crowd.votes.vote_fractions(n_items, NUM_CLASSES).argmax(1) == crowd.train_truth
    )
    assert majority_correct.mean() < 0.8  # the planted crowd really misleads majority vote

    result = run(label_source, crowd, tmp_path)
    learned = result.annotator_confusions
    assert learned.shape == crowd.confusions.shape
    assert np.abs(diagonals(learned) - diagonals(crowd.confusions)).max() < 0.15
    # spammers and the adversarial worker come out least reliable, as planted
    order = np.argsort(diagonals(learned).mean(axis=1))
    assert set(order[:4]) == {3, 4, 5, 9}

    accuracy = result.history[-1].holdout_accuracy
    assert accuracy >= 0.95
    assert accuracy >= majority_vote_accuracy + 0.05
    if label_source == "aggnet":
        assert (result.train_posteriors.argmax(1) == crowd.train_truth).mean() > 0.95
