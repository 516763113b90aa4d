"""The crowd lane (labeling/api/crowd_lane.py) against the full middleware + DRF path.

Their clients (tests/lane_client.py) meet the lane first, as requests to quorum.wsgi do.

The lane answers on PostgreSQL only (its database functions). Every test in test_crowd_api.py
runs both ways already; here each request of a script is sent through the lane and, at the
same database state (a savepoint rolled back in between), through the full stack, and both
answers must be the same: status, body (ids and times aside, since sequences do not roll back)
and headers. Then what the lane must leave to the full stack.
"""

from __future__ import annotations

import json

import pytest
from django.db import connection, transaction

from labeling.api import crowd_lane
from labeling.models import Membership, Vote
from labeling.services.votes import block_worker
from tests.factories import ItemFactory, give_expert_answer
from tests.lane_client import ServerAPIClient

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]


@pytest.fixture(autouse=True)
def _postgres_only(db):
    if connection.vendor != "postgresql":
        pytest.skip("the crowd lane answers on PostgreSQL only; set DATABASE_URL")

HEADERS = ("Content-Type", "Content-Length", "Vary", "Allow", "X-Frame-Options",
           "X-Content-Type-Options", "Referrer-Policy", "Cross-Origin-Opener-Policy",
           "WWW-Authenticate")  # fmt: skip


@pytest.fixture
def lane_answers(monkeypatch) -> list[str]:
    """The routes the lane answered itself, in order."""
    answered: list[str] = []
    original = crowd_lane.CrowdLane._respond

    def spy(route, code, body):
        answered.append(route)
        return original(route, code, body)

    monkeypatch.setattr(crowd_lane.CrowdLane, "_respond", staticmethod(spy))
    return answered


def _without_ids(body):
    # Ids come from sequences, which a rollback does not rewind; expiry times from the clock.
    if isinstance(body, dict):
        return {k: "(time)" if k == "expires_at" else _without_ids(v)
                for k, v in body.items() if k not in ("id", "assignment")}
    return body


def _seen(response) -> tuple:
    content = response.content
    is_json = response.get("Content-Type", "").startswith("application/json")
    # The browsable API's HTML carries a fresh CSRF token per page: its media type is compared.
    body = _without_ids(json.loads(content)) if content and is_json else None
    headers = {name: response.get(name) for name in HEADERS}
    if content:
        headers["Content-Length"] = "(length)"  # ids of other lengths are not a difference
    return response.status_code, body, headers


def both_ways(settings, send) -> tuple:
    """``send()`` through the lane, rolled back, then through the full stack (kept)."""
    with transaction.atomic():
        savepoint = transaction.savepoint()
        settings.QUORUM_CROWD_LANE = True
        fast = send()
        transaction.savepoint_rollback(savepoint)
    settings.QUORUM_CROWD_LANE = False
    full = send()
    settings.QUORUM_CROWD_LANE = True
    assert _seen(fast) == _seen(full)
    return fast, full


def _next(client, project, **params):
    return lambda: client.get(f"/api/projects/{project.id}/next/", params)


def _vote(client, lease_id, **body):
    return lambda: client.post(f"/api/assignments/{lease_id}/vote/", body, format="json")


def test_the_lane_answers_as_the_full_stack(settings, lane_answers, crowd_client, crowd_user,
                                            crowd_user2, expert_client, project, other_project):
    project.gold_rate = 0.0
    project.save()
    items = ItemFactory.create_batch(3, project=project, votes_wanted=1)
    gold = ItemFactory(project=project)
    give_expert_answer(gold, "pneumonia", gold=True)

    _, held = both_ways(settings, _next(crowd_client, project))
    lease = held.json()["id"]
    assert held.json()["item"]["id"] == items[0].id
    both_ways(settings, _next(crowd_client, project))  # the same lease again
    both_ways(settings, _next(crowd_client, project, exclude=[lease]))
    both_ways(settings, _next(expert_client, project))  # 403
    both_ways(settings, _next(crowd_client, other_project))  # 404
    both_ways(settings, _next(crowd_client, project, exclude="x"))  # ignored, as by DRF
    both_ways(settings, _next(crowd_client, project, exclude=["\u00b2", "9" * 19]))  # not ids either

    both_ways(settings, _vote(crowd_client, lease, label="tumour", idempotency_key="k"))  # 400
    both_ways(settings, _vote(crowd_client, lease, kind="skip", label="normal", idempotency_key="k"))
    created, _ = both_ways(settings, _vote(crowd_client, lease, label=" normal ", idempotency_key="k1 "))
    assert created.status_code == 201 and created.json()["label"] == "normal"
    assert Vote.objects.get(assignment_id=lease).idempotency_key == "k1"
    both_ways(settings, _vote(crowd_client, lease, label="normal", idempotency_key="k1"))  # retry, 200
    # The same key for another answer (issue 19): 409, on both ways, nothing written.
    reused, _ = both_ways(settings, _vote(crowd_client, lease, label="pneumonia", idempotency_key="k1"))
    assert reused.status_code == 409 and "another answer" in reused.json()["detail"]
    assert Vote.objects.get(assignment_id=lease).label.name == "normal"
    both_ways(settings, _vote(crowd_client, lease, kind="unsure", idempotency_key="k2"))  # 409

    stranger = ServerAPIClient()
    from rest_framework.authtoken.models import Token

    stranger.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=crowd_user2).key}")
    mine = crowd_client.get(f"/api/projects/{project.id}/next/").json()["id"]
    both_ways(settings, _vote(stranger, mine, label="normal", idempotency_key="s"))  # 404

    project.gold_rate = 1.0
    project.save()
    crowd_client.post(f"/api/assignments/{mine}/vote/", {"kind": "skip", "idempotency_key": "m"},
                      format="json")  # fmt: skip
    _, gold_lease = both_ways(settings, _next(crowd_client, project))
    assert gold_lease.json()["item"]["id"] == gold.id
    feedback, _ = both_ways(settings, _vote(crowd_client, gold_lease.json()["id"], label="normal",
                                            idempotency_key="g"))  # fmt: skip
    answer = feedback.json()["feedback"]
    assert (answer["gold"], answer["correct"], answer["expert_label"]) == (True, False, "pneumonia")
    assert answer["standing"]["answered"] == 1 and answer["standing"]["status"] == "ok"

    project.gold_rate = 0.0
    project.save()
    ItemFactory.create_batch(2, project=project, votes_wanted=1)  # not all items are answered yet
    both_ways(settings, _next(crowd_client, project))
    block_worker(Membership.objects.get(user=crowd_user), reason="too many misses")
    blocked, _ = both_ways(settings, _next(crowd_client, project))
    assert blocked.status_code == 403 and "too many misses" in blocked.json()["detail"]
    assert set(lane_answers) == {"crowd-next", "crowd-vote"}
    # Of the 17 requests sent both ways, the lane answered the 9 that were served or recorded
    # (every refusal and the retry went on to the full stack), and the 2 plain ones.
    assert len(lane_answers) == 11


def test_nothing_left_is_204_without_a_body(settings, lane_answers, crowd_client, project):
    fast, _ = both_ways(settings, _next(crowd_client, project))
    assert fast.status_code == 204 and fast.content == b"" and "Content-Type" not in fast
    assert lane_answers == ["crowd-next"]


JSON = "application/json"
LEFT_TO_THE_FULL_STACK = {
    "bad-json": ("vote", "post", "", {"data": "{not json", "content_type": JSON}),
    "nan": ("vote", "post", "", {"data": '{"label": NaN, "idempotency_key": "k"}', "content_type": JSON}),
    "no-key": ("vote", "post", "", {"data": {"label": "normal"}, "format": "json"}),
    "blank-label": ("vote", "post", "", {"data": {"label": " ", "idempotency_key": "k"}, "format": "json"}),
    "long-key": ("vote", "post", "", {"data": {"label": "normal", "idempotency_key": "k" * 101}, "format": "json"}),
    "unknown-kind": ("vote", "post", "", {"data": {"kind": "maybe", "idempotency_key": "k"}, "format": "json"}),
    "number-label": ("vote", "post", "", {"data": {"label": 1, "idempotency_key": "k"}, "format": "json"}),
    "multipart": ("vote", "post", "", {"data": {"label": "normal", "idempotency_key": "k"}}),
    "put": ("vote", "put", "", {"data": {"label": "normal", "idempotency_key": "k"}, "format": "json"}),
    "browsable": ("next", "get", "", {"HTTP_ACCEPT": "text/html"}),
    "format": ("next", "get", "?format=json", {}),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(LEFT_TO_THE_FULL_STACK))
def test_everything_else_takes_the_full_stack(settings, lane_answers, crowd_client, project, case):
    route, method, query, kwargs = LEFT_TO_THE_FULL_STACK[case]
    ItemFactory(project=project)
    lease = crowd_client.get(f"/api/projects/{project.id}/next/").json()["id"]
    url = f"/api/projects/{project.id}/next/" if route == "next" else f"/api/assignments/{lease}/vote/"
    lane_answers.clear()
    both_ways(settings, lambda: getattr(crowd_client, method)(url + query, **kwargs))
    assert lane_answers == []


def test_session_and_bad_tokens_take_the_full_stack(settings, lane_answers, crowd_page, project):
    ItemFactory(project=project)
    # The browser page: DRF's session authentication, which enforces CSRF on a vote.
    assert crowd_page.get(f"/api/projects/{project.id}/next/").status_code == 200
    crowd_page.handler.enforce_csrf_checks = True
    lease = crowd_page.get(f"/api/projects/{project.id}/next/").json()["id"]
    refused = crowd_page.post(f"/api/assignments/{lease}/vote/",
                              {"label": "normal", "idempotency_key": "k"}, content_type="application/json")
    assert refused.status_code == 403 and "CSRF" in refused.json()["detail"]
    bad = ServerAPIClient()
    bad.credentials(HTTP_AUTHORIZATION="Token not-a-token")
    for send in (_next(bad, project), _vote(bad, lease, label="normal", idempotency_key="k")):
        response = send()
        assert response.status_code == 401
        assert response["WWW-Authenticate"] == "Token"
        assert response.json() == {"detail": "Invalid token."}
    assert lane_answers == []


def test_the_switch_turns_the_lane_off(settings, lane_answers, crowd_client, project):
    ItemFactory(project=project)
    settings.QUORUM_CROWD_LANE = False
    assert crowd_client.get(f"/api/projects/{project.id}/next/").status_code == 200
    assert lane_answers == []


@pytest.mark.django_db(transaction=True)  # Django's handler closes a connection in a transaction
def test_the_wsgi_application_puts_the_lane_in_front(lane_answers, crowd_user, project):
    from django.test import RequestFactory
    from rest_framework.authtoken.models import Token

    from quorum.wsgi import application

    ItemFactory(project=project)
    token = f"Token {Token.objects.create(user=crowd_user).key}"
    started: list[tuple[str, dict]] = []

    def call(request) -> bytes:
        body = application(request.environ, lambda status, headers: started.append((status, dict(headers))))
        try:
            return b"".join(body)
        finally:
            getattr(body, "close", lambda: None)()  # as a server does: Django's request_finished

    served = json.loads(call(RequestFactory().get(f"/api/projects/{project.id}/next/", HTTP_AUTHORIZATION=token)))
    status, headers = started[-1]
    assert status == "200 OK" and lane_answers == ["crowd-next"]
    assert headers["Content-Type"] == "application/json" and headers["X-Content-Type-Options"] == "nosniff"
    voted = call(RequestFactory().post(f"/api/assignments/{served['id']}/vote/", content_type="application/json",
                                       data={"label": "normal", "idempotency_key": "w"}, HTTP_AUTHORIZATION=token))
    assert started[-1][0] == "201 Created" and json.loads(voted)["label"] == "normal"
    # Anything else is Django's handler's: here ?format=, which DRF honours.
    call(RequestFactory().get(f"/api/projects/{project.id}/next/?format=json", HTTP_AUTHORIZATION=token))
    assert started[-1][0] == "204 No Content" and lane_answers == ["crowd-next", "crowd-vote"]
    assert Vote.objects.get().idempotency_key == "w"


def test_a_request_the_lane_fails_on_goes_to_the_full_stack(settings, lane_answers, monkeypatch, caplog,
                                                          crowd_client, project):
    from labeling.services import assignment

    ItemFactory(project=project)

    def broken(*args, **kwargs):
        raise RuntimeError("lost the database")

    monkeypatch.setattr(assignment, "serve_next_row", broken)
    served = crowd_client.get(f"/api/projects/{project.id}/next/")
    assert served.status_code == 200 and served.json()["item"]["id"]  # DRF's answer, and logged
    assert lane_answers == [] and "lost the database" in caplog.text


def test_an_https_redirect_is_the_full_stacks(settings, lane_answers, crowd_user, project):
    from rest_framework.authtoken.models import Token

    settings.SECURE_SSL_REDIRECT = True  # read when a lane is made, as middleware reads it
    settings.SECURE_HSTS_SECONDS = 3600
    client = ServerAPIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=crowd_user).key}")
    ItemFactory(project=project)
    redirected = client.get(f"/api/projects/{project.id}/next/")
    assert redirected.status_code == 301 and redirected["Location"].startswith("https://")
    served = client.get(f"/api/projects/{project.id}/next/", secure=True)
    assert served.status_code == 200 and lane_answers == ["crowd-next"]
    assert served["Strict-Transport-Security"] == "max-age=3600"  # SecurityMiddleware's, on HTTPS


def test_a_vote_over_the_upload_limit_is_refused_unread(settings, lane_answers, caplog, crowd_client, project):
    ItemFactory(project=project)
    lease = crowd_client.get(f"/api/projects/{project.id}/next/").json()["id"]
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 100
    refused = crowd_client.post(f"/api/assignments/{lease}/vote/",
                                {"label": "normal", "idempotency_key": "k" * 90}, format="json")  # fmt: skip
    assert refused.status_code == 400 and lane_answers == ["crowd-next"]
    assert "crowd lane" not in caplog.text  # refused by Django, not a failure of the lane
