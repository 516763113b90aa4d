"""The realistic sparse crowd has the statistics it claims (simulation.simulate_sparse_crowd)."""

import numpy as np
import pytest

from labeling.aggregation.simulation import (
    SPARSE_TIERS,
    assign_sparse,
    simulate_sparse_crowd,
    sparse_crowd_confusions,
)


@pytest.fixture(scope="module")
def crowd():
    truth = np.random.default_rng(0).integers(0, 3, 3000)
    return simulate_sparse_crowd(truth, 3, votes_per_item=2.5, seed=4)


def test_two_or_three_distinct_votes_per_item(crowd):
    votes = crowd.votes
    per_item = np.bincount(votes.task_idx, minlength=3000)
    assert set(np.unique(per_item)) == {2, 3}
    assert per_item.mean() == pytest.approx(2.5, abs=0.05)
    pairs = votes.task_idx * 1000 + votes.worker_idx
    assert len(np.unique(pairs)) == len(pairs)  # nobody votes twice on an item


def test_sparse_annotators_with_uneven_activity(crowd):
    n_workers = len(crowd.archetypes)
    assert n_workers == round(2.5 / 0.03)
    share = np.bincount(crowd.votes.worker_idx, minlength=n_workers) / 3000
    assert 0.01 < np.median(share) < 0.05  # a typical annotator labels a few percent
    assert share.max() > 3 * np.median(share)  # and a few label far more than most
    # labelling rates follow the drawn activity
    assert np.corrcoef(np.log(crowd.activity), np.log(share + 1e-4))[0, 1] > 0.8


def test_long_tail_of_skill(crowd):
    tiers = np.array(crowd.archetypes)
    assert set(tiers) <= set(SPARSE_TIERS)
    counts = {tier: int((tiers == tier).sum()) for tier in SPARSE_TIERS}
    n = len(tiers)
    assert counts["expert"] == round(0.1 * n)
    assert counts["spammer_uniform"] + counts["spammer_constant"] == round(0.1 * n)
    mediocre = counts["mediocre"] + counts["pair_confuser"]
    assert mediocre > n / 2  # the bulk of the crowd is mediocre
    diagonal = np.diagonal(crowd.confusions, axis1=1, axis2=2).mean(axis=1)
    assert diagonal[tiers == "expert"].min() > np.median(diagonal[tiers == "mediocre"])
    np.testing.assert_allclose(crowd.confusions[tiers == "spammer_uniform"], 1 / 3)
    constant = crowd.confusions[tiers == "spammer_constant"]
    assert ((constant == 1.0).sum(axis=2) == 1).all()  # every row the same single class
    assert (constant.argmax(axis=2) == constant[:, :1].argmax(axis=2)).all()


def test_confusions_are_class_dependent_and_pair_confusers_mix_their_pair(crowd):
    np.testing.assert_allclose(crowd.confusions.sum(axis=2), 1.0)
    tiers = np.array(crowd.archetypes)
    mediocre = crowd.confusions[tiers == "mediocre"]
    # rows are Dirichlet draws: the per-class accuracies of one annotator differ
    per_class = np.diagonal(mediocre, axis1=1, axis2=2)
    assert np.median(per_class.max(axis=1) - per_class.min(axis=1)) > 0.05
    confusers = np.flatnonzero(tiers == "pair_confuser")
    assert len(confusers) > 5
    for worker in confusers:
        true_class, given = crowd.confused_pairs[worker]
        assert true_class != given
        row = crowd.confusions[worker, true_class]
        assert row[given] >= 0.3 * (1 - row[true_class])  # a large share lands on the pair
    assert (crowd.confused_pairs[tiers != "pair_confuser"] == -1).all()


def test_votes_follow_each_annotators_confusion(crowd):
    votes = crowd.votes
    truth = crowd.true_labels[votes.task_idx]
    expected = crowd.confusions[votes.worker_idx, truth, votes.label_idx]
    # the mean probability of the drawn labels matches the expected sum_l pi[k,l]^2 per vote
    expected_mean = (crowd.confusions[votes.worker_idx, truth] ** 2).sum(axis=1).mean()
    assert expected.mean() == pytest.approx(expected_mean, abs=0.02)
    tiers = np.array(crowd.archetypes)[votes.worker_idx]
    correct = votes.label_idx == truth
    assert correct[tiers == "expert"].mean() > 0.8
    assert correct[tiers == "spammer_uniform"].mean() == pytest.approx(1 / 3, abs=0.1)


def test_deterministic_and_validated():
    truth = np.arange(200) % 2
    a = simulate_sparse_crowd(truth, 2, seed=3)
    b = simulate_sparse_crowd(truth, 2, seed=3)
    np.testing.assert_array_equal(a.votes.label_idx, b.votes.label_idx)
    np.testing.assert_array_equal(a.votes.worker_idx, b.votes.worker_idx)
    np.testing.assert_array_equal(a.confusions, b.confusions)
    exactly_two = simulate_sparse_crowd(truth, 2, votes_per_item=2, n_workers=10, seed=1)
    assert (np.bincount(exactly_two.votes.task_idx) == 2).all()
    with pytest.raises(ValueError):
        simulate_sparse_crowd(truth, 2, n_workers=2, votes_per_item=2.5)
    with pytest.raises(ValueError):
        simulate_sparse_crowd(truth + 5, 2)
    with pytest.raises(ValueError):
        sparse_crowd_confusions(10, 3, expert_share=0.7, spammer_share=0.5)
    with pytest.raises(ValueError):
        assign_sparse(10, np.array([1.0, 0.0, 2.0]), 2)
