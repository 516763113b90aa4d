"""``auto``: choosing an aggregation method per project without (or with) a ground truth."""

import numpy as np
import pytest

from labeling.aggregation import METHODS, DawidSkene, MajorityVote, VoteMatrix
from labeling.aggregation.selection import (
    AMBIGUITY,
    POWERS,
    AutoSelect,
    held_out_folds,
    select_method,
)
from labeling.aggregation.simulation import simulate_votes, worker_confusion


def crowd(seed=0, n_items=300, votes_per_item=5, k=3):
    """Four good workers, three adversarial ones (mostly the next class) and a spammer: a
    majority is often wrong, a confusion-aware model reads the adversaries right."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, k, size=n_items)
    conf = np.stack(
        [worker_confusion("accurate", k, 0.8)] * 4
        + [worker_confusion("adversarial", k, 0.1)] * 3
        + [worker_confusion("spammer", k)]
    )
    items, workers, labels = simulate_votes(truth, conf, votes_per_item, rng)
    return VoteMatrix.from_codes(items, workers, labels, n_classes=k), truth


def accuracy(model, truth):
    return float((model.posteriors_.argmax(axis=1) == truth).mean())


def test_held_out_folds_keep_each_hidden_votes_task_and_worker_in_the_fit():
    votes, _ = crowd(n_items=120)
    # plus a task with one vote and a worker with one vote: neither may be hidden
    votes = VoteMatrix.from_codes(
        np.r_[votes.task_idx, 120, 121, 121],
        np.r_[votes.worker_idx, 0, 8, 1],
        np.r_[votes.label_idx, 0, 1, 1],
        n_classes=3,
    )
    folds = held_out_folds(votes, n_folds=5, random_state=1)
    assert folds[-3] == -1  # the task with a single vote
    assert folds[-2] == -1  # worker 8's only vote
    hidden = folds >= 0
    assert hidden.mean() > 0.9
    sizes = np.bincount(folds[hidden], minlength=5)
    assert sizes.min() > 0.15 * hidden.sum() and sizes.max() < 0.25 * hidden.sum()
    for f in range(5):
        shown = folds != f
        for t in np.unique(votes.task_idx[folds == f]):
            assert shown[votes.task_idx == t].any()
        for w in np.unique(votes.worker_idx[folds == f]):
            assert shown[votes.worker_idx == w].any()


def test_held_out_votes_pick_dawid_skene_where_majority_vote_is_fooled():
    votes, truth = crowd()
    chosen = select_method(
        votes, {"majority_vote": MajorityVote, "dawid_skene": DawidSkene}, n_folds=5
    )
    assert chosen.criterion == "held_out_votes"
    assert chosen.method == "dawid_skene"
    mv, ds = chosen.scores["majority_vote"], chosen.scores["dawid_skene"]
    assert ds.log_likelihood > mv.log_likelihood
    assert ds.n_scored == mv.n_scored == chosen.details["n_hidden"] > 0.9 * votes.n_votes
    # the truth agrees with the choice, and the returned model is that method fitted on all votes
    assert accuracy(chosen.model, truth) > accuracy(MajorityVote().fit(votes), truth) + 0.2
    np.testing.assert_allclose(chosen.model.posteriors_, DawidSkene().fit(votes).posteriors_)
    assert "dawid_skene" in chosen.reason and "held-out votes" in chosen.reason
    record = chosen.as_dict()
    assert record["chosen"] == "dawid_skene"
    assert set(record["scores"]) == {"majority_vote", "dawid_skene"}
    # each method's calibration (power) and vote-share weight are chosen on its hidden votes
    assert record["scores"]["dawid_skene"]["power"] in POWERS
    assert record["scores"]["majority_vote"]["ambiguity"] in AMBIGUITY


def test_gold_answers_decide_once_there_are_enough_and_are_never_scored_while_clamped():
    votes, truth = crowd(seed=3)
    gold = np.full(votes.n_tasks, -1)
    gold[:40] = truth[:40]
    candidates = {"majority_vote": MajorityVote, "dawid_skene": DawidSkene}
    chosen = select_method(votes, candidates, gold=gold)
    assert chosen.criterion == "gold"
    assert chosen.method == "dawid_skene"
    # every gold item scored once, by a fit that did not see its answer (MV cannot be perfect)
    assert chosen.scores["majority_vote"].n_scored == 40
    assert chosen.scores["majority_vote"].accuracy < 0.9
    # the final fit clamps all the gold
    assert (chosen.model.posteriors_[:40].argmax(axis=1) == truth[:40]).all()
    # too few gold items: back to held-out votes
    gold[20:] = -1
    assert select_method(votes, candidates, gold=gold).criterion == "held_out_votes"


def test_expert_hold_out_decides_before_gold_and_ignores_gold_items():
    votes, truth = crowd(seed=4)
    expert = np.full(votes.n_tasks, -1)
    expert[100:140] = truth[100:140]
    gold = np.full(votes.n_tasks, -1)
    gold[:40] = truth[:40]
    candidates = {"majority_vote": MajorityVote, "dawid_skene": DawidSkene}
    chosen = select_method(votes, candidates, gold=gold, expert=expert)
    assert chosen.criterion == "expert"
    assert chosen.scores["dawid_skene"].n_scored == 40
    assert chosen.method == "dawid_skene"
    # expert labels on gold items tell nothing new: 40 of them leave 20 usable, too few
    expert[:] = -1
    expert[:40] = truth[:40]
    expert[100:120] = truth[100:120]
    assert select_method(votes, candidates, gold=gold, expert=expert).criterion == "gold"


def test_a_failing_candidate_is_reported_and_left_out():
    class Broken(MajorityVote):
        def _fit_votes(self, votes, known):
            raise RuntimeError("diverged")

    votes, _ = crowd(n_items=100)
    chosen = select_method(votes, {"broken": Broken, "majority_vote": MajorityVote})
    assert chosen.method == "majority_vote"
    assert "diverged" in chosen.scores["broken"].error
    with pytest.raises(RuntimeError, match="diverged"):
        select_method(votes, {"broken": Broken})


def test_too_few_votes_to_compare_falls_back_to_majority_vote():
    votes = VoteMatrix.from_codes([0, 0, 1, 1, 2], [0, 1, 0, 1, 2], [0, 0, 1, 0, 1], n_classes=2)
    chosen = select_method(votes, {"dawid_skene": DawidSkene, "majority_vote": MajorityVote})
    assert (chosen.method, chosen.criterion, chosen.scores) == ("majority_vote", "too_few_votes", {})
    assert "fewer than 50" in chosen.reason


def test_auto_is_a_method_that_takes_on_the_chosen_fit():
    votes, truth = crowd(seed=5)
    model = METHODS["auto"](candidates=["majority_vote", "dawid_skene", "one_coin"]).fit(votes)
    assert isinstance(model, AutoSelect)
    assert model.chosen_ == model.selection_.method in ("dawid_skene", "one_coin")
    np.testing.assert_array_equal(model.posteriors_, model.selection_.model.posteriors_)
    assert model.labels_.equals(model.selection_.model.labels_)
    assert model.confusions_.shape == (8, 3, 3)
    assert accuracy(model, truth) > 0.8
    with pytest.raises(ValueError, match="cannot choose"):
        AutoSelect(candidates=["auto"]).fit(votes)
    with pytest.raises(ValueError, match="n_folds"):
        select_method(votes, {"majority_vote": MajorityVote}, n_folds=1)
