"""The site's own 403, 404 and 500 pages (quorum/urls.py's handlers).

A page request gets a page of the site, with its navigation and a way back; a request under
``/api/`` gets DRF's JSON shape, as the API's own refusals do.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.template import loader
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme

API_PREFIX = "/api/"


def _is_api(request: HttpRequest) -> bool:
    return request.path.startswith(API_PREFIX)


def _way_back(request: HttpRequest) -> str:
    """The page the user came from when it is on this site, else their projects."""
    referer = request.META.get("HTTP_REFERER", "")
    if referer and url_has_allowed_host_and_scheme(
        referer, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return referer
    return reverse("home")


def _page(request: HttpRequest, status: int, template: str, reason: str = "") -> HttpResponse:
    context = {"request_path": request.path, "back_url": _way_back(request), "reason": reason}
    response = render(request, template, context, status=status)
    response.site_error_page = True
    return response


def page_not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if _is_api(request):
        return JsonResponse({"detail": "Not found."}, status=404)
    # The message is not shown: "No such project" and a page that does not exist read the
    # same to someone who is not on the project.
    return _page(request, 404, "404.html")


def permission_denied(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if _is_api(request):
        return JsonResponse(
            {"detail": "You do not have permission to perform this action."}, status=403
        )
    # Our refusals say which role the page needs; Django's own (CSRF aside) say nothing.
    reason = str(exception) if exception is not None and str(exception) else ""
    return _page(request, 403, "403.html", reason)


def server_error(request: HttpRequest) -> HttpResponse:
    if _is_api(request):
        return JsonResponse({"detail": "Server error."}, status=500)
    # No request context: the error may come from the database or a context processor.
    try:
        body = loader.get_template("500.html").render({"back_url": reverse("home")})
    except Exception:  # noqa: BLE001 - the error page must not fail in turn
        body = "<h1>Server error</h1>"
    return HttpResponse(body, status=500)
