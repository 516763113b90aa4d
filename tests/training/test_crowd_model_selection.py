"""The crowd model a run trains: ``auto`` picks it by validation on gold and expert-labelled
items outside the hold-out (or falls back to a named default), the run records and shows it, and
the report draws the learned annotator confusions."""

from __future__ import annotations

import io

import numpy as np
import pytest
from django.urls import reverse
from PIL import Image

from labeling.models import Item
from tests.factories import label_of
from tests.training.test_runs import TINY, make_training_set, new_run
from training import crowd_models, selectors, services
from training.annotator_pictures import plot_annotator_confusions, top_annotators
from training.models import TrainingRun

pytestmark = pytest.mark.django_db

CANDIDATES = "dawid_skene,crowd_layer/mw/identity"


def _validation_split(project, n_gold: int, n_expert: int) -> dict:
    """48 crowd items + 4 hold-out; the first ``n_gold`` are gold, the next ``n_expert`` have an
    expert answer from review (both: known answers outside the hold-out)."""
    made = make_training_set(project, n_train=48, n_holdout=4, experts=False)
    names = project.class_names
    known = made["items"][: n_gold + n_expert]
    for n, item in enumerate(known):
        item.expert_answer = label_of(project, names[made["items"].index(item) % 2])
        item.is_gold = n < n_gold
        item.save(update_fields=["expert_answer", "is_gold"])
    return {**made, "validation": known, "holdout": made["items"][48:]}


@pytest.fixture
def engine_calls(monkeypatch):
    """Every call of the engine's train: what it trained on and what it was scored on."""
    import training.engine as engine

    calls = []
    real = engine.train

    def spy(config, train_data, holdout_data=None, **kwargs):
        calls.append(
            {
                "source": config.label_source,
                "form": config.crowd_layer_form,
                "init": config.crowd_layer_init,
                "epochs": config.epochs,
                "train": list(train_data.ids),
                "scored": list(holdout_data.ids) if holdout_data is not None else [],
            }
        )
        return real(config, train_data, holdout_data, **kwargs)

    monkeypatch.setattr(engine, "train", spy)
    return calls


def test_auto_picks_by_validation_and_records_it(project, admin_page, engine_calls):
    made = _validation_split(project, n_gold=20, n_expert=14)
    validation = {i.id for i in made["validation"]}
    holdout = {i.id for i in made["holdout"]}
    run = new_run(project, label_source="auto", epochs=3, params={"auto_candidates": CANDIDATES})
    services.execute_run(run.pk)
    run.refresh_from_db()
    assert run.status == "succeeded", run.failure_reason

    record = run.params["crowd_model"]
    assert record["picked_by"] == "validation"
    assert (record["n_validation"], record["n_gold"], record["n_expert"]) == (34, 20, 14)
    assert set(record["scores"]) == {"dawid_skene", "crowd_layer/mw/identity"}
    best = max(record["scores"].values(), key=lambda s: s["balanced_accuracy"])
    assert record["scores"][record["name"]]["balanced_accuracy"] == best["balanced_accuracy"]
    assert record["candidate_epochs"] == crowd_models.CANDIDATE_EPOCHS == 2

    # two short candidate runs, trained without the validation items and scored on them only
    # (never on the hold-out), then the chosen model's full run
    candidates, final = engine_calls[:2], engine_calls[2]
    assert len(engine_calls) == 3
    for call in candidates:
        assert call["epochs"] == 2
        assert set(call["scored"]) == validation
        assert not set(call["train"]) & (validation | holdout)
    assert {
        (c["source"], c["form"] if c["source"] == "crowd_layer" else None) for c in candidates
    } == {
        ("dawid_skene", None),
        ("crowd_layer", "mw"),
    }
    chosen = crowd_models.CrowdModel.parse(record["name"])
    assert final["source"] == chosen.source and final["epochs"] == 3
    assert set(final["scored"]) == holdout
    assert validation <= set(final["train"])  # the chosen model then trains on every crowd item
    if chosen.form:
        assert (final["form"], final["init"]) == (chosen.form, chosen.init)

    # the report keeps the record; API and page say it
    assert run.evaluation.extra["crowd_model"] == record
    sentence = crowd_models.sentence(record)
    assert sentence.startswith(f"crowd model: {chosen.label} — picked by validation on 34 items")
    assert "(20 gold, 14 expert-labelled) outside the hold-out" in sentence
    for name, score in record["scores"].items():
        assert (
            f"{crowd_models.CrowdModel.parse(name).label} {score['balanced_accuracy']:.3f}"
            in sentence
        )
    page = admin_page.get(reverse("training-run-page", args=[run.pk])).content.decode()
    assert 'data-testid="crowd-model"' in page
    assert sentence in page
    api = admin_page.get(f"/api/training-runs/{run.pk}/").json()
    assert api["crowd_model"]["sentence"] == sentence

    # a resumed or redelivered auto run keeps its pick instead of choosing again
    assert services._crowd_model(run, None, None) == record


def test_too_few_validation_items_train_the_named_default_and_draw_the_confusions(
    project, admin_page, engine_calls
):
    made = _validation_split(project, n_gold=5, n_expert=3)
    run = new_run(project, label_source="auto")
    services.execute_run(run.pk)
    run.refresh_from_db()
    assert run.status == "succeeded", run.failure_reason
    record = run.params["crowd_model"]
    assert record["picked_by"] == "default"
    assert record["name"] == crowd_models.DEFAULT == "crowd_layer/mw/identity"
    assert (
        "only 8 gold or expert-labelled items outside the hold-out (30 needed" in record["reason"]
    )
    assert len(engine_calls) == 1  # nothing tried: the default trains at once
    assert (engine_calls[0]["source"], engine_calls[0]["form"], engine_calls[0]["init"]) == (
        "crowd_layer",
        "mw",
        "identity",
    )
    page = admin_page.get(reverse("training-run-page", args=[run.pk])).content.decode()
    assert "crowd model: crowd layer MW, identity init — the default: only 8 gold" in page

    # the learned confusions of the three voters, as a picture on the page and in the API report
    picture = selectors.annotator_picture_file(run)
    assert picture is not None
    with Image.open(picture) as image:
        assert image.format == "PNG" and image.width > 200 and image.height > 100
    url = reverse("training-run-plot", args=[run.pk, "annotators"])
    assert f'src="{url}"' in page and 'data-testid="plot-annotators"' in page
    api = admin_page.get(f"/api/training-runs/{run.pk}/").json()
    assert api["evaluation"]["plots"]["annotators"] == url
    served = admin_page.get(url)
    assert served.status_code == 200 and served["Content-Type"] == "image/png"
    assert b"".join(served.streaming_content) == picture.read_bytes()
    assert len(made["workers"]) == 3 == len(run.annotator_reliability)


def test_a_run_without_learned_confusions_has_no_picture(project, admin_page):
    make_training_set(project, experts=False)
    run = new_run(project, label_source="dawid_skene")
    services.execute_run(run.pk)
    run.refresh_from_db()
    assert run.status == "succeeded", run.failure_reason
    assert selectors.annotator_picture_file(run) is None
    assert selectors.crowd_model_of(run) is None
    url = reverse("training-run-plot", args=[run.pk, "annotators"])
    assert admin_page.get(url).status_code == 404
    assert (
        "annotators"
        not in admin_page.get(f"/api/training-runs/{run.pk}/").json()["evaluation"]["plots"]
    )


def test_a_crowd_layer_run_trains_the_form_it_was_launched_with_and_names_it(project, admin_page):
    make_training_set(project, experts=False)
    run = new_run(
        project, label_source="crowd_layer",
        params={"crowd_layer_form": "vw+b", "crowd_layer_init": "identity"},
    )  # fmt: skip
    config = services.train_config(run, services.build_training_data(run))
    assert (config.crowd_layer_form, config.crowd_layer_init) == ("vw+b", "identity")
    services.execute_run(run.pk)
    run.refresh_from_db()
    assert run.status == "succeeded", run.failure_reason
    assert run.evaluation.extra["crowd_model"]["name"] == "crowd_layer/vw+b/identity"
    page = admin_page.get(reverse("training-run-page", args=[run.pk])).content.decode()
    assert "crowd model: crowd layer VW+B, identity init — set at launch" in page
    assert selectors.annotator_picture_file(run) is not None


@pytest.mark.parametrize(
    "source, params, message",
    [
        ("crowd_layer", {"crowd_layer_form": "diagonal"}, "unknown crowd_layer_form 'diagonal'"),
        ("crowd_layer", {"crowd_layer_init": "random"}, "unknown crowd_layer_init 'random'"),
        ("crowd_layer", {"crowd_layer_form": 3}, "wrong type"),
        ("dawid_skene", {"crowd_layer_form": "mw"}, "apply to crowd_layer runs only"),
        ("auto", {"crowd_layer_init": "identity"}, "auto picks them by validation"),
        (
            "auto",
            {"auto_candidates": "dawid_skene,crowd_layer/xx/identity"},
            "unknown crowd layer form 'xx'",
        ),
        ("auto", {"auto_candidates": "expert"}, "unknown crowd model 'expert'"),
        ("crowd_layer", {"auto_candidates": "dawid_skene"}, "applies to auto runs only"),
    ],
)
def test_unknown_crowd_model_settings_are_a_400_and_write_nothing(
    project, admin_client, source, params, message
):
    response = admin_client.post(
        f"/api/projects/{project.id}/training-runs/",
        {**TINY, "label_source": source, "params": params},
        format="json",
    )
    assert response.status_code == 400
    assert message in response.json()["params"][0]
    assert not TrainingRun.objects.exists()


def test_a_known_form_launches(project, admin_client):
    from unittest import mock

    with mock.patch("training.tasks.run_training.apply_async"):
        response = admin_client.post(
            f"/api/projects/{project.id}/training-runs/",
            {**TINY, "label_source": "crowd_layer", "params": {"crowd_layer_form": "mw"}},
            format="json",
        )
    assert response.status_code == 201, response.json()
    assert response.json()["params"]["crowd_layer_form"] == "mw"
    assert response.json()["crowd_model"]["name"] == "crowd_layer/mw/dawid_skene"


def test_the_web_lists_match_the_engine():
    from training.engine.crowd_layer import CROWD_LAYER_FORMS, CROWD_LAYER_INITS

    assert crowd_models.CROWD_LAYER_FORMS == CROWD_LAYER_FORMS
    assert crowd_models.CROWD_LAYER_INITS == CROWD_LAYER_INITS
    from training.engine.trainer import TrainConfig

    defaults = TrainConfig(num_classes=2)
    assert (crowd_models.LAUNCH_FORM, crowd_models.LAUNCH_INIT) == (
        defaults.crowd_layer_form, defaults.crowd_layer_init
    )
    for name in (*crowd_models.CANDIDATES, crowd_models.DEFAULT):
        assert crowd_models.CrowdModel.parse(name).name == name


def test_validation_items_are_known_answers_outside_the_hold_out(project):
    made = _validation_split(project, n_gold=3, n_expert=2)
    run = new_run(project, label_source="auto")
    chosen = crowd_models.validation_items(run)
    assert [i.id for i in chosen] == [i.id for i in made["validation"]]
    assert not any(i.is_holdout for i in chosen)
    assert (
        Item.objects.filter(project=project, is_holdout=True, expert_answer__isnull=False).count()
        == 4
    )


def test_the_confusion_grid_shows_the_most_active_annotators_first():
    assert top_annotators([3, 10, 0, 7, 10], limit=3) == [1, 4, 3]
    assert top_annotators([0, 0]) == []
    rng = np.random.default_rng(0)
    confusions = rng.dirichlet(np.ones(3), size=(20, 3))
    png = plot_annotator_confusions(
        confusions, [f"worker{i}" for i in range(20)], list(range(20)), ["a", "b", "c"]
    )
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG"
        # 12 annotators in 4 columns: a grid wider than tall, and larger than one heatmap
        assert image.width > image.height > 200
    with pytest.raises(ValueError, match="one name and one vote count"):
        plot_annotator_confusions(confusions, ["x"], [1], ["a", "b", "c"])
    with pytest.raises(ValueError, match=r"\[n_workers, K, K\]"):
        plot_annotator_confusions(confusions[:, 0], ["x"] * 20, [1] * 20, ["a", "b", "c"])
