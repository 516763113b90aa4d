"""GLAD recovers labels, orders workers by ability and flags adversaries."""

import numpy as np
import pytest

from labeling.aggregation import GLAD, MajorityVote

from .crowds import accuracy, hard_crowd, honest_crowd


@pytest.mark.parametrize(
    "kwargs", [{}, dict(stop="loglik", m_step_method="L-BFGS-B", m_step_tol=None)]
)
def test_recovers_truth_and_ranks_workers(kwargs):
    crowd = honest_crowd()
    model = GLAD(**kwargs).fit(crowd.votes)
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


def test_crowdkit_stop_keeps_the_posteriors_its_criterion_was_measured_under():
    """``stop="crowdkit"``: the criterion of M-step t is Q at its parameters under the
    posteriors it maximised; at the first gain below ``tol`` those posteriors are kept."""
    votes = hard_crowd().votes
    full = GLAD(n_iter=30, tol=-np.inf, stop="loglik").fit(votes)
    assert full.n_iter_ == len(full.loss_history_) == 30
    gains = np.diff(full.loss_history_)
    tol = float(np.quantile(np.abs(gains), 0.5))  # stops part-way whatever the crowd
    stop_at = int(np.argmax(gains < tol)) + 2
    assert 2 <= stop_at < 30
    model = GLAD(n_iter=30, tol=tol, stop="crowdkit").fit(votes)
    assert model.n_iter_ == stop_at
    np.testing.assert_allclose(
        model.loss_history_, full.loss_history_[:stop_at], rtol=0, atol=1e-12
    )
    before_last_m_step = GLAD(n_iter=stop_at - 1, tol=-np.inf, stop="loglik").fit(votes)
    np.testing.assert_allclose(model.posteriors_, before_last_m_step.posteriors_, atol=1e-12)
    # the parameters are those of the last M-step, fitted to the returned posteriors
    last = GLAD(n_iter=stop_at, tol=-np.inf, stop="loglik").fit(votes)
    np.testing.assert_allclose(model.alphas_, last.alphas_, atol=1e-12)


@pytest.mark.parametrize(
    "mix, seed, atol",
    [
        ("accurate:1,noisy:4,spammer:3", 0, 1e-9),  # its criterion falls at the 2nd M-step
        # runs 13 M-steps; CG's stopping point moves with rounding, so the values drift apart a little
        ("accurate:2,noisy:3,spammer:2,adversarial:1", 2, 1e-5),
    ],
)
def test_reproduces_crowdkit_with_its_stop_and_optimiser(mix, seed, atol):
    """crowd-kit's criterion, stop and CG M-step (tol 1e-2) give its iterations and posteriors."""
    crowdkit = pytest.importorskip("crowdkit.aggregation")
    from labeling.aggregation.simulation import simulate_crowd

    frame = simulate_crowd(120, 4, mix, votes_per_item=4, seed=seed).votes.to_frame().astype(str)
    theirs = crowdkit.GLAD().fit(frame)
    ours = GLAD(stop="crowdkit", m_step_method="CG", m_step_tol=1e-2).fit(frame)
    assert ours.n_iter_ == len(theirs.loss_history_)
    np.testing.assert_allclose(ours.loss_history_, theirs.loss_history_, rtol=0, atol=atol)
    theirs_probas = theirs.probas_.reindex(index=ours.probas_.index, columns=ours.probas_.columns)
    np.testing.assert_allclose(ours.probas_.to_numpy(), theirs_probas.to_numpy(), atol=100 * atol)
    assert (ours.labels_ == theirs.labels_.reindex(ours.labels_.index)).all()


@pytest.mark.parametrize(
    "kwargs", [dict(stop="elbo"), dict(m_step_method="newton"), dict(n_iter=-1)]
)
def test_bad_hyperparameters(kwargs):
    with pytest.raises(ValueError):
        GLAD(**kwargs).fit(honest_crowd().votes)
