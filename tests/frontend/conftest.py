"""Browser fixtures: Debian's chromium driven by Playwright against pytest-django's live server.

Use ``page`` (1280x800) or ``new_page(width, height)``, ``login(page, username)`` and
``live_server``; any test using them is marked ``browser`` and runs with a transactional
database. ``browser_errors`` collects uncaught page errors and failed requests, so a test can
assert the page ran clean.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.urls import resolve

# Playwright's sync API keeps an asyncio loop in this thread; Django's ORM would refuse to run.
os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-gpu",
    "--disable-component-update",
    "--no-first-run",
]
DESKTOP = {"width": 1280, "height": 800}
TABLET = {"width": 820, "height": 1180}
PASSWORD = "pw-quorum-test"  # tests.factories.UserFactory's password
BROWSER_FIXTURES = {"browser", "page", "new_page", "login"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if BROWSER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="module")
def browser() -> Iterator:
    """One headless chromium per test module (a second sync Playwright cannot nest in it)."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium to run browser tests")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        yield chromium
        chromium.close()


@pytest.fixture
def browser_errors() -> list[str]:
    return []


@pytest.fixture
def new_page(browser, live_server, browser_errors) -> Iterator[Callable]:
    """Open a page in a fresh context (own cookies) with the given viewport."""
    # Load every URLconf (some import torch) here, not inside the browser's first request.
    resolve("/")
    contexts = []

    def open_page(width: int = DESKTOP["width"], height: int = DESKTOP["height"], **options):
        context = browser.new_context(viewport={"width": width, "height": height}, **options)
        # Generous: CI machines are shared and a cold first page may take a while.
        context.set_default_timeout(20_000)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda exc: browser_errors.append(f"page error: {exc}"))
        page.on(
            "requestfailed",
            lambda request: browser_errors.append(f"request failed: {request.url}"),
        )
        return page

    yield open_page
    for context in contexts:
        context.close()


@pytest.fixture
def page(new_page):
    return new_page(**DESKTOP)


@pytest.fixture
def login(live_server) -> Callable:
    """Log a user in through the real /login/ form; returns the page on the home page."""

    def log_in(page, username: str, password: str = PASSWORD):
        page.goto(f"{live_server.url}/login/")
        page.fill("input[name=username]", username)
        page.fill("input[name=password]", password)
        page.click("main form button[type=submit]")
        page.wait_for_url(lambda url: "/login/" not in url)
        return page

    return log_in
