"""A finished training run's predictions join the next aggregation as one more annotator.

Through the services on the test database: the run records the model and its learned
reliability, the stored posterior (and so Item.uncertainty, the review flags and votes_wanted)
is the combined one, and the crowd and expert queues follow it.
"""

from __future__ import annotations

import numpy as np
import pytest
from django.utils import timezone

from labeling.aggregation import make_profiles
from labeling.aggregation.adaptive import draw_vote_pool
from labeling.models import ConsensusLabel, Item, LabelClass
from labeling.services.aggregation import aggregate_project, entropy_bits
from labeling.services.assignment import next_item
from labeling.services.review import review_queue
from tests.factories import ItemFactory, ProjectFactory, give_expert_answer
from tests.labeling.test_aggregation_service import add_votes, crowd_workers
from training.models import Prediction, TrainingRun

pytestmark = pytest.mark.django_db

CLASSES = ["normal", "pneumonia"]
N_ITEMS = 160
N_HOLDOUT = 80


def model_probabilities(truth: np.ndarray, accuracy: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    right = rng.random(len(truth)) < accuracy
    answer = np.where(right, truth, 1 - truth)
    top = rng.uniform(0.8, 0.99, len(truth))
    probs = np.empty((len(truth), 2))
    probs[np.arange(len(truth)), answer] = top
    probs[np.arange(len(truth)), 1 - answer] = 1 - top
    return probs


@pytest.fixture
def crowd_project():
    """160 items (80 hold-out with an expert answer), 1-2 votes each from a noisy crowd."""
    rng = np.random.default_rng(21)
    truth = rng.integers(0, 2, N_ITEMS)
    project = ProjectFactory(
        classes=CLASSES, overlap=3, max_overlap=5, confidence_threshold=0.9,
        default_method="dawid_skene", aggregate_every=0,
    )  # fmt: skip
    items = [ItemFactory(project=project) for _ in range(N_ITEMS)]
    for item, t in zip(items[:N_HOLDOUT], truth, strict=False):
        give_expert_answer(item, CLASSES[t])
        Item.objects.filter(pk=item.pk).update(is_holdout=True)
    profiles = make_profiles("accurate:4,noisy:2,spammer:1", 2, seed=21, accuracy_jitter=0.05)
    pool = draw_vote_pool(truth, profiles, k_max=2, seed=22)
    workers = crowd_workers(project, len(profiles))
    counts = rng.integers(1, 3, N_ITEMS)
    add_votes(
        project,
        [
            (item, workers[pool.workers[i, s]], CLASSES[pool.labels[i, s]])
            for i, item in enumerate(items)
            for s in range(counts[i])
        ],
    )
    return project, items, truth


def finished_training_run(project, items, probabilities) -> TrainingRun:
    run = TrainingRun.objects.create(
        project=project, label_source=TrainingRun.LabelSource.DAWID_SKENE,
        status=TrainingRun.Status.SUCCEEDED, finished_at=timezone.now(),
    )  # fmt: skip
    labels = list(LabelClass.objects.filter(project=project).order_by("index"))
    Prediction.objects.bulk_create(
        Prediction(run=run, item=item, label=labels[int(np.argmax(p))], probabilities=p.tolist())
        for item, p in zip(items, probabilities, strict=True)
    )
    return run


def stored(run) -> dict[int, ConsensusLabel]:
    return {c.item_id: c for c in ConsensusLabel.objects.filter(run=run)}


def test_the_model_joins_the_posterior_with_a_learned_reliability(crowd_project):
    project, items, truth = crowd_project
    crowd_only = aggregate_project(project.pk, "dawid_skene")
    assert crowd_only.status == "succeeded" and "model" not in crowd_only.selection

    # the model is right on 90% of the items; hold-out predictions are out of sample
    training = finished_training_run(project, items, model_probabilities(truth, 0.9, seed=23))
    with_model = aggregate_project(project.pk, "dawid_skene")
    assert with_model.status == "succeeded", with_model.failure_reason
    record = with_model.selection["model"]
    assert record["name"] == f"model: run {training.pk}"
    assert record["training_run"] == training.pk
    assert record["n_predictions"] == N_ITEMS and record["n_out_of_sample"] == N_HOLDOUT
    assert record["confusion_learned_from"] == "out_of_sample"
    # measured .80 for a model right on 90% (one EM with the workers; .745 with them held fixed)
    assert record["accuracy"] > 0.75 and record["workers_relearned_with_model"]
    assert np.asarray(record["confusion"]).shape == (2, 2)

    # measured: hold-out accuracy .74 from the crowd alone, .89 with the model (.85 with the
    # workers' confusions held fixed)
    assert with_model.holdout_accuracy >= crowd_only.holdout_accuracy + 0.1
    # the stored posterior is the combined one, and Item.uncertainty is its entropy
    consensus = stored(with_model)
    uncertainty = dict(Item.objects.filter(project=project).values_list("id", "uncertainty"))
    for item in items:
        row = consensus[item.pk]
        expected = entropy_bits(np.asarray([row.posterior]))[0]
        assert uncertainty[item.pk] == pytest.approx(expected, abs=1e-5)
    # other methods' runs take the model in as well
    mv = aggregate_project(project.pk, "majority_vote")
    assert mv.selection["model"]["training_run"] == training.pk
    assert not mv.selection["model"]["workers_relearned_with_model"]


def test_agreeing_model_stops_votes_early_and_the_queues_follow_the_combined_posterior(
    crowd_project,
):
    project, items, truth = crowd_project
    aggregate_project(project.pk, "dawid_skene")
    state = dict(Item.objects.filter(project=project).values_list("id", "votes_wanted"))
    one_vote = [i for i in items[N_HOLDOUT:] if i.votes.count() == 1]
    # without the model no regular item stops on one vote (adaptive redundancy's minimum is 2)
    assert all(state[i.pk] >= 2 for i in one_vote)

    finished_training_run(project, items, model_probabilities(truth, 0.9, seed=23))
    run = aggregate_project(project.pk, "dawid_skene")
    consensus = stored(run)
    rows = Item.objects.filter(project=project).values_list(
        "id", "votes_wanted", "vote_count", "uncertainty", "needs_review"
    )
    state = {r[0]: r[1:] for r in rows}
    stopped = [i for i in one_vote if state[i.pk][0] == 1]
    # confident items the model agrees with stop on their one vote; the rest still want votes
    assert len(stopped) >= len(one_vote) // 3
    for item in stopped:
        assert consensus[item.pk].confidence >= project.confidence_threshold

    # the crowd queue: among the items with the fewest votes, the least certain comes first
    worker = crowd_workers(project, 1, prefix="fresh")[0]
    lease = next_item(worker, project)
    open_items = [
        (pk, s) for pk, s in state.items()
        if s[1] < s[0] and not Item.objects.get(pk=pk).is_gold
    ]  # fmt: skip
    fewest = min(s[1] for _, s in open_items)
    top = max(s[2] for _, s in open_items if s[1] == fewest)
    assert state[lease.item_id][1] == fewest
    assert state[lease.item_id][2] == pytest.approx(top)

    # the expert queue: needs_review items, least certain (combined posterior) first
    queue = list(review_queue(project).values_list("id", flat=True))
    assert queue, "some items stay uncertain"
    assert [state[pk][2] for pk in queue] == sorted((state[pk][2] for pk in queue), reverse=True)
    for pk in queue:
        assert consensus[pk].confidence < project.confidence_threshold


def test_a_model_of_the_wrong_shape_or_without_predictions_is_left_out(crowd_project):
    project, items, truth = crowd_project
    TrainingRun.objects.create(
        project=project, label_source=TrainingRun.LabelSource.DAWID_SKENE,
        status=TrainingRun.Status.SUCCEEDED, finished_at=timezone.now(),
    )  # fmt: skip
    failed = finished_training_run(project, items[:10], model_probabilities(truth[:10], 0.9, 1))
    TrainingRun.objects.filter(pk=failed.pk).update(status=TrainingRun.Status.FAILED)
    run = aggregate_project(project.pk, "dawid_skene")
    assert "model" not in run.selection

    odd = finished_training_run(project, items[:10], model_probabilities(truth[:10], 0.9, 1))
    Prediction.objects.filter(run=odd).update(probabilities=[0.2, 0.3, 0.5])
    run = aggregate_project(project.pk, "dawid_skene")
    assert run.status == "succeeded" and "model" not in run.selection
