"""Crowd-layer forms (Rodrigues & Pereira 2018), CoNAL (Chu et al. 2021) and the validation pick.

Each form is checked against its formula on a hand-computed case and shown to recover a planted
annotator confusion on a problem where the right answer is known.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from training.engine import CheckpointError, CrowdVotes, ItemSet, TrainConfig, train
from training.engine.conal import CoNAL
from training.engine.crowd_layer import (
    CROWD_LAYER_FORMS,
    CROWD_LAYER_INITS,
    CrowdLayer,
    MatrixCrowdLayer,
    VectorCrowdLayer,
    make_crowd_layer,
)
from training.engine.selection import pick_by_validation

from .conftest import NUM_CLASSES


def softmax(scores) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    e = np.exp(scores - scores.max())
    return e / e.sum()


# --- formulas by hand ------------------------------------------------------------------------


def test_mw_at_identity_is_the_papers_softmax_of_probabilities_times_w():
    layer = make_crowd_layer("mw", "identity", n_workers=2, num_classes=2)
    assert isinstance(layer, MatrixCrowdLayer)
    logits = torch.log(torch.tensor([[0.7, 0.3], [0.2, 0.8]]))
    workers = torch.tensor([[0, 1], [1, -1]])
    labels = torch.tensor([[1, 0], [1, -1]])
    # W = I: scores = p, q = softmax(p); e.g. item 0 -> softmax([0.7, 0.3])
    q_item0 = softmax([0.7, 0.3])
    q_item1 = softmax([0.2, 0.8])
    expected = -np.mean([math.log(q_item0[1]), math.log(q_item0[0]), math.log(q_item1[1])])
    assert layer.loss(logits, workers, labels).item() == pytest.approx(expected, rel=1e-5)
    # the trace penalty belongs to Tanno's form only
    assert layer.loss(logits, workers, labels, trace_weight=5.0).item() == pytest.approx(
        expected, rel=1e-5
    )


def test_mw_with_a_set_matrix_multiplies_then_softmaxes():
    weights = np.array([[[2.0, -1.0], [0.5, 1.5]]])
    layer = MatrixCrowdLayer(1, 2, init_weights=weights)
    p = np.array([0.6, 0.4])
    q = softmax(p @ weights[0])
    loss = layer.loss(
        torch.log(torch.from_numpy(p[None])).float(), torch.tensor([[0]]), torch.tensor([[1]])
    )
    assert loss.item() == pytest.approx(-math.log(q[1]), rel=1e-5)
    # the exported confusion is the layer's output for a one-hot class: softmax of W's rows
    np.testing.assert_allclose(
        layer.annotator_confusions()[0], [softmax(weights[0, 0]), softmax(weights[0, 1])], atol=1e-6
    )


@pytest.mark.parametrize("form", ["vw", "vb", "vw+b"])
def test_vector_forms_scale_and_shift_the_probabilities(form):
    scale = np.array([[3.0, 0.5, 1.0]])
    bias = np.array([[0.2, -0.4, 0.1]])
    layer = VectorCrowdLayer(form, 1, 3, init_scale=scale, init_bias=bias)
    p = np.array([0.5, 0.3, 0.2])
    used_scale = np.ones(3) if form == "vb" else scale[0]
    used_bias = np.zeros(3) if form == "vw" else bias[0]
    q = softmax(used_scale * p + used_bias)
    logits = torch.log(torch.from_numpy(p[None])).float()
    loss = layer.loss(logits, torch.tensor([[0]]), torch.tensor([[2]]))
    assert loss.item() == pytest.approx(-math.log(q[2]), rel=1e-5)
    trainable = {name for name, _ in layer.named_parameters()}
    assert trainable == {"vw": {"scale"}, "vb": {"bias"}, "vw+b": {"scale", "bias"}}[form]


def test_every_form_and_init_builds_and_exports_row_stochastic_confusions():
    rng = np.random.default_rng(0)
    ds = rng.dirichlet(np.ones(3), size=(4, 3)) + 2 * np.eye(3)
    ds /= ds.sum(axis=2, keepdims=True)
    for form in CROWD_LAYER_FORMS:
        for init in CROWD_LAYER_INITS:
            layer = make_crowd_layer(form, init, 4, 3, ds, feature_dim=5)
            assert layer.form == form
            confusions = layer.annotator_confusions()
            assert confusions.shape == (4, 3, 3)
            np.testing.assert_allclose(confusions.sum(axis=2), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="init_confusions"):
        make_crowd_layer("mw", "dawid_skene", 4, 3)
    with pytest.raises(ValueError, match="form"):
        make_crowd_layer("mx", "identity", 4, 3)
    with pytest.raises(ValueError, match="feature_dim"):
        make_crowd_layer("conal", "identity", 4, 3)


def test_dawid_skene_init_reproduces_the_confusions_a_form_can_hold():
    ds = np.array([[[0.8, 0.15, 0.05], [0.1, 0.6, 0.3], [0.05, 0.05, 0.9]]])
    for form in ("confusion_trace", "mw", "conal"):  # full matrices: exact
        layer = make_crowd_layer(form, "dawid_skene", 1, 3, ds, feature_dim=4)
        np.testing.assert_allclose(layer.annotator_confusions(), ds, atol=1e-5)
    # per-class accuracy with uniform errors is exactly what vw (and vw+b) can hold
    uniform_errors = np.array([[[0.9, 0.05, 0.05], [0.2, 0.6, 0.2], [0.15, 0.15, 0.7]]])
    for form in ("vw", "vw+b"):
        layer = make_crowd_layer(form, "dawid_skene", 1, 3, uniform_errors)
        np.testing.assert_allclose(layer.annotator_confusions(), uniform_errors, atol=1e-5)
    # vb (w fixed at 1) can only tilt towards some answers: it keeps the favoured column
    biased = np.array([[[0.5, 0.1, 0.4], [0.1, 0.5, 0.4], [0.05, 0.05, 0.9]]])
    vb_layer = make_crowd_layer("vb", "dawid_skene", 1, 3, biased)
    bias = vb_layer.bias.detach().numpy()[0]
    assert bias[2] > 0.5 and bias[0] == pytest.approx(bias[1], abs=1e-5)
    vb = vb_layer.annotator_confusions()[0]
    assert (vb.argmax(axis=1) == [2, 2, 2]).all()


def test_confusion_trace_keeps_its_trace_penalty():
    layer = make_crowd_layer("confusion_trace", "identity", 2, 2)
    assert isinstance(layer, CrowdLayer)
    logits = torch.zeros(1, 2)
    workers, labels = torch.tensor([[0, 1]]), torch.tensor([[0, 1]])
    plain = layer.loss(logits, workers, labels).item()
    assert layer.loss(logits, workers, labels, trace_weight=0.1).item() == pytest.approx(
        plain + 0.1 * 1.8, rel=1e-5
    )


def test_conal_mixes_common_and_individual_by_its_weight():
    layer = CoNAL(2, 2, feature_dim=3, distance_weight=0.0)
    with torch.no_grad():
        layer.individual.copy_(torch.tensor([[[2.0, 0.0], [0.0, 2.0]], [[0.0, 1.0], [1.0, 0.0]]]))
        layer.common.copy_(torch.tensor([[0.0, 3.0], [0.0, 3.0]]))
    p = torch.tensor([[0.9, 0.1]])
    features = torch.randn(1, 3)
    workers = torch.tensor([1])
    omega = layer.common_weight(features, workers).item()
    scores = omega * (p @ layer.common) + (1 - omega) * (p @ layer.individual[1])
    expected = scores.log_softmax(dim=-1)
    got = layer.vote_log_probabilities(p, workers, features)
    torch.testing.assert_close(got, expected.detach())
    assert 0.0 < omega < 1.0
    with pytest.raises(ValueError, match="features"):
        layer.loss(torch.zeros(1, 2), torch.tensor([[0]]), torch.tensor([[0]]))


# --- the validation pick ------------------------------------------------------------------------


def test_pick_by_balanced_accuracy_then_nll():
    labels = np.array([0, 0, 0, 0, 1, 1])
    majority = np.tile([0.9, 0.1], (6, 1))  # accuracy 4/6 but balanced 0.5
    good = np.array([[0.8, 0.2]] * 3 + [[0.4, 0.6]] + [[0.3, 0.7]] * 2)  # balanced 0.875
    confident_good = np.array([[0.99, 0.01]] * 3 + [[0.45, 0.55]] + [[0.01, 0.99]] * 2)
    pick = pick_by_validation({"mv": majority, "good": good, "sharp": confident_good}, labels)
    assert pick.scores["mv"]["balanced_accuracy"] == pytest.approx(0.5)
    assert pick.scores["good"]["balanced_accuracy"] == pytest.approx(0.875)
    # good and sharp tie on balanced accuracy; sharp explains the expert answers better
    assert pick.chosen == "sharp"
    assert pick.scores["sharp"]["nll"] < pick.scores["good"]["nll"]
    assert "tied with good" in pick.reason
    assert pick.to_dict()["n_items"] == 6
    with pytest.raises(ValueError):
        pick_by_validation({}, labels)
    with pytest.raises(ValueError):
        pick_by_validation({"short": good[:3]}, labels)


# --- through the trainer ----------------------------------------------------------------------


@pytest.mark.parametrize("form", CROWD_LAYER_FORMS)
def test_trainer_runs_every_form_and_reports_its_confusions(form, planted_crowd, tmp_path):
    crowd = planted_crowd
    n_items = 120
    keep = crowd.votes.items < n_items
    votes = CrowdVotes(
        crowd.votes.items[keep], crowd.votes.workers[keep], crowd.votes.labels[keep], 10
    )
    config = TrainConfig(
        label_source="crowd_layer",
        crowd_layer_form=form,
        crowd_layer_init="identity" if form == "mw" else "dawid_skene",
        num_classes=NUM_CLASSES,
        model_name="test_resnet",
        weights="none",
        in_chans=1,
        image_size=16,
        epochs=1,
        batch_size=32,
        augment=False,
        checkpoint_dir=str(tmp_path),
    )
    result = train(
        config,
        ItemSet(list(crowd.train_images[:n_items])),
        ItemSet(list(crowd.holdout_images[:40]), crowd.holdout_truth[:40]),
        votes=votes,
        init_posteriors=votes.vote_fractions(n_items, NUM_CLASSES),
    )
    assert result.status == "completed"
    assert result.annotator_confusions.shape == (10, NUM_CLASSES, NUM_CLASSES)
    np.testing.assert_allclose(result.annotator_confusions.sum(axis=2), 1.0, atol=1e-5)
    assert np.isfinite(result.history[-1].train_loss)
    # a run resumed with another form is refused rather than mixing two layers' states
    other = "mw" if form != "mw" else "vw"
    changed = TrainConfig(**{**config.__dict__, "crowd_layer_form": other, "epochs": 1})
    with pytest.raises(CheckpointError, match="crowd_layer_form"):
        train(
            changed,
            ItemSet(list(crowd.train_images[:n_items])),
            votes=votes,
            resume_from=result.checkpoint_path,
        )


def test_config_rejects_unknown_forms_and_inits():
    with pytest.raises(ValueError, match="crowd_layer_form"):
        TrainConfig(crowd_layer_form="matrix")
    with pytest.raises(ValueError, match="crowd_layer_init"):
        TrainConfig(crowd_layer_init="random")
    assert TrainConfig().crowd_layer_form == "confusion_trace"
    assert TrainConfig().crowd_layer_init == "dawid_skene"


# --- recovering planted confusions on a problem with a known answer ----------------------------


def _softmax_rows(scores: np.ndarray) -> np.ndarray:
    e = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def planted_for(form: str) -> np.ndarray:
    """Six annotators' ``[6, 3, 3]`` confusions that ``form`` can represent exactly."""
    eye = np.eye(3)
    if form in ("confusion_trace", "mw"):  # any confusion: pair confusers, a biased one
        return np.array(
            [
                [[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.05, 0.05, 0.9]],
                [[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]],
                [[0.85, 0.1, 0.05], [0.05, 0.85, 0.1], [0.1, 0.05, 0.85]],
                [[0.6, 0.35, 0.05], [0.05, 0.9, 0.05], [0.05, 0.05, 0.9]],  # 0 -> 1
                [[0.9, 0.05, 0.05], [0.05, 0.55, 0.4], [0.05, 0.05, 0.9]],  # 1 -> 2
                [[0.5, 0.1, 0.4], [0.1, 0.5, 0.4], [0.05, 0.05, 0.9]],  # likes 2
            ]
        )
    scale = np.array([[4.0, 4.0, 4.0], [3.0, 3.0, 3.0], [4.5, 2.5, 3.5], [2.0, 4.0, 3.0],
                      [5.0, 3.0, 2.0], [3.5, 3.5, 1.5]])  # fmt: skip
    bias = np.array([[0, 0, 0], [0.5, -0.5, 0], [0, 0, 0.8], [-0.6, 0.3, 0.3],
                     [0.4, 0.4, -0.8], [0, 0.7, -0.7]])  # fmt: skip
    if form == "vw":
        bias = np.zeros_like(bias)
    if form == "vb":  # w fixed at 1 on probabilities: a right answer at most e times as likely
        scale = np.ones_like(scale)
    return _softmax_rows(scale[:, None, :] * eye[None] + bias[:, None, :])


def sparse_votes(truth, confusions, rng, votes_per_item=3):
    n_workers = len(confusions)
    workers = np.argsort(rng.random((len(truth), n_workers)), axis=1)[:, :votes_per_item]
    items = np.repeat(np.arange(len(truth)), votes_per_item)
    workers = workers.reshape(-1)
    cdf = confusions[workers, truth[items]].cumsum(axis=1)
    labels = np.minimum((rng.random(len(items))[:, None] > cdf).sum(axis=1), 2)
    return CrowdVotes(items, workers, labels, n_workers)


def clusters(n, rng):
    truth = rng.integers(0, 3, n)
    centres = np.array([[3.0, 0, 0, 0, 0, 0], [0, 3.0, 0, 0, 0, 0], [0, 0, 3.0, 0, 0, 0]])
    return (centres[truth] + rng.normal(0, 1, (n, 6))).astype(np.float32), truth


def fit_jointly(layer, x, votes, steps=300, lr=0.05, trace_weight=0.0):
    """A linear classifier and the crowd layer trained together on every vote (full batch)."""
    torch.manual_seed(0)
    classifier = torch.nn.Linear(x.shape[1], 3)
    optimizer = torch.optim.Adam([*classifier.parameters(), *layer.parameters()], lr=lr)
    features = torch.from_numpy(x)
    workers, labels = (torch.from_numpy(a) for a in votes.padded(len(x)))
    for _ in range(steps):
        loss = layer.loss(
            classifier(features), workers, labels, trace_weight,
            features=features if layer.needs_features else None,
        )  # fmt: skip
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return classifier(features).softmax(dim=-1).numpy().astype(np.float64)


@pytest.mark.parametrize("form", ["confusion_trace", "mw", "vw", "vb", "vw+b"])
def test_each_form_recovers_a_planted_confusion(form):
    rng = np.random.default_rng(1)
    x, truth = clusters(2000, rng)
    planted = planted_for(form)
    votes = sparse_votes(truth, planted, rng)
    # a uniform start (identity for MW/VW/VB): nothing about the answer is given
    layer = make_crowd_layer(form, "identity", len(planted), 3)
    probabilities = fit_jointly(
        layer, x, votes, trace_weight=0.01 if form == "confusion_trace" else 0.0
    )
    assert (probabilities.argmax(1) == truth).mean() > 0.95
    recovered = layer.annotator_confusions(probabilities, votes)
    # what the data say each annotator does: their empirical confusion against the truth
    empirical = np.zeros_like(planted)
    np.add.at(empirical, (votes.workers, truth[votes.items], votes.labels), 1.0)
    empirical /= empirical.sum(axis=2, keepdims=True)
    assert np.abs(recovered - empirical).max() < 0.08, np.abs(recovered - empirical).max()
    assert np.abs(recovered - planted).max() < 0.1


def test_conal_learns_from_a_sparse_simulated_crowd():
    from labeling.aggregation.simulation import simulate_sparse_crowd

    rng = np.random.default_rng(2)
    x, truth = clusters(3000, rng)
    crowd = simulate_sparse_crowd(truth, 3, votes_per_item=2.5, seed=5)
    votes = CrowdVotes(
        crowd.votes.task_idx, crowd.votes.worker_idx, crowd.votes.label_idx, len(crowd.archetypes)
    )
    majority = votes.vote_fractions(len(truth), 3).argmax(axis=1)
    layer = make_crowd_layer("conal", "identity", votes.n_workers, 3, feature_dim=x.shape[1])
    # 200 steps: the same accuracy (.965) and expert-spammer gap (.55) as 300
    probabilities = fit_jointly(layer, x, votes, steps=200)
    accuracy = (probabilities.argmax(1) == truth).mean()
    # far above chance (1/3) and above the crowd's own majority vote on the same items
    assert accuracy > 0.9
    assert accuracy > (majority == truth).mean() + 0.1
    confusions = layer.annotator_confusions(probabilities, votes, x)
    np.testing.assert_allclose(confusions.sum(axis=2), 1.0, atol=1e-5)
    spammers = np.array(crowd.archetypes) == "spammer_uniform"
    experts = np.array(crowd.archetypes) == "expert"
    diagonal = np.diagonal(confusions, axis1=1, axis2=2).mean(axis=1)
    assert diagonal[experts].mean() > diagonal[spammers].mean() + 0.3


def test_aggnet_e_step_undoes_a_class_weighted_classifiers_tilt():
    from training.engine.aggnet import AggNetEM

    votes = CrowdVotes(np.array([0, 1]), np.array([0, 0]), np.array([1, 0]), n_workers=1)
    em = AggNetEM(votes, np.array([[0.5, 0.5], [0.5, 0.5]]), init_confusions=np.array(
        [[[0.8, 0.2], [0.3, 0.7]]]
    ))  # fmt: skip
    tilted = np.array([[0.6, 0.4], [0.5, 0.5]])  # trained with class 0 weighted 3x
    weights = np.array([3.0, 1.0])
    corrected = em.e_step(tilted, weights)
    prior = tilted / weights
    prior /= prior.sum(axis=1, keepdims=True)  # item 0: [0.333, 0.667]
    unnormalised = prior * np.array([[0.2, 0.7], [0.8, 0.3]])  # the vote's likelihood
    np.testing.assert_allclose(corrected, unnormalised / unnormalised.sum(1, keepdims=True))
    # without the weights the tilt stays in the targets
    assert em.e_step(tilted)[0, 0] > corrected[0, 0]
