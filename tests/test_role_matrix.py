"""Who reaches what: every project page and labelling API route x {crowd, expert, admin, anonymous}.

Routes are collected from the URLconf (the labelling API and the pages), so a new endpoint
without a row in ACCESS fails ``test_every_route_is_classified`` instead of going untested.
A cell passes when the role is let through (any answer but 401/403/404 and no redirect to the
login page) exactly when ACCESS says it should be; refusals are 403 or 404 for members and
others, 401 (API) or a redirect to the login page (pages) for anonymous visitors.
"""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone

from labeling.models import AggregationRun, Assignment, Item, Membership
from tests.factories import ItemFactory
from tests.labeling.test_review import add_vote

# Who may use each route, per method: "auth" anyone logged in, "member" any project member,
# "crowd" crowd workers only, "labeler" crowd workers and admins (who label too; experts label
# on the review pages; vote and undo act on the world's lease, the crowd worker's own, so they
# stay "crowd": another user's lease is a 404), "expert" experts and
# admins, "admin" project admins, "staff" site staff only (none of the project roles here).
ACCESS: dict[str, dict[str, str]] = {
    # labelling API
    "api-root": {"GET": "auth"},
    "project-list": {"GET": "auth", "POST": "staff"},
    "project-detail": {"GET": "member", "PATCH": "admin", "PUT": "admin", "DELETE": "admin"},
    "project-members": {"GET": "admin", "POST": "admin"},
    "crowd-next": {"GET": "labeler"},
    "crowd-vote": {"POST": "crowd"},
    "crowd-undo": {"POST": "crowd"},
    "member-unblock": {"POST": "admin"},
    "item-image": {"GET": "member"},
    "item-thumbnail": {"GET": "member"},
    "item-pixels": {"GET": "member"},
    "project-aggregations": {"GET": "expert", "POST": "admin"},
    "project-import-list": {"GET": "admin", "POST": "admin"},
    "aggregation-detail": {"GET": "expert"},
    "aggregation-consensus": {"GET": "expert"},
    "aggregation-reliabilities": {"GET": "expert"},
    # review, hold-out, gold
    "holdout-next": {"GET": "expert"},
    "holdout-draw": {"POST": "admin"},
    "holdout-agreement": {"GET": "expert"},
    "holdout-disputes": {"GET": "expert"},
    "holdout-label": {"POST": "expert"},
    "holdout-tiebreak": {"POST": "expert"},
    "review-queue": {"GET": "expert"},
    "review-item": {"GET": "expert"},
    "review-label": {"POST": "expert"},
    "review-regions": {"POST": "expert"},
    "gold-draw": {"POST": "admin"},
    "gold-set": {"POST": "admin"},
    # dashboard and exports
    "project-dashboard": {"GET": "admin"},
    "export-votes-csv": {"GET": "admin"},
    "export-votes-jsonl": {"GET": "admin"},
    "export-consensus-csv": {"GET": "admin"},
    "export-expert-labels-csv": {"GET": "admin"},
    "export-holdout-csv": {"GET": "admin"},
    "export-consensus-coco": {"GET": "admin"},
    "export-expert-regions-coco": {"GET": "admin"},
    "export-votes-coco": {"GET": "admin"},
    "export-consensus-masks": {"GET": "admin"},
    # pages
    "label": {"GET": "labeler"},
    "import": {"GET": "admin", "POST": "admin"},
    "project-create": {"GET": "staff", "POST": "staff"},
    "review": {"GET": "expert"},
    "holdout": {"GET": "expert", "POST": "expert"},
    "dashboard": {"GET": "admin"},
    "annotator-block": {"POST": "admin"},
    "annotator-unblock": {"POST": "admin"},
    "holdout-draw-page": {"POST": "admin"},
    "gold-draw-page": {"POST": "admin"},
}
# Not about a project (the front door, the login, the token) or not labelling (training pages,
# whose own tests cover them).
UNSCOPED = {"home", "login", "logout", "api-token"}
OUT_OF_SCOPE_MODULES = ("frontend.views.training",)
ALLOWED = {
    "auth": {"crowd", "expert", "admin"},
    "member": {"crowd", "expert", "admin"},
    "crowd": {"crowd"},
    "labeler": {"crowd", "admin"},
    "expert": {"expert", "admin"},
    "admin": {"admin"},
    "staff": set(),
}
# Cells that fail because of a known bug elsewhere; strict, so the fix is noticed.
KNOWN_BUGS: dict[tuple[str, str, str], str] = {}
ROLES = ["crowd", "expert", "admin", "anonymous"]


def _walk(patterns, prefix: str = ""):
    for p in patterns:
        if isinstance(p, URLResolver):
            yield from _walk(p.url_patterns, prefix + str(p.pattern))
        elif isinstance(p, URLPattern) and p.name and "format" not in str(p.pattern):
            # (format-suffix twins of router routes share the name and the view)
            yield p.name, prefix + str(p.pattern), p


def collected_routes() -> dict[str, tuple[str, bool, set[str]]]:
    """name -> (route, is_api, HTTP methods the view implements) for labelling API and pages."""
    routes = {}
    for name, route, pattern in _walk(get_resolver().url_patterns):
        is_api = route.startswith("api/")
        module = getattr(pattern.callback, "__module__", "")
        if name in UNSCOPED or module.startswith(OUT_OF_SCOPE_MODULES):
            continue
        if is_api and not module.startswith(("labeling.", "rest_framework.routers")):
            continue  # schema, docs, training API
        if not is_api and not module.startswith("frontend."):
            continue  # Django admin
        cls = getattr(pattern.callback, "cls", None) or getattr(pattern.callback, "view_class", None)
        actions = getattr(pattern.callback, "actions", None)
        if actions:
            methods = {m.upper() for m in actions}
        elif cls is not None:
            methods = {m.upper() for m in ("get", "post", "put", "patch", "delete") if hasattr(cls, m)}
        else:
            methods = set()
        routes[name] = (route, is_api, methods)
    return routes


ROUTES = collected_routes()
CELLS = [
    pytest.param(
        name, method, role, id=f"{name}-{method}-{role}",
        marks=[pytest.mark.xfail(reason=KNOWN_BUGS[(name, method, role)], strict=True)]
        if (name, method, role) in KNOWN_BUGS else [],
    )
    for name in sorted(ROUTES)
    if name in ACCESS
    for method in sorted(ACCESS[name])
    for role in ROLES
]


def test_every_route_is_classified():
    missing = sorted(set(ROUTES) - set(ACCESS))
    assert not missing, f"routes without a row in ACCESS (add who may use them): {missing}"
    for name, (_, _, methods) in ROUTES.items():
        # Class-based views tell which methods they implement; every one needs a rule.
        extra = methods - set(ACCESS[name]) - {"OPTIONS", "HEAD"}
        assert not extra, f"{name}: methods {sorted(extra)} have no rule in ACCESS"
    assert not set(ACCESS) - set(ROUTES), sorted(set(ACCESS) - set(ROUTES))


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    # Hashing each role's password the production way costs most of a cell's time.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def world(project, crowd_user, expert_user, admin_user):
    """The smallest project in which every route has a real object to act on."""
    regular = ItemFactory(project=project, needs_review=True, uncertainty=0.7)
    held = ItemFactory(project=project, is_holdout=True)
    add_vote(regular, crowd_user, "normal")
    lease = Assignment.objects.create(
        project=project, item=ItemFactory(project=project), worker=crowd_user,
        expires_at=timezone.now() + timedelta(minutes=10),
    )
    run = AggregationRun.objects.create(
        project=project, method=project.default_method, status=AggregationRun.Status.SUCCEEDED
    )
    return {
        "project": project,
        "regular": regular,
        "holdout": held,
        "lease": lease,
        "run": run,
        "users": {"crowd": crowd_user, "expert": expert_user, "admin": admin_user},
    }


def concrete_url(name: str, route: str, world) -> str:
    item: Item = world["holdout"] if name.startswith("holdout-") else world["regular"]
    values = {
        "project_id": world["project"].pk,
        "item_id": item.pk,
        "assignment_id": world["lease"].pk,
        "user_id": world["users"]["crowd"].pk,
        "pk": world["run"].pk if name.startswith("aggregation-") else world["project"].pk,
    }
    url = "/" + route.replace("^", "").replace("$", "")
    # Router routes are regexes, path() routes use converters: fill both kinds.
    url = re.sub(r"\(\?P<(\w+)>[^)]*\)", lambda m: str(values[m.group(1)]), url)
    url = re.sub(r"<(?:\w+:)?(\w+)>", lambda m: str(values[m.group(1)]), url)
    url = url.replace("\\", "")
    assert "<" not in url and "(?P" not in url, f"unfilled parameter in {url}"
    return url


def _client(role: str, world, client_factory):
    from django.test import Client
    from rest_framework.authtoken.models import Token

    from tests.lane_client import ServerAPIClient

    if client_factory == "api":
        client = ServerAPIClient()
        if role != "anonymous":
            token, _ = Token.objects.get_or_create(user=world["users"][role])
            client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
        return client
    client = Client()
    if role != "anonymous":
        client.force_login(world["users"][role])
    return client


@pytest.mark.django_db
@pytest.mark.parametrize("name, method, role", CELLS)
def test_role_matrix(name, method, role, world):
    route, is_api, _ = ROUTES[name]
    url = concrete_url(name, route, world)
    client = _client(role, world, "api" if is_api else "page")
    body = {"label": "normal", "fraction": 0.5, "count": 1, "items": [], "is_gold": False}
    if name == "holdout":
        body["item"] = world["holdout"].pk
    kwargs = {"format": "json"} if is_api and method != "GET" else {}
    response = getattr(client, method.lower())(url, body if method != "GET" else None, **kwargs)
    code = response.status_code
    assert code < 500, f"{method} {url} as {role}: {code}"
    to_login = code == 302 and response["Location"].startswith("/login/")
    if role == "anonymous":
        assert (code == 401) if is_api else to_login, f"{method} {url} anonymous: {code}"
    elif role in ALLOWED[ACCESS[name][method]]:
        assert code not in (401, 403, 404, 405) and not to_login, f"{method} {url} as {role}: {code}"
    else:
        assert code in (403, 404), f"{method} {url} as {role}: {code} (should be refused)"


@pytest.mark.django_db
def test_crowd_never_reaches_review_dashboard_export_or_holdout(world):
    """The promise in one place: every expert- or admin-only route refuses a crowd worker."""
    client_api, client_page = _client("crowd", world, "api"), _client("crowd", world, "page")
    for name, (route, is_api, _) in ROUTES.items():
        if not any(level in ("expert", "admin") for level in ACCESS[name].values()):
            continue
        url = concrete_url(name, route, world)
        client = client_api if is_api else client_page
        for method, level in ACCESS[name].items():
            if level in ("expert", "admin"):
                code = getattr(client, method.lower())(url).status_code
                assert code in (403, 404), f"crowd {method} {url}: {code}"
    assert Membership.objects.get(user=world["users"]["crowd"]).role == "crowd"
