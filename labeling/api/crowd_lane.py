"""The crowd lane: the labelling loop's two API requests, answered ahead of the full stack.

An external crowd front end sends ``GET /api/projects/<id>/next/`` and ``POST
/api/assignments/<id>/vote/`` all day long with a token. Through every middleware, URL
resolution, DRF's request cycle (content negotiation, parsers, serializer validation,
renderers) and the services' model instances, such a request cost many times the database
call it comes down to. This middleware sits right after SecurityMiddleware and, on PostgreSQL,
answers the common case with one database function call each (``quorum_serve_next``,
``quorum_record_vote``: the same checks and writes the services make), DRF's token check and
JSON renderer, and the headers the full stack would add. Everything else goes on to the full
stack untouched and gets DRF's answers and error formats: a session (the browser page, which
needs CSRF), a missing or bad token, another method or media type, a body that is not a plain
valid answer, and every refusal (the functions write nothing when they refuse, so the full
stack asks again and answers with its own messages, replays included). Other databases, and
``QUORUM_CROWD_LANE = False``, send every request the long way.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.urls import get_script_prefix
from rest_framework.authentication import get_authorization_header
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.renderers import JSONRenderer

from labeling.api.serializers.crowd import VoteRequestSerializer
from labeling.api.views.crowd import (
    NextAssignmentView,
    VoteView,
    assignment_payload,
    exclude_ids,
    route_parts,
    vote_payload,
)
from labeling.models import Vote
from labeling.selectors import is_site_admin
from labeling.services import assignment as assignments
from labeling.services import votes
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
        # Up to 18 digits: always a bigint (the full stack answers larger ids its own way).
        if middle.isdigit() and middle.isascii() and len(middle) <= 18:
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
    if key is None or kind not in Vote.Kind.values or (kind == Vote.Kind.LABEL) != bool(label):
        return None  # an unsure/skip with a label is refused by the services (their message)
    return {"label": label, "kind": kind, "idempotency_key": key}


class CrowdLaneMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.answer(request) or self.get_response(request)

    def answer(self, request: HttpRequest) -> HttpResponse | None:
        if (
            not settings.QUORUM_CROWD_LANE
            or "HTTP_AUTHORIZATION" not in request.META
            or not assignments.database_functions_enabled()
        ):
            return None
        method, path = request.method, request.path
        if method == "GET":
            project_id = _route_id(path, "crowd-next")
            if project_id is None or not _wants_json(request):
                return None
            worker = _token_user(request)
            if worker is None:
                return None
            return self._next(request, worker, project_id)
        if method == "POST":
            assignment_id = _route_id(path, "crowd-vote")
            if assignment_id is None or not _wants_json(request):
                return None
            answer = plain_answer(request)
            if answer is None:
                return None
            worker = _token_user(request)
            if worker is None:
                return None
            return self._vote(worker, assignment_id, answer)
        return None

    def _next(self, request: HttpRequest, worker, project_id: int) -> HttpResponse | None:
        exclude = exclude_ids(request)
        row = assignments.serve_next_row(
            worker.pk, project_id, site_admin=is_site_admin(worker), exclude=exclude
        )
        if row.outcome == "none":
            return self._respond("crowd-next", 204, None)
        if row.outcome not in ("held", "new"):
            return None  # a refusal: nothing was written, the full stack answers it
        progress = assignments.progress_from_counts(
            project_id, row.project_created, row.votes_today, row.voted_open
        )
        body = assignment_payload(
            request, row.lease_id, row.expires_at, row.item_id, row.width, row.height,
            row.channels, zip(row.class_names, row.class_indexes, strict=True), progress,
        )  # fmt: skip
        return self._respond("crowd-next", 200, body)

    def _vote(self, worker, assignment_id: int, answer: dict) -> HttpResponse | None:
        label, kind = answer["label"], answer["kind"]
        row = votes.record_vote_row(
            worker.pk, assignment_id, label=label, kind=kind,
            idempotency_key=answer["idempotency_key"], source=Vote.Source.API, check_role=True,
            site_admin=is_site_admin(worker),
        )  # fmt: skip
        if row.outcome != "recorded":
            return None  # a refusal or a retried key: the full stack answers (and replays) it
        votes.after_recorded_vote(worker, row)
        result = votes.recorded_result(row, assignment_id, kind, label)
        return self._respond("crowd-vote", 201, vote_payload(result, result.progress))

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


def _token_user(request: HttpRequest):
    """The token's user as DRF's TokenAuthentication finds it, or None for the full stack to
    answer (no token header, a bad or inactive token). The user is the process's remembered
    one, not a copy: the lane only reads it."""
    parts = get_authorization_header(request).split()  # bytes, split as DRF splits them
    if len(parts) != 2 or parts[0].lower() != b"token" or not parts[1].isascii():
        return None
    try:
        return _AUTH.remembered_user(parts[1].decode())
    except AuthenticationFailed:
        return None  # the full stack answers 401 with DRF's message and header
