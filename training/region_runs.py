"""Training runs of region projects (points, boxes, masks): data, launch rules and the report.

A region run goes through the classification runs' path (``training.services``: launch, the
Celery ``gpu`` task, the lease, cancel, resume from the checkpoint, failure reasons); at the
points where a region run differs, ``services`` calls in here:

* launch: label source ``consensus`` (the latest region aggregation's consensus: STAPLE's soft
  map for masks, the fused points or boxes weighted by their confidence) or ``expert`` (the
  items' final expert regions, hard); the image size is a multiple of 32 (the encoder's stride);
* data: each training item's rendering and target, the hold-out's expert regions
  (``Item.expert_regions``), read here rather than in ``training.datasets`` (class votes);
* training: :func:`training.engine.region_trainer.train_regions` with the same
  :class:`training.services.RunProgress` callbacks;
* report: ``Evaluation`` with the region scores (``per_class``: Dice/IoU or precision, recall,
  F1 and count error per class), the headline in ``accuracy`` and ``balanced_accuracy``
  (``extra["regions"]["headline"]`` names it: ``dice`` or ``f1``), pictures of the expert's
  regions beside the model's for the first hold-out items and a chart of the annotators'
  reliability as the consensus estimated it (PNG files in the run's folder, ``regions/``).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Count, Q

from labeling.aggregation.regions.answers import class_masks, shapes_from_stored
from labeling.exports import latest_region_run
from labeling.models import AggregationRun, Item, Project, RegionConsensus, WorkerReliability
from labeling.services.review import answer_regions
from training import leases, selectors
from training.datasets import NoLabelledItems, class_codes, item_image
from training.models import Evaluation, TrainingRun

if TYPE_CHECKING:  # torch loads only in the worker
    from training.engine.region_trainer import RegionConfig, RegionItemSet, RegionTarget

Source = TrainingRun.LabelSource
REGION_SOURCES = (Source.CONSENSUS, Source.EXPERT)
# options in ``params`` (``services.PARAM_FIELDS``) that only region runs read
REGION_PARAMS = ("dice_weight", "peak_threshold")
ENCODER_STRIDE = 32
GALLERY_SIZE = 12
HEADLINES = {"dice": "Mean Dice", "f1": "F1"}


def check_launch(project: Project, values: dict[str, Any]) -> None:
    """Raise ``LaunchError`` for a region run that cannot work, or consensus on a class project."""
    from training.services import LaunchError

    source = values.get("label_source")
    params = values.get("params") or {}
    if not project.is_region_task:
        if source == Source.CONSENSUS:
            raise LaunchError(
                "label_source",
                f"consensus is for region projects (points, boxes, masks); {project.name!r} "
                "is a classification project",
            )
        if set(params) & set(REGION_PARAMS):
            raise LaunchError(
                "params", f"{sorted(set(params) & set(REGION_PARAMS))} apply to region runs only"
            )
        return
    if source not in REGION_SOURCES:
        raise LaunchError(
            "label_source",
            f"a {project.task_type} project trains on 'consensus' (the crowd's fused regions) or "
            f"'expert' regions, not {source!r}",
        )
    size = values.get("image_size")
    if size is not None and size % ENCODER_STRIDE:
        raise LaunchError(
            "image_size",
            f"region runs need an image size that is a multiple of {ENCODER_STRIDE} (the "
            f"encoder's deepest stride), got {size}; e.g. {max(1, round(size / 32)) * 32}",
        )
    if not 0 < params.get("peak_threshold", 0.3) < 1:
        raise LaunchError("params", "peak_threshold must be between 0 and 1")
    if params.get("dice_weight", 1.0) < 0:
        raise LaunchError("params", "dice_weight must not be negative")


def run_item_counts(project: Project, label_source: str) -> dict[str, int]:
    """``n_train_items`` and ``n_holdout_items`` of a region run about to be launched."""
    items = Item.objects.filter(project=project)
    if label_source == Source.CONSENSUS:
        consensus = latest_region_run(project)
        n_train = (
            RegionConsensus.objects.filter(run=consensus, item__is_holdout=False).count()
            if consensus is not None
            else 0
        )
    else:
        n_train = items.filter(is_holdout=False, expert_regions__isnull=False).count()
    n_holdout = items.filter(is_holdout=True, expert_regions__isnull=False).count()
    return {"n_train_items": n_train, "n_holdout_items": n_holdout}


# -- data -------------------------------------------------------------------------------------


@dataclass
class RegionTrainingData:
    class_names: list[str]
    train: RegionItemSet
    holdout: RegionItemSet | None
    consensus_run: AggregationRun | None = None
    holdout_items: list[Item] = field(default_factory=list)


def build_region_data(run: TrainingRun) -> RegionTrainingData:
    """The training items' images and targets for ``run``'s source, and the expert hold-out."""
    from training.engine.region_trainer import RegionItemSet

    project = run.project
    names, _ = class_codes(run)
    items = Item.objects.filter(project=project).order_by("id")
    holdout = list(items.filter(is_holdout=True, expert_regions__isnull=False))
    expert = answer_regions([i.expert_regions_id for i in holdout])
    holdout_set = (
        RegionItemSet(
            [item_image(i) for i in holdout],
            [_target(project, i, expert[i.expert_regions_id], len(names)) for i in holdout],
            [i.id for i in holdout],
        )
        if holdout
        else None
    )
    consensus_run = None
    if run.label_source == Source.CONSENSUS:
        consensus_run = latest_region_run(project)
        if consensus_run is None:
            raise NoLabelledItems(
                "no region consensus yet: run the aggregation of this project's region votes "
                "first (label source consensus trains on its fused regions)"
            )
        rows = list(
            RegionConsensus.objects.filter(run=consensus_run, item__is_holdout=False)
            .select_related("item")
            .order_by("item_id")
        )
        train_items = [r.item for r in rows]
        targets = [_consensus_target(project, r, len(names)) for r in rows]
    else:
        train_items = list(items.filter(is_holdout=False, expert_regions__isnull=False))
        answers = answer_regions([i.expert_regions_id for i in train_items])
        targets = [
            _target(project, i, answers[i.expert_regions_id], len(names)) for i in train_items
        ]
    if not train_items:
        raise NoLabelledItems(f"no training items with {run.get_label_source_display().lower()}")
    train = RegionItemSet([item_image(i) for i in train_items], targets, [i.id for i in train_items])
    return RegionTrainingData(names, train, holdout_set, consensus_run, holdout)


def _target(project: Project, item: Item, stored: list[dict], n_classes: int) -> RegionTarget:
    """A stored region answer (class indexes) as the engine's target, hard."""
    from training.engine.region_trainer import RegionTarget

    if project.task_type == Project.TaskType.MASKS:
        masks = class_masks(shapes_from_stored(stored), n_classes, item.height, item.width)
        return RegionTarget(masks=masks.astype(np.float32))
    return _marks_target(stored, np.ones(len(stored)))


def _marks_target(stored: list[dict], confidence: np.ndarray) -> RegionTarget:
    """Points (a box's centre counts as its point) and boxes of a stored answer."""
    from training.engine.region_trainer import RegionTarget

    boxes = np.zeros((len(stored), 4))
    for n, shape in enumerate(stored):
        corners = np.asarray(shape["points"], dtype=np.float64).reshape(-1, 2)
        boxes[n] = (*corners.min(axis=0), *corners.max(axis=0))
    return RegionTarget(
        points=(boxes[:, :2] + boxes[:, 2:]) / 2,
        boxes=boxes,
        labels=np.array([int(s["label"]) for s in stored], dtype=np.int64),
        weights=np.asarray(confidence, dtype=np.float64),
    )


def _consensus_target(project: Project, row: RegionConsensus, n_classes: int) -> RegionTarget:
    """STAPLE's soft map (masks; the binarised consensus where no map was stored) or the fused
    marks weighted by their confidence."""
    from training.engine.region_trainer import RegionTarget

    item = row.item
    if project.task_type != Project.TaskType.MASKS:
        regions = list(row.regions or [])
        return _marks_target(regions, [float(r.get("confidence", 1.0)) for r in regions])
    if row.probability_map:
        with row.probability_map.open("rb") as handle:
            soft = np.load(io.BytesIO(handle.read()), allow_pickle=False).astype(np.float32)
        if soft.shape != (n_classes, item.height, item.width):
            raise ValueError(
                f"item {item.pk}: consensus map of shape {list(soft.shape)}, expected "
                f"[{n_classes}, {item.height}, {item.width}] (classes, height, width)"
            )
        return RegionTarget(masks=np.clip(soft, 0.0, 1.0))
    masks = class_masks(shapes_from_stored(row.regions or []), n_classes, item.height, item.width)
    return RegionTarget(masks=masks.astype(np.float32))


def region_config(run: TrainingRun, data: RegionTrainingData) -> RegionConfig:
    """The engine's RegionConfig for ``run`` (checkpoints under MEDIA_ROOT/runs/<id>/)."""
    from training.engine.region_trainer import RegionConfig
    from training.services import PARAM_FIELDS, engine_run_fields

    known = {f.name for f in dataclass_fields(RegionConfig)}
    options = {
        field_name: value
        for key, value in (run.params or {}).items()
        if (field_name := PARAM_FIELDS.get(key)) in known
    }
    project = run.project
    return RegionConfig(
        task=project.task_type,
        label_source=run.label_source,
        num_classes=len(data.class_names),
        image_size=run.image_size,
        batch_size=run.batch_size,
        **engine_run_fields(run),
        match_distance=project.region_match_distance,
        match_iou=project.region_match_iou,
        max_objects=project.max_regions,
        **options,
    )


# -- running ----------------------------------------------------------------------------------


def train_and_report(run: TrainingRun, lease: leases.Lease | None = None) -> None:
    """The body of ``services.execute_run`` for a region project's run."""
    from training import services
    from training.engine.region_trainer import train_regions

    data = build_region_data(run)
    config = region_config(run, data)
    TrainingRun.objects.filter(pk=run.pk).update(
        n_train_items=len(data.train),
        n_holdout_items=len(data.holdout) if data.holdout is not None else 0,
        device=config.device or ("cuda" if services._cuda_available() else "cpu"),
    )
    result = train_regions(
        config, data.train, data.holdout, callbacks=services.RunProgress(run, lease),
        resume_from=selectors.checkpoint_file(run),
    )  # fmt: skip
    if result.cancelled:
        with transaction.atomic():
            services._still_held(run.pk, lease)
            for record in result.history:
                services._store_epoch(run.pk, record)
            services._finish(run.pk, TrainingRun.Status.CANCELLED, device=result.device)
        return
    report = build_report(run, data, config, result)
    with transaction.atomic():
        services._still_held(run.pk, lease)
        for record in result.history:
            services._store_epoch(run.pk, record)
        Evaluation.objects.filter(run=run).delete()
        if report["evaluation"] is not None:
            Evaluation.objects.create(run=run, **report["evaluation"])
        services._finish(
            run.pk,
            TrainingRun.Status.SUCCEEDED,
            device=result.device,
            progress=1.0,
            current_epoch=result.epochs_completed,
            checkpoint=f"runs/{run.pk}/{selectors.CHECKPOINT_NAME}",
            annotator_reliability=report["reliability"],
        )


def build_report(run: TrainingRun, data: RegionTrainingData, config: RegionConfig, result) -> dict:
    """Scores against the expert hold-out, the pictures (files) and the reliabilities."""
    from training.engine.region_trainer import score_regions

    reliability = consensus_reliability(data.consensus_run) if data.consensus_run else {}
    report: dict[str, Any] = {"evaluation": None, "reliability": reliability}
    picture_folder(run).mkdir(parents=True, exist_ok=True)
    has_reliability_plot = bool(reliability) and _write_reliability_plot(run, reliability)
    if data.holdout is None or result.holdout_predictions is None:
        return report
    scores = score_regions(
        config, result.holdout_predictions, data.holdout.targets, data.class_names
    )
    gallery = _write_gallery(run, data, config, result.holdout_predictions)
    headline = scores["headline_value"]
    summary = {k: v for k, v in scores.items() if k != "per_class"}
    report["evaluation"] = {
        "n_items": scores["n_items"],
        "accuracy": headline if headline is not None else 0.0,
        "balanced_accuracy": headline if headline is not None else 0.0,
        "per_class": scores["per_class"],
        "confusion": [],
        "extra": {
            "class_names": data.class_names,
            "regions": {
                **summary,
                "headline_label": HEADLINES[scores["headline"]],
                "label_source": run.label_source,
                "consensus_run": data.consensus_run.pk if data.consensus_run else None,
                "gallery": gallery,
                "reliability_plot": has_reliability_plot,
            },
        },
    }
    return report


def consensus_reliability(consensus_run: AggregationRun) -> dict[str, dict]:
    """Worker username -> the consensus run's estimate of them (sensitivity, specificity or
    precision: ``WorkerReliability.detail``)."""
    rows = WorkerReliability.objects.filter(run=consensus_run).order_by("worker_id")
    usernames = dict(
        get_user_model().objects.filter(pk__in=rows.values("worker_id")).values_list("pk", "username")
    )
    return {
        usernames.get(row.worker_id, str(row.worker_id)): {
            "user_id": row.worker_id,
            "n_votes": row.n_votes,
            "accuracy": row.accuracy,
            **{k: v for k, v in (row.detail or {}).items() if isinstance(v, (int, float))},
        }
        for row in rows
    }


def picture_folder(run: TrainingRun) -> Path:
    return selectors.run_folder(run) / "regions"


def picture_file(run: TrainingRun, name: str) -> Path | None:
    """A region run's picture: ``reliability`` or a hold-out item's id; None if not rendered."""
    if name != "reliability" and not name.isdigit():
        return None
    path = picture_folder(run) / f"{name}.png"
    return path if path.is_file() else None


def _write(run: TrainingRun, name: str, png: bytes) -> None:
    from training.engine.checkpoints import atomic_write

    atomic_write(picture_folder(run) / f"{name}.png", lambda tmp: tmp.write_bytes(png))


def _write_gallery(
    run: TrainingRun, data: RegionTrainingData, config: RegionConfig, predictions: list[dict]
) -> list[int]:
    """The expert's regions beside the model's over each of the first hold-out images."""
    from training.engine.region_metrics import plot_region_comparison
    from training.services import _rendering

    gallery = []
    task = config.task
    for item, truth, predicted in list(
        zip(data.holdout_items, data.holdout.targets, predictions, strict=True)  # type: ignore[union-attr]
    )[:GALLERY_SIZE]:
        if task == "masks":
            expert = {"masks": np.asarray(truth.masks) >= 0.5}
            model = {"masks": predicted["masks"]}
        else:
            key = task
            expert = {key: truth.points if key == "points" else truth.boxes, "labels": truth.labels}
            model = {key: predicted[key], "labels": predicted["labels"]}
        png = plot_region_comparison(
            _rendering(item), expert, model, task, data.class_names, title=f"item {item.pk}"
        )
        _write(run, str(item.pk), png)
        gallery.append(item.pk)
    return gallery


def _write_reliability_plot(run: TrainingRun, reliability: dict[str, dict]) -> bool:
    from training.engine.region_metrics import plot_annotator_reliability

    names = sorted(reliability)
    keys = [k for k in ("sensitivity", "specificity", "precision")
            if any(k in reliability[n] for n in names)]
    if not keys:
        return False
    png = plot_annotator_reliability(
        names, {k: [reliability[n].get(k) for n in names] for k in keys},
        source="as estimated by the consensus this run trained on",
    )
    _write(run, "reliability", png)
    return True


def reliability_rows(run: TrainingRun) -> list[dict]:
    """The run page's table: each annotator's estimated rates, by name."""
    return [
        {"username": name, **values} for name, values in sorted((run.annotator_reliability or {}).items())
    ]


def region_counts(project: Project) -> dict[str, int]:
    """The launch form's counts for a region project: items per label source and hold-out."""
    counts = Item.objects.filter(project=project).aggregate(
        expert=Count("id", filter=Q(is_holdout=False, expert_regions__isnull=False)),
        holdout=Count("id", filter=Q(is_holdout=True, expert_regions__isnull=False)),
    )
    counts["crowd"] = run_item_counts(project, Source.CONSENSUS)["n_train_items"]
    return counts
