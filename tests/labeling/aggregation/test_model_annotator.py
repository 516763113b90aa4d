"""The model as one more annotator: known answers on a simulated crowd with 1-2 votes per item."""

from functools import cache

import numpy as np
import pytest

from labeling.aggregation import DawidSkene, make_profiles, votes_wanted
from labeling.aggregation.adaptive import (
    VotePool,
    draw_vote_pool,
    replay_budget,
    vote_priority,
)
from labeling.aggregation.base import VoteMatrix
from labeling.aggregation.model_annotator import (
    ModelAnnotator,
    confidence_edges,
    dawid_skene_with_model,
    model_symbols,
)

N, K = 3000, 3


@cache
def sparse_crowd():
    """Truth, and Dawid-Skene's posterior from 1 or 2 votes per item of a mostly noisy crowd."""
    rng = np.random.default_rng(0)
    truth = rng.integers(0, K, N)
    profiles = make_profiles("accurate:4,noisy:8,spammer:2", K, seed=1, accuracy_jitter=0.05)
    pool = draw_vote_pool(truth, profiles, k_max=2, seed=2)
    counts = rng.integers(1, 3, N)
    crowd = DawidSkene().fit(pool.take(counts)).posteriors_
    return truth, crowd


def model_probabilities(truth: np.ndarray, accuracy: float, seed: int) -> np.ndarray:
    """A model right on about ``accuracy`` of the items, more confident when right."""
    rng = np.random.default_rng(seed)
    n = len(truth)
    answer = np.where(rng.random(n) < accuracy, truth, rng.integers(0, K, n))
    logits = rng.normal(0.0, 1.0, (n, K))
    logits[np.arange(n), answer] += 2.5
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


def accuracy(posteriors: np.ndarray, truth: np.ndarray) -> float:
    return float((posteriors.argmax(axis=1) == truth).mean())


def test_good_model_lifts_items_with_one_or_two_votes():
    truth, crowd = sparse_crowd()
    probs = model_probabilities(truth, 0.85, seed=3)
    annotator = ModelAnnotator()
    combined = annotator.fit_combine(crowd, probs, np.ones(N, bool))
    # measured: crowd .703, model alone .840, combined .843 (learned model accuracy .78)
    assert accuracy(crowd, truth) < 0.75
    assert accuracy(combined, truth) >= accuracy(crowd, truth) + 0.10
    assert accuracy(combined, truth) >= accuracy(probs, truth) - 0.01
    # the learned reliability is near the model's real one, not the crowd's
    assert 0.7 < annotator.accuracy_ < 0.9
    assert np.all(np.diag(annotator.confusion_argmax_) > 0.7)
    np.testing.assert_allclose(combined.sum(axis=1), 1.0)


def test_useless_model_does_not_hurt_much():
    truth, crowd = sparse_crowd()
    probs = np.random.default_rng(5).dirichlet(np.ones(K), N)
    annotator = ModelAnnotator()
    combined = annotator.fit_combine(crowd, probs, np.ones(N, bool))
    assert accuracy(combined, truth) >= accuracy(crowd, truth) - 0.01
    # learned as chance: every column of its confusion close to 1/K
    assert np.abs(annotator.confusion_argmax_ - 1.0 / K).max() < 0.06


def test_a_model_that_swaps_classes_is_read_through_its_confusion():
    truth, crowd = sparse_crowd()
    swapped = model_probabilities(truth, 0.85, seed=3)[:, [1, 2, 0]]
    annotator = ModelAnnotator()
    combined = annotator.fit_combine(crowd, swapped, np.ones(N, bool))
    assert accuracy(swapped, truth) < 0.1
    assert accuracy(combined, truth) >= accuracy(crowd, truth) + 0.10
    assert np.all(np.diag(annotator.confusion_argmax_) < 0.2)


def test_in_sample_predictions_weigh_less_and_out_of_sample_ones_teach_theta():
    truth, crowd = sparse_crowd()
    # in sample the model echoes the crowd's label with full confidence (it memorised it)
    echo = np.full((N, K), 0.001)
    echo[np.arange(N), crowd.argmax(axis=1)] = 1 - 0.001 * (K - 1)
    honest = model_probabilities(truth, 0.85, seed=3)
    trained_on = np.arange(N) >= 1000
    probs = np.where(trained_on[:, None], echo, honest)

    annotator = ModelAnnotator(in_sample_weight=0.5)
    annotator.fit(crowd, probs, np.ones(N, bool), in_sample=trained_on)
    assert annotator.fit_on_ == "out_of_sample" and annotator.n_fit_items_ == 1000
    naive = ModelAnnotator().fit(crowd, probs, np.ones(N, bool))
    # counted as out of sample, the echo makes the model look far better than it is
    assert naive.accuracy_ > annotator.accuracy_ + 0.05

    full = ModelAnnotator(in_sample_weight=1.0).fit(crowd, probs, np.ones(N, bool), trained_on)
    half = annotator.log_likelihood(probs, trained_on)
    whole = full.log_likelihood(probs, trained_on)
    np.testing.assert_allclose(half[trained_on], 0.5 * whole[trained_on])
    np.testing.assert_allclose(half[~trained_on], whole[~trained_on])

    # too few out-of-sample items: theta comes from all of them, in-sample ones weighted
    few = ModelAnnotator(min_out_of_sample=2000).fit(crowd, probs, np.ones(N, bool), trained_on)
    assert few.fit_on_ == "all" and few.n_fit_items_ == N


def test_items_without_crowd_evidence_or_prediction():
    truth, crowd = sparse_crowd()
    probs = model_probabilities(truth, 0.85, seed=3)
    probs[:100] = np.nan  # no prediction: the crowd's posterior unchanged
    has_crowd = np.ones(N, bool)
    has_crowd[100:300] = False  # no votes: they teach theta nothing
    annotator = ModelAnnotator()
    combined = annotator.fit_combine(crowd, probs, has_crowd)
    np.testing.assert_allclose(combined[:100], crowd[:100])
    assert annotator.n_fit_items_ == N - 300
    known = np.full(N, -1)
    known[100] = 2
    clamped = annotator.combine(crowd, probs, known=known)
    np.testing.assert_array_equal(clamped[100], [0.0, 0.0, 1.0])
    assert annotator.agrees(combined, probs)[:100].sum() == 0


def test_symbols_and_bad_input():
    p = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.45, 0.55]])
    edges = confidence_edges(p, 2)
    np.testing.assert_array_equal(model_symbols(p, edges), [1, 0, 3, 2])
    assert len(confidence_edges(np.empty((0, 3)), 3)) == 2
    crowd = np.full((4, 2), 0.5)
    with pytest.raises(ValueError, match="shape"):
        ModelAnnotator().fit(crowd, p[:, :1], np.ones(4, bool))
    with pytest.raises(ValueError, match="distribution"):
        ModelAnnotator().fit(crowd, p * 2, np.ones(4, bool))
    with pytest.raises(ValueError, match="all NaN"):
        ModelAnnotator().fit(crowd, np.where(np.eye(4, 2) > 0, np.nan, p), np.ones(4, bool))
    with pytest.raises(ValueError, match="smoothing"):
        ModelAnnotator(smoothing=0).fit(crowd, p, np.ones(4, bool))
    with pytest.raises(ValueError, match="not fitted"):
        ModelAnnotator().combine(crowd, p)


def test_model_agreement_counts_as_a_vote_for_stopping():
    post = np.array([[0.97, 0.03], [0.97, 0.03], [0.7, 0.3]])
    counts = np.array([1, 1, 1])
    plain = votes_wanted(post, counts, k=3, k_max=5, threshold=0.95, min_votes=2)
    agreed = votes_wanted(
        post, counts, k=3, k_max=5, threshold=0.95, min_votes=2,
        model_agrees=np.array([True, False, True]),
    )  # fmt: skip
    np.testing.assert_array_equal(plain, [2, 2, 2])
    # confident and the model agrees: stops on one crowd vote; unsure ones still want theirs
    np.testing.assert_array_equal(agreed, [0, 2, 2])


def test_real_vote_pool_and_priority():
    votes = VoteMatrix.from_codes([0, 0, 0, 1, 2, 2], [0, 1, 2, 0, 1, 2], [1, 1, 0, 1, 0, 0])
    pool = VotePool.from_votes(votes, seed=4)
    np.testing.assert_array_equal(pool.available, [3, 1, 2])
    taken = pool.take(np.array([5, 5, 1]))  # never more than an item has
    assert taken.n_votes == 5
    pairs = zip(taken.task_idx[:4].tolist(), taken.label_idx[:4].tolist(), strict=True)
    assert sorted(pairs) == [
        (0, 0), (0, 1), (0, 1), (1, 1),
    ]  # fmt: skip
    post = np.array([[0.5, 0.5], [0.99, 0.01], [0.8, 0.2], [0.6, 0.4]])
    counts = np.array([2, 1, 1, 0])
    remaining = np.array([1, 1, 1, 0])
    # item 3 is out of votes; unconfident before confident; fewer votes first among unconfident
    np.testing.assert_array_equal(vote_priority(post, counts, remaining), [2, 0, 1])
    np.testing.assert_array_equal(
        vote_priority(post, counts, remaining, ordering="most_uncertain"), [0, 2, 1]
    )


def test_adaptive_replay_beats_fixed_overlap_at_the_same_budget():
    rng = np.random.default_rng(7)
    truth = rng.integers(0, 2, 600)
    profiles = make_profiles("accurate:4,noisy:6,spammer:2", 2, seed=7, accuracy_jitter=0.05)
    pool = draw_vote_pool(truth, profiles, k_max=5, seed=8)

    def ds(votes, counts):
        return DawidSkene().fit(votes).posteriors_

    marks = [600, 1500, 3000]
    fixed = replay_budget(pool, truth, ds, "fixed", marks, batch=60)
    adaptive = replay_budget(pool, truth, ds, "adaptive", marks, batch=60)
    assert fixed.votes == adaptive.votes == marks
    assert adaptive.accuracy[0] == fixed.accuracy[0]  # one vote each: the same votes
    assert adaptive.accuracy[1] > fixed.accuracy[1]
    assert adaptive.stop_votes is not None and adaptive.stop_votes < 3000
    assert adaptive.accuracy_at(1499) == adaptive.accuracy[0]


def test_joint_em_learns_the_workers_with_the_models_help():
    rng = np.random.default_rng(0)
    n = 400
    truth = rng.integers(0, 2, n)
    profiles = make_profiles("accurate:2,noisy:6,spammer:1", 2, seed=1, accuracy_jitter=0.05)
    pool = draw_vote_pool(truth, profiles, k_max=2, seed=2)
    votes = pool.take(rng.integers(1, 3, n))
    crowd = DawidSkene().fit(votes).posteriors_
    r = np.random.default_rng(3)
    answer = np.where(r.random(n) < 0.9, truth, r.integers(0, 2, n))
    logits = r.normal(0.0, 1.0, (n, 2))
    logits[np.arange(n), answer] += 2.5
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)

    held = ModelAnnotator()
    fixed = held.fit_combine(crowd, probs, np.ones(n, bool))
    joint, annotator, confusions = dawid_skene_with_model(votes, probs, crowd)
    # measured: crowd .677, model .94, crowd held fixed .82 (model rated .75), joint .93 (.87)
    assert accuracy(joint, truth) >= accuracy(fixed, truth) + 0.05
    assert annotator.accuracy_ > held.accuracy_ + 0.05
    assert confusions.shape == (votes.n_workers, 2, 2)
    # the accurate workers come out more accurate than the spammer
    diag = np.einsum("wkk->w", confusions) / 2
    assert diag[:2].min() > diag[-1] + 0.2
    known = np.full(n, -1)
    known[0] = 1 - truth[0]
    clamped, _, _ = dawid_skene_with_model(votes, probs, crowd, known=known)
    np.testing.assert_array_equal(clamped[0], np.eye(2)[1 - truth[0]])
