"""The dashboard's numbers and charts: agreement over time from the vote history, calibration
one panel per method, and the one chart style the run report's plots share."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image

from labeling import charts, reports
from labeling.aggregation.agreement import fleiss_kappa
from labeling.models import AggregationRun
from tests.factories import MembershipFactory, ProjectFactory, UserFactory
from tests.labeling.test_review import add_vote, build_scene
from training.engine import chart_style, metrics


def _workers(project, n):
    users = [UserFactory(username=f"rep-w{i}") for i in range(n)]
    for user in users:
        MembershipFactory(project=project, user=user)
    return users


def test_agreement_series_follows_the_votes_not_the_runs(db):
    """Seven runs of one aggregation share one kappa (the seeded demo's flat line); the series
    is computed from the votes cast up to each point, so it moves as agreement does."""
    from tests.factories import ItemFactory

    project = ProjectFactory(name="Series", classes=["normal", "abnormal"])
    workers = _workers(project, 3)
    items = [ItemFactory(project=project) for _ in range(12)]
    # The first six items: all three agree; the last six: the third worker always dissents.
    for n, item in enumerate(items):
        truth, other = ("normal", "abnormal") if n % 2 else ("abnormal", "normal")
        answers = [truth, truth, truth] if n < 6 else [truth, truth, other]
        for worker, answer in zip(workers, answers, strict=True):
            add_vote(item, worker, answer)
    for method in ("majority_vote", "dawid_skene", "glad", "mace", "one_coin", "a", "b"):
        AggregationRun.objects.create(
            project=project, method=method, status=AggregationRun.Status.SUCCEEDED,
            fleiss_kappa=0.4, krippendorff_alpha=0.41, n_votes=36,
        )
    series = reports.agreement_series(project, points=12)
    assert [p["votes"] for p in series] == list(range(3, 37, 3))
    kappas = [p["fleiss_kappa"] for p in series]
    assert kappas[:6] == pytest.approx([1.0] * 6)
    assert kappas[-1] < kappas[6] < 1.0  # falls as the dissenting votes come in
    counts = np.zeros((12, 2))
    for n in range(12):
        truth = 0 if n % 2 else 1
        counts[n, truth] = 3 if n < 6 else 2
        counts[n, 1 - truth] += 0 if n < 6 else 1
    assert kappas[-1] == pytest.approx(fleiss_kappa(counts))
    svg = charts.agreement_over_time(series)
    assert svg.count('<g id="data-') == 2  # kappa and alpha lines
    assert "votes cast" in svg


def test_agreement_series_before_any_pair_of_votes(db):
    from tests.factories import ItemFactory

    project = ProjectFactory(name="Lonely", classes=["normal", "abnormal"])
    (worker,) = _workers(project, 1)
    add_vote(ItemFactory(project=project), worker, "normal")
    series = reports.agreement_series(project)
    assert [(p["votes"], p["fleiss_kappa"]) for p in series] == [(1, None)]
    assert "No item has two votes yet" in charts.agreement_over_time(series)
    assert "No votes yet" in charts.agreement_over_time([])


def test_calibration_draws_one_panel_per_method(project):
    build_scene(project)
    scores = reports.dashboard(project)["methods"]
    svg = charts.calibration(scores)
    for s in scores:
        assert f"{s['method']} (n={s['n']})" in svg
    assert len(re.findall(r'<g id="axes_\d+"', svg)) == len(scores)


def test_dash_is_explained_where_a_class_has_no_holdout_item(db):
    project = ProjectFactory(name="Three classes", classes=["normal", "pneumonia", "other"])
    admin = UserFactory(username="rep-admin")
    MembershipFactory(project=project, user=admin, role="admin")
    build_scene(project)
    from django.test import Client

    client = Client()
    client.force_login(admin)
    html = client.get(f"/projects/{project.id}/").content.decode()
    cell = re.search(r'<abbr class="none" data-testid="no-holdout-other" title="([^"]+)">–</abbr>', html)
    assert cell and "No hold-out item has the expert answer other" in cell.group(1)
    assert 'data-testid="methods-footnote"' in html


def test_dashboard_and_report_plots_share_the_chart_style(project):
    """The run report's PNGs used matplotlib's default blue and font: now the site palette."""
    build_scene(project)
    svg = charts.calibration(reports.dashboard(project)["methods"])
    assert chart_style.PALETTE[0] in svg and "DejaVu Sans" in svg
    y_true = np.array([0, 1, 0, 1, 1, 0])
    probabilities = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.1, 0.9], [0.45, 0.55], [0.7, 0.3]])
    png = Image.open(io.BytesIO(metrics.plot_roc_curves(y_true, probabilities, ["a", "b"])))
    pixels = {tuple(p) for p in np.asarray(png.convert("RGB")).reshape(-1, 3).tolist()}
    accent = tuple(int(chart_style.ACCENT[i : i + 2], 16) for i in (1, 3, 5))
    assert accent in pixels
    assert (0x1F, 0x77, 0xB4) not in pixels  # matplotlib's default first colour


def test_the_sites_stylesheet_holds_the_charts_palette():
    """The run page's live curves (train.js) take their colours from quorum.css's variables:
    they must be chart_style's, which the dashboard's and the report's charts are drawn with."""
    from django.conf import settings

    css = (settings.BASE_DIR / "frontend" / "static" / "frontend" / "quorum.css").read_text()
    root = dict(re.findall(r"--([a-z]+):\s*(#[0-9a-fA-F]{3,6})", css.split("}", 1)[0]))
    assert {name: root[name] for name in ("accent", "second", "ok", "grid", "muted", "fg")} == {
        "accent": chart_style.ACCENT, "second": chart_style.SECOND, "ok": chart_style.GOOD,
        "grid": chart_style.GRID, "muted": chart_style.MUTED, "fg": chart_style.FOREGROUND,
    }  # fmt: skip
