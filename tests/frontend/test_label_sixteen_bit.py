"""A 16-bit picture on the label page is windowed on its stored 16-bit values (issue 18), not on
the 8-bit rendering made at import: a narrow window shows detail the rendering cannot hold."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image

from labeling.imports.rendering import window_to_uint8
from labeling.models import Item
from labeling.services.imports import import_files
from tests.frontend.test_label_page import canvas_gray, wait_for_pixels

pytestmark = pytest.mark.slow


def _js_number(x: float) -> str:
    """The readout's number: JavaScript's String(Math.round(x * 10) / 10)."""
    text = repr(math.floor(x * 10 + 0.5) / 10)
    return text.removesuffix(".0")


def sixteen_bit_picture() -> np.ndarray:
    """Left half: 256 levels between 30000 and 30255, which the full-range 8-bit rendering
    (0..60000) folds into two or three greys; right half: the rest of the range."""
    rows, cols = np.mgrid[0:48, 0:64]
    values = np.where(cols < 32, 30000 + (rows * 32 + cols) % 256, (rows * 32 + cols - 32) * 39)
    values[0, 63], values[47, 63] = 60000, 0
    return values.astype(np.uint16)


def test_a_sixteen_bit_picture_is_windowed_on_its_stored_values(
    project, crowd_user, page, login, live_server, artifacts_dir, browser_errors
):
    project.gold_rate = 0.0
    project.save()
    values = sixteen_bit_picture()
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, format="PNG")
    batch = import_files(project, [("deep.png", buffer.getvalue())])
    item = Item.objects.get(pk=batch.report[0]["item_ids"][0])

    login(page, "crowd1")
    page.goto(f"{live_server.url}/label/{project.id}/")
    wait_for_pixels(page, item.pk)
    # The default window is the full stored range, in the picture's own values (no unit).
    center, width = (0 + 60000 + 1) / 2, 60001.0
    assert (
        page.inner_text("[data-testid=window-readout]")
        == f"W {_js_number(width)} · C {_js_number(center)}"
    )
    shown = canvas_gray(page)
    assert np.abs(shown.astype(int) - window_to_uint8(values, center, width)).max() <= 1
    assert len(np.unique(shown[:, :32])) <= 3  # as the 8-bit rendering holds it

    # Narrow the window by keys onto the left half (each step as the viewer computes it).
    for _ in range(52):
        page.keyboard.press("ArrowRight")
        width = width * 0.9
    for _ in range(10):
        page.keyboard.press("ArrowDown")
        center = center + width / 20
    assert (
        page.inner_text("[data-testid=window-readout]")
        == f"W {_js_number(width)} · C {_js_number(center)}"
    )
    shown = canvas_gray(page)
    assert np.abs(shown.astype(int) - window_to_uint8(values, center, width)).max() <= 1
    assert len(np.unique(shown[:, :32])) > 200  # detail only the 16-bit values carry

    # The value under the cursor is the stored 16-bit value.
    box = page.locator("[data-testid=item-canvas]").bounding_box()
    for col, row in ((5, 7), (20, 40), (50, 10)):
        page.mouse.move(box["x"] + (col + 0.5) * box["width"] / item.width,
                        box["y"] + (row + 0.5) * box["height"] / item.height)  # fmt: skip
        assert (
            page.inner_text("[data-testid=pixel-readout]") == f"x {col} y {row}: {values[row, col]}"
        )
    page.screenshot(path=str(artifacts_dir / "label-16bit-narrow-window.png"))
    assert browser_errors == []
