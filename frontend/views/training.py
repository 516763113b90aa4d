"""Training pages: launch runs and compare them (``/projects/<id>/train/``), and one run's live
progress and report (``/runs/<id>/``). Experts read both; only admins launch, cancel, resume."""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from rest_framework.fields import empty

from frontend.access import project_role_required
from labeling.models import Membership, Project
from labeling.selectors import has_role
from labeling.services.region_aggregation import HOLDOUT_METRIC
from training import crossfit_runs, crowd_models, devices, region_runs, selectors, services
from training.api.serializers import CLASS_BALANCE_CHOICES, PARAM_CHOICES, LaunchRunSerializer
from training.models import Prediction, TrainingRun

Role = Membership.Role
LAUNCH_FIELDS = ("label_source", "backbone", "weights", "weights_path", "image_size", "epochs",
                 "batch_size", "learning_rate", "seed", "class_balance", "lead_metric")


@project_role_required(Role.EXPERT)
def train(request: HttpRequest, project: Project) -> HttpResponse:
    is_admin = has_role(request.user, project, Role.ADMIN)
    device = devices.training_device()
    default_source = "consensus" if project.is_region_task else "dawid_skene"
    values = {"label_source": default_source, **_defaults(), **devices.launch_defaults(device)}
    errors: dict = {}
    if request.method == "POST":
        if not is_admin:
            raise PermissionDenied("Only the project's admins launch training runs.")
        # a field the form did not send takes its default (the device's, or the serializer's)
        values = {name: request.POST[name] for name in LAUNCH_FIELDS if name in request.POST}
        values["augment"] = request.POST.get("augment") == "on"
        trace = request.POST.get("trace_lambda", "").strip()
        values["params"] = {"trace_lambda": _number(trace)} if trace else {}
        launch = LaunchRunSerializer(data=values, context={"project": project})
        if launch.is_valid():
            run = services.launch_run(project, request.user, **launch.validated_data)
            return redirect("training-run-page", run_id=run.pk)
        errors = launch.errors
    counts = (
        region_runs.region_counts(project) if project.is_region_task else selectors.item_counts(project)
    )
    return render(
        request,
        "frontend/train.html",
        {
            "project": project,
            "is_admin": is_admin,
            "values": values,
            "errors": errors,
            "label_sources": _label_sources(project),
            "weights_choices": TrainingRun.Weights.choices,
            "class_balance_choices": CLASS_BALANCE_CHOICES,
            "lead_metric_choices": list(selectors.LEAD_METRICS.items()),
            "device": device,
            "counts": counts,
            # what train.js needs to estimate a run's time as the form changes
            "estimate": {
                **devices.estimate_basis(project, device),
                "n_train": {
                    source: counts["expert" if source == TrainingRun.LabelSource.EXPERT else "crowd"]
                    for source in TrainingRun.LabelSource.values
                },
                "n_holdout": counts["holdout"],
                "auto": {
                    "candidates": len(crowd_models.CANDIDATES),
                    "epochs": crowd_models.CANDIDATE_EPOCHS,
                },
                "crossfit_em": {
                    "folds": crossfit_runs.FOLDS,
                    "rounds": crossfit_runs.MAX_ROUNDS,
                    "epochs": crossfit_runs.FOLD_EPOCHS,
                },
            },
            "runs": _with_flags(selectors.project_runs(project)),
            "comparison": selectors.comparison_rows(project),
            "score_heading": _score_heading(project),
        },
        status=400 if errors else 200,
    )


def _label_sources(project: Project) -> list[tuple[str, str]]:
    """The sources a run of this project can train on (regions: consensus or expert regions)."""
    Source = TrainingRun.LabelSource
    if project.is_region_task:
        return [(v, label) for v, label in Source.choices if v in region_runs.REGION_SOURCES]
    return [
        (value, label)
        for value, label in Source.choices
        if value != Source.CONSENSUS
        and (value != Source.MIL or project.task_type == Project.TaskType.BAG)
    ]


def _score_heading(project: Project) -> str:
    """The runs tables' lead column: balanced accuracy for a class project; a region project's
    runs lead with their own hold-out score, named as their reports name it (Mean Dice for
    masks, F1 for points and boxes), and have no class metrics beside it."""
    if project.is_region_task:
        return region_runs.HEADLINES[HOLDOUT_METRIC[project.task_type]]
    return "Balanced acc."


def _with_flags(runs) -> list[TrainingRun]:
    """The runs, each with its report's warnings (``report_flags``) for the list's ⚠ mark."""
    runs = list(runs)
    for run in runs:
        evaluation = selectors.evaluation_of(run)
        run.report_flags = (
            [f["message"] for f in selectors.report_summary(run, evaluation)["flags"]]
            if evaluation
            else []
        )
    return runs


def _defaults() -> dict:
    fields = LaunchRunSerializer().fields
    return {
        **PARAM_CHOICES,
        **{
            name: f.default() if callable(f.default) else f.default
            for name, f in fields.items()
            if f.default is not empty
        },
    }


def _number(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text  # the serializer reports the wrong type


def run_page(request: HttpRequest, run_id: int) -> HttpResponse:
    run = get_object_or_404(TrainingRun.objects.select_related("project"), pk=run_id)
    return _run_page(request, run.project_id, run=run)


@project_role_required(Role.EXPERT)
def _run_page(request: HttpRequest, project: Project, run: TrainingRun) -> HttpResponse:
    run = services.fail_if_worker_gone(run)
    evaluation = selectors.evaluation_of(run)
    summary = selectors.report_summary(run, evaluation) if evaluation else None
    extra = evaluation.extra if evaluation else {}
    regions = _region_report(run, extra.get("regions"))
    return render(
        request,
        "frontend/run.html",
        {
            "project": project,
            "run": run,
            "is_admin": has_role(request.user, project, Role.ADMIN),
            "can_resume": run.status in ("failed", "cancelled")
            and selectors.checkpoint_file(run) is not None,
            "evaluation": evaluation,
            "summary": summary,
            "per_class": summary["classes"] if summary else [],
            "class_names": [c["name"] for c in summary["classes"]] if summary else [],
            "comparison": selectors.comparison_rows(project),
            "score_heading": _score_heading(project),
            "reliability": [] if regions else selectors.reliability_rows(run),
            "interruptions": selectors.interruption_rows(run),
            "crowd_model": selectors.crowd_model_of(run),
            # the launch's options; auto's stored pick is said in words instead
            "params": {k: v for k, v in (run.params or {}).items() if k != "crowd_model"},
            "annotators_plot": (
                reverse("training-run-plot", args=[run.pk, "annotators"])
                if selectors.annotator_picture_file(run)
                else None
            ),
            "api_url": reverse("training-run-detail", args=[run.pk]),
            "localisation": extra.get("localisation"),
            "regions": regions,
            "heatmaps": _heatmaps(run, extra.get("mil", {}).get("gallery", [])),
            "plots": {
                name: reverse("training-run-plot", args=[run.pk, name])
                for name, field in selectors.PLOTS.items()
                if evaluation and getattr(evaluation, field)
            },
        },
    )


def _region_report(run: TrainingRun, regions: dict | None) -> dict | None:
    """A region run's report: its scores, pictures and the annotators' estimated rates."""
    if not regions:
        return None
    picture = lambda name: reverse("training-run-region-picture", args=[run.pk, name])  # noqa: E731
    return {
        **regions,
        "per_class": [{"name": name, **scores} for name, scores in run.evaluation.per_class.items()],
        "pictures": [{"item_id": i, "url": picture(str(i))} for i in regions.get("gallery", [])],
        "reliability_url": picture("reliability") if regions.get("reliability_plot") else None,
        "reliability": region_runs.reliability_rows(run),
    }


def region_picture(request: HttpRequest, run_id: int, name: str) -> HttpResponse:
    run = get_object_or_404(TrainingRun, pk=run_id)
    return _region_picture(request, run.project_id, run=run, name=name)


@project_role_required(Role.EXPERT)
def _region_picture(request: HttpRequest, project: Project, run: TrainingRun, name: str):
    path = region_runs.picture_file(run, name)
    if path is None:
        raise Http404("This run has no such picture.")
    return FileResponse(path.open("rb"), content_type="image/png")


def _heatmaps(run: TrainingRun, item_ids: list[int]) -> list[dict]:
    """The MIL gallery: each hold-out item's heatmap with its expert and predicted class."""
    if not item_ids:
        return []
    predictions = {
        p.item_id: p
        for p in Prediction.objects.filter(run=run, item_id__in=item_ids).select_related(
            "label", "item__expert_answer"
        )
    }
    return [
        {
            "item_id": item_id,
            "url": reverse("training-run-heatmap", args=[run.pk, item_id]),
            "expert": getattr(prediction.item.expert_answer, "name", "–"),
            "predicted": prediction.label.name,
            "confidence": max(prediction.probabilities),
        }
        for item_id in item_ids
        if (prediction := predictions.get(item_id)) is not None
    ]
