"""The ``auto`` aggregation method through the service: what it chooses, stores and steers."""

from __future__ import annotations

import numpy as np
import pytest

from labeling.aggregation import METHODS
from labeling.api.serializers.aggregation import AggregationRunSerializer
from labeling.models import ConsensusLabel, Item, Membership, Project
from labeling.services.aggregation import aggregate_project
from tests.factories import MembershipFactory, give_expert_answer
from tests.labeling.test_aggregation_service import CLASSES, posteriors_of, simulated_project

pytestmark = pytest.mark.django_db


def test_new_projects_default_to_auto():
    assert Project._meta.get_field("default_method").default == "auto"
    assert Project(name="new").default_method == "auto"
    assert "auto" in METHODS


def test_auto_run_stores_its_choice_and_the_chosen_methods_labels():
    project, items, truth = simulated_project(
        n_items=60, votes_per_item=5, mix="accurate:3,noisy:2,spammer:2", default_method="auto"
    )
    run = aggregate_project(project.pk, "auto")
    assert run.status == "succeeded", run.failure_reason
    selection = run.selection
    chosen = selection["chosen"]
    assert selection["criterion"] == "held_out_votes"
    assert set(selection["scores"]) == {"majority_vote", "dawid_skene", "one_coin", "glad", "mace"}
    best = max(selection["scores"].values(), key=lambda s: s["log_likelihood"])
    assert selection["scores"][chosen] == best
    assert chosen in selection["reason"]
    assert AggregationRunSerializer(run).data["selection"]["chosen"] == chosen  # in the API too
    # the labels stored are the chosen method's own run
    direct = aggregate_project(project.pk, chosen)
    assert direct.selection == {}
    ours, theirs = posteriors_of(run), posteriors_of(direct)
    assert ours.keys() == theirs.keys()
    for item_id in ours:
        np.testing.assert_allclose(ours[item_id], theirs[item_id], atol=1e-6)
    # auto is the default method, so its run steers the crowd
    assert Item.objects.filter(project=project, uncertainty__isnull=False).count() == 60
    labels = dict(ConsensusLabel.objects.filter(run=run).values_list("item_id", "label__name"))
    correct = [labels[item.pk] == CLASSES[t] for item, t in zip(items, truth, strict=True)]
    assert np.mean(correct) > 0.8


def test_auto_chooses_by_the_expert_hold_out_when_it_is_big_enough():
    project, items, truth = simulated_project(n_items=70, votes_per_item=3, default_method="auto")
    for item, t in zip(items[:35], truth[:35], strict=True):
        give_expert_answer(item, CLASSES[t])
    Item.objects.filter(pk__in=[i.pk for i in items[:35]]).update(is_holdout=True)
    run = aggregate_project(project.pk, "auto")
    assert run.status == "succeeded", run.failure_reason
    assert run.selection["criterion"] == "expert"
    assert run.selection["n_expert"] == 35
    assert all(s["n_scored"] == 35 for s in run.selection["scores"].values())
    assert run.holdout_size == 35
    chosen_acc = run.selection["scores"][run.selection["chosen"]]["accuracy"]
    assert run.holdout_accuracy == pytest.approx(chosen_acc)


def test_dashboard_says_what_auto_chose_and_why(client, django_user_model):
    project, _, _ = simulated_project(n_items=40, votes_per_item=4, default_method="auto")
    admin = django_user_model.objects.create(username="auto-admin")
    MembershipFactory(project=project, user=admin, role=Membership.Role.ADMIN)
    client.force_login(admin)
    assert "auto chose" not in client.get(f"/projects/{project.pk}/").content.decode()
    run = aggregate_project(project.pk, "auto")
    page = client.get(f"/projects/{project.pk}/").content.decode()
    chosen = run.selection["chosen"]
    assert f"auto chose <strong>{chosen}</strong> because: best log-likelihood of held-out votes" in page
    for name, score in run.selection["scores"].items():
        assert f"{name} {score['log_likelihood']:.4f}" in page
