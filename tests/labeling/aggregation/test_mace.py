"""MACE recovers labels and tells spammers from trustworthy workers."""

import numpy as np
import pytest

from labeling.aggregation import MACE, MajorityVote

from .crowds import accuracy, honest_crowd


@pytest.mark.parametrize("method", ["vb", "em"])
def test_recovers_truth_and_flags_spammers(method):
    crowd = honest_crowd()
    model = MACE(method=method).fit(crowd.votes)
    assert accuracy(model.posteriors_, crowd.true_labels) > 0.92  # DS, the best here, reaches 0.936
    assert accuracy(model.posteriors_, crowd.true_labels) >= accuracy(
        MajorityVote().fit(crowd.votes).posteriors_, crowd.true_labels
    )
    types = np.array(crowd.archetypes)
    assert model.competence_[types == "spammer"].max() < 0.15
    assert model.competence_[types == "accurate"].min() > 0.75
    # MACE's competence is P(not spamming); an accurate worker (0.9, K=3) has theta = (0.9 - 1/3) / (2/3) = 0.85
    np.testing.assert_allclose(model.competence_[types == "accurate"], 0.85, atol=0.08)
    np.testing.assert_allclose(model.strategies_.sum(axis=1), 1.0)


def test_restarts_are_seeded_and_never_worse():
    votes = honest_crowd().votes
    one = MACE().fit(votes)
    many = MACE(n_restarts=3, random_state=4).fit(votes)
    again = MACE(n_restarts=3, random_state=4).fit(votes)
    np.testing.assert_array_equal(many.posteriors_, again.posteriors_)
    assert many.loglik_history_[-1] >= one.loglik_history_[-1] - 1e-9


def test_bad_method():
    with pytest.raises(ValueError, match="method"):
        MACE(method="gibbs").fit(honest_crowd().votes)
