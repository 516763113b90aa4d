"""The README's run command, embedded mode: it migrates, seeds the demo, serves, and stops on Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from http.cookiejar import CookieJar
from pathlib import Path
from urllib.parse import urlencode

import numpy as np
import pytest

from labeling.management.commands.seed_demo import DEMO_ACCOUNTS

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _login(base: str, username: str, password: str) -> str:
    """Log in through the login form like a browser; return the home page HTML."""
    jar = CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    page = opener.open(f"{base}/login/", timeout=10).read().decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    body = urlencode({"username": username, "password": password, "csrfmiddlewaretoken": token})
    request = urllib.request.Request(
        f"{base}/login/", data=body.encode(), headers={"Referer": f"{base}/login/"}
    )
    response = opener.open(request, timeout=10)
    return response.read().decode()


@pytest.mark.slow
def test_embedded_run_serves_demo_and_stops_cleanly(tmp_path):
    if not (Path(os.environ.get("QUORUM_DATA_DIR", ROOT.parent / "shared" / "data"))).exists():
        pytest.skip("the demo needs the shared data folder")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL")}
    env.update(QUORUM_VAR_DIR=str(tmp_path / "var"), PYTHONUNBUFFERED="1")
    log = open(tmp_path / "run.log", "w+")
    process = subprocess.Popen(
        # --demo-items: every demo project, on fewer images (the full demo seeds for minutes)
        [sys.executable, "-m", "quorum.cli", "run", "--port", str(port), "--concurrency", "1",
         "--demo-items", "24"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            assert process.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
            try:
                urllib.request.urlopen(f"{base}/login/", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, "the site never answered"
                time.sleep(1)
        output = (tmp_path / "run.log").read_text()
        for username, password, role, _staff in DEMO_ACCOUNTS:
            assert f"{username:<8} {password:<14} {role}" in output
            home = _login(base, username, password)
            assert f'data-testid="username">{username}<' in home
            assert "Blood smears: white-cell type" in home
            assert "Blood smears: cells (boxes)" in home and "Blood smears: cell centres (points)" in home
        assert f"http://127.0.0.1:{port}/" in output
        worker_started = re.search(r"embedded@\S+ ready", output)
        deadline = time.monotonic() + 60
        while not worker_started and time.monotonic() < deadline:
            time.sleep(1)
            worker_started = re.search(r"embedded@\S+ ready", (tmp_path / "run.log").read_text())
        assert worker_started, "the Celery worker did not start"
        assert "beat: Starting" in (tmp_path / "run.log").read_text()  # the sweep's scheduler
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=60)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
    output = (tmp_path / "run.log").read_text()
    assert process.returncode == 0, output[-3000:]
    assert "Stopped." in output


@pytest.mark.django_db
def test_seed_demo_refuses_a_demo_too_small_for_gold_and_holdout(data_dir, settings):
    from django.core.management import CommandError, call_command

    from labeling.models import Project

    settings.QUORUM_DATA_DIR = data_dir
    with pytest.raises(CommandError, match="--max-items must be at least 20"):
        call_command("seed_demo", "--max-items", "5")
    assert not Project.objects.exists()


def test_pyproject_builds_without_setuptools_warnings():
    """The install step of the run command printed setuptools' deprecation box three times for
    the licence as a TOML table; the SPDX string form (setuptools>=77) says nothing."""
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dist = apply_configuration(Distribution(), ROOT / "pyproject.toml")
    assert [str(w.message).splitlines()[0] for w in caught] == []
    assert dist.metadata.license_expression == "MIT"


def test_seed_demo_import_bar_follows_the_import_to_its_total(capsys):
    import logging

    from labeling.management.commands.seed_demo import _import_bar

    console = logging.StreamHandler(sys.stderr)  # as settings.LOGGING's, on the captured stderr
    root = logging.getLogger()
    root.addHandler(console)
    try:
        with _import_bar("demo images") as progress:
            for done in range(1, 4):
                progress(done, 3, f"image{done}.png")
                logging.getLogger("tests.seed").warning("image%d read", done)
    finally:
        root.removeHandler(console)
    err = capsys.readouterr().err
    states = [(int(n), int(total)) for n, total in re.findall(r"(\d+)/(\d+) \[", err)]
    assert states[-1] == (3, 3) and all(n <= total for n, total in states)
    for segment in re.split(r"[\r\n]", err):
        assert not ("importing demo images" in segment and "read" in segment), segment


@pytest.mark.django_db
@pytest.mark.parametrize("task_type", ["boxes", "points"])
def test_seed_demo_region_project_is_fused_from_a_simulated_crowd(task_type, data_dir, settings):
    """The demo's region projects, on 8 smears: the expert boxes come in through the COCO
    import, the simulated crowd votes through the vote service, and a region run has fused them."""
    import io

    from labeling.management.commands.seed_demo import (
        BCCD_BOXES_PROJECT,
        BCCD_POINTS_PROJECT,
        BLIND_REGION_HOLDOUT_ITEMS,
        Command,
    )
    from labeling.models import AggregationRun, Item, Project, RegionConsensus, Vote

    settings.QUORUM_DATA_DIR = data_dir
    seed = Command(stdout=io.StringIO())
    users = seed._accounts()
    for _ in range(2):  # a second run changes nothing
        seed._bccd_region_project(data_dir / "bccd", users, task_type, 8, seed=7)
    name = BCCD_BOXES_PROJECT if task_type == "boxes" else BCCD_POINTS_PROJECT
    project = Project.objects.get(name=name)
    assert project.task_type == task_type and project.class_names == ["WBC", "RBC", "Platelets"]
    items = Item.objects.filter(project=project)
    assert items.count() == 8
    votes = Vote.objects.filter(project=project, kind=Vote.Kind.REGIONS, source=Vote.Source.SIMULATED)
    assert votes.values("item").distinct().count() == 8
    shape = "box" if task_type == "boxes" else "point"
    assert {r["shape"] for v in votes for r in v.regions} == {shape}
    # expert answers stay on gold and hold-out items only; a few hold-out items are left blind
    answered = items.filter(expert_regions__isnull=False)
    assert not answered.filter(is_gold=False, is_holdout=False).exists()
    assert items.filter(is_gold=True).exists()
    blind = items.filter(is_holdout=True, expert_regions__isnull=True).count()
    assert blind == min(BLIND_REGION_HOLDOUT_ITEMS, items.filter(is_holdout=True).count())
    run = AggregationRun.objects.get(project=project, trigger="command")
    assert run.status == AggregationRun.Status.SUCCEEDED, run.failure_reason
    consensus = RegionConsensus.objects.filter(run=run).select_related("item")
    assert consensus.count() == 8
    # the fused marks find the expert's cells: F1 at the project's match rule, over all smears
    from labeling.aggregation.regions.answers import detection_score, shapes_from_stored
    from labeling.aggregation.regions.datasets import read_voc_boxes

    threshold = project.region_match_iou if task_type == "boxes" else project.region_match_distance
    scores = []
    for c in consensus:
        truth = read_voc_boxes(data_dir / "bccd" / "Annotations" / (Path(c.item.source_name).stem + ".xml"))
        expert = [
            {"label": ["WBC", "RBC", "Platelets"].index(name), "shape": shape,
             "points": [box[:2], box[2:]] if shape == "box" else [[(box[0] + box[2]) / 2, (box[1] + box[3]) / 2]]}
            for box, name in zip(truth.boxes.tolist(), truth.classes, strict=True)
        ]
        scores.append(detection_score(shapes_from_stored(c.regions), shapes_from_stored(expert), task_type, threshold))
    assert np.mean(scores) > 0.7, scores
    assert "Simulated crowd on" in seed.stdout.getvalue()


def test_a_small_demo_takes_every_class_in_turn():
    from labeling.management.commands.seed_demo import _spread_over_classes

    rows = [{"c": c, "n": n} for n, c in enumerate("AAAAAAABBC")]
    picked = _spread_over_classes(rows, "c", 5)
    assert [r["c"] for r in picked] == ["A", "B", "C", "A", "B"]
    assert [r["n"] for r in picked] == [0, 7, 9, 1, 8]  # file order within a class
    assert _spread_over_classes(rows, "c", None) == rows and _spread_over_classes(rows, "c", 50) == rows
