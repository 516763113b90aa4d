"""API tokens: the fixed-statement read and the few seconds a process remembers it."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token

from quorum import authentication

URL = "/api/projects/"


@pytest.fixture(autouse=True)
def _forget():
    authentication.forget_tokens()
    yield
    authentication.forget_tokens()


def test_token_authenticates_and_wrong_tokens_are_refused(crowd_client, anon_client):
    assert crowd_client.get(URL).status_code == 200
    anon_client.credentials(HTTP_AUTHORIZATION="Token " + "0" * 40)
    response = anon_client.get(URL)
    assert response.status_code == 401 and response.json()["detail"] == "Invalid token."


def test_revoking_a_token_or_deactivating_a_user_takes_effect_at_once(crowd_client, crowd_user):
    assert crowd_client.get(URL).status_code == 200  # remembered from here on
    crowd_user.is_active = False
    crowd_user.save()
    response = crowd_client.get(URL)
    assert response.status_code == 401 and response.json()["detail"] == "User inactive or deleted."
    crowd_user.is_active = True
    crowd_user.save()
    assert crowd_client.get(URL).status_code == 200
    Token.objects.filter(user=crowd_user).get().delete()
    assert crowd_client.get(URL).status_code == 401


def test_a_change_without_signals_is_seen_after_the_cache_time(crowd_client, crowd_user, settings, monkeypatch):
    # A queryset update (or another process) sends no signal: the answer lives its seconds.
    clock = [1000.0]
    monkeypatch.setattr(authentication.time, "monotonic", lambda: clock[0])
    settings.QUORUM_TOKEN_CACHE_SECONDS = 5
    assert crowd_client.get(URL).status_code == 200
    get_user_model().objects.filter(pk=crowd_user.pk).update(is_active=False)
    clock[0] += 4
    assert crowd_client.get(URL).status_code == 200
    clock[0] += 2
    assert crowd_client.get(URL).status_code == 401


def test_cache_off_reads_every_request(crowd_client, crowd_user, settings):
    settings.QUORUM_TOKEN_CACHE_SECONDS = 0
    assert crowd_client.get(URL).status_code == 200
    get_user_model().objects.filter(pk=crowd_user.pk).update(is_active=False)
    assert crowd_client.get(URL).status_code == 401


def test_each_request_gets_its_own_user_object(crowd_user):
    key = Token.objects.create(user=crowd_user).key
    auth = authentication.FastTokenAuthentication()
    user1, token1 = auth.authenticate_credentials(key)
    user1.scratch = "set by one request"
    user2, token2 = auth.authenticate_credentials(key)
    assert user2 is not user1 and not hasattr(user2, "scratch")
    assert token2.user is user2 and user2.pk == crowd_user.pk and token2.key == key
