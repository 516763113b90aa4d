"""Role checks for pages: the page twin of ``labeling.api.permissions``."""

from __future__ import annotations

from functools import wraps

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.shortcuts import get_object_or_404

from labeling.models import Project
from labeling.selectors import role_allows, role_of


def project_role_required(role: str):
    """Decorate a view taking ``project_id``: 404 for non-members, 403 for a lower role.

    The view receives the project instead of its id.
    """

    def decorator(view):
        @wraps(view)
        def wrapped(request, project_id: int, *args, **kwargs):
            if not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path())
            project = get_object_or_404(Project, pk=project_id)
            actual = role_of(request.user, project)
            if actual is None:
                raise Http404("No such project.")
            if not role_allows(request.user, actual, role):
                raise PermissionDenied("Your role on this project does not allow this page.")
            return view(request, project, *args, **kwargs)

        return wrapped

    return decorator
