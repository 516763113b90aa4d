"""The ``crossfit_em`` label source: fold classifiers of the run's own backbone supply each
item's out-of-fold prior to EM, the final model trains on EM's posteriors, and the report says
how many rounds ran and how many items each changed. (That a fold classifier never predicts an
item it trained on is tests/training/engine/test_crossfit_em.py's.)"""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
from django.urls import reverse

from labeling.models import Membership, Vote
from tests.factories import MembershipFactory, label_of
from tests.training.test_crowd_model_selection import engine_calls  # noqa: F401 (fixture)
from tests.training.test_region_runs import TINY_REGIONS, make_region_project
from tests.training.test_runs import TINY, make_training_set
from training import crossfit_runs, crowd_models, selectors, services
from training.datasets import build_training_data
from training.models import TrainingRun
from training.tasks import run_training

pytestmark = pytest.mark.django_db

PARAMS = {"crossfit_folds": 2, "crossfit_rounds": 2}


def _launch(project, user, **values) -> TrainingRun:
    with mock.patch("training.tasks.run_training.apply_async"):
        return services.launch_run(
            project, user, **{**TINY, "label_source": "crossfit_em", "params": PARAMS, **values}
        )


def test_crossfit_em_run_trains_out_of_fold_then_on_the_posteriors(
    project,
    admin_user,
    admin_page,
    engine_calls,  # noqa: F811
):
    made = make_training_set(project, n_train=16, n_holdout=4, experts=False)
    crowd = {i.id for i in made["items"][:16]}
    holdout = {i.id for i in made["items"][16:]}
    for n, item in enumerate(made["items"][:4]):  # gold items (true answers)
        item.expert_answer, item.is_gold = label_of(project, project.class_names[n % 2]), True
        item.save(update_fields=["expert_answer", "is_gold"])
    gold = made["items"][0]  # normal, and all three votes on it say pneumonia
    Vote.objects.filter(item=gold).update(label=label_of(project, "pneumonia"))

    run = _launch(project, admin_user, epochs=3)
    run_training.apply(args=(run.pk,))
    run.refresh_from_db()
    assert run.status == "succeeded", run.failure_reason

    record = run.evaluation.extra["crowd_model"]
    assert record == run.params["crowd_model"]
    assert (record["source"], record["picked_by"]) == ("crossfit_em", "launch")
    assert (record["folds"], record["fold_epochs"]) == (2, crossfit_runs.FOLD_EPOCHS)
    assert 1 <= record["rounds"] == len(record["changed"]) <= 2
    assert all(0 <= share <= 1 for share in record["changed"])

    # two fold classifiers per round, each trained on one fold and predicting the other, on
    # crowd items only; then the final model on every crowd item, scored on the hold-out
    folds, final = engine_calls[:-1], engine_calls[-1]
    assert len(folds) == 2 * record["rounds"]
    for call in folds:
        assert (call["source"], call["epochs"]) == ("dawid_skene", 2)
        assert not set(call["train"]) & set(call["scored"])
        assert set(call["train"]) | set(call["scored"]) == crowd
    assert (final["source"], final["epochs"]) == ("dawid_skene", 3)
    assert set(final["train"]) == crowd and set(final["scored"]) == holdout

    # the gold item stays at its answer; the confusions EM learned are the run's reliabilities
    with np.load(crossfit_runs.targets_path(run)) as stored:
        row = stored["posteriors"][list(stored["item_ids"]).index(gold.id)]
    assert row.argmax() == 0 and row[0] > 0.99
    assert len(run.annotator_reliability) == 3
    assert selectors.annotator_picture_file(run) is not None

    sentence = crowd_models.sentence(record)
    assert sentence.startswith("crowd model: cross-fitted EM")
    assert f"{record['rounds']} EM round" in sentence and "items changed per round: " in sentence
    page = admin_page.get(reverse("training-run-page", args=[run.pk])).content.decode()
    assert sentence in page
    assert admin_page.get(f"/api/training-runs/{run.pk}/").json()["crowd_model"]["sentence"] == (
        sentence
    )

    # a resumed run trains on the stored targets instead of running EM again
    again = crossfit_runs.cross_fitted_targets(
        run, build_training_data(run), None, train=None, make_config=None
    )
    assert again[0] == record


def test_cancel_while_the_fold_classifiers_train(project, admin_user, monkeypatch, engine_calls):  # noqa: F811
    make_training_set(project, n_train=12, n_holdout=4, experts=False)
    heartbeat = services.RunProgress.heartbeat

    def cancel_after_first_fold_epoch(self):
        heartbeat(self)
        services.request_cancel(TrainingRun.objects.get(pk=self.run_id))

    monkeypatch.setattr(services.RunProgress, "heartbeat", cancel_after_first_fold_epoch)
    run = _launch(project, admin_user, epochs=2)
    run_training.apply(args=(run.pk,))
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.CANCELLED
    assert len(engine_calls) == 1  # the first fold classifier stopped; nothing trained after
    assert not hasattr(run, "evaluation") or run.evaluation is None


def test_launch_rules(project, admin_user, admin_page):
    region = make_region_project()
    with pytest.raises(services.LaunchError, match="trains on 'consensus'"):
        services.check_launch_settings(region, {**TINY_REGIONS, "label_source": "crossfit_em"})
    MembershipFactory(project=region, user=admin_user, role=Membership.Role.ADMIN)
    from rest_framework.test import APIClient

    client = APIClient()
    client.force_authenticate(admin_user)
    refused = client.post(
        f"/api/projects/{region.pk}/training-runs/",
        {**TINY_REGIONS, "label_source": "crossfit_em"},
        format="json",
    )
    assert refused.status_code == 400
    assert "trains on 'consensus'" in refused.json()["label_source"][0]

    for source, params, message in [
        ("dawid_skene", {"crossfit_folds": 3}, "apply to crossfit_em runs only"),
        ("crossfit_em", {"crossfit_folds": 1}, "crossfit_folds must lie between 2 and 20"),
        ("crossfit_em", {"crossfit_rounds": 0}, "crossfit_rounds must lie between 1 and 20"),
    ]:
        with pytest.raises(services.LaunchError, match=message):
            services.check_launch_settings(
                project, {**TINY, "label_source": source, "params": params}
            )
    # offered on a class project's train page, not on a region project's; auto never tries it
    assert (
        'value="crossfit_em"' in admin_page.get(f"/projects/{project.id}/train/").content.decode()
    )
    region_page = admin_page.get(f"/projects/{region.id}/train/")
    assert region_page.status_code == 200
    assert 'value="crossfit_em"' not in region_page.content.decode()
    with pytest.raises(ValueError, match="unknown crowd model"):
        crowd_models.check_candidates("dawid_skene,crossfit_em")


@pytest.mark.parametrize("n_train, folds", [(2, 2), (3, 2)])
def test_too_few_crowd_items_for_the_folds_fail_the_run_with_the_reason(
    project, admin_user, n_train, folds
):
    """Three items in two folds leave a fold classifier one item to train on."""
    make_training_set(project, n_train=n_train, n_holdout=2, experts=False)
    run = _launch(project, admin_user, params={"crossfit_folds": folds})
    run_training.apply(args=(run.pk,))
    run.refresh_from_db()
    assert run.status == "failed"
    assert run.failure_reason == (
        f"crossfit_em in {folds} folds needs more than {n_train} crowd-labelled training items: "
        "each fold classifier trains on the other folds' items, two at least"
    )
