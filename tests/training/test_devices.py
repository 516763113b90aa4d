"""The training workers' report (device, timm models) and what the site reads from it."""

from __future__ import annotations

import json
import os

import pytest
from django.conf import settings

from training import devices


def test_a_worker_reports_its_device_and_timm_models():
    report = devices.write_worker_report()
    assert report["device"] in ("cpu", "cuda")
    assert "test_resnet" in report["backbones"] and "tf_efficientnet_lite0" in report["backbones"]
    assert json.loads(devices.report_path().read_text()) == report
    assert devices.worker_report() == report
    assert devices.check_backbone("tf_efficientnet_lite0") is None
    # a misspelt name gets up to five names sharing its first 12 characters
    close = devices.check_backbone("tf_efficientnet_lite9")
    assert len(close) == 5 and all(n.startswith("tf_efficient") for n in close)


def test_only_workers_on_the_training_queue_report():
    assert devices.report_in_background(["default"]) is None


@pytest.mark.slow
def test_the_report_is_written_by_a_child_process(tmp_path):
    os.environ["MEDIA_ROOT"] = str(settings.MEDIA_ROOT)
    try:
        child = devices.report_in_background(["default", "gpu"])
        assert child is not None and child.wait(timeout=180) == 0
    finally:
        del os.environ["MEDIA_ROOT"]
    assert devices.worker_report()["host"]


def test_an_unreadable_report_counts_as_none():
    path = devices.report_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{not json")
    assert devices.worker_report() is None
