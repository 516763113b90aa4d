"""Read-only queries about projects and roles, shared by the API, the pages and the tasks."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import connection
from django.db.models import QuerySet

from .models import LabelClass, Membership, Project

Role = Membership.Role

# A role includes the permissions of the roles listed after it.
_ROLE_RANK = {Role.CROWD: 1, Role.EXPERT: 2, Role.ADMIN: 3}


def is_site_admin(user: AbstractBaseUser | AnonymousUser) -> bool:
    return bool(user.is_authenticated and (user.is_superuser or user.is_staff))


def role_of(user: AbstractBaseUser | AnonymousUser, project: Project) -> str | None:
    """The user's role on the project: site staff are admins everywhere."""
    if not user.is_authenticated:
        return None
    if is_site_admin(user):
        return Role.ADMIN
    membership = Membership.objects.filter(project=project, user=user).only("role").first()
    return membership.role if membership else None


def has_role(user: AbstractBaseUser | AnonymousUser, project: Project, role: str) -> bool:
    """True when the user holds ``role`` on the project, or a role above it.

    Experts reach expert pages, admins reach everything (they label too, as crowd workers do);
    a crowd worker reaches only crowd pages. Experts label on the review pages instead.
    """
    return role_allows(user, role_of(user, project), role)


def role_allows(user: AbstractBaseUser | AnonymousUser, actual: str | None, role: str) -> bool:
    """Whether holding ``actual`` (from :func:`role_of`) is enough for ``role``."""
    if actual is None:
        return False
    if role == Role.CROWD:
        # The crowd functions (migration 0010) hold the same rule for the database path.
        return actual in (Role.CROWD, Role.ADMIN) or is_site_admin(user)
    return _ROLE_RANK[actual] >= _ROLE_RANK[role]


def projects_for(user: AbstractBaseUser | AnonymousUser, role: str | None = None) -> QuerySet:
    """Projects the user belongs to (every project for site staff), optionally with a role."""
    if not user.is_authenticated:
        return Project.objects.none()
    if is_site_admin(user):
        return Project.objects.all()
    memberships = Membership.objects.filter(user=user)
    if role == Role.CROWD:
        memberships = memberships.filter(role=Role.CROWD)
    elif role is not None:
        allowed = [r for r, rank in _ROLE_RANK.items() if rank >= _ROLE_RANK[role]]
        memberships = memberships.filter(role__in=allowed)
    return Project.objects.filter(id__in=memberships.values("project_id"))


@dataclass(frozen=True)
class CrowdContext:
    """What the crowd API needs to know before serving a worker: read in one statement."""

    project: Project
    role: str | None  # as role_of gives it
    blocked_reason: str | None  # None unless the worker is blocked here ("" for no reason given)
    classes: list[tuple[str, int]]  # (name, index) in index order


# The project fields serving a worker reads (the gold draw, the lease length, the progress line);
# the rest stay deferred: loading every column cost more than the statement itself. In the
# model's field order (Model.from_db reads them so); task type and region limit: region payloads.
CROWD_PROJECT_FIELDS = ("id", "task_type", "gold_rate", "lease_minutes", "max_regions", "created_at")


@cache
def _crowd_context_sql() -> tuple[str, list[str]]:
    qn = connection.ops.quote_name
    fields = list(CROWD_PROJECT_FIELDS)
    columns = ", ".join(f"p.{qn(Project._meta.get_field(f).column)}" for f in fields)
    m, c = Membership._meta, LabelClass._meta
    sql = (
        f"SELECT {columns}, m.{qn('role')}, m.{qn('is_blocked')}, m.{qn('blocked_reason')}, "
        f"c.{qn('name')}, c.{qn('index')} FROM {qn(Project._meta.db_table)} p "
        f"LEFT JOIN {qn(m.db_table)} m ON m.{qn('project_id')} = p.{qn('id')} "
        f"AND m.{qn('user_id')} = %s "
        f"LEFT JOIN {qn(c.db_table)} c ON c.{qn('project_id')} = p.{qn('id')} "
        f"WHERE p.{qn('id')} = %s ORDER BY c.{qn('index')}"
    )
    return sql, fields


def crowd_context(user: AbstractBaseUser, project_id: int) -> CrowdContext | None:
    """The project (only CROWD_PROJECT_FIELDS loaded), the user's role and block on it, and
    its classes; None for no project.

    One statement (a row per class), since the crowd loop asks on every request; the ORM
    would build three queries.
    """
    if not 0 < project_id < 2**63:  # no such id; SQLite cannot even bind one past int64
        return None
    sql, fields = _crowd_context_sql()
    with connection.cursor() as cursor:
        cursor.execute(sql, [user.pk, project_id])
        rows = cursor.fetchall()
    if not rows:
        return None
    n = len(fields)
    project = Project.from_db(connection.alias, fields, rows[0][:n])
    role, is_blocked, reason = rows[0][n : n + 3]
    if is_site_admin(user):
        role = Role.ADMIN
    return CrowdContext(
        project=project,
        role=role,
        blocked_reason=reason if is_blocked else None,
        classes=[(name, index) for *_, name, index in rows if name is not None],
    )
