"""Simulated crowds are deterministic and follow their confusion matrices."""

import numpy as np
import pytest

from labeling.aggregation import (
    confusions_from_accuracy,
    make_profiles,
    simulate_crowd,
    simulate_votes,
    worker_confusion,
)
from labeling.aggregation.simulation import ARCHETYPES, assign_workers, parse_mix


@pytest.mark.parametrize("archetype", ARCHETYPES)
def test_archetype_matrices_are_distributions(archetype):
    conf = worker_confusion(archetype, 4)
    np.testing.assert_allclose(conf.sum(axis=1), 1.0)
    assert (conf >= 0).all()


def test_archetype_shapes():
    np.testing.assert_allclose(np.diag(worker_confusion("accurate", 3, 0.8)), 0.8)
    np.testing.assert_allclose(worker_confusion("spammer", 3), 1 / 3)
    biased = worker_confusion("class_biased", 3, 0.7, biased_class=0)
    np.testing.assert_allclose(biased[:, 0], [1.0, 0.3, 0.3])
    adversarial = worker_confusion("adversarial", 3, 0.0)
    np.testing.assert_array_equal(adversarial.argmax(axis=1), [1, 2, 0])
    with pytest.raises(ValueError):
        worker_confusion("sleepy", 3)
    with pytest.raises(ValueError):
        worker_confusion("noisy", 3, 1.5)


def test_mix_parsing():
    assert parse_mix("accurate:2, spammer:1") == ["accurate", "accurate", "spammer"]
    for bad in ("", "robot:2", "noisy:x"):
        with pytest.raises(ValueError):
            parse_mix(bad)
    assert len(make_profiles("noisy:3", 2, seed=0, accuracy_jitter=0.1)) == 3


def test_deterministic_given_seed_and_distinct_workers_per_item():
    a = simulate_crowd(200, 3, "accurate:3,noisy:3", votes_per_item=4, seed=7)
    b = simulate_crowd(200, 3, "accurate:3,noisy:3", votes_per_item=4, seed=7)
    np.testing.assert_array_equal(a.votes.label_idx, b.votes.label_idx)
    np.testing.assert_array_equal(a.true_labels, b.true_labels)
    per_item = a.votes.worker_idx.reshape(200, 4)
    assert (np.sort(per_item, axis=1)[:, 1:] != np.sort(per_item, axis=1)[:, :-1]).all()
    # the large-crowd path (redraw duplicates) also gives distinct workers
    big = assign_workers(30_000, 1_000, 5, seed=1)
    s = np.sort(big, axis=1)
    assert (s[:, 1:] != s[:, :-1]).all()
    with pytest.raises(ValueError):
        assign_workers(3, 2, 3)


def test_votes_follow_the_confusions():
    conf = confusions_from_accuracy([0.8, 0.5], 2)
    truth = np.zeros(20_000, dtype=np.int64)
    items, workers, labels = simulate_votes(truth, conf, votes_per_item=2, seed=3)
    assert len(items) == 40_000
    for w, acc in ((0, 0.8), (1, 0.5)):
        assert (labels[workers == w] == 0).mean() == pytest.approx(acc, abs=0.015)
