"""Shared fixtures: a project and one client per role (session for pages, token for the API)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from django.conf import settings
from django.test import Client
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from labeling.models import Membership
from tests.factories import MembershipFactory, ProjectFactory, UserFactory
from tests.lane_client import ServerAPIClient

ARTIFACTS = Path(os.environ.get("QUORUM_TEST_ARTIFACTS", Path(__file__).resolve().parent.parent / "test-artifacts"))


@pytest.fixture(autouse=True, scope="session")
def _few_threads() -> None:
    # on a small shared machine, OpenMP threads spinning at barriers while descheduled cost
    # far more than they gain; one thread keeps tiny models fast and timings predictable (a
    # points run: 26 s with torch's default on a loaded 2-core machine, 3.6 s with one). Here,
    # not in the engine's conftest, so the runs of the service, page and browser tests, which
    # a full run collects before the engine's, get it too.
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _media_in_tmp(settings, tmp_path):
    """Each test writes images into its own folder."""
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.CELERY_TASK_ALWAYS_EAGER = True
    # Test users log in with a fast hash; production keeps PBKDF2.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture
def data_dir() -> Path:
    path = Path(settings.QUORUM_DATA_DIR)
    if not path.exists():
        pytest.skip(f"shared data folder {path} is missing")
    return path


@pytest.fixture
def project(db):
    return ProjectFactory(name="Chest X-ray", classes=["normal", "pneumonia"])


@pytest.fixture
def other_project(db):
    return ProjectFactory(name="Other project", classes=["a", "b"])


def _member(project, role: str, username: str):
    user = UserFactory(username=username)
    MembershipFactory(project=project, user=user, role=role)
    return user


@pytest.fixture
def crowd_user(project):
    return _member(project, Membership.Role.CROWD, "crowd1")


@pytest.fixture
def crowd_user2(project):
    return _member(project, Membership.Role.CROWD, "crowd2")


@pytest.fixture
def expert_user(project):
    return _member(project, Membership.Role.EXPERT, "expert1")


@pytest.fixture
def admin_user(project):
    return _member(project, Membership.Role.ADMIN, "admin1")


@pytest.fixture
def staff_user(db):
    return UserFactory(username="staff", is_staff=True, is_superuser=True)


def _api_client(user) -> APIClient:
    client = ServerAPIClient()
    if user is not None:
        token, _ = Token.objects.get_or_create(user=user)
        client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


def _page_client(user) -> Client:
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


@pytest.fixture
def crowd_client(crowd_user) -> APIClient:
    return _api_client(crowd_user)


@pytest.fixture
def expert_client(expert_user) -> APIClient:
    return _api_client(expert_user)


@pytest.fixture
def admin_client(admin_user) -> APIClient:
    return _api_client(admin_user)


@pytest.fixture
def staff_client(staff_user) -> APIClient:
    return _api_client(staff_user)


@pytest.fixture
def anon_client(db) -> APIClient:
    return _api_client(None)


@pytest.fixture
def crowd_page(crowd_user) -> Client:
    return _page_client(crowd_user)


@pytest.fixture
def expert_page(expert_user) -> Client:
    return _page_client(expert_user)


@pytest.fixture
def admin_page(admin_user) -> Client:
    return _page_client(admin_user)


@pytest.fixture
def anon_page(db) -> Client:
    return _page_client(None)
