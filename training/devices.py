"""What the training workers run on, and what follows from it for a launch: the backbone names
they can build, the form's defaults, and an estimate of a run's time.

The web process never imports torch or timm (importing them took 6 of the 7 s a launch used
to take). Instead a worker that consumes the ``gpu`` queue reports, when it starts, from a
short-lived child process (so neither CUDA nor torch's memory lands in the worker's main
process before it forks): its device, the timm model names it can build and the versions. The
report is a JSON file under ``MEDIA_ROOT/workers/``, the volume the web and the training
workers already share for run folders. Without a report (no worker started yet) the device is
taken from the newest run that recorded one, and the backbone check imports timm after all.

Estimates model an epoch as ``(n_train + n_holdout / 3) * (overhead + rate * image_size**2)``
seconds: a per-item cost (reading, resizing) plus one that grows with the image's area. The
rate comes from the newest epoch a run of the same backbone measured on the same kind of
device, else from a calibrated default.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from fnmatch import fnmatch
from functools import lru_cache
from pathlib import Path
from typing import Any

from django.conf import settings

logger = logging.getLogger(__name__)

REPORT_NAME = Path("workers") / "training.json"
TRAINING_QUEUE = "gpu"

# Form defaults per device: a GPU trains the backbone at its native size; a CPU run has to stay
# short enough to watch, so it trains small images for a few epochs.
DEFAULTS = {
    "cuda": {"backbone": "tf_efficientnet_lite0", "image_size": 224, "epochs": 10, "batch_size": 32},
    "cpu": {"backbone": "tf_efficientnet_lite0", "image_size": 64, "epochs": 3, "batch_size": 32},
}
# Per item and epoch: seconds whatever the size (reading, resizing: on the CPU either way), and
# seconds per pixel of area when no run measured the backbone on the device yet. CPU:
# tf_efficientnet_lite0 on this project's shared 2-core machine took 6 ms per item and epoch at
# 32 px (benchmarks/class_imbalance.py, 1 thread) and 50 ms at 64 px under a load of 9, so
# these err on the slow side; CUDA: a guess (224 px at ~1,000 items/s, single-process data
# loading being the bottleneck), replaced by the first measured run.
ITEM_OVERHEAD = {"cpu": 3e-3, "cuda": 0.8e-3}
DEFAULT_RATE = {"cpu": 1.5e-6, "cuda": 4e-9}
HOLDOUT_COST = 1 / 3  # scoring an item (forward only) against training on it
STARTUP_SECONDS = {"cpu": 15.0, "cuda": 20.0}  # building the data and the model, loading weights


def report_path() -> Path:
    return Path(settings.MEDIA_ROOT) / REPORT_NAME


# -- the worker side -------------------------------------------------------------------------


def write_worker_report() -> dict[str, Any]:
    """Describe this process's torch device and timm models, atomically, for the web process."""
    import timm
    import torch
    from timm.models import _registry

    cuda = torch.cuda.is_available()
    names = set(timm.list_models())
    # deprecated aliases still build (timm.is_model accepts them)
    names |= set(getattr(_registry, "_deprecated_models", {}) or {})
    report = {
        "device": "cuda" if cuda else "cpu",
        "device_name": torch.cuda.get_device_name(0) if cuda else f"{os.cpu_count()} cores",
        "device_count": torch.cuda.device_count() if cuda else 0,
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "host": socket.gethostname(),
        "reported_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "backbones": sorted(names),
    }
    path = report_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(report))
    os.replace(temporary, path)
    return report


def report_in_background(queues: list[str]) -> subprocess.Popen | None:
    """From a worker's main process: start the report in a child if this worker trains."""
    if TRAINING_QUEUE not in queues:
        return None
    return subprocess.Popen(
        [sys.executable, "-m", "training.devices"],
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )


# -- the web side ----------------------------------------------------------------------------


def worker_report() -> dict[str, Any] | None:
    """The latest report of a training worker, or None if none has reported."""
    path = report_path()
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        return None
    return _read_report(str(path), stamp)


@lru_cache(maxsize=4)
def _read_report(path: str, stamp: int) -> dict[str, Any] | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        logger.warning("unreadable worker report %s", path)
        return None


def check_backbone(name: str) -> list[str] | None:
    """None if the training workers can build ``name`` (a timm name, with or without a
    pretrained tag), else up to five similar names."""
    architecture = name.split(".", 1)[0]
    report = worker_report()
    if report and report.get("backbones"):
        names = report["backbones"]
        if architecture in set(names):
            return None
        pattern = f"*{architecture[:12]}*"
        return [n for n in names if fnmatch(n, pattern)][:5] if architecture else []
    import timm  # no worker has reported yet: the slow way, once per process

    if timm.is_model(name):
        return None
    return timm.list_models(f"*{architecture[:12]}*")[:5] if architecture else []


@dataclass
class TrainingDevice:
    kind: str  # "cuda" or "cpu"
    label: str  # what the page says about it
    source: str  # "worker" (its report), "run" (the newest run's device) or "assumed"


def training_device() -> TrainingDevice:
    """The device runs will train on, as honestly as the site knows it."""
    from training.models import TrainingRun

    report = worker_report()
    if report:
        kind = "cuda" if report.get("device") == "cuda" else "cpu"
        name = report.get("device_name") or kind
        return TrainingDevice(kind, f"{kind.upper()} ({name}), reported by the worker", "worker")
    device = (
        TrainingRun.objects.exclude(device="").order_by("-created_at", "-id")
        .values_list("device", flat=True).first()
    )
    if device:
        kind = "cuda" if device.startswith("cuda") else "cpu"
        return TrainingDevice(kind, f"{kind.upper()}, as the last run trained on", "run")
    return TrainingDevice("cpu", "CPU assumed: no training worker has reported yet", "assumed")


def launch_defaults(device: TrainingDevice | None = None) -> dict[str, Any]:
    """The form's and the API's defaults for the device runs will train on."""
    return dict(DEFAULTS[(device or training_device()).kind])


def estimate_basis(project, device: TrainingDevice) -> dict[str, Any]:
    """What the launch form needs to estimate a run's time as its fields change.

    ``rates``: seconds per item per epoch per pixel of area, per backbone, from the newest
    epoch measured on this kind of device (any project: a backbone costs the same everywhere),
    after the per-item overhead.
    """
    from training.models import EpochMetric

    rates: dict[str, float] = {}
    epochs = (
        EpochMetric.objects.filter(run__device__startswith=device.kind, run__n_train_items__gt=0)
        .select_related("run")
        .order_by("-created_at", "-id")[:200]
    )
    for epoch in epochs:
        run = epoch.run
        backbone = run.backbone.split(".", 1)[0]  # the pretrained tag costs nothing
        if backbone in rates or run.label_source == "mil":  # bags cost per patch
            continue
        per_item = epoch.seconds / (run.n_train_items + HOLDOUT_COST * run.n_holdout_items)
        # a tiny image may cost no more than the overhead; its area still costs something
        area_part = max(per_item - ITEM_OVERHEAD[device.kind], 0.1 * per_item)
        rates[backbone] = area_part / run.image_size**2
    return {
        "device": device.kind,
        "device_label": device.label,
        "rates": rates,
        "default_rate": DEFAULT_RATE[device.kind],
        "item_overhead": ITEM_OVERHEAD[device.kind],
        "holdout_cost": HOLDOUT_COST,
        "startup_seconds": STARTUP_SECONDS[device.kind],
    }


def estimate_seconds(
    basis: dict[str, Any], backbone: str, image_size: int, epochs: int, n_train: int,
    n_holdout: int,
) -> tuple[float, bool]:
    """Seconds a run should take, and whether the rate was measured (else the default)."""
    rate = basis["rates"].get(backbone.split(".", 1)[0])
    measured = rate is not None
    rate = rate if measured else basis["default_rate"]
    items = n_train + basis["holdout_cost"] * n_holdout
    per_item = basis["item_overhead"] + rate * image_size**2
    return basis["startup_seconds"] + epochs * items * per_item, measured


if __name__ == "__main__":  # python -m training.devices: what a training worker runs at start
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "quorum.settings")
    django.setup()
    written = write_worker_report()
    print(f"training worker: {written['device']} ({written['device_name']})")
