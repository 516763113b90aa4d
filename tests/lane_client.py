"""The API test client with the crowd lane in front of Django's handler, as quorum.wsgi serves
every request (labeling/api/crowd_lane.py). Django's test client calls its handler with the
WSGI environ, never the WSGI application, so the lane is put in front of that handler here;
the lane's answer (status line, headers, body) comes back as the HttpResponse a test reads."""

from __future__ import annotations

from django.core.handlers.wsgi import WSGIRequest
from django.http import HttpResponse
from rest_framework.test import APIClient, ForceAuthClientHandler

from labeling.api.crowd_lane import CrowdLane


class _LaneFirstHandler(ForceAuthClientHandler):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lane = CrowdLane(None)  # per client, as Django's handler loads its middleware

    def __call__(self, environ):
        answered = self.lane.answer(environ)
        if answered is None:
            return super().__call__(environ)
        status, headers, content = answered
        response = HttpResponse(content, status=int(status.split(" ", 1)[0]))
        del response.headers["Content-Type"]  # only the lane's own headers
        for name, value in headers:
            response.headers[name] = value
        response.wsgi_request = WSGIRequest(environ)  # the test client reads it, as from Django's
        return response


class ServerAPIClient(APIClient):
    """APIClient whose requests meet the crowd lane first."""

    def __init__(self, enforce_csrf_checks: bool = False, **defaults) -> None:
        super().__init__(enforce_csrf_checks, **defaults)
        self.handler = _LaneFirstHandler(enforce_csrf_checks)
