"""Cross-fitted EM: the image decides where sparse votes disagree, and no item's prior comes
from a classifier that saw the item's own target."""

from __future__ import annotations

import numpy as np
import pytest

from training.engine import CrowdVotes
from training.engine.aggnet import posteriors_from_votes, undo_class_weights
from training.engine.crossfit_em import cross_fitted_em

N_ITEMS, N_WORKERS = 600, 40


def sparse_crowd(seed: int = 0):
    """Two well-separated Gaussian classes in 2-D; two votes per item from 40 annotators who are
    right 70% of the time, so about 42% of the items get a split or wrong vote pair."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 2, N_ITEMS)
    features = rng.normal(size=(N_ITEMS, 2)) + 3.0 * truth[:, None]
    items = np.repeat(np.arange(N_ITEMS), 2)
    workers = np.stack([rng.choice(N_WORKERS, 2, replace=False) for _ in range(N_ITEMS)]).reshape(
        -1
    )
    right = rng.uniform(size=items.size) < 0.7
    labels = np.where(right, truth[items], 1 - truth[items])
    votes = CrowdVotes(items, workers, labels, n_workers=N_WORKERS)
    confusions = np.tile(np.array([[0.7, 0.3], [0.3, 0.7]]), (N_WORKERS, 1, 1))
    votes_only = posteriors_from_votes(np.full((N_ITEMS, 2), 0.5), confusions, votes)
    return truth, features, votes, confusions, votes_only


def centroid_classifier(features: np.ndarray, calls: list | None = None):
    """Soft-target class centroids, probabilities from the squared distances (plain NumPy)."""

    def fit_predict(trained_on, targets, held_out, fold_seed):
        if calls is not None:
            calls.append((trained_on.copy(), held_out.copy()))
        centroids = (targets.T @ features[trained_on]) / targets.sum(axis=0)[:, None]
        distances = ((features[held_out, None, :] - centroids[None]) ** 2).sum(axis=2)
        scores = np.exp(-0.5 * (distances - distances.min(axis=1, keepdims=True)))
        return scores / scores.sum(axis=1, keepdims=True)

    return fit_predict


def test_the_image_corrects_what_the_votes_alone_get_wrong():
    truth, features, votes, confusions, votes_only = sparse_crowd()
    result = cross_fitted_em(
        votes, votes_only, centroid_classifier(features), confusions, n_folds=4, max_rounds=3
    )
    votes_accuracy = (votes_only.argmax(axis=1) == truth).mean()
    crossfit_accuracy = (result.posteriors.argmax(axis=1) == truth).mean()
    assert votes_accuracy < 0.85
    assert crossfit_accuracy > 0.95
    assert result.posteriors.shape == (N_ITEMS, 2)
    np.testing.assert_allclose(result.posteriors.sum(axis=1), 1.0)
    # planted annotators are 70% right: the re-estimated confusions see that
    assert abs(np.diagonal(result.confusions, axis1=1, axis2=2).mean() - 0.7) < 0.08


def test_every_item_is_predicted_once_per_round_by_a_classifier_that_never_saw_it():
    _, features, votes, confusions, votes_only = sparse_crowd()
    calls: list[tuple[np.ndarray, np.ndarray]] = []
    result = cross_fitted_em(
        votes, votes_only, centroid_classifier(features, calls), confusions,
        n_folds=3, max_rounds=2, tolerance=0.0,
    )  # fmt: skip
    assert result.rounds == 2 and len(calls) == 6
    for round_index in range(2):
        round_calls = calls[3 * round_index : 3 * round_index + 3]
        for trained_on, held_out in round_calls:
            assert not set(trained_on) & set(held_out)
            assert len(trained_on) + len(held_out) == N_ITEMS
        predicted = np.concatenate([held_out for _, held_out in round_calls])
        np.testing.assert_array_equal(np.sort(predicted), np.arange(N_ITEMS))
    # new folds each round: an item's fold-mates change
    assert not np.array_equal(calls[0][1], calls[3][1])


def test_stops_once_no_item_changes_class():
    _, _, votes, confusions, votes_only = sparse_crowd()

    def uninformative(trained_on, targets, held_out, fold_seed):
        return np.full((len(held_out), 2), 0.5)

    # a classifier that knows nothing leaves the votes' posteriors where they were: one round
    result = cross_fitted_em(votes, votes_only, uninformative, confusions, max_rounds=5)
    assert result.rounds == 1
    assert result.changed == [0.0]


def test_rejects_a_fit_predict_of_the_wrong_shape_and_too_few_folds():
    _, _, votes, confusions, votes_only = sparse_crowd()
    with pytest.raises(ValueError, match="shape"):
        cross_fitted_em(votes, votes_only, lambda t, y, h, s: np.ones((len(h), 3)), confusions)
    with pytest.raises(ValueError, match="n_folds"):
        cross_fitted_em(votes, votes_only, lambda t, y, h, s: y, confusions, n_folds=1)


def test_undo_class_weights_returns_the_training_prior():
    # a loss weighting class 1 three times as much moves 1:1 odds to 1:3
    tilted = np.array([[0.25, 0.75], [0.1, 0.9]])
    np.testing.assert_allclose(
        undo_class_weights(tilted, np.array([1.0, 3.0])), [[0.5, 0.5], [0.25, 0.75]]
    )
    np.testing.assert_array_equal(undo_class_weights(tilted, None), tilted)


def test_known_answers_stay_clamped_however_many_votes_contradict_them():
    """A gold item shown to 30 workers who all answer the other class keeps its answer, and the
    confusions are estimated against it (without the clamp the votes flip it)."""
    truth, features, votes, confusions, votes_only = sparse_crowd()
    gold = 7
    answer = int(truth[gold])
    contradicting = CrowdVotes(
        np.concatenate([votes.items, np.full(30, gold)]),
        np.concatenate([votes.workers, np.arange(30)]),
        np.concatenate([votes.labels, np.full(30, 1 - answer)]),
        n_workers=N_WORKERS,
    )
    start = posteriors_from_votes(np.full((N_ITEMS, 2), 0.5), confusions, contradicting)
    known = np.full(N_ITEMS, -1)
    known[gold] = answer
    unclamped = cross_fitted_em(
        contradicting, start, centroid_classifier(features), confusions, n_folds=4, max_rounds=2
    )
    assert unclamped.posteriors[gold].argmax() != answer  # the votes win without the clamp
    clamped = cross_fitted_em(
        contradicting, start, centroid_classifier(features), confusions, n_folds=4, max_rounds=2,
        known_labels=known,
    )
    np.testing.assert_array_equal(clamped.posteriors[gold], np.eye(2)[answer])
    with pytest.raises(ValueError, match="known_labels"):
        cross_fitted_em(
            contradicting, start, centroid_classifier(features), confusions, n_folds=4,
            known_labels=np.full(N_ITEMS, 2),
        )
