"""Dawid-Skene: recovery on simulated crowds, edge cases, numba == NumPy, crowd-kit parity."""

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from labeling.aggregation import DawidSkene, MajorityVote, VoteMatrix, code_votes
from labeling.aggregation.dawid_skene import numba_available, warm_up

from .crowds import accuracy, hard_crowd

DATA_DIR = Path(
    os.environ.get(
        "QUORUM_DATA_DIR", Path(__file__).resolve().parents[3] / ".." / "shared" / "data"
    )
)


def test_recovers_truth_and_confusions():
    crowd = hard_crowd()
    model = DawidSkene().fit(crowd.votes)
    assert accuracy(model.posteriors_, crowd.true_labels) > 0.97
    # every worker's full confusion matrix within 0.1 (about 300 votes each)
    assert np.abs(model.confusions_ - crowd.confusions).max() < 0.1
    np.testing.assert_allclose(
        model.priors_, np.bincount(crowd.true_labels) / len(crowd.true_labels), atol=0.03
    )
    assert model.n_iter_ < 100


def test_beats_majority_vote_with_spammers_and_adversaries():
    crowd = hard_crowd()
    mv = accuracy(MajorityVote().fit(crowd.votes).posteriors_, crowd.true_labels)
    ds = accuracy(DawidSkene().fit(crowd.votes).posteriors_, crowd.true_labels)
    assert ds > mv + 0.08


@pytest.mark.skipif(not numba_available(), reason="numba missing")
def test_numba_kernel_equals_plain_numpy_em():
    assert warm_up() >= 0.0
    crowd = hard_crowd()
    known = np.where(np.arange(len(crowd.true_labels)) % 7 == 0, crowd.true_labels, -1)
    fast = DawidSkene(n_iter=15, tol=-1, smoothing=0.1, backend="numba").fit(
        crowd.votes, known_labels=known
    )
    slow = DawidSkene(n_iter=15, tol=-1, smoothing=0.1, backend="numpy").fit(
        crowd.votes, known_labels=known
    )
    np.testing.assert_allclose(fast.posteriors_, slow.posteriors_, atol=1e-10)
    np.testing.assert_allclose(fast.confusions_, slow.confusions_, atol=1e-10)
    np.testing.assert_allclose(fast.loglik_history_, slow.loglik_history_, rtol=1e-10)
    # the kernel's entropy (log total - sum T s) against crowd-kit's formula in NumPy
    np.testing.assert_allclose(fast.loss_history_, slow.loss_history_, rtol=1e-10)


@pytest.mark.skipif(not numba_available(), reason="numba missing")
def test_exp_kernel_is_exact_to_rounding():
    from labeling.aggregation.dawid_skene import _EXP_FLOOR, _exp_inplace

    x = np.concatenate([np.linspace(-690.0, 0.0, 100_001), [0.0, -1e-300, -0.5, -745.0]])
    got = x.copy()
    _exp_inplace(got, np.empty(len(x), dtype=np.int64))
    inside = x >= _EXP_FLOOR
    np.testing.assert_allclose(got[inside], np.exp(x[inside]), rtol=5e-16, atol=0)
    assert got[-4] == 1.0 and got[-3] == 1.0
    assert got[-1] == np.exp(_EXP_FLOOR)  # floored: zero for any posterior purpose


@pytest.fixture
def three_chunks(monkeypatch):
    """Split every fit into three chunks of tasks, whatever the size and core count."""
    from labeling.aggregation import dawid_skene

    def bounds(indptr, n_cells):
        n_tasks = len(indptr) - 1
        return np.array([0, n_tasks // 3, 2 * n_tasks // 3, n_tasks], dtype=np.int64)

    monkeypatch.setattr(dawid_skene, "_chunk_bounds", bounds)


@pytest.mark.skipif(not numba_available(), reason="numba missing")
@pytest.mark.parametrize("init", ["majority_vote", "random", "gold"])
def test_chunked_kernel_equals_plain_numpy_em(three_chunks, init):
    crowd = hard_crowd()
    known = np.where(np.arange(len(crowd.true_labels)) % 5 == 0, crowd.true_labels, -1)
    fits = [
        DawidSkene(n_iter=12, tol=-1, init=init, backend=backend).fit(
            crowd.votes, known_labels=known
        )
        for backend in ("numba", "numpy")
    ]
    np.testing.assert_allclose(fits[0].posteriors_, fits[1].posteriors_, atol=1e-10)
    np.testing.assert_allclose(fits[0].confusions_, fits[1].confusions_, atol=1e-10)
    np.testing.assert_allclose(fits[0].loglik_history_, fits[1].loglik_history_, rtol=1e-10)
    np.testing.assert_allclose(fits[0].loss_history_, fits[1].loss_history_, rtol=1e-10)


def _fit_in_child(queue) -> None:
    queue.put(DawidSkene(n_iter=5, tol=-1).fit(hard_crowd().votes).posteriors_)


@pytest.mark.skipif(not numba_available(), reason="numba missing")
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_fit_in_a_child_forked_after_a_fit(three_chunks):
    import multiprocessing

    parent = DawidSkene(n_iter=5, tol=-1).fit(hard_crowd().votes).posteriors_  # starts the pool
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_fit_in_child, args=(queue,))
    child.start()
    child.join(timeout=60)
    if child.is_alive():
        child.kill()
        pytest.fail("the forked child hung on the thread pool it inherited")
    assert child.exitcode == 0
    np.testing.assert_allclose(queue.get(timeout=5), parent, atol=1e-12)


def test_log_likelihood_never_decreases():
    history = np.array(DawidSkene(n_iter=30, tol=-1).fit(hard_crowd().votes).loglik_history_)
    assert (np.diff(history) > -1e-9).all()


def test_clamped_known_labels_stay_one_hot_and_inform_confusions():
    crowd = hard_crowd()
    truth = crowd.true_labels
    known = np.where(np.arange(len(truth)) < 150, truth, -1)
    model = DawidSkene().fit(crowd.votes, known_labels=known)
    np.testing.assert_array_equal(model.posteriors_[:150].argmax(axis=1), truth[:150])
    assert set(np.unique(model.posteriors_[:150])) <= {0.0, 1.0}
    # a crowd where most workers are adversarial: without gold EM is fooled, with gold it is not
    from labeling.aggregation.simulation import simulate_crowd

    flipped = simulate_crowd(300, 2, "adversarial:4,accurate:2", votes_per_item=6, seed=5)
    blind = accuracy(DawidSkene().fit(flipped.votes).posteriors_, flipped.true_labels)
    gold = np.where(np.arange(300) < 30, flipped.true_labels, -1)
    anchored = accuracy(
        DawidSkene().fit(flipped.votes, known_labels=gold).posteriors_, flipped.true_labels
    )
    assert blind < 0.5 < 0.95 < anchored


def test_edge_cases_single_votes_unused_class_unanimity_strings():
    frame = pd.DataFrame(
        {
            "task": ["a", "a", "a", "b", "b", "b", "c", "d", "d", "d"],
            "worker": ["w1", "w2", "w3", "w1", "w2", "w3", "w1", "w1", "w2", "once"],
            "label": [
                "benign",
                "benign",
                "benign",
                "malignant",
                "malignant",
                "malignant",
                "benign",
                "malignant",
                "malignant",
                "malignant",
            ],
        }
    )
    classes = ["benign", "malignant", "unclear"]
    model = DawidSkene(smoothing=0.5).fit(frame, classes=classes)
    assert list(model.labels_) == ["benign", "malignant", "benign", "malignant"]
    assert model.probas_["unclear"].max() < 0.2  # a class nobody used keeps a column
    assert np.isfinite(model.posteriors_).all() and np.isfinite(model.confusions_).all()
    # item 'c' has one vote, worker 'once' one vote: both still handled
    assert model.probas_.loc["c", "benign"] > 0.5
    unanimous = pd.DataFrame(
        {"task": [1, 1, 2, 2], "worker": ["x", "y", "x", "y"], "label": ["k"] * 4}
    )
    plain = DawidSkene().fit(unanimous, classes=["k", "j"])
    np.testing.assert_allclose(plain.posteriors_[:, 0], 1.0)


def test_random_init_is_seeded():
    votes = hard_crowd().votes
    a = DawidSkene(init="random", random_state=3, n_iter=5, tol=-1).fit(votes).posteriors_
    b = DawidSkene(init="random", random_state=3, n_iter=5, tol=-1).fit(votes).posteriors_
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(n_iter=-1),
        dict(smoothing=-0.1),
        dict(init="spectral"),
        dict(backend="gpu"),
        dict(stop="elbo"),
    ],
)
def test_bad_hyperparameters(kwargs):
    with pytest.raises(ValueError):
        DawidSkene(**kwargs).fit(hard_crowd().votes)


def _crowdkit_probas(frame: pd.DataFrame, n_iter: int) -> pd.DataFrame:
    crowdkit = pytest.importorskip("crowdkit.aggregation")
    # a negative tol makes both run exactly n_iter iterations (crowd-kit stops when its ELBO gain < tol)
    return crowdkit.DawidSkene(n_iter=n_iter, tol=-1.0).fit(frame).probas_


def test_matches_crowdkit_on_a_simulated_crowd():
    crowd = hard_crowd()
    frame = crowd.votes.to_frame().astype(str).head(1000)
    ours = DawidSkene(n_iter=10, tol=-1.0, smoothing=0.0).fit(frame)
    theirs = _crowdkit_probas(frame, 10).reindex(
        index=ours.probas_.index, columns=ours.probas_.columns
    )
    np.testing.assert_allclose(ours.probas_.to_numpy(), theirs.to_numpy(), atol=1e-4)
    assert (ours.labels_ == theirs.idxmax(axis=1)).all()


def test_matches_crowdkit_on_face_sentiment():
    path = DATA_DIR / "crowd" / "face_sentiment" / "answer.csv"
    if not path.exists():
        pytest.skip(f"{path} missing")
    frame = pd.read_csv(path, keep_default_na=False, dtype=str)
    ours = DawidSkene(n_iter=10, tol=-1.0, smoothing=0.0).fit(frame)
    theirs = _crowdkit_probas(frame, 10).reindex(
        index=ours.probas_.index, columns=ours.probas_.columns
    )
    np.testing.assert_allclose(ours.probas_.to_numpy(), theirs.to_numpy(), atol=1e-4)


def test_stop_rules():
    votes = hard_crowd().votes
    full = DawidSkene(n_iter=40, tol=-np.inf).fit(votes)
    assert full.n_iter_ == len(full.loss_history_) == len(full.loglik_history_) == 40
    # each rule stops at the first iteration whose own criterion gains less than tol
    for stop, history in (("crowdkit", full.loss_history_), ("loglik", full.loglik_history_)):
        gains = np.diff(history)
        expected = int(np.argmax(gains < 1e-4)) + 2 if (gains < 1e-4).any() else 40
        model = DawidSkene(n_iter=40, tol=1e-4, stop=stop).fit(votes)
        assert model.n_iter_ == expected
        np.testing.assert_allclose(
            model.posteriors_,
            DawidSkene(n_iter=expected, tol=-np.inf).fit(votes).posteriors_,
            atol=1e-12,
        )


@pytest.mark.parametrize(
    "seed, mix",
    [
        (0, "accurate:4,noisy:3,class_biased:2,spammer:3,adversarial:2"),  # its criterion falls
        (3, "accurate:4,noisy:3,class_biased:2,spammer:3,adversarial:2"),
        (1, "accurate:2,noisy:3,spammer:3"),
    ],
)
@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_stops_where_crowdkit_stops(seed, mix, backend):
    """crowd-kit's stopping criterion, computed from soft counts and the kernel's entropy,
    equals its ``loss_history_`` value by value, so both stop after the same iteration."""
    crowdkit = pytest.importorskip("crowdkit.aggregation")
    if backend == "numba" and not numba_available():
        pytest.skip("numba missing")
    from labeling.aggregation.simulation import simulate_crowd

    frame = simulate_crowd(200, 3, mix, votes_per_item=4, seed=seed).votes.to_frame().astype(str)
    theirs = crowdkit.DawidSkene().fit(frame)
    ours = DawidSkene(backend=backend).fit(frame)
    assert ours.n_iter_ == len(theirs.loss_history_)
    np.testing.assert_allclose(ours.loss_history_, theirs.loss_history_, rtol=0, atol=1e-9)
    theirs_probas = theirs.probas_.reindex(index=ours.probas_.index, columns=ours.probas_.columns)
    np.testing.assert_allclose(ours.probas_.to_numpy(), theirs_probas.to_numpy(), atol=1e-4)


def test_stops_where_crowdkit_stops_with_known_labels():
    """Clamped tasks enter crowd-kit's criterion as one-hot rows (entropy of the floored row)."""
    crowdkit = pytest.importorskip("crowdkit.aggregation")
    from labeling.aggregation.simulation import simulate_crowd

    crowd = simulate_crowd(200, 3, "accurate:2,noisy:3,spammer:3", votes_per_item=4, seed=2)
    frame = crowd.votes.to_frame().astype(str)
    gold = pd.Series(
        crowd.votes.classes[crowd.true_labels[:40]].astype(str),
        index=crowd.votes.tasks[:40].astype(str),
    )
    theirs = crowdkit.DawidSkene().fit(frame, true_labels=gold)
    ours = DawidSkene(init="majority_vote").fit(frame, known_labels=gold)
    assert ours.n_iter_ == len(theirs.loss_history_)
    np.testing.assert_allclose(ours.loss_history_, theirs.loss_history_, rtol=0, atol=1e-9)


def test_array_entry_point_equals_frame_entry_point():
    crowd = hard_crowd()
    frame = crowd.votes.to_frame()
    by_frame = DawidSkene().fit(frame)
    by_codes = DawidSkene().fit(
        VoteMatrix.from_codes(crowd.votes.task_idx, crowd.votes.worker_idx, crowd.votes.label_idx)
    )
    np.testing.assert_allclose(by_frame.posteriors_, by_codes.posteriors_)
    assert code_votes(frame).n_votes == crowd.votes.n_votes
