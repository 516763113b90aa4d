"""The crowd lane: the labelling loop's two API requests, answered ahead of the full stack.

An external crowd front end sends ``GET /api/projects/<id>/next/`` and ``POST
/api/assignments/<id>/vote/`` all day long with a token. Through every middleware, URL
resolution and DRF's request cycle (content negotiation, parsers, serializer validation,
renderers) such a request cost several times the Python of the work it asks for. This
middleware sits right after SecurityMiddleware and answers the common case itself with the same
code the DRF views run (``next_answer``, ``vote_answer`` in api/views/crowd.py), DRF's own token
check and JSON renderer, and the headers the full stack would add. Everything else goes on to
the full stack untouched and gets DRF's answers and error formats: a session (the browser page,
which needs CSRF), a missing or bad token, another method or media type, a body that is not a
plain valid answer. ``QUORUM_CROWD_LANE = False`` sends every request the long way.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.urls import get_script_prefix
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.renderers import JSONRenderer

from labeling.api.serializers.crowd import VoteRequestSerializer
from labeling.api.views.crowd import (
    NextAssignmentView,
    VoteView,
    next_answer,
    route_parts,
    vote_answer,
)
from labeling.models import Vote
from quorum.authentication import FastTokenAuthentication

_AUTH = FastTokenAuthentication()
_RENDER = JSONRenderer().render
# The vote serializer's length limits, read from it so the two cannot drift apart.
_MAX_LENGTH = {
    name: field.max_length
    for name, field in VoteRequestSerializer().fields.items()
    if getattr(field, "max_length", None)
}


def _allow(view_class: type) -> str:
    view = view_class()
    if hasattr(view, "get") and not hasattr(view, "head"):
        view.head = view.get  # as View.setup() does for every request
    return ", ".join(view.allowed_methods)


# What DRF's finalize_response adds; the skipped middleware's headers are set in _respond
# (SecurityMiddleware runs before this one and adds its own).
_HEADERS = {
    "crowd-next": {"Vary": "Accept", "Allow": _allow(NextAssignmentView)},
    "crowd-vote": {"Vary": "Accept", "Allow": _allow(VoteView)},
}


def _route_id(path: str, name: str) -> int | None:
    head, tail = route_parts(name, get_script_prefix())
    if path.startswith(head) and path.endswith(tail):
        middle = path[len(head) : len(path) - len(tail)]
        if middle.isdigit() and middle.isascii():
            return int(middle)
    return None


def _wants_json(request: HttpRequest) -> bool:
    # DRF would pick the browsable API for text/html, or honour ?format=.
    accept = request.META.get("HTTP_ACCEPT", "")
    return (not accept or accept == "*/*" or accept.startswith("application/json")) and (
        "format" not in request.GET
    )


def _text(value: object, field: str) -> str | None:
    """A string field as DRF's CharField keeps it (trimmed, not blank, no NUL, max length)."""
    if not isinstance(value, str):
        return None
    value = value.strip()
    if not value or len(value) > _MAX_LENGTH[field] or "\x00" in value:
        return None
    return value


def _reject_constant(name: str) -> None:
    raise ValueError(name)  # NaN and Infinity are not JSON; DRF's parser refuses them too


def plain_answer(request: HttpRequest) -> dict | None:
    """The vote body as VoteRequestSerializer would validate it, when it is a JSON object that
    the serializer accepts; None for anything else, which the full stack then answers."""
    if request.content_type != "application/json":
        return None
    charset = request.content_params.get("charset", "utf-8").lower()
    if charset not in ("utf-8", "utf8"):
        return None
    try:
        data = json.loads(request.body.decode("utf-8"), parse_constant=_reject_constant)
    except ValueError:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None
    if not isinstance(data, dict):
        return None
    key = _text(data.get("idempotency_key"), "idempotency_key")
    kind = data.get("kind", Vote.Kind.LABEL)
    label = data.get("label")
    if label is not None:
        label = _text(label, "label")
        if label is None:
            return None
    if key is None or kind not in Vote.Kind.values or (kind == Vote.Kind.LABEL and not label):
        return None
    return {"label": label, "kind": kind, "idempotency_key": key}


class CrowdLaneMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.answer(request) or self.get_response(request)

    def answer(self, request: HttpRequest) -> HttpResponse | None:
        if not settings.QUORUM_CROWD_LANE or "HTTP_AUTHORIZATION" not in request.META:
            return None
        method, path = request.method, request.path
        if method == "GET":
            project_id = _route_id(path, "crowd-next")
            if project_id is None or not _wants_json(request):
                return None
            user = self._token_user(request)
            if user is None:
                return None
            code, body = next_answer(request, user, project_id)
            return self._respond("crowd-next", code, body)
        if method == "POST":
            assignment_id = _route_id(path, "crowd-vote")
            if assignment_id is None or not _wants_json(request):
                return None
            answer = plain_answer(request)
            if answer is None:
                return None
            user = self._token_user(request)
            if user is None:
                return None
            code, body = vote_answer(user, assignment_id, answer, source=Vote.Source.API)
            return self._respond("crowd-vote", code, body)
        return None

    @staticmethod
    def _token_user(request: HttpRequest):
        try:
            found = _AUTH.authenticate(request)
        except AuthenticationFailed:
            return None  # the full stack answers 401 with DRF's message and header
        if found is None:
            return None
        request.user = found[0]
        return found[0]

    @staticmethod
    def _respond(route: str, code: int, body: dict | None) -> HttpResponse:
        content = _RENDER(body) if body is not None else b""
        response = HttpResponse(content, status=code, content_type="application/json")
        if not content:
            del response.headers["Content-Type"]  # as DRF does for an empty body
        for name, value in _HEADERS[route].items():
            response.headers[name] = value
        # CommonMiddleware's and XFrameOptionsMiddleware's.
        response.headers["Content-Length"] = str(len(content))
        response.headers["X-Frame-Options"] = getattr(settings, "X_FRAME_OPTIONS", "DENY").upper()
        return response
