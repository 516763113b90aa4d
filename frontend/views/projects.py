"""Creating a project from the site: name, question, classes and the crowd plan.

The form posts to the same validation as ``POST /api/projects/`` (ProjectSerializer), and the
project is written by ``services.projects.create_project`` in one transaction: an error shows
in the form and nothing is stored.
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from rest_framework.exceptions import ValidationError

from labeling.aggregation import METHODS
from labeling.api.serializers.projects import ProjectSerializer
from labeling.models import REGION_TASK_TYPES, Project
from labeling.services.projects import MAX_CLASSES, can_create_projects

# The match rule and region limit of points/boxes/masks projects (issue 17).
REGION_SETTINGS = ["region_match_distance", "region_match_iou", "max_regions"]
# Form fields beside name and classes; an empty one keeps the model's default.
SETTINGS = [
    "question", "description", "task_type", "overlap", "max_overlap", "gold_rate",
    "holdout_fraction", "confidence_threshold", "default_method", "expected_channels",
    "patch_size", "patch_stride", *REGION_SETTINGS,
]  # fmt: skip


def _defaults() -> dict:
    values = {name: Project._meta.get_field(name).get_default() for name in SETTINGS}
    return {name: "" if value is None else value for name, value in values.items()}


def _errors(detail) -> dict[str, list[str]]:
    """The serializer's errors as field -> messages (a list field's item errors included)."""
    flat: dict[str, list[str]] = {}
    for field, problems in detail.items():
        if isinstance(problems, dict):  # ListField: {index: [messages]}
            problems = [f"class {int(i) + 1}: {m}" for i, ms in problems.items() for m in ms]
        flat[field] = [str(p) for p in problems]
    return flat


@login_required
def project_create(request: HttpRequest) -> HttpResponse:
    if not can_create_projects(request.user):
        raise PermissionDenied("Only site admins and users allowed to add projects create them.")
    values = {"name": "", **_defaults()}
    classes = ["", ""]
    errors: dict[str, list[str]] = {}
    status = 200
    if request.method == "POST":
        values = {name: request.POST.get(name, "").strip() for name in ["name", *SETTINGS]}
        classes = [c.strip() for c in request.POST.getlist("classes")]
        data = {k: v for k, v in values.items() if v != ""}
        if values["task_type"] not in REGION_TASK_TYPES:
            # Hidden for other task types: whatever they hold keeps the defaults.
            for name in REGION_SETTINGS:
                data.pop(name, None)
        data["classes"] = classes
        serializer = ProjectSerializer(data=data, context={"request": request})
        if serializer.is_valid():
            try:
                project = serializer.save()
            except ValidationError as exc:  # the service's checks (inside its transaction)
                detail = exc.detail if isinstance(exc.detail, dict) else {"classes": exc.detail}
                errors = _errors(detail)
            else:
                messages.success(
                    request,
                    f"Created {project.name} with {len(classes)} classes. Import its images next.",
                )
                return redirect("import", project_id=project.id)
        else:
            errors = _errors(serializer.errors)
        status = 400
    return render(
        request,
        "frontend/project_new.html",
        {
            "values": values,
            "classes": classes or ["", ""],
            "errors": errors,
            "max_classes": MAX_CLASSES,
            "task_types": Project.TaskType.choices,
            "region_task_types": sorted(REGION_TASK_TYPES),
            "is_region_task": values["task_type"] in REGION_TASK_TYPES,
            "methods": list(METHODS),
        },
        status=status,
    )
