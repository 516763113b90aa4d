"""The admin dashboard: progress, agreement, annotators (block / unblock), methods vs experts;
a region project's runs and annotators by their own measures (mean F1 or Dice, sensitivity
and precision).

Charts are drawn here as SVG (matplotlib) and inlined, so the page needs no chart library.
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth import get_user_model
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_POST

from frontend.access import project_role_required
from labeling import charts, reports
from labeling.models import Membership, Project
from labeling.services import gold, review, votes


@project_role_required(Membership.Role.ADMIN)
def dashboard(request: HttpRequest, project: Project) -> HttpResponse:
    data = reports.dashboard(project)
    classes = data["classes"]
    svg = {"votes": charts.votes_histogram(data["progress"]["votes_per_item"])}
    # confusions, kappa and alpha over class votes, accuracy and calibration of a class
    # consensus: a region project's estimates and scores are in its own cards instead
    if not project.is_region_task:
        for row in data["annotators"]:
            row["heatmap"] = mark_safe(charts.confusion_heatmap(row["confusion"], classes))
        svg["agreement"] = charts.agreement_over_time(data["agreement_series"])
        svg["methods"] = charts.method_accuracy(data["methods"])
        svg["calibration"] = charts.calibration(data["methods"])
    return render(
        request,
        "frontend/dashboard.html",
        {
            "project": project,
            "data": data,
            "classes": classes,
            "charts": {k: mark_safe(v) for k, v in svg.items()},
        },
    )


@require_POST
@project_role_required(Membership.Role.ADMIN)
def block(request: HttpRequest, project: Project, user_id: int) -> HttpResponse:
    membership = get_object_or_404(Membership, project=project, user_id=user_id)
    reason = request.POST.get("reason", "").strip() or f"blocked by {request.user.username}"
    votes.block_worker(membership, reason=reason)
    messages.success(request, f"Blocked {membership.user.username}; their votes no longer count.")
    return redirect("dashboard", project_id=project.id)


@require_POST
@project_role_required(Membership.Role.ADMIN)
def unblock(request: HttpRequest, project: Project, user_id: int) -> HttpResponse:
    user = get_object_or_404(get_user_model(), pk=user_id, memberships__project=project)
    votes.unblock_worker(project, user)
    messages.success(request, f"Unblocked {user.username}; their votes count again.")
    return redirect("dashboard", project_id=project.id)


@require_POST
@project_role_required(Membership.Role.ADMIN)
def draw_subset(request: HttpRequest, project: Project, subset: str) -> HttpResponse:
    """Grow the hold-out or the gold set to the fraction given in the form."""
    try:
        fraction = float(request.POST.get("fraction", ""))
        seed = int(request.POST.get("seed") or 0)
        if subset == "holdout":
            drawn = review.draw_holdout(project, fraction, seed)
        else:
            drawn = gold.draw_gold(project, fraction=fraction, seed=seed)
        messages.success(request, f"Drew {len(drawn)} {subset} items.")
    except ValueError:
        messages.error(request, "Give the fraction as a number between 0 and 1.")
    except (review.ReviewError, gold.GoldError) as exc:
        messages.error(request, exc.message)
    return redirect("dashboard", project_id=project.id)
