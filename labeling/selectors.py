"""Read-only queries about projects and roles, shared by the API, the pages and the tasks."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import QuerySet

from .models import Membership, Project

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

    Experts reach expert pages, admins reach everything; a crowd worker reaches only crowd pages.
    Crowd pages are for crowd members: experts and admins label on the review pages instead.
    """
    return role_allows(user, role_of(user, project), role)


def role_allows(user: AbstractBaseUser | AnonymousUser, actual: str | None, role: str) -> bool:
    """Whether holding ``actual`` (from :func:`role_of`) is enough for ``role``."""
    if actual is None:
        return False
    if role == Role.CROWD:
        return actual == Role.CROWD or is_site_admin(user)
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
