"""The import page as an admin sees it: a zip of a CT series imported as one stack, then read
slice by slice in Hounsfield units on the annotator page (admins label too)."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from labeling.imports.rendering import window_to_uint8
from labeling.models import Item
from tests.frontend.test_label_page import canvas_gray, wait_for_pixels
from tests.labeling.test_dicom_import import ct_series

pytestmark = pytest.mark.slow


def test_admin_imports_a_series_as_a_stack_and_reads_it(
    project, admin_user, page, login, live_server, artifacts_dir, browser_errors, tmp_path
):
    project.gold_rate = 0.0
    project.save()
    archive = tmp_path / "ct-series.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name, data in ct_series(6):
            zf.writestr(name, data)
    login(page, admin_user.username)
    page.goto(f"{live_server.url}/projects/{project.id}/import/")
    page.set_input_files("input[name=files]", str(archive))
    page.check("[data-testid=import-stack]")
    page.click("[data-testid=import-form] button[type=submit]")
    page.wait_for_url(lambda url: "batch=" in url)
    assert "series of 6 files" in page.inner_text("main")
    page.screenshot(path=str(artifacts_dir / "import-ct-series-as-stack.png"), full_page=True)
    item = Item.objects.get(project=project)
    volume = np.load(io.BytesIO(item.array.read()))
    assert volume.shape == (6, 128, 128) and item.metadata["stack"]["slices"] == 6

    page.goto(f"{live_server.url}/label/{project.id}/")
    wait_for_pixels(page, item.pk)
    assert page.inner_text("[data-testid=slice-readout]") == "Slice 4 / 6"
    page.keyboard.press("m")
    assert page.inner_text("[data-testid=window-readout]") == "W 350 · C 50 HU · Mediastinum"
    box = page.locator("[data-testid=item-canvas]").bounding_box()
    col, row = 64, 70
    page.mouse.move(box["x"] + (col + 0.5) * box["width"] / 128, box["y"] + (row + 0.5) * box["height"] / 128)
    for step in range(3):  # back to the first slice, one wheel notch a slice
        page.mouse.wheel(0, -100)
        page.wait_for_function(
            "n => document.querySelector('[data-testid=stage]').dataset.slice === String(n)",
            arg=3 - step,
        )
    assert page.inner_text("[data-testid=slice-readout]") == "Slice 1 / 6"
    assert np.array_equal(canvas_gray(page), window_to_uint8(volume[0], 50, 350))
    shown = page.inner_text("[data-testid=pixel-readout]")
    assert shown == f"x {col} y {row}: {int(volume[0, row, col])} HU"
    page.keyboard.press("PageDown")
    assert page.inner_text("[data-testid=pixel-readout]") == f"x {col} y {row}: {int(volume[1, row, col])} HU"
    page.screenshot(path=str(artifacts_dir / "admin-ct-series-stack-slice-2.png"))
    assert browser_errors == []
