from django.contrib.auth.decorators import login_required
from django.shortcuts import render

from labeling.selectors import projects_for, role_of
from labeling.services.projects import can_create_projects


@login_required
def home(request):
    """Each of the user's projects with the pages their role opens."""
    rows = [
        {"project": p, "role": role_of(request.user, p)}
        for p in projects_for(request.user).order_by("name")
    ]
    return render(
        request,
        "frontend/home.html",
        {"rows": rows, "can_create": can_create_projects(request.user)},
    )
