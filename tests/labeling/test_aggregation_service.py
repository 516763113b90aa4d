"""The aggregation service: what a run stores, what it clamps, and how it steers the crowd."""

from __future__ import annotations

import numpy as np
import pytest
from django.contrib.auth import get_user_model
from django.db.models import F

from labeling.aggregation import METHODS, simulate_crowd
from labeling.models import (
    AggregationRun,
    ConsensusLabel,
    ExpertLabel,
    Item,
    Membership,
    Project,
    Vote,
    VoteTally,
    WorkerReliability,
)
from labeling.services.aggregation import (
    NO_VOTES,
    InvalidAggregation,
    aggregate_project,
    latest_run,
    latest_runs_by_method,
)
from tests.factories import (
    ItemFactory,
    MembershipFactory,
    ProjectFactory,
    give_expert_answer,
)

User = get_user_model()

pytestmark = pytest.mark.django_db

CLASSES = ["normal", "pneumonia", "effusion"]


def add_votes(project: Project, votes: list[tuple[Item, object, str]], **extra) -> None:
    """Store votes as the vote service would (rows plus the item's counted votes)."""
    labels = {c.name: c for c in project.label_classes.all()}
    Vote.objects.bulk_create(
        Vote(
            project=project, item=item, worker=worker, label=labels[name],
            idempotency_key=f"t-{item.pk}-{worker.pk}", source=Vote.Source.SIMULATED, **extra,
        )
        for item, worker, name in votes
    )
    if not extra.get("is_excluded"):
        for item, _worker, _name in votes:
            Item.objects.filter(pk=item.pk).update(vote_count=item.votes.filter(is_excluded=False).count())


def set_votes_since_aggregation(project: Project, n: int, stripe: int = 0) -> None:
    """As if ``n`` votes had come in since the last aggregation, all on one tally stripe."""
    VoteTally.objects.filter(project=project).delete()
    VoteTally.objects.create(project=project, stripe=stripe, votes=n)


def crowd_workers(project: Project, n: int, prefix: str = "w") -> list:
    # Without a password: hashing one costs most of a second on a shared CPU.
    users = [User.objects.create(username=f"{prefix}{project.pk}-{i}") for i in range(n)]
    for user in users:
        MembershipFactory(project=project, user=user, role=Membership.Role.CROWD)
    return users


def simulated_project(
    n_items: int = 30,
    mix: str = "accurate:4,noisy:2,spammer:1",
    votes_per_item: int = 3,
    seed: int = 1,
    classes: list[str] = CLASSES,
    **project_options,
) -> tuple[Project, list[Item], np.ndarray]:
    """A project whose votes come from a simulated crowd with known truth (returned)."""
    project = ProjectFactory(classes=classes, **project_options)
    crowd = simulate_crowd(n_items, len(classes), mix, votes_per_item, seed=seed)
    items = [ItemFactory(project=project) for _ in range(n_items)]
    workers = crowd_workers(project, crowd.votes.n_workers)
    v = crowd.votes
    add_votes(
        project,
        [(items[t], workers[w], classes[c]) for t, w, c in zip(v.task_idx, v.worker_idx, v.label_idx, strict=True)],
    )
    return project, items, crowd.true_labels


def posteriors_of(run: AggregationRun) -> dict[int, list[float]]:
    return dict(ConsensusLabel.objects.filter(run=run).values_list("item_id", "posterior"))


@pytest.mark.parametrize("method", list(METHODS))
def test_each_method_stores_consensus_reliabilities_and_metrics(method):
    project, items, truth = simulated_project()
    run = aggregate_project(project.pk, method)

    assert run.status == AggregationRun.Status.SUCCEEDED, run.failure_reason
    assert (run.n_items, run.n_votes, run.n_workers) == (30, 90, 7)
    assert run.fleiss_kappa is not None and run.krippendorff_alpha is not None
    assert run.seconds > 0 and run.finished_at is not None

    consensus = list(ConsensusLabel.objects.filter(run=run).select_related("label").order_by("item_id"))
    assert [c.item_id for c in consensus] == [i.pk for i in items]
    for c in consensus:
        post = np.array(c.posterior)
        assert post.shape == (3,) and np.isclose(post.sum(), 1.0, atol=1e-4)
        assert c.confidence == pytest.approx(post.max(), abs=1e-5)
        assert c.label.index == int(np.argmax(post))
        expected_entropy = -sum(p * np.log2(p) for p in post if p > 0)
        assert c.entropy == pytest.approx(expected_entropy, abs=1e-4)
    accuracy = np.mean([c.label.index == t for c, t in zip(consensus, truth, strict=True)])
    assert accuracy >= 0.8

    reliabilities = list(WorkerReliability.objects.filter(run=run))
    assert len(reliabilities) == 7
    assert sum(r.n_votes for r in reliabilities) == 90
    for r in reliabilities:
        assert np.allclose(np.array(r.confusion).sum(axis=1), 1.0, atol=1e-3)
        assert 0.0 <= r.accuracy <= 1.0


def test_earlier_runs_are_kept_and_latest_per_method_is_found():
    project, _items, _truth = simulated_project(n_items=10)
    first = aggregate_project(project.pk, "majority_vote")
    ds = aggregate_project(project.pk, "dawid_skene")
    second = aggregate_project(project.pk, "majority_vote")

    assert project.aggregation_runs.count() == 3
    assert ConsensusLabel.objects.filter(run=first).count() == 10
    assert latest_runs_by_method(project) == {"majority_vote": second, "dawid_skene": ds}
    assert latest_run(project) == ds  # the factory's default method is Dawid-Skene
    assert latest_run(project, "glad") is None


def test_a_class_nobody_voted_for_keeps_its_column():
    project = ProjectFactory(classes=["a", "b", "never"])
    item = ItemFactory(project=project)
    add_votes(project, [(item, w, "a") for w in crowd_workers(project, 2)])
    run = aggregate_project(project.pk, "dawid_skene")
    assert len(ConsensusLabel.objects.get(run=run).posterior) == 3
    assert np.array(WorkerReliability.objects.filter(run=run).first().confusion).shape == (3, 3)


def test_only_counted_votes_are_aggregated():
    project = ProjectFactory(classes=["a", "b"])
    item = ItemFactory(project=project)
    a, b, blocked, unsure = crowd_workers(project, 4)
    add_votes(project, [(item, a, "a"), (item, b, "a")])
    add_votes(project, [(item, blocked, "b")], is_excluded=True)
    Vote.objects.create(project=project, item=item, worker=unsure, kind=Vote.Kind.UNSURE, idempotency_key="u")
    run = aggregate_project(project.pk, "majority_vote")
    assert (run.n_votes, run.n_workers) == (2, 2)
    assert ConsensusLabel.objects.get(run=run).posterior == [1.0, 0.0]


def test_gold_and_reviewed_answers_clamp_dawid_skene():
    project = ProjectFactory(classes=["a", "b"])
    gold, reviewed, free = ItemFactory(project=project), ItemFactory(project=project), ItemFactory(project=project)
    workers = crowd_workers(project, 3)
    add_votes(project, [(item, w, "a") for item in (gold, reviewed, free) for w in workers])
    give_expert_answer(gold, "b", gold=True)
    ExpertLabel.objects.create(item=reviewed, label=project.label_classes.get(name="b"), source=ExpertLabel.Source.REVIEW)
    Item.objects.filter(pk=reviewed.pk).update(expert_answer=project.label_classes.get(name="b"))

    posts = posteriors_of(aggregate_project(project.pk, "dawid_skene"))
    assert posts[gold.pk] == [0.0, 1.0]
    assert posts[reviewed.pk] == [0.0, 1.0]
    # The clamped answers teach the model that these workers answer "a" for "b".
    assert posts[free.pk][1] > 0.5


def test_imported_answers_on_regular_items_are_not_clamped():
    project = ProjectFactory(classes=["a", "b"])
    item = ItemFactory(project=project)
    add_votes(project, [(item, w, "a") for w in crowd_workers(project, 3)])
    give_expert_answer(item, "b")
    assert posteriors_of(aggregate_project(project.pk, "dawid_skene"))[item.pk][0] > 0.5


def test_holdout_answers_never_influence_aggregation():
    project, items, truth = simulated_project(n_items=20, mix="accurate:2,noisy:3,spammer:2", seed=3)
    holdout = items[:4]
    Item.objects.filter(pk__in=[i.pk for i in holdout]).update(is_holdout=True)
    without = aggregate_project(project.pk, "dawid_skene")
    assert (without.holdout_size, without.holdout_accuracy) == (0, None)

    for item, t in zip(holdout, truth, strict=False):
        # The opposite of the truth would pull hardest if it leaked; even a review label must not.
        wrong = CLASSES[(int(t) + 1) % 3]
        give_expert_answer(Item.objects.get(pk=item.pk), wrong)
        ExpertLabel.objects.create(item=item, label=project.label_classes.get(name=wrong), source=ExpertLabel.Source.REVIEW)
    with_answers = aggregate_project(project.pk, "dawid_skene")

    assert posteriors_of(with_answers) == posteriors_of(without)
    assert with_answers.holdout_size == 4
    consensus = dict(ConsensusLabel.objects.filter(run=with_answers).values_list("item_id", "label__name"))
    expected = np.mean([consensus[i.pk] == Item.objects.get(pk=i.pk).expert_answer.name for i in holdout])
    assert with_answers.holdout_accuracy == pytest.approx(expected)


def test_a_run_without_votes_fails_with_a_readable_reason():
    project = ProjectFactory()
    ItemFactory(project=project)
    run = aggregate_project(project.pk, "dawid_skene")
    assert run.status == AggregationRun.Status.FAILED
    assert run.failure_reason == NO_VOTES
    assert run.finished_at is not None
    assert not ConsensusLabel.objects.filter(run=run).exists()


def test_a_method_error_fails_the_run_and_stores_nothing():
    project, _items, _truth = simulated_project(n_items=5)
    run = aggregate_project(project.pk, "dawid_skene", params={"n_iter": -1})
    assert run.status == AggregationRun.Status.FAILED
    assert run.failure_reason.startswith("dawid_skene failed:")
    assert not ConsensusLabel.objects.filter(run=run).exists()
    assert not WorkerReliability.objects.filter(run=run).exists()


def test_unknown_method_or_parameter_is_refused_before_a_run_exists():
    project = ProjectFactory()
    with pytest.raises(InvalidAggregation, match="majority_vote, weighted_majority_vote, dawid_skene"):
        aggregate_project(project.pk, "magic")
    with pytest.raises(InvalidAggregation, match="Unknown parameter"):
        aggregate_project(project.pk, "dawid_skene", params={"bogus": 1})
    assert not AggregationRun.objects.exists()


def test_a_run_subtracts_from_each_stripe_what_it_read(monkeypatch):
    """Votes tallied while a run works count toward the next run, on whichever stripe."""
    from labeling.services import aggregation

    project = ProjectFactory(classes=["a", "b"], default_method="majority_vote")
    item = ItemFactory(project=project)
    add_votes(project, [(item, w, "a") for w in crowd_workers(project, 2)])
    VoteTally.objects.bulk_create([
        VoteTally(project=project, stripe=1, votes=4), VoteTally(project=project, stripe=3, votes=2),
    ])  # fmt: skip
    read = aggregation.load_votes

    def read_then_more_votes(p):
        data = read(p)
        VoteTally.objects.filter(project=project, stripe=1).update(votes=F("votes") + 2)
        VoteTally.objects.create(project=project, stripe=7, votes=1)
        return data

    monkeypatch.setattr(aggregation, "load_votes", read_then_more_votes)
    aggregate_project(project.pk, "majority_vote")
    stripes = dict(VoteTally.objects.filter(project=project).values_list("stripe", "votes"))
    assert stripes == {1: 2, 3: 0, 7: 1}
    assert project.votes_since_aggregation() == 3


def test_default_method_sets_uncertainty_review_flags_and_votes_wanted():
    project = ProjectFactory(
        classes=["a", "b"], overlap=3, max_overlap=5, confidence_threshold=0.9,
        default_method="majority_vote",
    )
    set_votes_since_aggregation(project, 12)
    agreed3, split3, agreed2, single, untouched, reviewed, gold = (ItemFactory(project=project) for _ in range(7))
    w = crowd_workers(project, 3)
    add_votes(project, [
        (agreed3, w[0], "a"), (agreed3, w[1], "a"), (agreed3, w[2], "a"),
        (split3, w[0], "a"), (split3, w[1], "a"), (split3, w[2], "b"),
        (agreed2, w[0], "b"), (agreed2, w[1], "b"),
        (single, w[0], "a"),
        (reviewed, w[0], "a"), (reviewed, w[1], "b"),
        (gold, w[0], "a"), (gold, w[1], "b"),
    ])
    ExpertLabel.objects.create(item=reviewed, label=project.label_classes.get(name="b"), source=ExpertLabel.Source.REVIEW)
    Item.objects.filter(pk=reviewed.pk).update(expert_answer=project.label_classes.get(name="b"))
    give_expert_answer(gold, "a", gold=True)

    # A method other than the default leaves the crowd's plan alone.
    aggregate_project(project.pk, "dawid_skene")
    assert not Item.objects.filter(project=project, uncertainty__isnull=False).exists()
    assert Project.objects.get(pk=project.pk).votes_since_aggregation() == 12

    aggregate_project(project.pk, "majority_vote")
    state = {
        i.pk: (i.needs_review, i.votes_wanted, i.uncertainty)
        for i in Item.objects.filter(project=project)
    }
    assert state[agreed3.pk] == (False, 3, 0.0)
    assert state[split3.pk][:2] == (True, 5) and state[split3.pk][2] == pytest.approx(0.9183, abs=1e-3)
    assert state[agreed2.pk] == (False, 2, 0.0)  # confident: stops below the overlap
    assert state[single.pk] == (False, 3, 0.0)  # one vote is never enough to stop
    assert state[untouched.pk] == (False, 3, None)
    assert state[reviewed.pk] == (False, 2, 0.0)  # the expert's answer is final
    assert state[gold.pk] == (False, 3, 0.0)  # gold is served apart from the overlap plan
    assert Project.objects.get(pk=project.pk).votes_since_aggregation() == 0


def test_holdout_items_are_never_sent_to_review():
    project = ProjectFactory(classes=["a", "b"], default_method="majority_vote")
    item = ItemFactory(project=project, is_holdout=True)
    w = crowd_workers(project, 2)
    add_votes(project, [(item, w[0], "a"), (item, w[1], "b")])
    aggregate_project(project.pk, "majority_vote")
    item.refresh_from_db()
    assert item.needs_review is False and item.uncertainty == pytest.approx(1.0)
