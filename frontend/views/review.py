"""Expert pages: the adjudication queue (classes or regions) and the blind hold-out.

The review page is static; review.js drives it through the review API. The hold-out page is
rendered here and answers by form post, so nothing beyond the image and the classes ever
reaches the browser (no crowd vote, consensus or prediction: the label must be blind).
"""

from __future__ import annotations

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_http_methods

from frontend.access import project_role_required
from labeling.exports import worker_pseudonym
from labeling.models import ExpertLabel, Membership, Project
from labeling.services import review


@ensure_csrf_cookie
@project_role_required(Membership.Role.EXPERT)
def review_page(request: HttpRequest, project: Project) -> HttpResponse:
    """Region projects get the drawing canvas, each annotator's regions and the consensus."""
    classes = list(project.label_classes.all())
    context = {
        "project": project,
        "classes": classes,
        "queue_size": review.review_queue(project).count(),
    }
    if project.is_region_task:
        context["region_config"] = {
            "task_type": project.task_type,
            "classes": [c.name for c in classes],
            "max_regions": project.max_regions,
        }
    return render(request, "frontend/review.html", context)


@require_http_methods(["GET", "POST"])
@project_role_required(Membership.Role.EXPERT)
def holdout_page(request: HttpRequest, project: Project) -> HttpResponse:
    if project.is_region_task:
        # region hold-out items are drawn blind in the review queue (no crowd region shown)
        messages.info(request, "Hold-out items of a region project are drawn blind on this page.")
        return redirect("review", project_id=project.id)
    if request.method == "POST":
        return _holdout_post(request, project)
    todo = review.holdout_todo(project, request.user)
    agreement = review.holdout_agreement(project)
    disputes = [
        {
            "item": item,
            "labels": [
                (worker_pseudonym(project.id, e.expert_id), e.label.name)
                for e in item.expert_labels.filter(source=ExpertLabel.Source.HOLDOUT)
                .select_related("label")
                .order_by("id")
            ],
        }
        for item in review.holdout_disputes(project, request.user)[:50]
    ]
    return render(
        request,
        "frontend/holdout.html",
        {
            "project": project,
            "classes": project.label_classes.all(),
            "item": todo.first(),
            "remaining": todo.count(),
            "total": project.items.filter(is_holdout=True).count(),
            "agreement": agreement,
            "disputes": disputes,
        },
    )


def _holdout_post(request: HttpRequest, project: Project) -> HttpResponse:
    item_id = request.POST.get("item", "")
    if not item_id.isdigit():
        raise Http404("No such hold-out item.")
    item = get_object_or_404(project.items, pk=int(item_id), is_holdout=True)
    label = request.POST.get("label", "")
    try:
        if request.POST.get("action") == "tiebreak":
            review.break_tie(item, request.user, label, request.POST.get("note", "")[:2000])
            messages.success(request, f"Tie broken on item {item.pk}.")
        else:
            review.label_holdout(item, request.user, label)
            # Say only that it was saved: the state would hint at the other expert's label.
            messages.success(request, f"Saved your label for item {item.pk}.")
    except review.ReviewError as exc:
        messages.error(request, exc.message)
    return redirect("holdout", project_id=project.id)
