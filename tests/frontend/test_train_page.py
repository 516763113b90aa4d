"""The run page in Chromium: a finished run's report plots and curves, and live progress.

Uses the shared browser fixtures of ``tests/frontend/conftest.py`` (``page``, ``login``).
"""

from __future__ import annotations

import pytest

from labeling.models import Membership
from tests.factories import MembershipFactory, UserFactory
from tests.training.test_runs import make_training_set, new_run
from training.engine import chart_style
from training.models import TrainingRun
from training.tasks import run_training

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def browser_page(project, page, login, browser_errors):
    """A Chromium page logged in as the project's admin."""
    admin = UserFactory(username="train-admin")
    MembershipFactory(project=project, user=admin, role=Membership.Role.ADMIN)
    login(page, admin.username)
    return page, browser_errors


def test_finished_run_shows_report_plots_and_curves(project, live_server, browser_page, artifacts_dir):
    page, errors = browser_page
    make_training_set(project, experts=False)
    earlier = new_run(project, label_source="dawid_skene", epochs=2)
    run = new_run(project, label_source="crowd_layer", epochs=3)
    for each in (earlier, run):
        run_training.apply(args=(each.pk,))
        each.refresh_from_db()
        assert each.status == "succeeded", each.failure_reason

    page.goto(f"{live_server.url}/runs/{run.pk}/")
    page.wait_for_selector("[data-testid=loss-curve] svg polyline")
    assert page.locator("[data-testid=loss-curve] svg circle").count() == 6  # train + hold-out
    assert page.locator("[data-testid=accuracy-curve] svg circle").count() == 3
    # Drawn in the site's palette (quorum.css), the one the dashboard's charts are drawn with.
    fills = page.eval_on_selector_all(
        "[data-testid=loss-curve] svg circle, [data-testid=accuracy-curve] svg circle",
        "circles => [...new Set(circles.map((c) => c.getAttribute('fill')))]",
    )
    assert fills == [chart_style.ACCENT, chart_style.SECOND, chart_style.GOOD]
    assert page.get_attribute("[data-testid=loss-curve] svg line", "stroke") == chart_style.GRID
    assert page.inner_text("[data-testid=run-status]") == "succeeded"
    for name in ("confusion", "roc", "calibration"):
        image = page.locator(f"img[data-testid=plot-{name}]")
        image.scroll_into_view_if_needed()
        page.wait_for_function("(img) => img.complete && img.naturalWidth > 0", arg=image.element_handle())
    comparison = page.locator("[data-testid=comparison] tbody tr")
    assert comparison.count() == 2
    assert page.inner_text("[data-testid=comparison] [data-testid=score-heading]") == "Balanced acc."
    assert page.locator("[data-testid=reliability] tbody tr").count() == 3
    assert page.locator("[data-testid=download]").is_visible()
    page.screenshot(path=str(artifacts_dir / "training-run-report.png"), full_page=True)
    assert errors == []

    page.goto(f"{live_server.url}/projects/{project.pk}/train/")
    assert page.locator("[data-testid=runs] tbody tr").count() == 2
    assert page.inner_text("[data-testid=runs] [data-testid=score-heading]") == "Balanced acc."
    page.screenshot(path=str(artifacts_dir / "training-launch-page.png"), full_page=True)


def test_running_run_page_follows_progress(project, live_server, browser_page, artifacts_dir):
    page, errors = browser_page
    run = new_run(project, status="running", epochs=4, current_epoch=1, progress=0.25)
    run.epoch_metrics.create(epoch=1, train_loss=0.9, holdout_loss=0.8, holdout_accuracy=0.5,
                             seconds=1, images_per_second=10)
    page.goto(f"{live_server.url}/runs/{run.pk}/")
    page.wait_for_selector("[data-testid=accuracy-curve] svg circle")

    run.epoch_metrics.create(epoch=2, train_loss=0.6, holdout_loss=0.55, holdout_accuracy=0.75,
                             seconds=1, images_per_second=10)
    TrainingRun.objects.filter(pk=run.pk).update(current_epoch=2, progress=0.5)
    page.wait_for_function(
        "() => document.querySelector('[data-testid=run-epoch]').textContent === '2'", timeout=10_000
    )
    assert page.locator("[data-testid=accuracy-curve] svg circle").count() == 2
    width = page.eval_on_selector(".progress .bar", "(bar) => bar.style.width")
    assert width == "50%"
    page.wait_for_timeout(600)  # let the bar's CSS transition end before the screenshot
    page.screenshot(path=str(artifacts_dir / "training-run-live.png"), full_page=True)

    assert errors == []

    page.click("button[data-action=cancel]")
    page.wait_for_selector("text=(cancelling…)")  # the page reloads once the API accepted it
    run.refresh_from_db()
    assert run.cancel_requested and run.status == "running"
    # the reload may abort a poll in flight; only script errors count here
    assert [e for e in errors if e.startswith("page error")] == []


def test_an_interruption_appears_on_the_open_run_page(project, live_server, browser_page):
    page, errors = browser_page
    run = new_run(project, status="running", epochs=4, current_epoch=2, progress=0.5)
    page.goto(f"{live_server.url}/runs/{run.pk}/")
    assert page.locator("[data-testid=interruptions]").is_hidden()
    TrainingRun.objects.filter(pk=run.pk).update(interruptions=[{
        "at": "2026-12-03T10:31:02+00:00", "noticed_at": "2026-12-03T10:31:03+00:00", "epoch": 2,
        "worker": "gpu-1 pid 41", "resumed_at": "2026-12-03T10:31:03+00:00",
        "resumed_by": "gpu-1 pid 57", "resumed_from_epoch": 2,
    }])
    page.wait_for_selector("[data-testid=interruptions] li", timeout=10_000)
    assert page.inner_text("[data-testid=interruptions]") == (
        "Interrupted at epoch 2: gpu-1 pid 41 stopped (last sign of life 2026-12-03 10:31:02 UTC);"
        " resumed from the checkpoint of epoch 2 on gpu-1 pid 57 at 2026-12-03 10:31:03 UTC."
    )
    page.reload()  # the server renders the same sentence
    assert "gpu-1 pid 41 stopped (last sign of life 2026-12-03 10:31:02 UTC); resumed from the " \
        "checkpoint of epoch 2 on gpu-1 pid 57 at 2026-12-03 10:31:03 UTC." in page.inner_text(
            "[data-testid=interruptions]")
    assert errors == []


# -- issue 18: numbers that tell the truth, as each role sees them ---------------------------


def _member(project, role: str):
    user = UserFactory(username=f"train-{role}")
    MembershipFactory(project=project, user=user, role=role)
    return user


def test_launch_form_shows_device_counts_and_estimate_then_launches_at_once(
    project, live_server, browser_page, artifacts_dir
):
    from unittest import mock

    page, errors = browser_page
    make_training_set(project, experts=False)  # 8 voted training items, 4 hold-out
    page.goto(f"{live_server.url}/projects/{project.pk}/train/")
    assert "CPU assumed" in page.inner_text("[data-testid=training-device]")
    assert page.input_value("input[name=image_size]") == "64"
    assert page.input_value("input[name=epochs]") == "3"
    assert page.input_value("select[name=class_balance]") == "auto"
    assert page.input_value("select[name=lead_metric]") == "balanced_accuracy"
    assert page.inner_text("[data-testid=n-train]") == "8"
    first = page.inner_text("[data-testid=estimate-value]")
    assert first.startswith("about ")
    assert "rough default" in page.inner_text("[data-testid=estimate-basis]")
    page.select_option("select[name=label_source]", "expert")
    assert page.inner_text("[data-testid=n-train]") == "0"  # no expert answer on training items
    assert page.inner_text("[data-testid=estimate-value]") == "–"
    page.select_option("select[name=label_source]", "dawid_skene")
    page.fill("input[name=backbone]", "test_resnet")
    page.fill("input[name=epochs]", "400")
    page.fill("input[name=image_size]", "512")
    assert page.inner_text("[data-testid=estimate-value]") not in ("–", first)
    plain = page.inner_text("[data-testid=estimate-value]")
    page.select_option("select[name=label_source]", "crossfit_em")  # + the fold classifiers
    assert page.inner_text("[data-testid=estimate-value]").startswith("at most ")
    assert page.inner_text("[data-testid=estimate-value]") != plain.replace("about", "at most")
    assert "EM rounds of 4 fold classifiers (2 epoch(s) each)" in page.inner_text("[data-testid=estimate-basis]")
    page.select_option("select[name=label_source]", "dawid_skene")
    page.fill("input[name=epochs]", "1")
    page.fill("input[name=image_size]", "16")
    page.screenshot(path=str(artifacts_dir / "training-launch-form-estimate.png"), full_page=True)

    page.select_option("select[name=weights]", "none")
    page.select_option("select[name=class_balance]", "sampler")
    with mock.patch("training.tasks.run_training.apply_async") as apply_async:
        page.click("button[type=submit]:has-text('Launch run')")
        page.wait_for_url(lambda url: "/runs/" in url)
    assert apply_async.called  # dispatched; the worker does the rest
    run = TrainingRun.objects.get()
    assert run.params["class_balance"] == "sampler"
    assert page.inner_text("[data-testid=run-status]") == "queued"
    assert page.inner_text("[data-testid=n-train-items]") == "8"
    assert page.inner_text("[data-testid=n-holdout-items]") == "4"
    page.screenshot(path=str(artifacts_dir / "training-run-queued-counts.png"), full_page=True)
    assert [e for e in errors if e.startswith("page error")] == []


@pytest.mark.parametrize("role", ["admin", "expert", "crowd"])
def test_report_of_a_one_class_model_per_role(project, live_server, new_page, login, browser_errors,
                                             artifacts_dir, role):
    from tests.training.test_training_api import one_class_evaluation

    run = one_class_evaluation(project)
    page = new_page()
    login(page, _member(project, role).username)
    response = page.goto(f"{live_server.url}/runs/{run.pk}/")
    if role == "crowd":
        assert response.status == 403
        assert page.locator("[data-testid=report]").count() == 0
        page.screenshot(path=str(artifacts_dir / f"training-report-{role}.png"), full_page=True)
        return
    # The header's counts are the run's own (15 hold-out items, as the report scored).
    assert page.inner_text("[data-testid=item-counts]") == "40 training items · 15 hold-out items"
    lead = page.locator("[data-testid=lead-metric]")
    assert "Balanced accuracy" in lead.inner_text() and "0.500" in lead.inner_text()
    lead_size = lead.locator("b").evaluate("(b) => parseFloat(getComputedStyle(b).fontSize)")
    accuracy_size = page.locator("[data-testid=accuracy]").evaluate(
        "(b) => parseFloat(getComputedStyle(b).fontSize)"
    )
    assert page.inner_text("[data-testid=accuracy]") == "0.867" and lead_size > accuracy_size
    flags = page.locator("[data-testid=report-flags]")
    assert flags.is_visible()
    assert "predicted pneumonia for every hold-out item" in flags.inner_text()
    assert "Recall of normal is 0" in flags.inner_text()
    assert "No hold-out item is labelled other" in flags.inner_text()
    other = page.locator("[data-testid=per-class] tr[data-class=other]")
    assert other.locator("td").nth(2).inner_text() == "–"
    assert page.locator("[data-testid=per-class] tr[data-class=normal] td.flagged").count() == 1
    assert "class-weighted loss" in page.inner_text("[data-testid=class-balance]")
    page.screenshot(path=str(artifacts_dir / f"training-report-{role}.png"), full_page=True)
    assert browser_errors == []
