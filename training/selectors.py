"""Read-only queries about training runs, shared by the API, the pages and the tasks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.db.models import Exists, OuterRef, QuerySet

from labeling.models import AggregationRun, Item, Project, WorkerReliability
from training import crowd_models
from training.datasets import counted_votes
from training.models import Evaluation, TrainingRun

CHECKPOINT_NAME = "last.pt"  # the engine's names inside a run's checkpoint folder
MODEL_NAME = "model.safetensors"
PLOTS = {"confusion": "confusion_plot", "roc": "roc_plot", "calibration": "calibration_plot"}

# The score a report leads with (the run's ``params["lead_metric"]``). Balanced accuracy by
# default: on a skewed hold-out, accuracy rewards a model that predicts the larger class only.
LEAD_METRICS = {
    "balanced_accuracy": "Balanced accuracy",
    "macro_f1": "Macro F1",
    "roc_auc": "ROC AUC",
    "accuracy": "Accuracy",
}
DEFAULT_LEAD_METRIC = "balanced_accuracy"


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


def annotator_picture_path(run: TrainingRun) -> Path:
    """Where the report's grid of learned annotator confusions is drawn."""
    return run_folder(run) / "annotator-confusions.png"


def annotator_picture_file(run: TrainingRun) -> Path | None:
    """The grid of learned annotator confusions, for runs whose crowd model learns them."""
    path = annotator_picture_path(run)
    return path if path.is_file() else None


def crowd_model_of(run: TrainingRun) -> dict[str, Any] | None:
    """The crowd model the run trained (its report's record) or, before the report, an auto
    run's stored pick; with ``sentence``, what the run page says about it."""
    evaluation = evaluation_of(run)
    record = (evaluation.extra or {}).get("crowd_model") if evaluation else None
    record = record or (run.params or {}).get("crowd_model")
    if record is None and run.label_source != TrainingRun.LabelSource.AUTO:
        record = crowd_models.launch_record(run)
    return {**record, "sentence": crowd_models.sentence(record)} if record else None


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


# -- counts at launch ------------------------------------------------------------------------


def item_counts(project: Project) -> dict[str, int]:
    """Items a run would train on, per kind of label, and the hold-out it is scored on.

    Three count queries, the same filters as :mod:`training.datasets` applies when the worker
    builds the data: ``expert`` (non-hold-out items with an expert answer), ``crowd``
    (non-hold-out items with a counted vote: every crowd source), ``holdout``.
    """
    items = Item.objects.filter(project=project)
    training = items.filter(is_holdout=False)
    return {
        "expert": training.filter(expert_answer__isnull=False).count(),
        "crowd": training.filter(
            Exists(counted_votes(project.pk).filter(item=OuterRef("pk")))
        ).count(),
        "holdout": items.filter(is_holdout=True, expert_answer__isnull=False).count(),
    }


def run_item_counts(project: Project, label_source: str, params: dict | None) -> dict[str, int]:
    """``n_train_items`` and ``n_holdout_items`` of a run about to be launched."""
    source = label_source
    if source == TrainingRun.LabelSource.MIL:
        source = (params or {}).get("mil_labels", TrainingRun.LabelSource.DAWID_SKENE)
    counts = item_counts(project)
    kind = "expert" if source == TrainingRun.LabelSource.EXPERT else "crowd"
    return {"n_train_items": counts[kind], "n_holdout_items": counts["holdout"]}


# -- the report ------------------------------------------------------------------------------


def lead_metric(run: TrainingRun) -> str:
    chosen = (run.params or {}).get("lead_metric")
    return chosen if chosen in LEAD_METRICS else DEFAULT_LEAD_METRIC


def report_summary(run: TrainingRun, evaluation: Evaluation) -> dict[str, Any]:
    """The report's headline: the lead metric, the others beside it, one row per class with
    its undefined scores as None, and the warnings a reader must not miss.

    Works on reports stored before undefined scores were None: a class with no hold-out item
    has no recall or F1, a class never predicted has no precision.
    """
    names = (evaluation.extra or {}).get("class_names") or list(evaluation.per_class)
    confusion = evaluation.confusion or []
    predicted = [sum(row[k] for row in confusion) for k in range(len(names))] if confusion else []
    rows = []
    for k, name in enumerate(names):
        scores = evaluation.per_class.get(name, {})
        support = int(scores.get("support") or 0)
        n_predicted = predicted[k] if predicted else None
        rows.append(
            {
                "name": name,
                "support": support,
                "predicted": n_predicted,
                "precision": scores.get("precision") if n_predicted != 0 else None,
                "recall": scores.get("recall") if support else None,
                "f1": scores.get("f1") if support else None,
                "roc_auc": scores.get("roc_auc"),
                "no_holdout": support == 0,
                "zero_recall": support > 0 and not scores.get("recall"),
            }
        )
    present = [r["f1"] for r in rows if r["f1"] is not None]
    values = {
        "balanced_accuracy": evaluation.balanced_accuracy,
        "macro_f1": sum(present) / len(present) if present else None,
        "roc_auc": evaluation.roc_auc,
        "accuracy": evaluation.accuracy,
    }
    lead = lead_metric(run)
    flags = []
    for row in rows:
        if row["no_holdout"]:
            flags.append(
                {
                    "kind": "no_holdout",
                    "class": row["name"],
                    "message": f"No hold-out item is labelled {row['name']}: its recall cannot "
                    "be measured (shown as –), and balanced accuracy averages over the other "
                    "classes. Add expert-labelled hold-out items of this class.",
                }
            )
        elif row["zero_recall"]:
            flags.append(
                {
                    "kind": "zero_recall",
                    "class": row["name"],
                    "message": f"Recall of {row['name']} is 0: the model found none of its "
                    f"{row['support']} hold-out items.",
                }
            )
    only = [r["name"] for r in rows if r["predicted"]]
    if len(only) == 1 and len(rows) > 1:
        flags.insert(
            0,
            {
                "kind": "one_class",
                "class": only[0],
                "message": f"The model predicted {only[0]} for every hold-out item: its accuracy "
                "is the share of that class, not skill.",
            },
        )
    regions = (evaluation.extra or {}).get("regions")
    if regions:  # a region run leads with its own score (Dice or F1), stored in accuracy
        headline = {"metric": regions["headline"], "label": regions["headline_label"],
                    "value": evaluation.accuracy}  # fmt: skip
        return {"lead": headline, "others": [], "classes": rows, "flags": [], "class_balance": None}
    return {
        "lead": {"metric": lead, "label": LEAD_METRICS[lead], "value": values[lead]},
        "others": [
            {"metric": m, "label": label, "value": values[m]}
            for m, label in LEAD_METRICS.items()
            if m != lead
        ],
        "classes": rows,
        "flags": flags,
        "class_balance": (evaluation.extra or {}).get("class_balance"),
    }


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
