"""One-coin Dawid-Skene recovers each worker's accuracy."""

import numpy as np

from labeling.aggregation import MajorityVote, OneCoinDawidSkene

from .crowds import accuracy, honest_crowd


def test_recovers_truth_and_skills():
    crowd = honest_crowd()
    model = OneCoinDawidSkene().fit(crowd.votes)
    assert accuracy(model.posteriors_, crowd.true_labels) > 0.92  # DS, the best here, reaches 0.936
    true_skill = np.einsum("wkk->w", crowd.confusions) / 3
    assert np.abs(model.skills_ - true_skill).max() < 0.1  # ~230 votes a worker: sd about 0.03
    assert accuracy(model.posteriors_, crowd.true_labels) > accuracy(
        MajorityVote().fit(crowd.votes).posteriors_, crowd.true_labels
    )
    # the confusion is one-coin shaped: skill on the diagonal, the rest spread evenly
    conf = model.confusions_[0]
    np.testing.assert_allclose(np.diag(conf), model.skills_[0])
    np.testing.assert_allclose(conf[0, 1], (1 - model.skills_[0]) / 2)


def test_matches_crowdkit_one_coin():
    import pytest

    crowdkit = pytest.importorskip("crowdkit.aggregation")
    frame = honest_crowd().votes.to_frame().astype(str).head(1200)
    ours = OneCoinDawidSkene(n_iter=10, tol=-1.0).fit(frame)
    theirs = crowdkit.OneCoinDawidSkene(n_iter=10, tol=-1.0).fit(frame).probas_
    theirs = theirs.reindex(index=ours.probas_.index, columns=ours.probas_.columns)
    np.testing.assert_allclose(ours.probas_.to_numpy(), theirs.to_numpy(), atol=1e-4)


def test_crowdkit_stopping_on_request():
    """``stop="crowdkit", tol=1e-5`` stops where crowd-kit's one-coin model stops."""
    import pytest

    crowdkit = pytest.importorskip("crowdkit.aggregation")
    from labeling.aggregation.simulation import simulate_crowd

    for seed in (0, 3):  # its criterion falls on seed 0, rises to convergence on seed 3
        frame = (
            simulate_crowd(200, 3, "accurate:2,noisy:3,spammer:3", votes_per_item=4, seed=seed)
            .votes.to_frame()
            .astype(str)
        )
        theirs = crowdkit.OneCoinDawidSkene().fit(frame)
        ours = OneCoinDawidSkene(stop="crowdkit", tol=1e-5).fit(frame)
        assert ours.n_iter_ == len(theirs.loss_history_)
        np.testing.assert_allclose(ours.loss_history_, theirs.loss_history_, rtol=0, atol=1e-9)


def test_default_stops_on_the_log_likelihood():
    model = OneCoinDawidSkene().fit(honest_crowd().votes)
    gains = np.diff(model.loglik_history_)
    assert (gains[:-1] >= 1e-6).all() and gains[-1] < 1e-6
