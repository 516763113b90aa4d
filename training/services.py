"""Training runs: launch, cancel, resume, execute on a worker, and record every outcome.

A run's life: ``launch_run`` creates it ``queued`` and dispatches ``training.tasks.run_training``
after the commit; ``execute_run`` (the task body) claims it (``running``), builds the data from
the database (``training.datasets``), calls the engine with callbacks that write each epoch
and poll for cancellation, then stores the report (Evaluation, plots, Predictions, learned
annotator reliabilities). Every exception ends the run ``failed`` with a reason a person can
read. The worker holding a run keeps a short lease on it (``training.leases``); when it dies,
the redelivered task finds the holder dead, records the interruption and resumes from the last
checkpoint on whichever worker got it, and a run no worker took up again is failed by
``sweep_runs`` (Celery beat), with a reason, resumable.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import fields as dataclass_fields
from dataclasses import replace as dataclass_replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.files.base import ContentFile
from django.db import transaction
from django.utils import timezone
from kombu.exceptions import OperationalError as KombuOperationalError

from labeling.models import Item, Project, Region
from labeling.services.aggregation import PUBLISH_RETRY_POLICY
from training import crossfit_runs, crowd_models, devices, leases, region_runs, selectors
from training.datasets import (
    MIL_LABELS,
    NoLabelledItems,
    TrainingData,
    bag_label_source,
    build_training_data,
    item_image,
)
from training.models import EpochMetric, Evaluation, Prediction, TrainingRun

logger = logging.getLogger(__name__)

Status = TrainingRun.Status
Weights = TrainingRun.Weights

# A run whose holder is dead (or, from before holders, silent) for this long, and that no
# worker took up again, is failed by the sweep.
STALE_AFTER = timedelta(minutes=settings.QUORUM_TRAINING_STALE_MINUTES)

# Method options an admin may set in ``params``, with the TrainConfig field each one feeds.
PARAM_FIELDS = {
    "trace_lambda": "crowd_layer_trace_weight",
    "crowd_layer_trace_weight": "crowd_layer_trace_weight",
    "crowd_layer_lr_scale": "crowd_layer_lr_scale",
    "aggnet_smoothing": "aggnet_smoothing",
    "weight_decay": "weight_decay",
    "drop_rate": "drop_rate",
    "schedule": "schedule",
    "num_workers": "num_workers",
    "amp": "amp",
    # MIL (bag projects): the bag labels, the patch grid (default: the project's) and the head
    "mil_labels": "mil_labels",
    "patch_size": "patch_size",
    "patch_stride": "patch_stride",
    "patch_input_size": "patch_input_size",
    "attention_dim": "attention_dim",
    # class imbalance (training/engine/balance.py), and the score the report leads with (no
    # TrainConfig field: the report reads it)
    "class_balance": "class_balance",
    "class_balance_threshold": "class_balance_threshold",
    "lead_metric": "lead_metric",
    # region runs (training.region_runs): Dice's weight beside BCE, the detection peak threshold
    "dice_weight": "dice_weight",
    "peak_threshold": "peak_threshold",
    # the crowd layer's form and start (crowd_layer runs); auto's candidates (no TrainConfig
    # field: training.crowd_models reads it)
    "crowd_layer_form": "crowd_layer_form",
    "crowd_layer_init": "crowd_layer_init",
    "auto_candidates": "auto_candidates",
    # cross-fitted EM's folds and most rounds (crossfit_em runs; training.crossfit_runs reads them)
    "crossfit_folds": "crossfit_folds",
    "crossfit_rounds": "crossfit_rounds",
}
MIL_PARAMS = ("mil_labels", "patch_size", "patch_stride", "patch_input_size", "attention_dim")
PARAM_TYPES = {"schedule": str, "mil_labels": str, "amp": bool, "num_workers": int} | {
    key: int for key in MIL_PARAMS[1:]
} | {"class_balance": str, "lead_metric": str, "crossfit_folds": int, "crossfit_rounds": int} | {
    key: str for key in ("crowd_layer_form", "crowd_layer_init", "auto_candidates")
}
BALANCE_MODES = ("auto", "none", "loss", "sampler")  # training.engine.balance's, without torch
# hold-out heatmaps rendered as PNGs for the run page's gallery
GALLERY_SIZE = 12


class RunStateError(Exception):
    """The run is not in a state that allows the request (e.g. cancelling a finished run)."""


class LaunchError(ValueError):
    """A launch setting is invalid; ``field`` names it for the form or the API."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


# -- launching -------------------------------------------------------------------------------


def check_launch_settings(project: Project, values: dict[str, Any]) -> None:
    """Raise :class:`LaunchError` for a backbone, weights, label source or params that cannot work."""
    backbone = values.get("backbone") or ""
    # checked against the training workers' timm (their report), so the web imports no torch
    close = devices.check_backbone(backbone)
    if close is not None:
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise LaunchError("backbone", f"unknown timm model {backbone!r}{hint}")
    weights, path = values.get("weights"), (values.get("weights_path") or "").strip()
    if weights == Weights.FILE:
        if not path:
            raise LaunchError("weights_path", "weights 'file' needs the path of a checkpoint file")
        if not Path(path).is_file():
            raise LaunchError("weights_path", f"weights file {path} does not exist on the server")
    source = values.get("label_source")
    if source == TrainingRun.LabelSource.MIL and project.task_type != Project.TaskType.BAG:
        raise LaunchError(
            "label_source",
            f"MIL is only for bag projects; {project.name!r} is an image-classification project",
        )
    params = values.get("params") or {}
    unknown = sorted(set(params) - set(PARAM_FIELDS))
    if unknown:
        raise LaunchError("params", f"unknown method options {unknown}; known: {sorted(PARAM_FIELDS)}")
    for key, value in params.items():
        expected = PARAM_TYPES.get(key, (int, float))
        if isinstance(value, bool) is not (expected is bool) or not isinstance(value, expected):
            raise LaunchError("params", f"method option {key!r} has the wrong type: {value!r}")
    if params.get("schedule", "cosine") not in ("cosine", "constant"):
        raise LaunchError("params", "schedule must be 'cosine' or 'constant'")
    if params.get("class_balance", "auto") not in BALANCE_MODES:
        raise LaunchError("params", f"class_balance must be one of {list(BALANCE_MODES)}")
    if params.get("class_balance_threshold", 1.5) < 1:
        raise LaunchError("params", "class_balance_threshold must be at least 1")
    if params.get("lead_metric", selectors.DEFAULT_LEAD_METRIC) not in selectors.LEAD_METRICS:
        raise LaunchError("params", f"lead_metric must be one of {list(selectors.LEAD_METRICS)}")
    region_runs.check_launch(project, values)
    _check_crowd_model_params(source, params)
    if source == TrainingRun.LabelSource.MIL:
        _check_mil_params(project, params)
    elif set(params) & set(MIL_PARAMS):
        raise LaunchError("params", f"{sorted(set(params) & set(MIL_PARAMS))} apply to MIL runs only")


def _check_crowd_model_params(source: str | None, params: dict[str, Any]) -> None:
    layer = {"crowd_layer_form", "crowd_layer_init"} & set(params)
    if layer and source != TrainingRun.LabelSource.CROWD_LAYER:
        hint = "; auto picks them by validation" if source == TrainingRun.LabelSource.AUTO else ""
        raise LaunchError("params", f"{sorted(layer)} apply to crowd_layer runs only{hint}")
    form = params.get("crowd_layer_form", crowd_models.LAUNCH_FORM)
    if form not in crowd_models.CROWD_LAYER_FORMS:
        raise LaunchError(
            "params",
            f"unknown crowd_layer_form {form!r}; one of {list(crowd_models.CROWD_LAYER_FORMS)}",
        )
    init = params.get("crowd_layer_init", crowd_models.LAUNCH_INIT)
    if init not in crowd_models.CROWD_LAYER_INITS:
        raise LaunchError(
            "params",
            f"unknown crowd_layer_init {init!r}; one of {list(crowd_models.CROWD_LAYER_INITS)}",
        )
    crossfit = {"crossfit_folds", "crossfit_rounds"} & set(params)
    if crossfit and source != TrainingRun.LabelSource.CROSSFIT_EM:
        raise LaunchError("params", f"{sorted(crossfit)} apply to crossfit_em runs only")
    if not 2 <= params.get("crossfit_folds", crossfit_runs.FOLDS) <= 20:
        raise LaunchError("params", "crossfit_folds must lie between 2 and 20")
    if not 1 <= params.get("crossfit_rounds", crossfit_runs.MAX_ROUNDS) <= 20:
        raise LaunchError("params", "crossfit_rounds must lie between 1 and 20")
    if "auto_candidates" in params:
        if source != TrainingRun.LabelSource.AUTO:
            raise LaunchError("params", "auto_candidates applies to auto runs only")
        try:
            crowd_models.check_candidates(params["auto_candidates"])
        except ValueError as error:
            raise LaunchError("params", f"auto_candidates: {error}") from error


def _check_mil_params(project: Project, params: dict[str, Any]) -> None:
    if params.get("mil_labels", "dawid_skene") not in MIL_LABELS:
        raise LaunchError("params", f"mil_labels must be one of {list(MIL_LABELS)}")
    size = params.get("patch_size", project.patch_size)
    stride = params.get("patch_stride", project.patch_stride)
    if not 1 <= stride <= size:
        raise LaunchError(
            "params", f"need 1 <= patch_stride <= patch_size, got stride {stride}, size {size}"
        )
    for key in ("patch_input_size", "attention_dim"):
        if key in params and params[key] < 1:
            raise LaunchError("params", f"{key} must be positive")


def launch_run(project: Project, user, **values: Any) -> TrainingRun:
    """Create a queued run and dispatch it to a ``gpu`` worker once the transaction commits."""
    check_launch_settings(project, values)
    if values.get("label_source") == TrainingRun.LabelSource.MIL:
        # the run records its grid: attention maps mean nothing without it
        values["params"] = {
            "patch_size": project.patch_size,
            "patch_stride": project.patch_stride,
            **(values.get("params") or {}),
        }
    # counted now (three count queries), so the run shows them from the start; the worker
    # builds the data itself and records what it actually trained on
    counts = (
        region_runs.run_item_counts(project, values.get("label_source"))
        if project.is_region_task
        else selectors.run_item_counts(project, values.get("label_source"), values.get("params"))
    )
    with transaction.atomic():
        run = TrainingRun.objects.create(project=project, created_by=user, **values, **counts)
        _dispatch(run)
    return run


def _dispatch(run: TrainingRun) -> None:
    # tasks imports this module, so the task is looked up at call time
    from training.tasks import run_training

    task_id = str(uuid.uuid4())
    TrainingRun.objects.filter(pk=run.pk).update(celery_task_id=task_id)
    run.celery_task_id = task_id

    def send() -> None:
        try:
            run_training.apply_async((run.pk,), task_id=task_id, retry_policy=PUBLISH_RETRY_POLICY)
        except (KombuOperationalError, OSError) as exc:
            # A queued run no worker will hear of would stay queued for good (the sweep looks
            # at running runs): it fails with the reason instead.
            logger.warning("training run %s not queued, broker unreachable: %s", run.pk, exc)
            run.status, run.finished_at = Status.FAILED, timezone.now()
            run.failure_reason = (
                f"the task queue (broker) was unreachable: {exc}; once it is back, resume the "
                "run (from its checkpoint) or launch it again"
            )
            TrainingRun.objects.filter(pk=run.pk, status=Status.QUEUED).update(
                status=run.status, finished_at=run.finished_at, failure_reason=run.failure_reason
            )

    transaction.on_commit(send)


def request_cancel(run: TrainingRun) -> TrainingRun:
    """A queued run is cancelled at once; a running one stops at the engine's next check."""
    with transaction.atomic():
        run = TrainingRun.objects.select_for_update().get(pk=run.pk)
        if run.status == Status.QUEUED:
            run.status, run.finished_at = Status.CANCELLED, timezone.now()
        elif run.status != Status.RUNNING:
            raise RunStateError(f"run {run.pk} has already {run.status}")
        run.cancel_requested = True
        run.save(update_fields=["status", "finished_at", "cancel_requested"])
    return run


def resume_run(run: TrainingRun) -> TrainingRun:
    """Queue a failed or cancelled run again; it continues from its last checkpoint."""
    with transaction.atomic():
        run = TrainingRun.objects.select_for_update().get(pk=run.pk)
        if run.status not in (Status.FAILED, Status.CANCELLED):
            raise RunStateError(f"only failed or cancelled runs resume; run {run.pk} is {run.status}")
        if selectors.checkpoint_file(run) is None:
            raise RunStateError(f"run {run.pk} has no checkpoint to resume from; launch a new run")
        run.status, run.cancel_requested, run.failure_reason = Status.QUEUED, False, ""
        run.finished_at = None
        run.save(update_fields=["status", "cancel_requested", "failure_reason", "finished_at"])
        _dispatch(run)
    return run


def fail_if_worker_gone(run: TrainingRun) -> TrainingRun:
    """Mark a ``running`` run as failed (resumable) if its holder is dead and no worker took it
    up again within ``STALE_AFTER`` of its last sign of life."""
    if run.status != Status.RUNNING or not _abandoned(run):
        return run
    with transaction.atomic():
        run = TrainingRun.objects.select_for_update().get(pk=run.pk)
        if run.status != Status.RUNNING or not _abandoned(run):
            return run
        last = run.heartbeat_at or run.started_at
        seen = f"no sign of life since {last:%Y-%m-%d %H:%M:%S} UTC" if last else "it never reported"
        if run.holder_name:
            seen += f" from {run.holder_name}"
        checkpoint = selectors.checkpoint_file(run)
        advice = (
            f"; resume it from its checkpoint after epoch {run.current_epoch}"
            if checkpoint
            else "; it left no checkpoint"
        )
        now = timezone.now()
        run.interruptions = [*run.interruptions, _interruption(run, now)]
        run.status, run.finished_at = Status.FAILED, now
        run.failure_reason = (
            f"the worker running it stopped ({seen}, at epoch {run.current_epoch}) and no "
            f"worker took the run up again{advice}"
        )
        run.save(update_fields=["status", "finished_at", "failure_reason", "interruptions"])
    return run


def sweep_runs() -> list[int]:
    """Fail every running run that its dead worker left behind; returns their ids."""
    failed = []
    for run in TrainingRun.objects.filter(status=Status.RUNNING):
        if fail_if_worker_gone(run).status == Status.FAILED:
            failed.append(run.pk)
    if failed:
        logger.warning("training runs %s were left by dead workers; marked failed", failed)
    return failed


def _is_stale(run: TrainingRun) -> bool:
    last = run.heartbeat_at or run.started_at or run.created_at
    return last is None or timezone.now() - last > STALE_AFTER


def _abandoned(run: TrainingRun) -> bool:
    # a live holder renews its heartbeat with its lease, so staleness alone only decides for
    # runs without a holder (claimed before holders were recorded)
    return _is_stale(run) and leases.holder_alive(run) is not True


def _interruption(run: TrainingRun, now) -> dict[str, Any]:
    """What the run page shows about one death of the run's holder."""
    last = run.heartbeat_at or run.started_at or now
    return {
        "at": last.isoformat(),
        "noticed_at": now.isoformat(),
        "epoch": run.current_epoch,
        "worker": run.holder_name or run.holder or "unknown worker",
        "resumed_at": None,
        "resumed_by": "",
        "resumed_from_epoch": None,
    }


# -- executing (the Celery task's body) ------------------------------------------------------


def execute_run(run_id: int, task_id: str = "", worker: str = "") -> None:
    """Train run ``run_id`` to the end, recording progress, the report or the failure.

    Idempotent: a finished run is left alone; a run another live worker holds is left to it;
    a run whose holder died resumes from its checkpoint, and the interruption is recorded.
    ``worker`` names this worker for people (the Celery node).
    """
    holder = leases.this_process()
    name = f"{worker or holder.split('/')[0]} pid {os.getpid()}"
    run = _claim_when_free(run_id, task_id, holder, name)
    if run is None:
        return
    # a claim inside a transaction that is still open (a test's) is renewed from this connection
    renew = not transaction.get_connection().in_atomic_block
    with leases.Lease(run_id, holder, renew=renew) as lease:
        try:
            _train_and_report(run, lease)
        except leases.LeaseLost:
            logger.warning("training run %s was taken over by another worker; stopped", run_id)
        except Exception as error:
            logger.exception("training run %s failed", run_id)
            _release_gpu_memory()
            TrainingRun.objects.filter(pk=run_id, holder=holder).update(
                status=Status.FAILED, finished_at=timezone.now(), heartbeat_at=timezone.now(),
                failure_reason=failure_reason(error, run),
            )


def _claim_when_free(run_id: int, task_id: str, holder: str, name: str) -> TrainingRun | None:
    """Claim the run; while its holder's fate cannot be told (another host, lease running),
    wait for the lease: renewed, the holder lives; run out, it is dead."""
    seen = None
    while True:
        claim = _claim(run_id, task_id, holder, name)
        if not isinstance(claim, datetime):
            return claim
        if seen is not None and claim != seen:
            logger.warning(
                "training run %s is held by a live worker (it renewed its lease); dropping a "
                "duplicate", run_id,
            )
            return None
        seen = claim
        time.sleep(max(0.0, (claim - timezone.now()).total_seconds()) + 1.0)


def _claim(run_id: int, task_id: str, holder: str, name: str) -> TrainingRun | datetime | None:
    """The claimed run; None to drop the task; the holder's lease end to wait for."""
    with transaction.atomic():
        run = TrainingRun.objects.select_for_update().filter(pk=run_id).first()
        if run is None:
            logger.warning("training run %s does not exist; dropping its task", run_id)
            return None
        if run.is_finished:
            return None
        now = timezone.now()
        interruptions = list(run.interruptions)
        if run.status == Status.RUNNING:
            alive = leases.holder_alive(run, now)
            if alive is None and run.holder:
                return run.lease_until
            if alive or (alive is None and not _is_stale(run)):
                logger.warning(
                    "training run %s is held by a live worker; dropping a duplicate", run_id
                )
                return None
            logger.warning(
                "training run %s: its worker (%s) died at epoch %s; taking it over",
                run_id, run.holder_name or "unknown", run.current_epoch,
            )
            interruptions.append(_interruption(run, now))
        if interruptions and interruptions[-1]["resumed_at"] is None:
            interruptions[-1].update(
                resumed_at=now.isoformat(),
                resumed_by=name,
                # from scratch without a checkpoint; else the engine says which (on_resume)
                resumed_from_epoch=None if selectors.checkpoint_file(run) else 0,
            )
        run.status, run.heartbeat_at, run.failure_reason = Status.RUNNING, now, ""
        run.holder, run.holder_name, run.lease_until = holder, name, leases.expiry(now)
        run.interruptions = interruptions
        run.started_at = run.started_at or now
        run.celery_task_id = task_id or run.celery_task_id
        run.save(
            update_fields=[
                "status", "heartbeat_at", "failure_reason", "started_at", "celery_task_id",
                "holder", "holder_name", "lease_until", "interruptions",
            ]
        )
    return run


def train_config(
    run: TrainingRun, data: TrainingData, crowd_model: crowd_models.CrowdModel | None = None
):
    """The engine's TrainConfig for this run (checkpoints under MEDIA_ROOT/runs/<id>/);
    ``crowd_model`` (an ``auto`` run's candidate or pick) sets the source, form and init."""
    from training.engine import TrainConfig

    options = {PARAM_FIELDS[key]: value for key, value in (run.params or {}).items()
               if key in PARAM_FIELDS}
    if crowd_model is not None:
        options |= crowd_model.config_changes()
    known = {f.name for f in dataclass_fields(TrainConfig)}
    return TrainConfig(
        label_source=options.pop("label_source", run.label_source),
        num_classes=len(data.class_names),
        in_chans=3,
        image_size=run.image_size,
        batch_size=run.batch_size,
        **engine_run_fields(run),
        **{k: v for k, v in options.items() if k in known},
    )


def mil_config(run: TrainingRun, data: TrainingData):
    """The engine's MILConfig for a ``mil`` run: bag labels and patch grid from ``params``.

    The run's ``image_size`` is the side each patch is resized to for the backbone, unless
    ``params["patch_input_size"]`` says otherwise; ``batch_size`` counts bags.
    """
    from training.engine import MILConfig

    params = run.params or {}
    known = {f.name for f in dataclass_fields(MILConfig)}
    options = {
        PARAM_FIELDS[key]: value
        for key, value in params.items()
        if key in PARAM_FIELDS and PARAM_FIELDS[key] in known
    }
    options.setdefault("patch_size", run.project.patch_size)
    options.setdefault("patch_stride", run.project.patch_stride)
    options.setdefault("patch_input_size", run.image_size)
    return MILConfig(
        label_source=bag_label_source(run),
        num_classes=len(data.class_names),
        in_chans=3,
        bags_per_batch=run.batch_size,
        **engine_run_fields(run),
        **options,
    )


def engine_run_fields(run: TrainingRun) -> dict[str, Any]:
    """What every engine config (classes, bags, regions) takes from the run as it is:
    backbone and weights, schedule, seed, and where checkpoints and converted weights go."""
    return {
        "model_name": run.backbone,
        "weights": _engine_weights(run),
        "epochs": run.epochs,
        "lr": run.learning_rate,
        "augment": run.augment,
        "seed": run.seed,
        "checkpoint_dir": str(selectors.run_folder(run)),
        "cache_dir": str(Path(settings.QUORUM_CACHE_DIR) / "weights"),
    }


def _engine_weights(run: TrainingRun) -> str:
    return {
        Weights.IMAGENET: "imagenet",
        Weights.NONE: "none",
        Weights.FILE: run.weights_path,
        Weights.HUB: f"hub:{run.weights_path}",
    }[run.weights]


class RunProgress:
    """The engine's callbacks: one short write per epoch, a cheap cancel poll, and the lease.

    Every write is fenced by the holder: if another worker took the run over (this one was
    presumed dead), :class:`training.leases.LeaseLost` stops this one before it writes.
    """

    def __init__(self, run: TrainingRun, lease: leases.Lease | None = None) -> None:
        self.run_id = run.pk
        self.epochs = run.epochs
        self.checkpoint = f"runs/{run.pk}/{selectors.CHECKPOINT_NAME}"
        self.lease = lease
        self._last_beat = time.monotonic()

    def _mine(self):
        runs = TrainingRun.objects.filter(pk=self.run_id)
        return runs.filter(holder=self.lease.holder) if self.lease is not None else runs

    def on_resume(self, epoch: int) -> None:
        """The engine restored the checkpoint of ``epoch``: the open interruption resumed there."""
        with transaction.atomic():
            run = TrainingRun.objects.select_for_update().get(pk=self.run_id)
            last = run.interruptions[-1] if run.interruptions else None
            if last is not None and last["resumed_at"] and last["resumed_from_epoch"] is None:
                last["resumed_from_epoch"] = epoch
                run.save(update_fields=["interruptions"])

    def on_epoch_end(self, record) -> None:
        with transaction.atomic():
            _store_epoch(self.run_id, record)
            self.heartbeat(
                current_epoch=record.epoch,
                progress=min(record.epoch / self.epochs, 1.0),
                checkpoint=self.checkpoint,
            )

    def heartbeat(self, **fields: Any) -> None:
        """A sign of life (with ``fields`` written beside it), fenced by the holder; alone, it
        marks epochs that are not the run's own (auto's candidates, crossfit_em's folds)."""
        now = timezone.now()
        updated = self._mine().update(
            heartbeat_at=now,
            **({"lease_until": leases.expiry(now)} if self.lease is not None else {}),
            **fields,
        )
        if not updated:
            raise leases.LeaseLost(f"training run {self.run_id} is held by another worker")
        self._last_beat = time.monotonic()

    def should_stop(self) -> bool:
        if self.lease is not None:
            self.lease.check()
            if self.lease.renews_here and (
                time.monotonic() - self._last_beat > leases.LEASE.total_seconds() / 3
            ):
                self.lease.renew()
                self._last_beat = time.monotonic()
                self.lease.check()
        return TrainingRun.objects.filter(pk=self.run_id, cancel_requested=True).exists()


def _store_epoch(run_id: int, record) -> None:
    EpochMetric.objects.update_or_create(
        run_id=run_id,
        epoch=record.epoch,
        defaults={
            "train_loss": record.train_loss,
            "holdout_loss": record.holdout_loss,
            "holdout_accuracy": record.holdout_accuracy,
            "seconds": record.seconds,
            "images_per_second": record.images_per_second,
        },
    )


def _train_and_report(run: TrainingRun, lease: leases.Lease | None = None) -> None:
    if run.project.is_region_task:
        return region_runs.train_and_report(run, lease)
    from training.engine import train, train_mil

    progress = RunProgress(run, lease)
    crowd_model = _crowd_model(run, progress, train)
    if crowd_model is None:  # cancelled while auto tried its candidates
        return _cancel_held(run, lease)
    chosen = (
        crowd_models.CrowdModel.parse(crowd_model["name"])
        if run.label_source == TrainingRun.LabelSource.AUTO
        else None
    )
    data = build_training_data(run, source=chosen.source if chosen else None)
    crossfit = None
    if run.label_source == TrainingRun.LabelSource.CROSSFIT_EM:
        # the final model trains on EM's posteriors as the dawid_skene source trains on its own
        chosen = crowd_models.CrowdModel(TrainingRun.LabelSource.DAWID_SKENE)
        crossfit = _cross_fitted_targets(run, data, progress, train, chosen)
        if crossfit is None:  # cancelled while the fold classifiers trained
            return _cancel_held(run, lease)
        crowd_model, data.init_posteriors, confusions = crossfit
    is_mil = run.label_source == TrainingRun.LabelSource.MIL
    config = mil_config(run, data) if is_mil else train_config(run, data, chosen)
    resume_from = selectors.checkpoint_file(run)
    TrainingRun.objects.filter(pk=run.pk).update(
        n_train_items=len(data.train),
        n_holdout_items=len(data.holdout) if data.holdout is not None else 0,
        device=config.device or ("cuda" if _cuda_available() else "cpu"),  # as the engine picks
    )
    result = (train_mil if is_mil else train)(
        config,
        data.train,
        data.holdout,
        votes=data.votes,
        init_posteriors=data.init_posteriors,
        init_confusions=data.init_confusions,
        callbacks=progress,
        resume_from=resume_from,
    )
    if result.cancelled:
        with transaction.atomic():
            _still_held(run.pk, lease)
            for record in result.history:
                _store_epoch(run.pk, record)
            _finish(run.pk, Status.CANCELLED, device=result.device)
        return
    if crossfit is not None:  # the confusions EM learned, for the report's annotators
        result = dataclass_replace(
            result, annotator_confusions=confusions, train_posteriors=data.init_posteriors
        )
    report = _build_report(run, data, result)
    if crowd_model:
        report["extra"] = {**report.get("extra", {}), "crowd_model": crowd_model}
    with transaction.atomic():
        _still_held(run.pk, lease)
        for record in result.history:  # epochs restored from a checkpoint may lack their row
            _store_epoch(run.pk, record)
        _store_report(run, report)
        _finish(
            run.pk,
            Status.SUCCEEDED,
            device=result.device,
            progress=1.0,
            current_epoch=result.epochs_completed,
            checkpoint=f"runs/{run.pk}/{selectors.CHECKPOINT_NAME}",
            annotator_reliability=report["reliability"],
        )


def _crowd_model(run: TrainingRun, progress: RunProgress, train) -> dict[str, Any] | None:
    """The run's crowd model record (``{}`` for sources without one); None if cancelled.

    An ``auto`` run picks once (training.crowd_models) and keeps the pick in its params, so a
    resumed run trains the model it chose, not a new pick.
    """
    if run.label_source != TrainingRun.LabelSource.AUTO:
        return crowd_models.launch_record(run) or {}
    stored = (run.params or {}).get("crowd_model")
    if stored:
        return stored
    record = crowd_models.choose(
        run,
        progress,
        train,
        build_data=lambda source, exclude: build_training_data(run, source=source, exclude=exclude),
        make_config=lambda data, model: train_config(run, data, model),
    )
    if record is None:
        return None
    _keep_crowd_model(run, progress, record)
    return record


def _cross_fitted_targets(run: TrainingRun, data: TrainingData, progress: RunProgress, train, model):
    """``crossfit_em``'s (record, posteriors, confusions), the record kept in the run's params
    (a resumed run reuses the stored targets); None if cancelled."""
    outcome = crossfit_runs.cross_fitted_targets(
        run, data, progress, train, make_config=lambda fold_data: train_config(run, fold_data, model)
    )
    if outcome is not None and (run.params or {}).get("crowd_model") != outcome[0]:
        _keep_crowd_model(run, progress, outcome[0])
    return outcome


def _keep_crowd_model(run: TrainingRun, progress: RunProgress, record: dict[str, Any]) -> None:
    """Store the crowd model's record in the run's params, so that a resumed run keeps it."""
    params = {**(run.params or {}), "crowd_model": record}
    progress._mine().update(params=params)
    run.params = params


def _cancel_held(run: TrainingRun, lease: leases.Lease | None) -> None:
    """End a run cancelled before its final model trained, if this worker still holds it."""
    with transaction.atomic():
        _still_held(run.pk, lease)
        _finish(run.pk, Status.CANCELLED)


def _still_held(run_id: int, lease: leases.Lease | None) -> None:
    """Lock the run for the final write, or raise LeaseLost if another worker took it over."""
    if lease is None:
        return
    if not TrainingRun.objects.select_for_update().filter(pk=run_id, holder=lease.holder).exists():
        raise leases.LeaseLost(f"training run {run_id} is held by another worker")


def _build_report(run: TrainingRun, data: TrainingData, result) -> dict[str, Any]:
    """Everything slow (scores, plots, predictions) computed before the one short write."""
    from training import engine

    names = data.class_names
    report: dict[str, Any] = {"evaluation": None, "predictions": [], "reliability": {}}
    if data.holdout is not None and result.holdout_probabilities is not None:
        targets, probabilities = result.holdout_targets, result.holdout_probabilities
        scores = engine.evaluate(targets, probabilities, names)
        report["evaluation"] = {
            "scores": scores,
            "plots": {
                "confusion": engine.plot_confusion_matrix(scores.confusion_matrix, names),
                "roc": engine.plot_roc_curves(targets, probabilities, names),
                "calibration": engine.plot_reliability_diagram(targets, probabilities),
            },
        }
        attention = getattr(result, "holdout_attention", None) or [None] * len(probabilities)
        report["predictions"] += list(
            zip(result.holdout_ids, probabilities, attention, strict=True)
        )
        if run.label_source == TrainingRun.LabelSource.MIL:
            report["extra"] = _mil_report(run, result)
        if getattr(result, "class_balance", None) is not None:
            report["extra"] = {**report.get("extra", {}), "class_balance": result.class_balance}

    review = list(
        Item.objects.filter(project=run.project, needs_review=True, is_holdout=False).order_by("id")
    )
    if review and result.model_path is not None and run.label_source == TrainingRun.LabelSource.MIL:
        model, preprocessing = engine.load_mil_model(result.model_path, device=result.device)
        dataset = engine.BagDataset(
            engine.ItemSet([item_image(i) for i in review]), len(names), preprocessing
        )
        probabilities, attention = engine.predict_bags(
            model, dataset, bags_per_batch=run.batch_size * 2, device=result.device
        )
        report["predictions"] += list(
            zip([i.id for i in review], probabilities, attention, strict=True)
        )
    elif review and result.model_path is not None:
        model, preprocessing = engine.load_trained_model(result.model_path, device=result.device)
        dataset = engine.ItemDataset(
            engine.ItemSet([item_image(i) for i in review]), len(names), preprocessing
        )
        probabilities = engine.predict(
            model, dataset, batch_size=run.batch_size * 2, device=result.device
        )
        report["predictions"] += [
            (item_id, p, None) for item_id, p in zip([i.id for i in review], probabilities, strict=True)
        ]
    report["reliability"] = _learned_reliability(data, result)
    _draw_annotator_confusions(run, data, result, report["reliability"])
    return report


def _draw_annotator_confusions(run: TrainingRun, data: TrainingData, result, reliability) -> None:
    """The learned confusions of the most active annotators as a grid of heatmaps (a file in
    the run's folder, like the MIL gallery), for crowd-layer, AggNet, CoNAL and crossfit_em runs."""
    from training.annotator_pictures import plot_annotator_confusions
    from training.engine.checkpoints import atomic_write

    path = selectors.annotator_picture_path(run)
    if not reliability or result.annotator_confusions is None:
        path.unlink(missing_ok=True)  # a resumed run that learned none keeps no stale picture
        return
    by_user = {row["user_id"]: name for name, row in reliability.items()}
    names = [by_user.get(user_id, str(user_id)) for user_id in data.worker_ids]
    png = plot_annotator_confusions(
        result.annotator_confusions,
        names,
        [reliability[name]["n_votes"] for name in names],
        data.class_names,
    )
    atomic_write(path, lambda tmp: tmp.write_bytes(png))


def _mil_report(run: TrainingRun, result) -> dict[str, Any]:
    """Localisation against expert Regions and the heatmap gallery of a MIL run's hold-out.

    The gallery PNGs go straight to the run's folder (files, not rows); what the run page needs
    to find them is returned for ``Evaluation.extra``.
    """
    from training import engine
    from training.engine.checkpoints import atomic_write

    params = run.params or {}
    size = params.get("patch_size", run.project.patch_size)
    stride = params.get("patch_stride", run.project.patch_stride)
    grids = [engine.PatchGrid(*a.shape, size, stride) for a in result.holdout_attention]
    marked: dict[int, list] = {}
    for region in Region.objects.filter(item_id__in=result.holdout_ids):
        marked.setdefault(region.item_id, []).append(
            (region.x0, region.y0, region.x1, region.y1)
        )
    extra: dict[str, Any] = {"mil": {"patch_size": size, "patch_stride": stride, "gallery": []}}
    if marked:
        extra["localisation"] = engine.localisation_scores(
            result.holdout_attention, grids, [marked.get(i, []) for i in result.holdout_ids]
        )
    items = Item.objects.in_bulk(result.holdout_ids[:GALLERY_SIZE])
    for item_id, attention, grid in zip(
        result.holdout_ids[:GALLERY_SIZE], result.holdout_attention, grids, strict=False
    ):
        png = engine.overlay_attention(_rendering(items[item_id]), attention, grid)
        atomic_write(_heatmap_path(run, item_id), lambda tmp, png=png: tmp.write_bytes(png))
        extra["mil"]["gallery"].append(item_id)
    return extra


def heatmap_file(run: TrainingRun, item_id: int) -> Path | None:
    """The gallery PNG of a MIL run's attention over one hold-out item, if it was rendered."""
    path = _heatmap_path(run, item_id)
    return path if path.is_file() else None


def _heatmap_path(run: TrainingRun, item_id: int) -> Path:
    return selectors.run_folder(run) / "attention" / f"{int(item_id)}.png"


def _rendering(item: Item) -> np.ndarray:
    """The item's rendering (what people see), at the size of the pixels it was trained on."""
    from PIL import Image

    with item.image.open("rb") as handle, Image.open(handle) as image:
        picture = image.convert("RGB")
        if picture.size != (item.width, item.height):
            picture = picture.resize((item.width, item.height), Image.BILINEAR)
        return np.asarray(picture)


def _learned_reliability(data: TrainingData, result) -> dict[str, dict]:
    """Worker username -> the confusion the run learned for them and its implied accuracy."""
    confusions = result.annotator_confusions
    if confusions is None or data.votes is None:
        return {}
    trained = getattr(result, "train_posteriors", None)  # MIL results have none
    posteriors = trained if trained is not None else data.init_posteriors
    prior = np.asarray(posteriors, dtype=np.float64).mean(axis=0)
    counts = np.bincount(data.votes.workers, minlength=len(data.worker_ids))
    usernames = dict(
        get_user_model().objects.filter(pk__in=data.worker_ids).values_list("pk", "username")
    )
    reliability = {}
    for code, user_id in enumerate(data.worker_ids):
        confusion = np.asarray(confusions[code], dtype=np.float64)
        reliability[usernames.get(user_id, str(user_id))] = {
            "user_id": user_id,
            "n_votes": int(counts[code]),
            # the probability of a correct vote on an item drawn from the class prior
            "accuracy": float(prior @ np.diag(confusion)),
            "confusion": np.round(confusion, 4).tolist(),
        }
    return reliability


def _store_report(run: TrainingRun, report: dict[str, Any]) -> None:
    Evaluation.objects.filter(run=run).delete()
    evaluation = report["evaluation"]
    if evaluation is not None:
        scores = evaluation["scores"]
        per_class = {
            name: {
                "precision": scores.precision[k],
                "recall": scores.recall[k],
                "f1": scores.f1[k],
                "support": scores.support[k],
                "roc_auc": scores.roc_auc_per_class[k],
            }
            for k, name in enumerate(scores.class_names)
        }
        row = Evaluation(
            run=run,
            n_items=scores.n_items,
            accuracy=scores.accuracy,
            balanced_accuracy=scores.balanced_accuracy,
            roc_auc=scores.roc_auc,
            ece=scores.expected_calibration_error,
            per_class=per_class,
            confusion=scores.confusion_matrix,
            extra={"class_names": scores.class_names, **report.get("extra", {})},
        )
        for name, png in evaluation["plots"].items():
            getattr(row, selectors.PLOTS[name]).save(
                f"run-{run.pk}-{name}.png", ContentFile(png), save=False
            )
        row.save()
    labels = {c.id: c for c in run.project.label_classes.all()}
    ordered = sorted(labels.values(), key=lambda c: c.index)
    Prediction.objects.filter(run=run).delete()
    Prediction.objects.bulk_create(
        Prediction(
            run=run,
            item_id=item_id,
            label=ordered[int(np.argmax(probabilities))],
            probabilities=[round(float(p), 6) for p in probabilities],
            attention=(
                np.round(np.asarray(attention, dtype=np.float64), 6).tolist()
                if attention is not None
                else None
            ),
        )
        for item_id, probabilities, attention in report["predictions"]
    )


def _finish(run_id: int, status: str, **values: Any) -> None:
    TrainingRun.objects.filter(pk=run_id).update(
        status=status, finished_at=timezone.now(), heartbeat_at=timezone.now(), **values
    )


def failure_reason(error: BaseException, run: TrainingRun) -> str:
    """A sentence an admin can act on, for every way a run fails."""
    from training.engine import CheckpointError, WeightsError
    from training.engine.data import TooFewItems

    if _is_out_of_memory(error):
        return (
            f"out of memory training {run.backbone} with batch size {run.batch_size} at "
            f"{run.image_size} px: lower the batch size or the image size, or pick a smaller "
            f"backbone ({error})"
        )
    if isinstance(error, (NoLabelledItems, TooFewItems)):
        return str(error)
    if isinstance(error, WeightsError):
        return f"bad weights ({run.weights}): {error}"
    if isinstance(error, CheckpointError):
        return f"bad checkpoint: {error}"
    return f"{type(error).__name__}: {error}"


def _is_out_of_memory(error: BaseException) -> bool:
    import torch

    if isinstance(error, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _release_gpu_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
