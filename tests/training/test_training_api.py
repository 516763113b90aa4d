"""Training API and pages per role: admins launch and cancel, experts read, crowd sees nothing."""

from __future__ import annotations

from unittest import mock

import pytest
from django.core.files.base import ContentFile

from tests.conftest import _api_client, _page_client
from tests.factories import MembershipFactory, UserFactory
from tests.training.test_runs import TINY, new_run
from training import selectors
from training.models import Evaluation, TrainingRun

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
        apply_async.assert_called_once_with((run.pk,), task_id=run.celery_task_id)
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
    assert (run.backbone, run.image_size, run.epochs, run.params) == (
        "tf_efficientnet_lite0", 224, 10, {"trace_lambda": 0.05}
    )


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
    assert run.augment is False and run.params == {"trace_lambda": 0.02}
    refused = admin_page.post(f"/projects/{project.id}/train/", {**LAUNCH, "backbone": "nope"})
    assert refused.status_code == 400 and b"unknown timm model" in refused.content


def test_expert_cannot_launch_from_the_page(project, expert_page):
    response = expert_page.post(f"/projects/{project.id}/train/", LAUNCH)
    assert response.status_code == 403 and not TrainingRun.objects.exists()


def test_site_staff_are_admins(project, staff_client):
    run = new_run(project)
    assert staff_client.post(f"/api/training-runs/{run.id}/cancel/").status_code == 200
