"""Coding votes, the shared estimator interface and input validation."""

import numpy as np
import pandas as pd
import pytest

from labeling.aggregation import METHODS, DawidSkene, MajorityVote, VoteMatrix, code_votes


@pytest.fixture
def frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "task": ["t1", "t1", "t1", "t2", "t2", "t3"],
            "worker": ["ann", "bob", "cy", "ann", "bob", "cy"],
            "label": ["cat", "cat", "dog", "dog", "dog", "cat"],
        }
    )


def test_code_votes_sorted_lookups(frame):
    votes = code_votes(frame)
    assert list(votes.tasks) == ["t1", "t2", "t3"]
    assert list(votes.workers) == ["ann", "bob", "cy"]
    assert list(votes.classes) == ["cat", "dog"]
    assert votes.task_idx.dtype == np.int64
    pd.testing.assert_frame_equal(votes.to_frame(), frame)


def test_fixed_classes_keep_unused_class(frame):
    votes = code_votes(frame, classes=["dog", "cat", "bird"])
    assert list(votes.classes) == ["dog", "cat", "bird"]
    assert votes.vote_counts()[:, 2].sum() == 0


def test_label_outside_classes_is_rejected(frame):
    with pytest.raises(ValueError, match="not among classes"):
        code_votes(frame, classes=["cat"])


@pytest.mark.parametrize(
    "bad",
    [
        pd.DataFrame({"task": [1], "worker": [1]}),
        pd.DataFrame({"task": [1], "worker": [None], "label": ["a"]}),
    ],
)
def test_bad_frames_are_rejected(bad):
    with pytest.raises(ValueError):
        MajorityVote().fit(bad)


def test_bad_input_type_and_duplicate_classes(frame):
    with pytest.raises(ValueError, match="DataFrame or a VoteMatrix"):
        MajorityVote().fit([("t", "w", "l")])
    with pytest.raises(ValueError, match="distinct"):
        MajorityVote().fit(frame, classes=["cat", "cat"])


def test_from_codes_validates_ranges():
    with pytest.raises(ValueError, match="outside"):
        VoteMatrix.from_codes([0, 1], [0, 0], [0, 3], n_classes=2)
    votes = VoteMatrix.from_codes([0, 1], [0, 0], [0, 1], n_tasks=4, n_classes=3)
    assert (votes.n_tasks, votes.n_workers, votes.n_classes) == (4, 1, 3)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_exposes_crowdkit_state(name, frame):
    model = METHODS[name]().fit(frame, classes=["cat", "dog", "bird"], known_labels={"t3": "cat"})
    assert list(model.probas_.columns) == ["cat", "dog", "bird"]
    assert list(model.probas_.index) == ["t1", "t2", "t3"]
    np.testing.assert_allclose(model.posteriors_.sum(axis=1), 1.0)
    assert model.labels_.loc["t3"] == "cat"
    np.testing.assert_array_equal(model.posteriors_[2], [1.0, 0.0, 0.0])
    assert model.confusions_.shape == (3, 3, 3)
    np.testing.assert_allclose(model.confusions_.sum(axis=2), 1.0, atol=1e-9)
    # crowd-kit layout: errors_.loc[(worker, observed), true] == confusions_[w, true, observed]
    assert model.errors_.loc[("bob", "dog"), "cat"] == pytest.approx(model.confusions_[1, 0, 1])
    assert model.worker_accuracy_.shape == (3,)
    assert model.fit_predict(frame).index.name == "task"
    assert model.fit_predict_proba(frame).shape == (3, 2)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_predict_on_new_votes_and_new_workers(name, frame):
    model = METHODS[name]().fit(frame)
    new = pd.DataFrame(
        {"task": ["n1", "n1", "n1"], "worker": ["ann", "bob", "zed"], "label": ["dog"] * 3}
    )
    proba = model.predict_proba(new)
    assert proba.shape == (1, 2)
    assert model.predict(new).loc["n1"] == "dog"


def test_predict_before_fit_is_an_error(frame):
    with pytest.raises(ValueError, match="not fitted"):
        DawidSkene().predict(frame)


def test_known_labels_validation(frame):
    with pytest.raises(ValueError, match="not among classes"):
        DawidSkene().fit(frame, known_labels={"t1": "horse"})
    # a known answer for a task without votes is ignored, and array codes work
    model = DawidSkene().fit(frame, known_labels={"elsewhere": "cat"})
    assert len(model.labels_) == 3
    model = DawidSkene().fit(code_votes(frame), known_labels=np.array([-1, 0, -1]))
    assert model.labels_.loc["t2"] == "cat"


@pytest.mark.parametrize(
    "ids",
    [
        np.array([5, -3, 5, 9, -3, 0], dtype=np.int64),
        np.array([7, 7, 2], dtype=np.uint64),
        np.array([3, 1, 2, 1], dtype=np.int32),
        np.array([10**15, 4, 10**15]),  # sparse ids: the hash-table path
    ],
)
def test_integer_ids_code_like_sorted_factorize(ids):
    frame = pd.DataFrame({"task": ids, "worker": ids[::-1].copy(), "label": ids % 2})
    votes = code_votes(frame)
    for codes, lookup, column in (
        (votes.task_idx, votes.tasks, "task"),
        (votes.worker_idx, votes.workers, "worker"),
        (votes.label_idx, votes.classes, "label"),
    ):
        expected_codes, expected_lookup = pd.factorize(frame[column], sort=True)
        np.testing.assert_array_equal(codes, expected_codes)
        np.testing.assert_array_equal(lookup, np.asarray(expected_lookup))
        assert lookup.dtype == np.asarray(expected_lookup).dtype
    pd.testing.assert_frame_equal(votes.to_frame(), frame)
