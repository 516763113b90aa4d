"""The annotator page: a crowd worker labels by keyboard, sees gold feedback, and nothing else."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from django.conf import settings
from django.core.files.base import ContentFile
from PIL import Image, ImageDraw

from labeling.imports.rendering import window_to_uint8
from labeling.models import Assignment, Item, Vote
from labeling.services.imports import import_files
from tests.factories import ItemFactory, give_expert_answer
from tests.labeling.test_dicom_import import dicom as dicom_file

pytestmark = pytest.mark.slow


def xray_like(seed: int, size: int = 320) -> bytes:
    """A real PneumoniaMNIST image when the shared data is there, else a drawn chest."""
    path = Path(settings.QUORUM_DATA_DIR) / "pneumoniamnist" / "pneumoniamnist_28.npz"
    if path.exists():
        with np.load(path) as data:
            pixels = data["test_images"][seed]
        image = Image.fromarray(pixels).resize((size, size), Image.Resampling.BICUBIC)
    else:
        image = Image.new("L", (size, size), 20)
        draw = ImageDraw.Draw(image)
        for dx in (-1, 1):
            cx = size // 2 + dx * size // 5
            draw.ellipse([cx - size // 7, size // 6, cx + size // 7, size * 5 // 6], fill=70 + seed * 9)
        draw.rectangle([size // 2 - 12, 0, size // 2 + 12, size], fill=200)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def chest_item(project, n: int) -> Item:
    data = xray_like(n)
    return ItemFactory(
        project=project, width=320, height=320,
        image=ContentFile(data, name=f"x{n}.png"), thumbnail=ContentFile(data, name=f"t{n}.png"),
    )


def shown_item(page) -> int:
    return int(page.get_attribute("[data-testid=item-image]", "data-item"))


def wait_for_new_item(page, previous: int) -> int:
    page.wait_for_function(
        "prev => { const img = document.querySelector('[data-testid=item-image]');"
        " return !img.hidden && img.dataset.item && Number(img.dataset.item) !== prev"
        " && img.complete && img.naturalWidth > 0; }",
        arg=previous,
    )
    return shown_item(page)


def wait_for_pixels(page, item: int | None = None) -> None:
    """Wait until the viewer's canvas shows the pixels (of ``item`` when given)."""
    page.wait_for_function(
        "item => { const stage = document.querySelector('[data-testid=stage]');"
        " const img = document.querySelector('[data-testid=item-image]');"
        " return stage.dataset.pixels === 'ready' && (item === null || Number(img.dataset.item) === item); }",
        arg=item,
    )


def canvas_sum(page) -> int:
    return page.evaluate(
        "() => { const c = document.querySelector('[data-testid=item-canvas]');"
        " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        " let s = 0; for (let i = 0; i < d.length; i += 4) s += d[i]; return s; }"
    )


def canvas_gray(page) -> np.ndarray:
    """The canvas as rows x columns of its red channel (gray images have R = G = B)."""
    width, height, values = page.evaluate(
        "() => { const c = document.querySelector('[data-testid=item-canvas]');"
        " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        " const out = []; for (let i = 0; i < d.length; i += 4) out.push(d[i]);"
        " return [c.width, c.height, out]; }"
    )
    return np.array(values, dtype=np.uint8).reshape(height, width)


def votes_by(user) -> int:
    return Vote.objects.filter(worker=user).count()


def test_crowd_labels_by_keyboard_with_gold_feedback(
    project, crowd_user, page, login, live_server, artifacts_dir, browser_errors
):
    project.gold_rate = 1.0  # gold first, so the test knows when it comes
    project.question = "Does this chest X-ray show pneumonia?"
    project.save()
    golds = [chest_item(project, n) for n in (0, 1)]
    for gold in golds:
        give_expert_answer(gold, "pneumonia", gold=True)
        gold.source_name = "GOLD-secret-file.dcm"
        gold.save(update_fields=["source_name"])
    regular = [chest_item(project, n) for n in range(2, 6)]
    # An item whose consensus is already confident wants no more votes: never served.
    hidden = chest_item(project, 6)
    hidden.votes_wanted = 0
    hidden.save(update_fields=["votes_wanted"])

    login(page, "crowd1")
    page.goto(f"{live_server.url}/label/{project.id}/")
    page.wait_for_selector("[data-testid=label-app][data-ready=true]")
    first = wait_for_new_item(page, -1)
    assert first in {g.pk for g in golds}
    html = page.content()
    for secret in ("GOLD-secret-file", "is_gold", "expert"):
        assert secret not in html
    assert page.inner_text("[data-testid=progress]") == "0 votes today · 4 items left"

    # Gold 1: right answer (key 2 = pneumonia).
    page.keyboard.press("2")
    second = wait_for_new_item(page, first)
    banner = page.locator("[data-testid=feedback]")
    banner.wait_for(state="visible")
    assert banner.inner_text() == "Gold question: you matched the expert."
    # Gold 2: wrong answer.
    page.keyboard.press("1")
    third = wait_for_new_item(page, second)
    page.wait_for_function(
        "() => document.querySelector('[data-testid=feedback]').textContent.includes('expert said')"
    )
    assert banner.inner_text() == "Gold question: the expert said pneumonia."
    page.screenshot(path=str(artifacts_dir / "label-page-1280x800.png"))
    assert third in {r.pk for r in regular}

    # Zoom, pan and window/level, then reset: the viewer's state shows in the canvas transform
    # and the window on screen (an 8-bit picture is windowed on its 0-255 values).
    wait_for_pixels(page)
    canvas = page.locator("[data-testid=item-canvas]")
    fitted = canvas.evaluate("c => c.style.transform")
    assert page.inner_text("[data-testid=window-readout]") == "W 256 · C 128"
    before = canvas_sum(page)
    page.keyboard.press("+")
    page.keyboard.press("ArrowUp")
    assert canvas.evaluate("c => c.style.transform") != fitted
    assert page.inner_text("[data-testid=window-readout]") == "W 256 · C 115.2"
    assert canvas_sum(page) > before  # brighter
    page.keyboard.press("r")
    assert canvas.evaluate("c => c.style.transform") == fitted
    assert page.inner_text("[data-testid=window-readout]") == "W 256 · C 128"
    assert canvas_sum(page) == before

    # Regular items: a label, then undo it and answer again, then unsure and skip.
    page.keyboard.press("1")
    fourth = wait_for_new_item(page, third)
    page.wait_for_function("() => document.querySelector('[data-testid=progress]').textContent.startsWith('3 ')")
    page.keyboard.press("z")
    page.wait_for_function("() => document.querySelector('[data-testid=status]').textContent")
    assert page.inner_text("[data-testid=status]") == "Your last answer was taken back."
    assert wait_for_new_item(page, fourth) == third
    assert not Vote.objects.filter(worker=crowd_user, item_id=third).exists()
    page.keyboard.press("2")
    assert wait_for_new_item(page, third) == fourth
    page.keyboard.press("0")
    fifth = wait_for_new_item(page, fourth)
    page.keyboard.press("s")
    sixth = wait_for_new_item(page, fifth)
    page.keyboard.press("1")
    page.locator("[data-testid=done]").wait_for(state="visible")
    page.wait_for_function("() => document.querySelector('[data-testid=progress]').textContent.startsWith('6 votes today · 0 items')")

    assert {fourth, fifth, sixth} | {third} == {r.pk for r in regular}
    votes = {v.item_id: v for v in Vote.objects.filter(worker=crowd_user).select_related("label")}
    assert set(votes) == {g.pk for g in golds} | {r.pk for r in regular}
    assert hidden.pk not in votes
    assert votes[third].label.name == "pneumonia"
    assert votes[fourth].kind == "unsure" and votes[fifth].kind == "skip"
    assert votes[sixth].label.name == "normal"
    assert [v.gold_correct for v in votes.values() if v.was_gold].count(True) == 1
    assert not Assignment.objects.filter(worker=crowd_user, item=hidden).exists()
    assert browser_errors == []


def test_tablet_viewport_and_mouse_controls(project, crowd_user, new_page, login, live_server,
                                            artifacts_dir, browser_errors):
    project.question = "Does this chest X-ray show pneumonia?"
    project.save()
    for n in range(3):
        chest_item(project, n)
    page = new_page(width=820, height=1180, has_touch=True)
    login(page, "crowd1")
    page.goto(f"{live_server.url}/label/{project.id}/")
    first = wait_for_new_item(page, -1)
    stage = page.locator("[data-testid=stage]").bounding_box()
    buttons = page.locator("[data-testid=class-1]").bounding_box()
    # Portrait: the image on top, big, and the answers below it, all on screen.
    assert stage["width"] >= 800 and stage["height"] >= 600
    assert buttons["y"] >= stage["y"] + stage["height"] - 1
    assert buttons["y"] + buttons["height"] <= 1180
    page.screenshot(path=str(artifacts_dir / "label-page-tablet-820x1180.png"))
    wait_for_pixels(page)
    page.locator("[data-testid=window-center]").fill("100")
    assert page.inner_text("[data-testid=window-readout]") == "W 256 · C 100"
    page.click("[data-testid=class-2]")
    wait_for_new_item(page, first)
    page.wait_for_function(
        "() => document.querySelector('[data-testid=progress]').textContent.startsWith('1 vote today')"
    )
    assert votes_by(crowd_user) == 1
    assert browser_errors == []


def test_label_page_roles(expert_page, crowd_page, anon_page, project, other_project):
    assert crowd_page.get(f"/label/{project.id}/").status_code == 200
    assert expert_page.get(f"/label/{project.id}/").status_code == 403
    assert crowd_page.get(f"/label/{other_project.id}/").status_code == 404
    assert anon_page.get(f"/label/{project.id}/").status_code == 302


def test_ct_window_presets_hounsfield_readout_and_stack(
    project, crowd_user, page, login, live_server, artifacts_dir, browser_errors
):
    """A CT slice windowed on its stored Hounsfield units, then a stack scrolled slice by slice."""
    project.gold_rate = 0.0
    project.save()
    ct_batch = import_files(project, [("ct.dcm", dicom_file("CT_small.dcm"))])
    stack_batch = import_files(project, [("mr.dcm", dicom_file("emri_small.dcm"))], stack=True)
    ct = Item.objects.get(pk=ct_batch.report[0]["item_ids"][0])
    stack = Item.objects.get(pk=stack_batch.report[0]["item_ids"][0])
    hounsfield = np.load(io.BytesIO(ct.array.read()))
    volume = np.load(io.BytesIO(stack.array.read()))

    login(page, "crowd1")
    page.goto(f"{live_server.url}/label/{project.id}/")
    wait_for_pixels(page, ct.pk)
    low, high = float(hounsfield.min()), float(hounsfield.max())
    # The default window is the one the rendering used (here the full range), in HU.
    readout = page.inner_text("[data-testid=window-readout]")
    assert readout == f"W {high - low + 1:g} · C {(low + high + 1) / 2:g} HU"
    assert np.array_equal(canvas_gray(page), window_to_uint8(hounsfield, (low + high + 1) / 2, high - low + 1))
    assert page.locator("[data-testid=slice-readout]").is_hidden()

    # A preset key: the numbers on screen and the canvas follow, computed from the HU values.
    page.keyboard.press("l")
    assert page.inner_text("[data-testid=window-readout]") == "W 1500 · C -600 HU · Lung"
    assert page.inner_text("[data-testid=window-width-value]") == "1500 HU"
    assert np.array_equal(canvas_gray(page), window_to_uint8(hounsfield, -600, 1500))
    page.click("[data-testid=preset-bone]")
    assert page.inner_text("[data-testid=window-readout]") == "W 1800 · C 400 HU · Bone"
    assert np.array_equal(canvas_gray(page), window_to_uint8(hounsfield, 400, 1800))
    page.keyboard.press("i")
    assert np.array_equal(canvas_gray(page), 255 - window_to_uint8(hounsfield, 400, 1800))
    page.keyboard.press("i")
    page.keyboard.press("t")
    assert page.inner_text("[data-testid=window-readout]") == "W 400 · C 40 HU · Soft tissue"

    # The value under the cursor is the stored HU value of that pixel.
    box = page.locator("[data-testid=item-canvas]").bounding_box()
    for col, row in ((20, 30), (64, 64), (100, 7)):
        page.mouse.move(box["x"] + (col + 0.5) * box["width"] / ct.width,
                        box["y"] + (row + 0.5) * box["height"] / ct.height)
        expected = f"x {col} y {row}: {int(hounsfield[row, col])} HU"
        assert page.inner_text("[data-testid=pixel-readout]") == expected
    # Right-drag widens the window (to the right) and darkens it (down).
    middle = (box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.move(*middle)
    page.mouse.down(button="right")
    page.mouse.move(middle[0] + 60, middle[1] + 40, steps=4)
    page.mouse.up(button="right")
    dragged = page.inner_text("[data-testid=window-readout]")
    width, center = (float(part.split()[1]) for part in dragged.split(" · ")[:2])
    assert width > 400 and center > 40 and "Soft tissue" not in dragged
    page.keyboard.press("l")
    page.screenshot(path=str(artifacts_dir / "label-ct-lung-window.png"))

    # The stack: one item, scrolled with the wheel and the keys; each slice its own values.
    page.keyboard.press("1")
    wait_for_pixels(page, stack.pk)
    slice_text = page.locator("[data-testid=slice-readout]")
    assert slice_text.inner_text() == "Slice 6 / 10"
    window = page.inner_text("[data-testid=window-readout]")
    assert "HU" not in window and "Lung" not in window  # MR: stored values, no CT preset
    center = (float(volume.min()) + float(volume.max()) + 1) / 2
    width = float(volume.max()) - float(volume.min()) + 1

    def shows(index: int) -> None:
        assert slice_text.inner_text() == f"Slice {index + 1} / 10"
        assert np.array_equal(canvas_gray(page), window_to_uint8(volume[index], center, width))

    shows(5)
    page.mouse.move(box["x"] + 40, box["y"] + 40)
    page.mouse.wheel(0, 100)
    page.wait_for_function("() => document.querySelector('[data-testid=stage]').dataset.slice === '7'")
    shows(6)
    page.keyboard.press("ArrowDown")
    shows(7)
    page.keyboard.press("PageUp")
    page.keyboard.press("ArrowUp")
    shows(5)
    page.keyboard.press("End")
    shows(9)
    page.keyboard.press("Home")
    shows(0)
    page.mouse.wheel(0, -100)  # above the first slice: stays there
    shows(0)
    page.keyboard.press("PageDown")
    page.keyboard.press("PageDown")
    page.keyboard.press("PageDown")
    shows(3)
    page.screenshot(path=str(artifacts_dir / "label-stack-slice-4-of-10.png"))
    assert browser_errors == []
