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
