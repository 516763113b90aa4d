"""The production description: docker-compose.yml and the files it points into platform/."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_has_the_production_services():
    services = _compose()["services"]
    assert set(services) == {"postgres", "redis", "web", "worker", "beat", "worker-gpu"}
    assert services["web"]["command"] == ["web"]
    assert services["worker"]["command"] == ["worker"]
    assert services["beat"]["command"] == ["beat"]
    gpu = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]


def test_entrypoint_roles_consume_the_right_queues():
    entrypoint = (ROOT / "platform/docker/entrypoint.sh").read_text()
    assert "granian --interface wsgi --respawn-failed-workers quorum.wsgi:application" in entrypoint
    assert "worker -Q default " in entrypoint
    assert "worker -Q gpu " in entrypoint
    assert "celery -A quorum beat " in entrypoint
    dockerfile = ROOT / _compose()["x-quorum"]["build"]["dockerfile"]
    assert dockerfile.exists()


def test_platform_is_not_a_python_package():
    # A package named platform would shadow the standard library module.
    assert not (ROOT / "platform" / "__init__.py").exists()
    import platform

    assert callable(platform.system)


def test_docker_compose_config_validates():
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode:
        pytest.skip("the docker compose client is not installed")
    result = subprocess.run(
        [docker, "compose", "-f", str(ROOT / "docker-compose.yml"), "config", "--quiet"],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr


def test_celery_routes_training_to_gpu_queue(settings):
    from quorum.celery import app

    assert settings.CELERY_TASK_DEFAULT_QUEUE == "default"
    route = app.amqp.router.route
    assert route({}, "training.tasks.run_training")["queue"].name == "gpu"
    # the sweep must not wait behind a training run on the gpu worker
    assert route({}, "training.tasks.sweep_training_runs")["queue"].name == "default"
    assert app.conf.beat_schedule["sweep-training-runs"]["task"] == "training.tasks.sweep_training_runs"
