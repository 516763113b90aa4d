"""403, 404 and 500 are pages of the site (navigation, a way back), the API's stay JSON, each
refusal is one warning line without a traceback, and the site has a favicon."""

from __future__ import annotations

import logging

import pytest
from django.test import RequestFactory

from frontend.views.errors import server_error


def _request_records(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("django.")]


def _assert_site_page(response, status: int) -> str:
    html = response.content.decode()
    assert response.status_code == status
    assert response["Content-Type"].startswith("text/html")
    assert 'class="topbar"' in html and 'href="/"' in html  # the site's navigation
    assert 'data-testid="error-back"' in html
    assert f'data-status="{status}"' in html
    return html


def test_403_is_a_site_page_logged_once_without_traceback(project, crowd_page, caplog):
    caplog.set_level(logging.INFO)
    response = crowd_page.get(f"/projects/{project.id}/", HTTP_REFERER="http://testserver/")
    html = _assert_site_page(response, 403)
    assert "Your role on this project does not allow this page." in html
    assert 'href="http://testserver/" data-testid="error-back"' in html
    records = _request_records(caplog)
    assert len(records) == 1, [r.getMessage() for r in records]
    (record,) = records
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert record.getMessage() == (
        f"Forbidden (Permission denied): /projects/{project.id}/ "
        "(Your role on this project does not allow this page.)"
    )


@pytest.mark.parametrize("path", ["/no-such-page/", "/projects/999999/", "/label/999999/"])
def test_404_is_a_site_page_logged_once(path, crowd_page, caplog):
    caplog.set_level(logging.INFO)
    html = _assert_site_page(crowd_page.get(path), 404)
    assert "Page not found" in html and path in html
    # An off-site referer is not a way back: the user's projects are.
    assert 'href="/" data-testid="error-back"' in html
    records = _request_records(caplog)
    assert [(r.levelno, r.getMessage(), r.exc_info) for r in records] == [
        (logging.WARNING, f"Not Found: {path}", None)
    ]


def test_non_member_gets_the_404_page_not_the_project(project, other_project, crowd_page):
    html = _assert_site_page(crowd_page.get(f"/projects/{other_project.id}/"), 404)
    assert other_project.name not in html


def test_404_in_debug_mode_is_the_site_page_too(settings, crowd_page):
    # The embedded mode runs with DEBUG on, where Django would show its technical page.
    settings.DEBUG = True
    html = _assert_site_page(crowd_page.get("/no-such-page/"), 404)
    assert "Using the URLconf" not in html


@pytest.mark.parametrize("debug", [False, True])
def test_api_refusals_stay_json(settings, debug, project, crowd_page):
    settings.DEBUG = debug
    missing = crowd_page.get("/api/no-such-endpoint/")
    assert missing.status_code == 404 and missing.json() == {"detail": "Not found."}
    forbidden = crowd_page.get(f"/api/projects/{project.id}/members/")
    assert forbidden.status_code == 403 and "detail" in forbidden.json()


def test_500_page_renders_without_request_context(db):
    response = server_error(RequestFactory().get("/projects/1/"))
    assert response.status_code == 500
    html = response.content.decode()
    assert 'class="topbar"' in html and "Something went wrong" in html


def test_each_django_record_reaches_one_console_handler():
    """Django's default config left a console handler on the "django" logger beside the root's:
    every refused request was printed twice (with DEBUG on, as in the embedded mode)."""
    for name in ("django.request", "django.server"):
        logger, handlers = logging.getLogger(name), []
        while logger is not None:
            handlers += [h for h in logger.handlers if type(h) is logging.StreamHandler]
            logger = logger.parent if logger.propagate else None
        assert len(handlers) == 1, (name, handlers)


def test_runserver_access_line_for_a_refusal_is_dropped():
    """django.request has logged a refused request; runserver's access line would repeat it."""
    from quorum.log import AccessLineAlreadyLogged

    def record(args, status):
        r = logging.LogRecord("django.server", logging.WARNING, "", 0, '"%s" %s %s', args, None)
        r.status_code = status
        return r

    keep = AccessLineAlreadyLogged().filter
    assert not keep(record(("GET /nope/ HTTP/1.1", "404", "1270"), 404))
    assert keep(record(("GET / HTTP/1.1", "200", "10"), 200))
    bad = logging.LogRecord("django.server", logging.INFO, "", 0, "code %d, message %s",
                            (400, "Bad request syntax"), None)
    assert keep(bad)


def test_favicon(anon_page):
    response = anon_page.get("/favicon.ico")
    assert response.status_code == 302 and response["Location"].endswith("frontend/favicon.ico")
    login_html = anon_page.get("/login/").content.decode()
    assert 'rel="icon" href="/static/frontend/favicon.svg"' in login_html


def test_error_pages_in_the_browser(project, crowd_user, new_page, login, live_server, artifacts_dir):
    page = new_page(1000, 640)
    login(page, crowd_user.username)
    response = page.goto(f"{live_server.url}/no-such-page/")
    assert response.status == 404
    assert page.locator("header.topbar").is_visible()
    page.screenshot(path=str(artifacts_dir / "error_404_crowd.png"))
    page.goto(f"{live_server.url}/")
    response = page.goto(f"{live_server.url}/projects/{project.id}/")
    assert response.status == 403
    page.screenshot(path=str(artifacts_dir / "error_403_crowd.png"))
    page.click("[data-testid=error-back]")
    page.wait_for_url(f"{live_server.url}/")
    assert page.locator("[data-testid=projects]").is_visible()
    icon = page.request.get(f"{live_server.url}/favicon.ico")
    assert icon.ok and icon.headers["content-type"] == "image/vnd.microsoft.icon"
