"""The annotator page: one image, class keys (or region tools), nothing about other workers or
the answer."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.csrf import ensure_csrf_cookie

from frontend.access import project_role_required
from labeling.models import LabelClass, Membership, Project
from labeling.services.gold import gold_warning


@ensure_csrf_cookie
@project_role_required(Membership.Role.CROWD)
def label(request: HttpRequest, project: Project) -> HttpResponse:
    """The page itself is static; label.js drives it through the crowd API. A gold warning the
    worker is under shows from the start (their own score; the vote answers keep it current).
    Region projects get the drawing tools and the project's classes and region limit."""
    classes = list(project.label_classes.all())
    context = {
        "project": project,
        "classes": classes,
        "gold_warning": gold_warning(request.user, project),
    }
    if project.is_region_task:
        context["region_config"] = region_config(project, classes)
    return render(request, "frontend/label.html", context)


def region_config(project: Project, classes: list[LabelClass]) -> dict:
    """What regions.js's RegionCanvas is built with (the page's json_script "region-config")."""
    return {
        "task_type": project.task_type,
        "classes": [c.name for c in classes],
        "max_regions": project.max_regions,
    }
