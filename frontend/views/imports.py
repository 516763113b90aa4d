"""The import page: project admins upload images (and known labels) and read the report."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods

from frontend.access import project_role_required
from labeling.models import ImportBatch, Membership, Project
from labeling.services.imports import (
    ImportRefused,
    check_upload_sizes,
    import_files,
    is_refused,
    refused_message,
)

RECENT_BATCHES = 20


@require_http_methods(["GET", "POST"])
@project_role_required(Membership.Role.ADMIN)
def import_page(request: HttpRequest, project: Project) -> HttpResponse:
    if request.method == "POST":
        files = request.FILES.getlist("files")
        labels = request.FILES.get("labels")
        coco = request.FILES.get("coco")
        if not files:
            return _render(request, project, error="Choose at least one file.", status=400)
        try:
            check_upload_sizes([*files, *([labels] if labels else []), *([coco] if coco else [])])
            batch = import_files(project, files, user=request.user,
                                 source=ImportBatch.Source.UPLOAD, labels=labels, coco=coco,
                                 coco_as=request.POST.get("coco_as") or "expert",
                                 stack=bool(request.POST.get("stack")))
        except ImportRefused as exc:
            return _render(request, project, error=str(exc), status=exc.status_code)
        if is_refused(batch):
            # Nothing was written, so there is no batch to redirect to: the reasons are shown here.
            return _render(request, project, batch=batch, error=refused_message(batch), status=400)
        # Post/redirect/get: reloading the report does not upload again.
        return redirect(f"{reverse('import', args=[project.id])}?batch={batch.id}")
    batch = None
    batch_id = request.GET.get("batch", "")
    if batch_id.isdigit():
        batch = project.import_batches.filter(pk=int(batch_id)).first()
    return _render(request, project, batch=batch)


def _render(request, project: Project, *, batch=None, error: str = "", status: int = 200):
    context = {
        "project": project,
        "batch": batch,
        "error": error,
        "batches": project.import_batches.select_related("created_by")[:RECENT_BATCHES],
    }
    return render(request, "frontend/import.html", context, status=status)
