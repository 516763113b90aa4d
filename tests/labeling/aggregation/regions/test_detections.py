"""Point and box consensus: matching with known answers, EM recovery, fusion, baselines."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from labeling.aggregation.regions.agreement import detection_f1
from labeling.aggregation.regions.detections import (
    BoxConsensus,
    BoxMajorityVote,
    PointConsensus,
    PointMajorityVote,
    median_centres,
)
from labeling.aggregation.regions.matching import match_marks
from labeling.aggregation.regions.simulation import make_annotators, simulate_boxes, simulate_points


def test_point_matching_known_answer():
    a = np.array([[0.0, 0.0], [10.0, 0.0]])
    # b's first point is nearer a[1] than a[0] but within reach of both: the assignment
    # maximises matches, so b[1] (only near a[0]) takes a[0]
    b = np.array([[6.0, 0.0], [1.0, 1.0], [50.0, 50.0]])
    c = np.zeros((0, 2))
    ids, n = match_marks([a, b, c], "points", threshold=7.0)
    assert n == 3
    np.testing.assert_array_equal(ids[0], [0, 1])
    np.testing.assert_array_equal(ids[1], [1, 0, 2])
    assert len(ids[2]) == 0


def test_box_matching_one_mark_per_annotator_and_iou_gate():
    a = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], dtype=float)
    b = np.array([[1, 1, 11, 11], [0, 0, 9, 9], [21, 20, 31, 30]], dtype=float)
    ids, n = match_marks([a, b], "boxes", threshold=0.5)
    np.testing.assert_array_equal(ids[0], [0, 1])
    # two of b's boxes overlap a[0] (IoU .68 and .81): only the better one joins it
    np.testing.assert_array_equal(ids[1], [2, 0, 1])
    assert n == 3


def three_objects_frame(kind):
    truth = np.array([[20.0, 20.0], [60.0, 30.0], [40.0, 70.0]])
    rows = []
    for task in range(4):
        for worker in range(3):
            pts = truth + (worker - 1) * 0.5  # everyone within a pixel
            if worker == 2 and task % 2 == 0:
                pts = pts[:2]  # worker 2 misses the third object on half the images
            rows.append((task, worker, pts))
        rows.append((task, 3, np.array([[90.0, 5.0 + task]])))  # a spammer's lone false mark
    frame = pd.DataFrame(rows, columns=["task", "worker", "points"])
    if kind == "boxes":
        frame["boxes"] = [np.concatenate([p - 5, p + 5], axis=1) for p in frame.pop("points")]
    return truth, frame


@pytest.mark.parametrize("kind", ["points", "boxes"])
def test_consensus_known_answer(kind):
    truth, frame = three_objects_frame(kind)
    model = (PointConsensus(radius=5) if kind == "points" else BoxConsensus(iou=0.5)).fit(frame)
    for task in range(4):
        got = model.consensus_[task]
        assert len(got) == 3
        centre = got if kind == "points" else (got[:, :2] + got[:, 2:]) / 2
        assert np.abs(np.sort(centre, axis=0) - np.sort(truth, axis=0)).max() < 1.0
    # the spammer's marks are candidates with low confidence, not consensus
    assert (model.clusters_["kept"] == (model.clusters_["n_marks"] >= 2)).all()
    assert model.precision_[3] < 0.2 and model.precision_[0] > 0.95
    assert model.sensitivity_[2] < model.sensitivity_[0]
    assert model.sensitivity_[3] < 0.2
    assert model.uncertainty_.notna().all()


def test_point_consensus_recovers_simulated_crowd():
    rng = np.random.default_rng(0)
    truth = [rng.uniform(10, 190, size=(rng.integers(5, 15), 2)) for _ in range(40)]
    # keep true objects apart so the radius separates them
    truth = [
        t[
            np.all(
                (np.hypot(*(t[:, None] - t[None]).transpose(2, 0, 1)) + 100 * np.eye(len(t))) > 15,
                axis=1,
            )
        ]
        for t in truth
    ]
    annotators = make_annotators("expert:2,good:2,careless:1,spammer:1", seed=1)
    frame = simulate_points(truth, annotators, per_item=5, image_size=(200, 200), seed=2)
    ours = PointConsensus(radius=6).fit(frame)
    mv = PointMajorityVote(radius=6).fit(frame)
    f_ours = np.mean(
        [detection_f1(ours.consensus_[i], truth[i], "points", 4.0)[0] for i in range(40)]
    )
    f_mv = np.mean([detection_f1(mv.consensus_[i], truth[i], "points", 4.0)[0] for i in range(40)])
    assert f_ours > 0.95 and f_ours >= f_mv
    assert ours.sensitivity_.idxmin() == 5 and ours.precision_.idxmin() == 5
    # experts localise better than the careless annotator
    assert ours.localization_error_[0] < ours.localization_error_[4]


def test_box_fusion_weights_precise_annotators():
    truth = [np.array([[50.0, 50.0, 90.0, 80.0]])] * 30
    # everyone finds the one cell and marks nothing else; two annotators' corners wander 6 px
    annotators = [
        replace(
            a, sensitivity=1.0, false_rate=0.0, jitter=6.0 if a.archetype == "careless" else 1.0
        )
        for a in make_annotators("expert:3,careless:2", seed=3)
    ]
    frame = simulate_boxes(truth, annotators, per_item=5, image_size=(200, 200), seed=4)
    ours = BoxConsensus().fit(frame)
    base = BoxMajorityVote().fit(frame)
    err_ours = np.mean([np.abs(ours.consensus_[i] - truth[i]).mean() for i in range(30)])
    err_base = np.mean([np.abs(base.consensus_[i] - truth[i]).mean() for i in range(30)])
    assert err_ours < err_base
    assert ours.localization_error_[[3, 4]].min() > 2 * ours.localization_error_[[0, 1, 2]].max()


def test_median_centres_and_majority_vote_quorum():
    coords = np.array([[1.0], [5.0], [3.0], [10.0], [20.0]])
    np.testing.assert_allclose(
        median_centres(coords, np.array([0, 0, 0, 1, 1]), 3)[:, 0], [3.0, 15.0, 0.0]
    )
    frame = pd.DataFrame(
        {
            "task": 0,
            "worker": [0, 1, 2],
            "points": [
                np.array([[0.0, 0.0], [50, 50]]),
                np.array([[1.0, 1.0]]),
                np.array([[2.0, 0.0]]),
            ],
        }
    )
    mv = PointMajorityVote(radius=5, quorum=0.5).fit(frame)
    np.testing.assert_allclose(mv.consensus_[0], [[1.0, 0.0]])
    np.testing.assert_allclose(mv.scores_[0], [1.0])


def test_bad_detection_input_is_refused():
    with pytest.raises(ValueError, match="more than one row"):
        PointConsensus().fit(
            pd.DataFrame({"task": [0, 0], "worker": [1, 1], "points": [[[0, 0]], [[1, 1]]]})
        )
    with pytest.raises(ValueError, match=r"\[n, 2\]"):
        PointConsensus().fit(pd.DataFrame({"task": [0], "worker": [1], "points": [[[0, 0, 1]]]}))
    with pytest.raises(ValueError, match="x0 <= x1"):
        BoxConsensus().fit(pd.DataFrame({"task": [0], "worker": [1], "boxes": [[[5, 0, 1, 1]]]}))
    with pytest.raises(ValueError, match="lacks column"):
        BoxConsensus().fit(pd.DataFrame({"task": [0], "worker": [1], "points": [[[0, 0]]]}))
    with pytest.raises(ValueError, match="radius"):
        PointConsensus(radius=0).fit(
            pd.DataFrame({"task": [0], "worker": [1], "points": [[[0, 0]]]})
        )


def test_box_bias_of_loose_and_tight_annotators_is_found_and_removed():
    truth = [np.array([[40.0, 40.0, 100.0, 90.0], [120.0, 20.0, 170.0, 80.0]])] * 40
    annotators = [
        replace(a, sensitivity=1.0, false_rate=0.0)
        for a in make_annotators("expert:2,good:1,loose:1,tight:1", seed=5)
    ]
    # 3 of 5 per image: a loose annotator is often there without a tight one to cancel them
    frame = simulate_boxes(truth, annotators, per_item=3, image_size=(200, 120), seed=6)
    debiased = BoxConsensus().fit(frame)
    plain = BoxConsensus(debias=False).fit(frame)
    # loose boxes (worker 3) spill outwards: x0, y0 below the crowd's, x1, y1 above; tight the reverse
    assert (debiased.bias_.loc[3, ["x0", "y0"]] < -2).all() and (
        debiased.bias_.loc[3, ["x1", "y1"]] > 2
    ).all()
    assert (debiased.bias_.loc[4, ["x0", "y0"]] > 1).all() and (
        debiased.bias_.loc[4, ["x1", "y1"]] < -1
    ).all()
    assert plain.bias_.abs().to_numpy().max() == 0

    def error(model):
        return np.mean(
            [
                np.abs(np.sort(model.consensus_[i], axis=0) - np.sort(truth[i], axis=0)).mean()
                for i in range(40)
            ]
        )

    assert error(debiased) < error(plain)


@pytest.mark.parametrize("kind", ["points", "boxes"])
def test_known_objects_are_clamped_and_measure_the_annotators(kind):
    truth, frame = three_objects_frame(kind)
    model_cls = PointConsensus if kind == "points" else BoxConsensus
    known_marks = truth if kind == "points" else np.concatenate([truth - 5, truth + 5], axis=1)
    # task 0's expert marks a fourth object that the crowd missed entirely
    extra = [[80.0, 80.0]] if kind == "points" else [[75.0, 75.0, 85.0, 85.0]]
    known = {0: np.concatenate([known_marks, extra]), 1: known_marks}
    model = model_cls().fit(frame, known=known)
    np.testing.assert_allclose(np.sort(model.consensus_[0], axis=0), np.sort(known[0], axis=0))
    np.testing.assert_allclose(np.sort(model.consensus_[1], axis=0), np.sort(known_marks, axis=0))
    assert model.uncertainty_[0] == 0.0 and model.uncertainty_[1] == 0.0
    # the missed object counts against every annotator of task 0; the known one is no worker
    plain = model_cls().fit(frame)
    assert (model.sensitivity_ < plain.sensitivity_ + 1e-9).all()
    assert list(model.sensitivity_.index) == [0, 1, 2, 3]
    assert "__known__" not in set(model.marks_["worker"])
    row = model.clusters_[(model.clusters_["task"] == 0) & (model.clusters_["n_marks"] == 0)]
    assert len(row) == 1 and row["confidence"].iloc[0] == 1.0 and row["n_annotators"].iloc[0] == 4
    with pytest.raises(ValueError, match="nobody annotated"):
        model_cls().fit(frame, known={42: known_marks})
