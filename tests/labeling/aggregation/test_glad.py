"""GLAD recovers labels, orders workers by ability and flags adversaries."""

import numpy as np

from labeling.aggregation import GLAD, MajorityVote

from .crowds import accuracy, hard_crowd, honest_crowd


def test_recovers_truth_and_ranks_workers():
    crowd = honest_crowd()
    model = GLAD().fit(crowd.votes)
    assert accuracy(model.posteriors_, crowd.true_labels) > 0.92  # DS, the best here, reaches 0.936
    by_type = {
        a: model.alphas_[[i for i, t in enumerate(crowd.archetypes) if t == a]]
        for a in set(crowd.archetypes)
    }
    assert by_type["accurate"].min() > by_type["noisy"].max() > by_type["spammer"].max()
    # the implied one-coin accuracy is near the true one; looser than for one-coin DS because the
    # N(1, 1) prior on alpha and the per-item difficulty absorb part of a noisy worker's errors
    true_skill = np.einsum("wkk->w", crowd.confusions) / 3
    assert np.abs(np.einsum("wkk->w", model.confusions_) / 3 - true_skill).max() < 0.15


def test_adversaries_get_negative_ability():
    crowd = hard_crowd()
    model = GLAD().fit(crowd.votes)
    adversarial = [i for i, t in enumerate(crowd.archetypes) if t == "adversarial"]
    assert (model.alphas_[adversarial] < 0).all()
    assert accuracy(model.posteriors_, crowd.true_labels) > accuracy(
        MajorityVote().fit(crowd.votes).posteriors_, crowd.true_labels
    )
    assert model.n_iter_ >= 1 and np.isfinite(model.betas_).all()
