"""Property-based robustness of the whole API (schemathesis over ``/api/schema/``), per role.

Each operation is called with generated data by a crowd worker, an expert and an admin
(token auth) of a small but complete project. Half the generated ids are swapped for real
objects' ids so that calls reach the views' logic rather than stopping at a 404. Every
response must be free of server errors and conform to the schema (status code documented ->
body and content type as documented).

Bounded: MAX_EXAMPLES examples per operation and role keep the run near two minutes on two
cores. ``QUORUM_SCHEMATHESIS_EXAMPLES`` raises it for a deeper local run.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from django.utils import timezone
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.renderers import OpenApiJsonRenderer
from hypothesis import HealthCheck, Phase, settings
from rest_framework.authtoken.models import Token
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
)

from labeling.models import Assignment
from tests.factories import ItemFactory
from tests.labeling.test_review import build_scene

MAX_EXAMPLES = int(os.environ.get("QUORUM_SCHEMATHESIS_EXAMPLES", "6"))
ROLES = ["crowd", "expert", "admin"]


def _schema_dict() -> dict:
    # Built in-process from the URLconf: the same document /api/schema/ serves.
    document = json.loads(OpenApiJsonRenderer().render(
        SchemaGenerator().get_schema(request=None, public=True)
    ))
    return document


schema = schemathesis.openapi.from_dict(_schema_dict())
schema.app = get_wsgi_application()
# Data that fits the schema: ill-typed path segments never reach a view (Django's URL resolver
# answers its own HTML 404), and ill-typed bodies are covered by the 400 tests of each area.
schema.config.generation.update(modes=[GenerationMode.POSITIVE])

# Path parameters that name an object, and which object of the world each one gets.
REAL_IDS = {
    "project_id": "project",
    "item_id": "item",
    "assignment_id": "lease",
    "user_id": "worker",
    "run_id": "training_run",
}


@pytest.fixture
def _keep_test_connection():
    """The raw WSGI app closes the DB connection after each request (as in production); in a
    test that connection holds the test's transaction, so keep it open like Django's Client."""
    for signal in (request_started, request_finished):
        signal.disconnect(close_old_connections)
    yield
    for signal in (request_started, request_finished):
        signal.connect(close_old_connections)


@pytest.fixture
def world(_keep_test_connection, project, crowd_user, expert_user, admin_user, settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    scene = build_scene(project, n_regular=3, n_holdout=2)
    lease = Assignment.objects.create(
        project=project, item=ItemFactory(project=project), worker=crowd_user,
        expires_at=timezone.now() + timedelta(minutes=10),
    )
    users = {"crowd": crowd_user, "expert": expert_user, "admin": admin_user}
    return {
        "project": project.pk,
        "item": scene.disputed[0].pk,
        "holdout_item": scene.holdout[0].pk,
        "lease": lease.pk,
        "worker": scene.workers[0].pk,
        "run": scene.runs["dawid_skene"].pk,
        "training_run": scene.model.pk,
        "tokens": {r: Token.objects.get_or_create(user=u)[0].key for r, u in users.items()},
    }


def _use_real_ids(case, world) -> None:
    """Swap even generated ids for real ones; odd ones stay random (and usually 404)."""
    for key, value in list((case.path_parameters or {}).items()):
        if not isinstance(value, int) or value % 2:
            continue
        if key in REAL_IDS:
            target = REAL_IDS[key]
            if key == "item_id" and "/holdout/" in case.path:
                target = "holdout_item"
            case.path_parameters[key] = world[target]
        elif key in ("id", "pk"):
            case.path_parameters[key] = (
                world["run"] if case.path.startswith("/api/aggregations/") else
                world["training_run"] if case.path.startswith(("/api/runs/", "/api/training")) else
                world["project"]
            )


@pytest.mark.slow
@pytest.mark.django_db
@pytest.mark.parametrize("role", ROLES)
@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_api_conforms_to_its_schema(case, role, world):
    _use_real_ids(case, world)
    headers = {"Authorization": f"Token {world['tokens'][role]}"}
    response = case.call(headers=headers)
    case.validate_response(
        response,
        checks=[not_a_server_error, response_schema_conformance, content_type_conformance],
        headers=headers,
    )
