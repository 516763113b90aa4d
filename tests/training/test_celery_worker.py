"""A real Celery worker process trains a tiny run end to end.

The worker gets the test's settings through its environment: the test database (committed rows,
hence ``transaction=True``), the same MEDIA_ROOT, eager mode off, and the broker from
``CELERY_BROKER_URL`` (Redis in CI; locally the file-system transport in a fresh folder, so the
worker never sees messages left over from the embedded server or earlier runs).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import pytest
from django.conf import settings as django_settings
from django.db import connection

from quorum.celery import app
from tests.factories import UserFactory
from tests.training.test_runs import TINY, make_training_set
from training import services
from training.models import TrainingRun

pytestmark = [
    pytest.mark.celery_worker,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
]

ROOT = Path(__file__).resolve().parents[2]
WAIT_SECONDS = 180


def _database_url() -> str:
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{Path(db['NAME']).resolve()}"
    if connection.vendor != "postgresql":
        pytest.skip(f"no worker database URL for {connection.vendor}")
    user = quote(db.get("USER") or "")
    password = f":{quote(db['PASSWORD'])}" if db.get("PASSWORD") else ""
    host = db.get("HOST") or "127.0.0.1"
    port = f":{db['PORT']}" if db.get("PORT") else ""
    return f"postgres://{user}{password}@{host}{port}/{db['NAME']}"


def _fresh_filesystem_broker(settings, var_dir: Path) -> None:
    """Point this process's producer and the worker at new, empty broker folders."""
    broker = var_dir / "broker"
    folders = {name: broker / name for name in ("queue", "processed", "control")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(folders["queue"]),
        "data_folder_out": str(folders["queue"]),
        "processed_folder": str(folders["processed"]),
        "store_processed": False,
        "control_folder": str(folders["control"]),
    }
    _drop_producer_pool()


def _drop_producer_pool() -> None:
    # the app caches its pools, whose connections keep the transport options they were opened
    # with; kombu keys its pools by those options, so forgetting the caches is enough
    app._pool = None
    app.amqp._producer_pool = None


@contextmanager
def worker_process(settings, tmp_path: Path, *, pool: str = "solo", env: dict | None = None):
    """A Celery worker on both queues, as a child process: yields (process, log path).

    ``pool="prefork"`` (one child) is how production runs training: the parent outlives a pool
    child that dies, and redelivers its message.
    """
    settings.CELERY_TASK_ALWAYS_EAGER = False
    var_dir = tmp_path / "var"
    var_dir.mkdir(parents=True, exist_ok=True)
    broker_url = django_settings.CELERY_BROKER_URL
    if broker_url.startswith("filesystem://"):
        _fresh_filesystem_broker(settings, var_dir)
    environment = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "quorum.settings",
        "DATABASE_URL": _database_url(),
        "MEDIA_ROOT": str(settings.MEDIA_ROOT),
        "QUORUM_VAR_DIR": str(var_dir),  # the worker's settings create the same broker folders
        "CELERY_BROKER_URL": broker_url,
        "CELERY_TASK_ALWAYS_EAGER": "false",
        "PYTHONUNBUFFERED": "1",
        # the tests' runs are tiny: more torch threads only contend with the machine's other
        # work (the broker-outage fault test: 51-79 s with torch's default, 24 s with one, on
        # a loaded 2-core machine)
        "OMP_NUM_THREADS": "1",
        **(env or {}),
    }
    log_path = tmp_path / "worker.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "quorum", "worker", "-Q", "gpu,default",
             "--pool", pool, "--concurrency", "1", "--prefetch-multiplier", "1",
             "--without-mingle", "--without-gossip", "--loglevel", "INFO",
             "--hostname", f"test-training-{os.getpid()}@%h"],
            cwd=ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        yield process, log_path
    finally:
        process.send_signal(signal.SIGTERM)  # warm shutdown: finish the current task, then exit
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        _drop_producer_pool()


@pytest.fixture
def worker(settings, tmp_path):
    with worker_process(settings, tmp_path) as started:
        yield started


def tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def test_a_worker_trains_a_queued_run(project, worker):
    process, log_path = worker
    make_training_set(project)
    admin = UserFactory(username="launcher", is_staff=True)
    run = services.launch_run(project, admin, label_source="dawid_skene", **{**TINY, "epochs": 2})
    assert TrainingRun.objects.get(pk=run.pk).status in ("queued", "running")

    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        run.refresh_from_db()
        if run.is_finished:
            break
        assert process.poll() is None, f"the worker exited early:\n{tail(log_path)}"
        time.sleep(1)
    assert run.status == "succeeded", f"{run.status}: {run.failure_reason}\n{tail(log_path)}"
    assert run.celery_task_id and run.device == "cpu"
    assert list(run.epoch_metrics.values_list("epoch", flat=True)) == [1, 2]
    assert run.evaluation.n_items == 4 and run.predictions.count() >= 4
