"""Read-only queries about training runs, shared by the API, the pages and the tasks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.db.models import QuerySet

from labeling.models import AggregationRun, Project, WorkerReliability
from training.models import Evaluation, TrainingRun

CHECKPOINT_NAME = "last.pt"  # the engine's names inside a run's checkpoint folder
MODEL_NAME = "model.safetensors"
PLOTS = {"confusion": "confusion_plot", "roc": "roc_plot", "calibration": "calibration_plot"}


def run_folder(run: TrainingRun) -> Path:
    """Where the engine checkpoints this run: MEDIA_ROOT/runs/<id>/."""
    return Path(settings.MEDIA_ROOT) / "runs" / str(run.pk)


def checkpoint_file(run: TrainingRun) -> Path | None:
    """The run's last good checkpoint, if an epoch ever finished.

    Looked up on disk rather than only in ``run.checkpoint``: a worker killed between writing
    the file and recording it still leaves a usable checkpoint.
    """
    path = run_folder(run) / CHECKPOINT_NAME
    return path if path.is_file() else None


def model_file(run: TrainingRun) -> Path | None:
    """The trained model (safetensors with its metadata), once the run succeeded."""
    path = run_folder(run) / MODEL_NAME
    return path if path.is_file() else None


def project_runs(project: Project) -> QuerySet[TrainingRun]:
    return (
        TrainingRun.objects.filter(project=project)
        .select_related("evaluation", "created_by")
        .order_by("-created_at", "-id")
    )


def evaluation_of(run: TrainingRun) -> Evaluation | None:
    try:
        return run.evaluation
    except Evaluation.DoesNotExist:
        return None


def comparison_rows(project: Project) -> list[dict]:
    """Every finished run with a report, grouped by label source (then newest first)."""
    runs = [
        run
        for run in project_runs(project).filter(status=TrainingRun.Status.SUCCEEDED)
        if evaluation_of(run) is not None
    ]
    order = {value: n for n, value in enumerate(TrainingRun.LabelSource.values)}
    runs.sort(key=lambda r: (order.get(r.label_source, 99), -r.pk))
    return [{"run": run, "evaluation": run.evaluation} for run in runs]


def latest_dawid_skene(project: Project) -> AggregationRun | None:
    return (
        AggregationRun.objects.filter(
            project=project, method="dawid_skene", status=AggregationRun.Status.SUCCEEDED
        )
        .order_by("-created_at", "-id")
        .first()
    )


def reliability_rows(run: TrainingRun) -> list[dict]:
    """The run's learned annotator reliabilities next to the latest Dawid-Skene estimates."""
    if not run.annotator_reliability:
        return []
    aggregation = latest_dawid_skene(run.project)
    estimated = (
        {r.worker_id: r for r in WorkerReliability.objects.filter(run=aggregation)}
        if aggregation is not None
        else {}
    )
    rows = []
    for username, learned in sorted(run.annotator_reliability.items()):
        dawid_skene = estimated.get(learned.get("user_id"))
        rows.append(
            {
                "username": username,
                "n_votes": learned.get("n_votes"),
                "accuracy": learned.get("accuracy"),
                "confusion": learned.get("confusion"),
                "dawid_skene_accuracy": dawid_skene.accuracy if dawid_skene else None,
                "dawid_skene_confusion": dawid_skene.confusion if dawid_skene else None,
            }
        )
    return rows


def interruption_rows(run: TrainingRun) -> list[dict[str, Any]]:
    """Each death of the run's worker, oldest first, with its times as datetimes for the page."""
    from django.utils.dateparse import parse_datetime

    return [
        {
            **row,
            "at": parse_datetime(row["at"]),
            "resumed_at": parse_datetime(row["resumed_at"]) if row.get("resumed_at") else None,
        }
        for row in run.interruptions or []
    ]
