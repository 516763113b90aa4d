"""Majority vote and weighted majority vote."""

import numpy as np
import pandas as pd
import pytest

from labeling.aggregation import MajorityVote, WeightedMajorityVote

from .crowds import accuracy, hard_crowd


def test_shares_and_labels():
    frame = pd.DataFrame(
        {
            "task": [1, 1, 1, 2, 2],
            "worker": ["a", "b", "c", "a", "b"],
            "label": ["x", "y", "y", "x", "x"],
        }
    )
    model = MajorityVote().fit(frame)
    np.testing.assert_allclose(model.posteriors_, [[1 / 3, 2 / 3], [1.0, 0.0]])
    assert list(model.labels_) == ["y", "x"]
    assert model.n_iter_ == 0


def test_ties_go_to_the_first_listed_class_and_stay_visible():
    frame = pd.DataFrame({"task": [1, 1], "worker": ["a", "b"], "label": ["pos", "neg"]})
    first = MajorityVote(tie_break="first")
    assert first.fit(frame, classes=["pos", "neg"]).labels_.iloc[0] == "pos"
    model = first.fit(frame, classes=["neg", "pos"])
    assert model.labels_.iloc[0] == "neg"
    np.testing.assert_allclose(model.posteriors_, [[0.5, 0.5]])


def _reliable_and_contrary_workers() -> pd.DataFrame:
    """Workers a and c agree on 40 tasks, b contradicts them; on 10 more only a and b vote."""
    rows = []
    for t in range(40):
        right, wrong = ("x", "y") if t % 2 else ("y", "x")
        rows += [(t, "a", right), (t, "c", right), (t, "b", wrong)]
    for t in range(40, 50):
        rows += [(t, "a", "y"), (t, "b", "x")]
    return pd.DataFrame(rows, columns=["task", "worker", "label"])


@pytest.mark.parametrize("method", [MajorityVote, WeightedMajorityVote])
def test_ties_go_to_the_class_dawid_skene_prefers(method):
    frame = _reliable_and_contrary_workers()
    model = method().fit(frame)
    tied = model.labels_.loc[40:]
    assert (tied == "y").all()  # worker a's answer: a agrees with c, b never does
    np.testing.assert_allclose(model.posteriors_[40:], 0.5)
    assert (method(tie_break="first").fit(frame).labels_.loc[40:] == "x").all()
    assert (model.predict(frame[frame.task >= 40]) == "y").all()
    with pytest.raises(ValueError, match="tie_break"):
        method(tie_break="coin").fit(frame)


def test_weights_from_mapping_array_and_gold():
    frame = pd.DataFrame(
        {
            "task": ["g", "g", "g", "t", "t", "t"],
            "worker": ["good", "bad1", "bad2"] * 2,
            "label": ["a", "b", "b", "a", "b", "b"],
        }
    )
    assert MajorityVote().fit(frame).labels_.loc["t"] == "b"
    mapped = WeightedMajorityVote().fit(frame, weights={"good": 3.0, "bad1": 1.0, "bad2": 1.0})
    assert mapped.labels_.loc["t"] == "a"
    arrayed = WeightedMajorityVote().fit(
        frame, weights=np.array([0.1, 0.1, 5.0])
    )  # bad1, bad2, good
    assert arrayed.labels_.loc["t"] == "a"
    # gold: 'good' answered the known task right, the others wrong: (1+1)/(1+2) vs 1/3 each
    gold = WeightedMajorityVote().fit(frame, known_labels={"g": "a"})
    np.testing.assert_allclose(gold.weights_, [1 / 3, 1 / 3, 2 / 3])
    assert gold.labels_.loc["g"] == "a"
    np.testing.assert_allclose(gold.posteriors_[1], [0.5, 0.5])


def test_weight_validation():
    frame = pd.DataFrame({"task": [1], "worker": ["a"], "label": ["x"]})
    with pytest.raises(ValueError, match="no weight"):
        WeightedMajorityVote().fit(frame, weights={"b": 1.0})
    with pytest.raises(ValueError, match="non-negative"):
        WeightedMajorityVote().fit(frame, weights={"a": -1.0})
    with pytest.raises(ValueError, match="shape"):
        WeightedMajorityVote().fit(frame, weights=np.ones(3))


def test_gold_weighted_vote_beats_plain_vote_on_a_hard_crowd():
    crowd = hard_crowd()
    truth = crowd.true_labels
    gold = np.where(np.arange(len(truth)) % 5 == 0, truth, -1)  # 20% of items are gold
    plain = accuracy(MajorityVote().fit(crowd.votes).posteriors_, truth)
    weighted = accuracy(
        WeightedMajorityVote().fit(crowd.votes, known_labels=gold).posteriors_, truth
    )
    assert plain > 0.8
    assert weighted >= plain
