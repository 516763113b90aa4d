"""Training API and pages per role: admins launch and cancel, experts read, crowd sees nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
from django.core.files.base import ContentFile

from labeling.services.aggregation import PUBLISH_RETRY_POLICY
from tests.conftest import _api_client, _page_client
from tests.factories import MembershipFactory, UserFactory
from tests.training.test_runs import TINY, make_training_set, new_run
from training import devices, selectors
from training.models import EpochMetric, Evaluation, TrainingRun

pytestmark = pytest.mark.django_db

ROLES = ["admin", "expert", "crowd", "outsider", "anonymous"]


@pytest.fixture
def user_for(project, other_project):
    def make(role: str):
        if role == "anonymous":
            return None
        user = UserFactory(username=f"{role}-user")
        target = other_project if role == "outsider" else project
        MembershipFactory(project=target, user=user, role=role if role != "outsider" else "admin")
        return user

    return make


@pytest.fixture
def finished_run(project):
    """A succeeded run with a model file and report plots (faked: the lifecycle tests train)."""
    run = new_run(project, status="succeeded", current_epoch=1, progress=1.0)
    folder = selectors.run_folder(run)
    folder.mkdir(parents=True)
    (folder / selectors.MODEL_NAME).write_bytes(b"model-bytes")
    evaluation = Evaluation(
        run=run, n_items=4, accuracy=0.75, balanced_accuracy=0.75, roc_auc=0.8, ece=0.1,
        per_class={"normal": {"precision": 1, "recall": 0.5, "f1": 0.67, "support": 2, "roc_auc": 0.8}},
        confusion=[[1, 1], [0, 2]],
    )
    evaluation.roc_plot.save("roc.png", ContentFile(b"\x89PNG\r\n\x1a\nfake"), save=False)
    evaluation.save()
    run.epoch_metrics.create(epoch=1, train_loss=0.7, holdout_loss=0.6, holdout_accuracy=0.75,
                             seconds=1, images_per_second=10)
    return run


LAUNCH = {"label_source": "expert", **TINY}
EXPECTED_LAUNCH = {"admin": 201, "expert": 403, "crowd": 403, "outsider": 404, "anonymous": 401}


@pytest.mark.parametrize("role", ROLES)
def test_only_admins_launch(role, project, user_for, django_capture_on_commit_callbacks):
    client = _api_client(user_for(role))
    with mock.patch("training.tasks.run_training.apply_async") as apply_async:
        with django_capture_on_commit_callbacks(execute=True):
            response = client.post(f"/api/projects/{project.id}/training-runs/", LAUNCH, format="json")
    assert response.status_code == EXPECTED_LAUNCH[role], response.content
    if role == "admin":
        body = response.json()
        assert body["status"] == "queued" and body["backbone"] == "test_resnet"
        run = TrainingRun.objects.get(pk=body["id"])
        apply_async.assert_called_once_with(
            (run.pk,), task_id=run.celery_task_id, retry_policy=PUBLISH_RETRY_POLICY
        )
    else:
        assert not TrainingRun.objects.exists() and not apply_async.called


@pytest.mark.parametrize(
    "change, field, message",
    [
        ({"backbone": "resnet_from_mars"}, "backbone", "unknown timm model"),
        ({"weights": "file", "weights_path": "/no/such/file.pth"}, "weights_path", "does not exist"),
        ({"label_source": "mil"}, "label_source", "only for bag projects"),
        ({"epochs": 0}, "epochs", ""),
    ],
)
def test_launch_validation(project, admin_client, change, field, message):
    response = admin_client.post(
        f"/api/projects/{project.id}/training-runs/", {**LAUNCH, **change}, format="json"
    )
    assert response.status_code == 400
    assert message in " ".join(response.json()[field])


def test_launch_with_a_weights_file_and_defaults(project, admin_client, tmp_path):
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"x")
    with mock.patch("training.tasks.run_training.apply_async"):
        response = admin_client.post(
            f"/api/projects/{project.id}/training-runs/",
            {"label_source": "crowd_layer", "weights": "file", "weights_path": str(weights),
             "params": {"trace_lambda": 0.05}},
            format="json",
        )
    assert response.status_code == 201, response.content
    run = TrainingRun.objects.get()
    # no worker has reported a device: the CPU defaults, and the report leads with balanced
    # accuracy; the class-imbalance remedy is auto
    assert (run.backbone, run.image_size, run.epochs, run.batch_size) == (
        "tf_efficientnet_lite0", 64, 3, 32
    )
    assert run.params == {
        "trace_lambda": 0.05, "class_balance": "auto", "lead_metric": "balanced_accuracy"
    }


READ = {"admin": 200, "expert": 200, "crowd": 403, "outsider": 404, "anonymous": 401}


@pytest.mark.parametrize("role", ROLES)
def test_reading_runs_and_reports(role, project, user_for, finished_run):
    client = _api_client(user_for(role))
    expected = READ[role]
    urls = [
        f"/api/projects/{project.id}/training-runs/",
        f"/api/training-runs/{finished_run.id}/",
        f"/api/training-runs/{finished_run.id}/checkpoint/",
        f"/api/training-runs/{finished_run.id}/plots/roc/",
    ]
    for url in urls:
        assert client.get(url).status_code == expected, url
    if expected == 200:
        body = client.get(f"/api/training-runs/{finished_run.id}/").json()
        assert body["evaluation"]["accuracy"] == 0.75
        assert body["evaluation"]["plots"] == {"roc": f"/api/training-runs/{finished_run.id}/plots/roc/"}
        assert [m["epoch"] for m in body["epoch_metrics"]] == [1]
        download = client.get(body["checkpoint_url"])
        assert b"".join(download.streaming_content) == b"model-bytes"
        assert "attachment" in download["Content-Disposition"]
        assert client.get(f"/api/training-runs/{finished_run.id}/plots/confusion/").status_code == 404


CHANGE = {"admin": 200, "expert": 403, "crowd": 403, "outsider": 404, "anonymous": 401}


@pytest.mark.parametrize("role", ROLES)
def test_only_admins_cancel_and_resume(role, project, user_for):
    client = _api_client(user_for(role))
    run = new_run(project)
    response = client.post(f"/api/training-runs/{run.id}/cancel/")
    assert response.status_code == CHANGE[role]
    run.refresh_from_db()
    assert run.status == ("cancelled" if role == "admin" else "queued")
    if role == "admin":
        assert client.post(f"/api/training-runs/{run.id}/cancel/").status_code == 409
        resume = client.post(f"/api/training-runs/{run.id}/resume/")
        assert resume.status_code == 409 and "no checkpoint" in resume.json()["detail"]


def test_missing_run_is_404(admin_client):
    assert admin_client.get("/api/training-runs/999999/").status_code == 404


PAGE = {"admin": 200, "expert": 200, "crowd": 403, "outsider": 404, "anonymous": 302}


@pytest.mark.parametrize("role", ROLES)
def test_training_pages_per_role(role, project, user_for, finished_run):
    client = _page_client(user_for(role))
    train = client.get(f"/projects/{project.id}/train/")
    page = client.get(f"/runs/{finished_run.id}/")
    assert (train.status_code, page.status_code) == (PAGE[role], PAGE[role])
    if PAGE[role] == 200:
        assert (b'data-testid="launch-form"' in train.content) == (role == "admin")
        assert f"/runs/{finished_run.id}/".encode() in train.content
        assert b'data-testid="plot-roc"' in page.content and b"0.750" in page.content
        assert (b'data-action="cancel"' in page.content) == (role == "admin")


def test_admin_launches_from_the_page(project, admin_page):
    with mock.patch("training.tasks.run_training.apply_async"):
        response = admin_page.post(
            f"/projects/{project.id}/train/",
            {**{k: str(v) for k, v in LAUNCH.items() if k != "augment"}, "trace_lambda": "0.02"},
        )
    run = TrainingRun.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/runs/{run.id}/"
    assert run.augment is False
    assert run.params == {
        "trace_lambda": 0.02, "class_balance": "auto", "lead_metric": "balanced_accuracy"
    }
    refused = admin_page.post(f"/projects/{project.id}/train/", {**LAUNCH, "backbone": "nope"})
    assert refused.status_code == 400 and b"unknown timm model" in refused.content


def test_expert_cannot_launch_from_the_page(project, expert_page):
    response = expert_page.post(f"/projects/{project.id}/train/", LAUNCH)
    assert response.status_code == 403 and not TrainingRun.objects.exists()


def test_site_staff_are_admins(project, staff_client):
    run = new_run(project)
    assert staff_client.post(f"/api/training-runs/{run.id}/cancel/").status_code == 200


# -- issue 18: counts from the start, device defaults, the remedy and the lead metric ---------


def write_worker_report(device: str = "cuda", backbones=("test_resnet", "resnet18")) -> None:
    """What a training worker's report says (training.devices.write_worker_report's format)."""
    path = devices.report_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(
        {"device": device, "device_name": "NVIDIA H200" if device == "cuda" else "x86_64",
         "backbones": list(backbones)}
    ))


def test_launch_counts_items_from_the_start(project, admin_client):
    make_training_set(project, experts=False)  # 8 voted training items, 4 hold-out
    with mock.patch("training.tasks.run_training.apply_async"):
        crowd = admin_client.post(
            f"/api/projects/{project.id}/training-runs/", {**LAUNCH, "label_source": "dawid_skene"},
            format="json",
        )
        expert = admin_client.post(f"/api/projects/{project.id}/training-runs/", LAUNCH, format="json")
    assert crowd.status_code == 201, crowd.content
    assert (crowd.json()["status"], crowd.json()["n_train_items"]) == ("queued", 8)
    assert crowd.json()["n_holdout_items"] == 4
    # no training item has an expert answer: nothing to train on with that source
    assert (expert.json()["n_train_items"], expert.json()["n_holdout_items"]) == (0, 4)


def test_backbones_are_checked_against_the_workers_report(project, admin_client):
    write_worker_report(backbones=["test_resnet", "test_efficientnet"])
    with mock.patch("training.tasks.run_training.apply_async"):
        known = admin_client.post(
            f"/api/projects/{project.id}/training-runs/",
            {**LAUNCH, "backbone": "test_resnet.r160_in1k"}, format="json",
        )
        # a real timm model, but the workers' timm cannot build it: refused, with the names
        # the report has
        unknown = admin_client.post(
            f"/api/projects/{project.id}/training-runs/", {**LAUNCH, "backbone": "test_vit"},
            format="json",
        )
        misspelt = admin_client.post(
            f"/api/projects/{project.id}/training-runs/",
            {**LAUNCH, "backbone": "test_efficientnet_b9"}, format="json",
        )
    assert known.status_code == 201, known.content
    assert (unknown.status_code, misspelt.status_code) == (400, 400)
    assert unknown.json()["backbone"] == ["unknown timm model 'test_vit'"]
    assert misspelt.json()["backbone"] == [
        "unknown timm model 'test_efficientnet_b9'; similar: test_efficientnet"
    ]


def test_the_web_process_launches_without_importing_torch(project, tmp_path):
    """The launch's own work (settings check, counts) imports neither torch nor timm, which
    took 6 of the 7 s a launch used to take; the worker's report stands in for timm."""
    write_worker_report()
    script = (
        "import sys, django; django.setup()\n"
        "from labeling.models import Project\n"
        "from training import services\n"
        "project = Project(name='p', task_type='image')\n"
        "services.check_launch_settings(project, {'backbone': 'resnet18', 'weights': 'none',"
        " 'label_source': 'expert', 'params': {'class_balance': 'auto'}})\n"
        "print(sorted(m for m in ('torch', 'timm') if m in sys.modules))\n"
    )
    from django.conf import settings

    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "quorum.settings",
             "MEDIA_ROOT": str(settings.MEDIA_ROOT)},
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_the_web_application_loads_without_torch_and_the_worker_preloads_it():
    """The site (WSGI application and every URL's views, the dashboard's charts among them)
    imports no torch, timm or torchvision: the engine's names load their modules on first use.
    A worker imports them before its pool forks (training.tasks.preload_engine)."""
    script = (
        "import sys\n"
        "import quorum.wsgi\n"
        "from django.urls import get_resolver\n"
        "get_resolver().url_patterns\n"
        "heavy = ('torch', 'timm', 'torchvision')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
        "import training.engine as engine\n"
        "print(engine.train.__module__, engine.trainer.__name__)\n"
        "from training.tasks import preload_engine\n"
        "preload_engine()\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=180,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "quorum.settings"},
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr
    web, engine, worker = done.stdout.strip().splitlines()[-3:]
    assert web == "[]"
    assert engine == "training.engine.trainer training.engine.trainer"
    assert worker == "['timm', 'torch', 'torchvision']"


@pytest.mark.parametrize(
    "report, expected",
    [("cuda", (224, 10, "CUDA (NVIDIA H200), reported by the worker")),
     ("cpu", (64, 3, "CPU (x86_64), reported by the worker")),
     (None, (64, 3, "CPU assumed: no training worker has reported yet"))],
)
def test_form_defaults_follow_the_workers_device(project, admin_page, report, expected):
    if report:
        write_worker_report(report)
    page = admin_page.get(f"/projects/{project.id}/train/")
    size, epochs, label = expected
    assert f'name="image_size" type="number" min="16" value="{size}"'.encode() in page.content
    assert f'name="epochs" type="number" min="1" value="{epochs}"'.encode() in page.content
    assert label.encode() in page.content
    basis = page.context["estimate"]
    assert basis["device"] == ("cuda" if report == "cuda" else "cpu")
    assert basis["n_holdout"] == 0 and basis["n_train"]["dawid_skene"] == 0


def test_without_a_report_the_newest_runs_device_decides(project):
    new_run(project, status="succeeded", device="cuda:0")
    assert devices.training_device().kind == "cuda"
    assert devices.launch_defaults()["image_size"] == 224


def test_estimate_uses_the_rate_measured_on_the_device(project):
    run = new_run(project, status="succeeded", device="cpu", backbone="resnet18.a1_in1k",
                  image_size=64, n_train_items=300, n_holdout_items=90)
    # 20 s for 300 + 90/3 = 330 item-passes: 60.6 ms each, some of it the per-item overhead
    run.epoch_metrics.create(epoch=1, train_loss=1, seconds=20.0, images_per_second=20)
    basis = devices.estimate_basis(project, devices.training_device())
    overhead = devices.ITEM_OVERHEAD["cpu"]
    assert basis["item_overhead"] == overhead
    assert basis["rates"]["resnet18"] == pytest.approx((20 / 330 - overhead) / 64**2)
    seconds, measured = devices.estimate_seconds(basis, "resnet18", 64, 2, 300, 90)
    assert measured and seconds == pytest.approx(basis["startup_seconds"] + 40.0)
    # four times the area: the area part four times, the overhead the same
    bigger, _ = devices.estimate_seconds(basis, "resnet18", 128, 2, 300, 90)
    area = 20 / 330 - overhead
    assert bigger == pytest.approx(basis["startup_seconds"] + 2 * 330 * (overhead + 4 * area))
    guess, measured = devices.estimate_seconds(basis, "convnext_tiny", 64, 2, 300, 90)
    assert not measured and guess != seconds


@pytest.mark.parametrize(
    "change, message",
    [({"class_balance": "oversample"}, "is not a valid choice"),
     ({"lead_metric": "f2"}, "is not a valid choice"),
     ({"params": {"class_balance": "oversample"}}, "class_balance must be one of"),
     ({"params": {"lead_metric": "f2"}}, "lead_metric must be one of")],
)
def test_remedy_and_lead_metric_are_validated(project, admin_client, change, message):
    response = admin_client.post(
        f"/api/projects/{project.id}/training-runs/", {**LAUNCH, **change}, format="json"
    )
    assert response.status_code == 400
    assert message in json.dumps(response.json())
    assert not TrainingRun.objects.exists()


def test_remedy_and_lead_metric_land_in_params(project, admin_client):
    with mock.patch("training.tasks.run_training.apply_async"):
        response = admin_client.post(
            f"/api/projects/{project.id}/training-runs/",
            {**LAUNCH, "class_balance": "sampler", "lead_metric": "macro_f1"}, format="json",
        )
    assert response.status_code == 201, response.content
    assert response.json()["params"] == {"class_balance": "sampler", "lead_metric": "macro_f1"}
    run = TrainingRun.objects.get()
    from training.services import train_config

    config = train_config(run, mock.Mock(class_names=["a", "b"]))
    assert config.class_balance == "sampler"


def one_class_evaluation(project, **run_values) -> TrainingRun:
    """The issue's run: a skewed hold-out (2 normal, 13 pneumonia) and a model that always says
    pneumonia; a third class has no hold-out item. The run is whole, as a finished one is: its
    item counts (set at launch) and its epoch, so that its page shows nothing a real run would
    not."""
    values = dict(status="succeeded", current_epoch=1, progress=1.0, n_train_items=40,
                  n_holdout_items=15)  # fmt: skip
    run = new_run(project, **{**values, **run_values})
    EpochMetric.objects.create(run=run, epoch=1, train_loss=0.62, holdout_loss=0.48,
                               holdout_accuracy=13 / 15, seconds=4.0, images_per_second=10.0)  # fmt: skip
    Evaluation.objects.create(
        run=run, n_items=15, accuracy=13 / 15, balanced_accuracy=0.5, roc_auc=0.5, ece=0.2,
        per_class={
            "normal": {"precision": None, "recall": 0.0, "f1": 0.0, "support": 2, "roc_auc": 0.5},
            "pneumonia": {"precision": 13 / 15, "recall": 1.0, "f1": 0.93, "support": 13,
                          "roc_auc": 0.5},
            "other": {"precision": None, "recall": None, "f1": None, "support": 0, "roc_auc": None},
        },
        confusion=[[0, 2, 0], [0, 13, 0], [0, 0, 0]],
        extra={"class_names": ["normal", "pneumonia", "other"],
               "class_balance": {"requested": "auto", "applied": "loss", "ratio": 2.878,
                                 "threshold": 1.5, "class_counts": [1214, 3494, 0],
                                 "class_weights": [1.94, 0.67, 0.0]}},
    )
    return run


def test_report_leads_with_balanced_accuracy_and_flags_the_classes(project, admin_client, expert_page):
    run = one_class_evaluation(project)
    summary = admin_client.get(f"/api/training-runs/{run.id}/").json()["evaluation"]["summary"]
    assert summary["lead"] == {"metric": "balanced_accuracy", "label": "Balanced accuracy",
                               "value": 0.5}
    assert [f["kind"] for f in summary["flags"]] == ["one_class", "zero_recall", "no_holdout"]
    assert [f["class"] for f in summary["flags"]] == ["pneumonia", "normal", "other"]
    rows = {row["name"]: row for row in summary["classes"]}
    assert rows["other"]["recall"] is None and rows["normal"]["precision"] is None
    assert rows["normal"]["predicted"] == 0 and rows["pneumonia"]["predicted"] == 15

    page = expert_page.get(f"/runs/{run.id}/").content.decode()
    lead = page.index('data-testid="lead-metric"')
    assert page.index("Balanced accuracy", lead) < page.index('data-testid="accuracy"')
    assert 'data-testid="flag-zero-recall"' not in page  # kinds keep their underscore
    assert 'data-testid="flag-zero_recall"' in page and 'data-testid="flag-no_holdout"' in page
    assert "Recall of normal is 0: the model found none of its 2 hold-out items." in page
    assert "No hold-out item is labelled other" in page
    assert "class-weighted loss (auto: largest/smallest class 2.88, threshold 1.5)" in page
    listing = expert_page.get(f"/projects/{project.id}/train/").content.decode()
    assert 'data-testid="run-flag" title="The model predicted pneumonia for every' in listing


def test_report_of_an_older_run_shows_undefined_scores_as_dashes(project, expert_page):
    run = new_run(project, status="succeeded", params={"lead_metric": "accuracy"})
    # stored before undefined scores were None: zeros for a class with no hold-out item
    Evaluation.objects.create(
        run=run, n_items=4, accuracy=0.75, balanced_accuracy=0.75, roc_auc=None, ece=0.1,
        per_class={"normal": {"precision": 1, "recall": 0.5, "f1": 0.67, "support": 2},
                   "pneumonia": {"precision": 0.67, "recall": 1.0, "f1": 0.8, "support": 2},
                   "other": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}},
        confusion=[[1, 1, 0], [0, 2, 0], [0, 0, 0]],
    )
    summary = selectors.report_summary(run, run.evaluation)
    assert summary["lead"]["metric"] == "accuracy"
    other = summary["classes"][2]
    assert (other["precision"], other["recall"], other["f1"]) == (None, None, None)
    assert [f["kind"] for f in summary["flags"]] == ["no_holdout"]
    page = expert_page.get(f"/runs/{run.id}/").content.decode()
    assert 'data-metric="accuracy"' in page
    assert 'title="no hold-out item of this class: recall undefined">–</span>' in page
