"""The crowd lane: the labelling loop's two API requests, answered ahead of Django's handler.

An external crowd front end sends ``GET /api/projects/<id>/next/`` and ``POST
/api/assignments/<id>/vote/`` all day long with a token. Through Django's handler (its request
signals, every middleware, URL resolution), DRF's request cycle (content negotiation, parsers,
serializer validation, renderers) and the services' model instances, such a request cost many
times the database call it comes down to. ``CrowdLane`` wraps the WSGI application
(quorum/wsgi.py) and, on PostgreSQL, answers the common case with one database function call
each (``quorum_serve_next``, ``quorum_record_vote``: the same checks and writes the services
make), DRF's token check and JSON renderer, and the headers the full stack would add
(SecurityMiddleware's included, from its own code). Everything else goes on to the full stack
untouched and gets DRF's answers and error formats: a session (the browser page, which needs
CSRF), a missing or bad token, another method or media type, a body that is not a plain valid
answer, an HTTPS redirect, and every refusal (the functions write nothing when they refuse, so
the full stack asks again and answers with its own messages, replays included). So does a
request the lane fails on: both calls can be asked again (a lease is held, a vote's key
replays). Other databases, and ``QUORUM_CROWD_LANE = False``, send every request the long way.

Django's request signals are not sent for the lane's answers. Their receivers are Django's:
the lane recycles its one database connection as ``close_old_connections`` would, and has no
queries log, cache or urlconf of its own to reset.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterable
from http import HTTPStatus

from django.conf import settings
from django.core.handlers.wsgi import WSGIRequest, get_script_name
from django.db import DEFAULT_DB_ALIAS, connections
from django.http import HttpRequest, HttpResponse
from django.middleware.security import SecurityMiddleware
from django.urls import get_script_prefix, set_script_prefix
from rest_framework import HTTP_HEADER_ENCODING
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

logger = logging.getLogger(__name__)

RouteAnswer = tuple[str, int, bytes]  # route name, HTTP status, body

_AUTH = FastTokenAuthentication()
_RENDER = JSONRenderer().render
_KINDS = frozenset(Vote.Kind.values)
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


# What DRF's finalize_response adds; the middleware's headers are set in CrowdLane._headers.
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


def is_utf8_json(request: HttpRequest) -> bool:
    charset = request.content_params.get("charset", "utf-8").lower()
    return request.content_type == "application/json" and charset in ("utf-8", "utf8")


def plain_answer(body: bytes) -> dict | None:
    """The vote body (UTF-8 JSON) as VoteRequestSerializer would validate it, when it is a JSON
    object that the serializer accepts; None for anything else, which the full stack then
    answers."""
    try:
        data = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
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
    if key is None or kind not in _KINDS or (kind == Vote.Kind.LABEL) != bool(label):
        return None  # an unsure/skip with a label is refused by the services (their message)
    if kind == Vote.Kind.REGIONS or "regions" in data:
        return None  # region answers are checked and recorded by the Python service
    return {"label": label, "kind": kind, "idempotency_key": key}


class CrowdLane:
    """WSGI middleware: the two crowd routes answered here, every other request passed on to
    ``application`` (Django's WSGI handler)."""

    def __init__(self, application: Callable | None) -> None:
        self.application = application
        # Its settings, its HTTPS redirect and its headers (it never calls get_response).
        self.security = SecurityMiddleware(lambda request: None)
        self._fixed_headers: dict[tuple[str, bool, bool], list[tuple[str, str]]] = {}

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        answered = self.answer(environ)
        if answered is None:
            return self.application(environ, start_response)
        status, headers, content = answered
        start_response(status, headers)
        return [content]

    def answer(self, environ: dict) -> tuple[str, list[tuple[str, str]], bytes] | None:
        """(status line, headers, body) of the lane's answer, or None for the full stack."""
        if "HTTP_AUTHORIZATION" not in environ or environ.get("REQUEST_METHOD") not in ("GET", "POST"):
            return None
        if not settings.QUORUM_CROWD_LANE or not assignments.database_functions_enabled():
            return None
        set_script_prefix(get_script_name(environ))
        request = WSGIRequest(environ)
        # The route first: other token requests (an item's image, every cycle) go straight on.
        route = "crowd-next" if request.method == "GET" else "crowd-vote"
        route_id = _route_id(request.path, route)
        if route_id is None or not _wants_json(request):
            return None
        if self.security.process_request(request) is not None:
            return None  # an HTTPS redirect: the full stack sends it
        _close_old_connection()
        read: list[bytes] = []  # the body, once _route has read it
        try:
            response = self._route(request, route, route_id, read)
        except Exception:
            # Both calls can be asked again: the full stack answers, or fails its own way.
            logger.exception("crowd lane: %s %s failed; the full stack answers it", request.method, request.path)
            response = None
        finally:
            _close_old_connection()
        if response is None:
            if read:  # the full stack reads the body again, from the stream
                environ["wsgi.input"] = io.BytesIO(read[0])
            return None
        route, code, content = response
        return f"{code} {HTTPStatus(code).phrase}", self._headers(request, route, content), content

    def _headers(self, request: HttpRequest, route: str, content: bytes) -> list[tuple[str, str]]:
        """The answer's headers: all but Content-Length are the same for every answer of a
        route with or without a body, on HTTP or HTTPS. They are made once each, as an
        HttpResponse to which SecurityMiddleware adds its own, and kept."""
        key = (route, bool(content), request.is_secure())
        fixed = self._fixed_headers.get(key)
        if fixed is None:
            response = HttpResponse(content, content_type="application/json")
            if not content:
                del response.headers["Content-Type"]  # as DRF does for an empty body
            for name, value in _HEADERS[route].items():
                response.headers[name] = value
            # XFrameOptionsMiddleware's, which the lane's answers do not pass.
            response.headers["X-Frame-Options"] = getattr(settings, "X_FRAME_OPTIONS", "DENY").upper()
            self.security.process_response(request, response)
            fixed = [(name, value) for name, value in response.items() if name != "Content-Length"]
            self._fixed_headers[key] = fixed
        # CommonMiddleware's.
        return [*fixed, ("Content-Length", str(len(content)))]

    def _route(self, request: HttpRequest, route: str, route_id: int, read: list[bytes]) -> RouteAnswer | None:
        if route == "crowd-next":
            worker = _token_user(request)
            return None if worker is None else self._next(request, worker, route_id)
        if not is_utf8_json(request) or _over_upload_limit(request):
            return None  # an oversized body: the full stack refuses it (400), unread
        read.append(request.body)
        answer = plain_answer(read[0])
        if answer is None:
            return None
        worker = _token_user(request)
        return None if worker is None else self._vote(worker, route_id, answer)

    def _next(self, request: HttpRequest, worker, project_id: int) -> RouteAnswer | None:
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
            task_type=row.task_type, max_regions=row.max_regions,
        )  # fmt: skip
        return self._respond("crowd-next", 200, body)

    def _vote(self, worker, assignment_id: int, answer: dict) -> RouteAnswer | None:
        label, kind = answer["label"], answer["kind"]
        row = votes.record_vote_row(
            worker.pk, assignment_id, label=label, kind=kind,
            idempotency_key=answer["idempotency_key"], source=Vote.Source.API, check_role=True,
            site_admin=is_site_admin(worker),
        )  # fmt: skip
        if row.outcome != "recorded":
            return None  # a refusal or a retried key: the full stack answers (and replays) it
        standing = votes.after_recorded_vote(worker, row)
        result = votes.recorded_result(row, assignment_id, kind, label, standing)
        return self._respond("crowd-vote", 201, vote_payload(result, result.progress))

    @staticmethod
    def _respond(route: str, code: int, body: dict | None) -> RouteAnswer:
        return route, code, _RENDER(body) if body is not None else b""


def _over_upload_limit(request: HttpRequest) -> bool:
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return True  # Django's own check of it fails: its answer, not the lane's
    return limit is not None and length > limit


def _close_old_connection() -> None:
    """Django's close_old_connections for the lane's one connection: closed when it has
    outlived CONN_MAX_AGE or failed and is no longer usable. Never inside an atomic block (a
    test's transaction): that connection is not a request's to close, and Django's test
    client disconnects the same receiver."""
    wrapper = connections[DEFAULT_DB_ALIAS]
    if not wrapper.in_atomic_block:
        wrapper.close_if_unusable_or_obsolete()


def _token_user(request: HttpRequest):
    """The token's user as DRF's TokenAuthentication finds it, or None for the full stack to
    answer (no token header, a bad or inactive token). The user is the process's remembered
    one, not a copy: the lane only reads it."""
    # get_authorization_header's value, read from META: its request.headers parses every header.
    header = request.META.get("HTTP_AUTHORIZATION", b"")
    if isinstance(header, str):
        header = header.encode(HTTP_HEADER_ENCODING)
    parts = header.split()  # bytes, split as DRF splits them
    if len(parts) != 2 or parts[0].lower() != b"token" or not parts[1].isascii():
        return None
    try:
        return _AUTH.remembered_user(parts[1].decode())
    except AuthenticationFailed:
        return None  # the full stack answers 401 with DRF's message and header
