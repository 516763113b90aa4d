"""Named permission classes, one per project role.

Each resolves the project from the view (``get_project()``) and answers 404 rather than 403 to
a user who is not a member at all, so that project ids do not leak.
"""

from __future__ import annotations

from django.http import Http404
from rest_framework.permissions import BasePermission

from labeling.models import Membership
from labeling.selectors import role_allows, role_of


class _ProjectRolePermission(BasePermission):
    role: str = ""
    message = "Your role on this project does not allow this."

    def has_permission(self, request, view) -> bool:
        # A view that read the role with its project (get_role) saves the membership query.
        get_role = getattr(view, "get_role", None)
        actual = get_role() if get_role else role_of(request.user, view.get_project())
        if actual is None:
            raise Http404("No such project.")
        return self.allows(request.user, actual)

    def allows(self, user, actual: str) -> bool:
        return role_allows(user, actual, self.role)


class IsProjectMember(_ProjectRolePermission):
    """Any role on the project."""

    def allows(self, user, actual: str) -> bool:
        return True


class IsProjectCrowd(_ProjectRolePermission):
    role = Membership.Role.CROWD
    message = "Only the project's crowd workers label here."


class IsProjectExpert(_ProjectRolePermission):
    role = Membership.Role.EXPERT
    message = "Only the project's experts and admins may do this."


class IsProjectAdmin(_ProjectRolePermission):
    role = Membership.Role.ADMIN
    message = "Only the project's admins may do this."
