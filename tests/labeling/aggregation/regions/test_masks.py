"""Mask consensus: STAPLE against SimpleITK's filter, majority vote against crowd-kit, recovery."""

import numpy as np
import pandas as pd
import pytest

from labeling.aggregation.regions.geometry import dice
from labeling.aggregation.regions.masks import STAPLE, MaskMajorityVote, code_masks
from labeling.aggregation.regions.simulation import make_annotators, simulate_masks

sitk = pytest.importorskip("SimpleITK")


def disc(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def noisy_stack(seed, n_raters=4, shape=(48, 40)):
    rng = np.random.default_rng(seed)
    truth = disc(shape, 22, 19, 11)
    return truth, np.stack([truth ^ (rng.random(shape) < 0.04 * (r + 1)) for r in range(n_raters)])


def sitk_staple(stack, confidence_weight=1.0):
    f = sitk.STAPLEImageFilter()
    f.SetForegroundValue(1.0)
    f.SetConfidenceWeight(confidence_weight)
    out = f.Execute([sitk.GetImageFromArray(m.astype(np.uint8)) for m in stack])
    return sitk.GetArrayFromImage(out), f


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("confidence_weight", [1.0, 0.8])
def test_staple_matches_simpleitk(seed, confidence_weight):
    _, stack = noisy_stack(seed, n_raters=3 + seed)
    expected, f = sitk_staple(stack, confidence_weight)
    model = STAPLE(confidence_weight=confidence_weight).fit(stack)
    np.testing.assert_allclose(model.probas_.iloc[0], expected, atol=1e-9)
    np.testing.assert_allclose(model.sensitivity_.to_numpy(), f.GetSensitivity(), atol=1e-9)
    np.testing.assert_allclose(model.specificity_.to_numpy(), f.GetSpecificity(), atol=1e-9)
    # ITK counts iterations from 0 and stops on the same rule
    assert model.n_iter_ == f.GetElapsedIterations() + 1
    assert model.converged_


def test_staple_matches_simpleitk_on_radiologists_contours():
    from labeling.aggregation.regions.datasets import lidc_nodules

    try:
        nodules = lidc_nodules(limit=6)
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    assert len(nodules) == 6
    assert all(3 <= len(n.masks) <= 4 and n.masks.any(axis=(1, 2)).all() for n in nodules)
    # radiologists outlining one nodule mostly agree (a wrong polygon fill gave ~0.4)
    from labeling.aggregation.regions.agreement import mask_agreement

    frame = pd.DataFrame(
        [(k, r, m) for k, n in enumerate(nodules) for r, m in enumerate(n.masks)],
        columns=["task", "worker", "segmentation"],
    )
    assert mask_agreement(frame)[0].mean() > 0.7
    for nodule in nodules:
        expected, f = sitk_staple(nodule.masks)
        model = STAPLE().fit(nodule.masks)
        np.testing.assert_allclose(model.probas_.iloc[0], expected, atol=1e-7)
        np.testing.assert_allclose(model.sensitivity_.to_numpy(), f.GetSensitivity(), atol=1e-7)
        np.testing.assert_allclose(model.specificity_.to_numpy(), f.GetSpecificity(), atol=1e-7)


def test_patterns_are_exact_grouping_of_pixels():
    _, stack = noisy_stack(3, n_raters=5)
    coded = code_masks(stack)
    units = coded.units
    assert units.unit_weight.sum() == stack[0].size
    assert units.n_units <= 2**5
    # every pixel's unit carries exactly that pixel's labels
    flat = stack.reshape(5, -1).T.astype(int)
    labels = np.zeros((units.n_units, 5), dtype=int)
    labels[units.entry_unit, units.entry_worker] = units.entry_label
    np.testing.assert_array_equal(labels[coded.pixel_units(0)], flat)


def test_majority_vote_matches_crowdkit_and_weights():
    crowdkit = pytest.importorskip("crowdkit.aggregation")
    _, stack = noisy_stack(4, n_raters=4)
    frame = pd.DataFrame({"task": "a", "worker": list("pqrs"), "segmentation": list(stack)})
    ours = MaskMajorityVote().fit(frame)
    theirs = crowdkit.SegmentationMajorityVote().fit(frame).segmentations_
    np.testing.assert_array_equal(ours.segmentations_["a"], theirs["a"])
    np.testing.assert_allclose(ours.probas_["a"], stack.mean(axis=0))
    # one worker with all the weight decides alone
    only_p = MaskMajorityVote().fit(frame, weights={"p": 1.0, "q": 0, "r": 0, "s": 0})
    np.testing.assert_array_equal(only_p.segmentations_["a"], stack[0])


def test_staple_beats_majority_vote_with_bad_raters_and_pools_workers():
    rng = np.random.default_rng(5)
    truth = [
        (disc((40, 40), *rng.uniform(14, 26, 2), rng.uniform(6, 10)) * 1).astype(np.int32)
        for _ in range(12)
    ]
    annotators = make_annotators("expert:2,good:1,loose:1,spammer:2", seed=1)
    frame = simulate_masks(truth, annotators, per_item=6, seed=2)
    staple = STAPLE().fit(frame)
    mv = MaskMajorityVote().fit(frame)
    d_staple = np.mean([dice(staple.segmentations_[i], truth[i] > 0) for i in range(12)])
    d_mv = np.mean([dice(mv.segmentations_[i], truth[i] > 0) for i in range(12)])
    assert d_staple > d_mv + 0.05
    assert d_staple > 0.9
    # the spammers (workers 4, 5) are found out: lowest sensitivity + specificity
    youden = staple.sensitivity_ + staple.specificity_
    assert set(youden.nsmallest(2).index) == {4, 5}
    per_image = STAPLE(share_workers=False).fit(frame)
    assert per_image.sensitivity_.index.names == ["task", "worker"]
    assert len(per_image.sensitivity_) == 12 * 6


def test_restricted_to_disagreement_fixes_unanimous_pixels():
    _, stack = noisy_stack(6, n_raters=3)
    model = STAPLE(restrict="disagreement").fit(stack)
    p = model.probas_.iloc[0]
    assert (p[stack.all(axis=0)] == 1).all() and (p[~stack.any(axis=0)] == 0).all()
    # specificities measured where raters differ are far below the all-pixel ones
    assert (model.specificity_ < STAPLE().fit(stack).specificity_).all()


def test_constant_prior_map_equals_fixed_prior():
    _, stack = noisy_stack(7, n_raters=4)
    fixed = STAPLE(prior=0.3).fit(stack)
    mapped = STAPLE().fit(stack, prior_maps=np.full(stack[0].shape, 0.3))
    np.testing.assert_allclose(mapped.probas_.iloc[0], fixed.probas_.iloc[0], atol=1e-12)
    # a prior map that is zero somewhere keeps those pixels background
    prior = np.full(stack[0].shape, 0.3)
    prior[:, :5] = 0.0
    assert not STAPLE().fit(stack, prior_maps=prior).segmentations_.iloc[0][:, :5].any()


def test_multilabel_staple_recovers_labels():
    rng = np.random.default_rng(8)
    truth = np.zeros((30, 30), dtype=np.int64)
    truth[5:15, 5:25] = 1
    truth[18:27, 8:20] = 2
    stack = []
    for r in range(5):
        noise = rng.random(truth.shape) < 0.1 + 0.1 * (r == 4) * 4
        stack.append(np.where(noise, rng.integers(0, 3, truth.shape), truth))
    model = STAPLE().fit(np.stack(stack))
    assert model.confusions_.shape == (5, 3, 3)
    assert (model.segmentations_.iloc[0] == truth).mean() > 0.99
    assert model.probas_.iloc[0].shape == (30, 30, 3)
    assert model.sensitivity_.iloc[4].mean() < model.sensitivity_.iloc[0].mean()


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="different shapes"):
        STAPLE().fit(
            pd.DataFrame(
                {
                    "task": [1, 1],
                    "worker": [1, 2],
                    "segmentation": [np.zeros((2, 2), bool), np.zeros((3, 2), bool)],
                }
            )
        )
    with pytest.raises(ValueError, match="more than one mask"):
        STAPLE().fit(
            pd.DataFrame(
                {"task": [1, 1], "worker": [1, 1], "segmentation": [np.zeros((2, 2), bool)] * 2}
            )
        )
    with pytest.raises(ValueError, match="lacks column"):
        STAPLE().fit(pd.DataFrame({"task": [1], "worker": [1]}))
    with pytest.raises(ValueError, match="prior must be"):
        STAPLE(prior="atlas").fit(np.zeros((2, 3, 3), bool))
    with pytest.raises(ValueError, match="labels must lie"):
        STAPLE(n_classes=2).fit(np.full((2, 3, 3), 2))


def test_pattern_kernels_equal_numpy():
    from labeling.aggregation.regions.masks import count_codes, paint

    rng = np.random.default_rng(9)
    code = rng.integers(0, 32, size=1000).astype(np.uint8)
    np.testing.assert_array_equal(count_codes(code, 40), np.bincount(code, minlength=40))
    table = rng.random(32)
    np.testing.assert_array_equal(paint(table, code), table[code])


@pytest.mark.parametrize("seed", [0, 1])
def test_multilabel_staple_matches_simpleitk(seed):
    rng = np.random.default_rng(seed)
    truth = np.zeros((40, 40), np.int64)
    truth[5:15, 5:25] = 1
    truth[18:33, 8:30] = 2
    noise = rng.random((5, 40, 40)) < (0.05 + 0.08 * np.arange(5))[:, None, None]
    stack = np.where(noise, rng.integers(0, 3, (5, 40, 40)), truth)
    f = sitk.MultiLabelSTAPLEImageFilter()
    expected = sitk.GetArrayFromImage(
        f.Execute([sitk.GetImageFromArray(m.astype(np.uint8)) for m in stack])
    )
    # ITK's matrices are [observed label (and one row for "undecided"), true label]
    itk = np.stack([np.array(f.GetConfusionMatrix(r)).reshape(4, 3)[:3].T for r in range(5)])
    model = STAPLE().fit(stack)
    # ITK stops once no entry moves by 1e-5, ours at 1e-7: the same fixed point within that
    np.testing.assert_allclose(model.confusions_, itk, atol=1e-4)
    np.testing.assert_array_equal(model.segmentations_.iloc[0], expected)


def test_uncertainty_orders_contested_images_first():
    truth = disc((40, 40), 20, 20, 10)
    rng = np.random.default_rng(10)
    calm = np.stack([truth] * 4)
    contested = np.stack([truth ^ (rng.random(truth.shape) < 0.15) for _ in range(4)])
    frame = pd.DataFrame(
        {
            "task": ["calm"] * 4 + ["contested"] * 4,
            "worker": [0, 1, 2, 3] * 2,
            "segmentation": list(calm) + list(contested),
        }
    )
    for model in (STAPLE(share_workers=False), MaskMajorityVote()):
        u = model.fit(frame).uncertainty_
        assert u["calm"] == 0.0 and u["contested"] > 0.01


def test_known_masks_are_clamped_and_inform_the_raters():
    rng = np.random.default_rng(11)
    truth = [disc((30, 30), *rng.uniform(10, 20, 2), rng.uniform(5, 8)) for _ in range(10)]
    # rater 0 also paints a band of background on every image; with two raters the pixels
    # they disagree on could be either one's error, and the expert masks settle whose
    rows = []
    for t, m in enumerate(truth):
        noisy = m.copy()
        noisy[:4] = True
        rows.append((t, 0, noisy))
        rows.append((t, 1, m ^ (rng.random(m.shape) < 0.02)))
    frame = pd.DataFrame(rows, columns=["task", "worker", "segmentation"])
    known = {0: truth[0], 1: truth[1], 2: truth[2]}
    with_gold = STAPLE().fit(frame, known=known)
    for t in known:
        np.testing.assert_array_equal(with_gold.segmentations_[t], truth[t])
        assert with_gold.uncertainty_[t] == 0.0
    without = STAPLE().fit(frame)
    assert with_gold.specificity_[0] < with_gold.specificity_[1]
    assert abs(with_gold.specificity_[0] - without.specificity_[0]) > 1e-3
    mv = MaskMajorityVote().fit(frame, known=known)
    np.testing.assert_array_equal(mv.segmentations_[0], truth[0])
    with pytest.raises(ValueError, match="nobody annotated"):
        STAPLE().fit(frame, known={99: truth[0]})
