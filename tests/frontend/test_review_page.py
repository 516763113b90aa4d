"""The review page: an expert adjudicates by keyboard, with the evidence beside the image."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from django.core.files.base import ContentFile
from pydicom.data import get_testdata_file as dicom_path

from labeling.imports.rendering import encode_image, encode_npy, window_to_uint8
from labeling.models import ExpertLabel, Item
from tests.factories import ItemFactory
from tests.frontend.test_label_page import canvas_gray, chest_item, wait_for_pixels
from tests.labeling.test_review import build_scene

pytestmark = pytest.mark.slow


def wait_for_item(page, previous: str | None = None) -> str:
    """Wait until an item other than ``previous`` is shown with its image decoded."""
    page.wait_for_function(
        "prev => { const app = document.querySelector('[data-testid=review-app]');"
        " const img = document.querySelector('[data-testid=item-image]');"
        " return app.dataset.itemId && app.dataset.itemId !== prev && !img.hidden"
        " && img.complete && img.naturalWidth > 0"
        " && document.querySelector('[data-testid=consensus] td'); }",
        arg=previous,
    )
    return page.get_attribute("[data-testid=review-app]", "data-item-id")


def test_expert_adjudicates_three_items_by_keyboard(
    project, expert_user, page, login, live_server, artifacts_dir, browser_errors
):
    scene = build_scene(
        project, n_regular=5, n_holdout=2, n_disputed=3,
        make_item=lambda p, n: chest_item(p, n),
    )
    queue = [scene.disputed[2], scene.disputed[1], scene.disputed[0]]  # most uncertain first
    login(page, expert_user.username)
    page.goto(f"{live_server.url}/review/{project.id}/")
    first = wait_for_item(page)
    assert first == str(queue[0].pk)
    # The evidence: votes per class, each voter's reliability, every method, the model.
    assert page.inner_text("[data-testid=count-normal]") == "2"
    assert page.inner_text("[data-testid=count-pneumonia]") == "1"
    assert page.locator("[data-testid=voters] tr").count() == 3
    assert "90%" in page.inner_text("[data-testid=voters]")
    consensus = page.inner_text("[data-testid=consensus]")
    assert "dawid_skene" in consensus and "majority_vote" in consensus
    assert "pneumonia (88%" in page.inner_text("[data-testid=prediction]")
    page.screenshot(path=str(artifacts_dir / "review_page.png"))

    # 1: pick with a key, confirm with Enter.
    page.keyboard.press("2")
    assert "picked" in page.get_attribute("[data-testid=class-2]", "class")
    page.keyboard.press("Enter")
    second = wait_for_item(page, first)
    assert second == str(queue[1].pk)

    # 2: pick, n for a note, Enter in the note submits.
    page.keyboard.press("1")
    page.keyboard.press("n")
    page.keyboard.type("rib overlap, not consolidation")
    page.keyboard.press("Enter")
    third = wait_for_item(page, second)
    assert third == str(queue[2].pk)

    # Back with k to see the answered item, forward with j, then answer the third.
    page.keyboard.press("k")
    wait_for_item(page, third)
    assert "done: normal" in page.inner_text("[data-testid=position]")
    page.keyboard.press("j")
    wait_for_item(page, second)
    page.keyboard.press("+")  # the viewer still owns zoom
    page.keyboard.press("2")
    page.keyboard.press("Enter")
    page.wait_for_selector("[data-testid=review-app][data-finished=true]")
    assert "All 3 items reviewed" in page.inner_text("[data-testid=status]")

    labels = {
        e.item_id: (e.label.name, e.note)
        for e in ExpertLabel.objects.filter(source=ExpertLabel.Source.REVIEW, expert=expert_user)
    }
    assert labels == {
        queue[0].pk: ("pneumonia", ""),
        queue[1].pk: ("normal", "rib overlap, not consolidation"),
        queue[2].pk: ("pneumonia", ""),
    }
    assert not Item.objects.filter(pk__in=labels, needs_review=True).exists()
    assert Item.objects.get(pk=queue[1].pk).expert_answer.name == "normal"
    page.screenshot(path=str(artifacts_dir / "review_page_done.png"))
    assert browser_errors == []


def test_holdout_page_is_blind_and_answers_by_key(
    project, expert_user, page, login, live_server, artifacts_dir, browser_errors
):
    scene = build_scene(project, n_regular=2, n_holdout=2, make_item=lambda p, n: chest_item(p, n))
    login(page, expert_user.username)
    page.goto(f"{live_server.url}/holdout/{project.id}/")
    page.wait_for_function(
        "() => { const img = document.querySelector('[data-testid=item-image]');"
        " return img.complete && img.naturalWidth > 0; }"
    )
    text = page.inner_text("body").lower()
    for leaked in ("vote", "consensus", "dawid_skene", "majority_vote", "prediction", "88%"):
        assert leaked not in text
    page.screenshot(path=str(artifacts_dir / "holdout_page.png"))
    page.keyboard.press("2")
    page.wait_for_selector("text=Saved your label")
    labelled = ExpertLabel.objects.get(expert=expert_user, source=ExpertLabel.Source.HOLDOUT)
    assert labelled.item_id in {i.pk for i in scene.holdout}
    assert labelled.label.name == "pneumonia"
    assert browser_errors == []


def ct_item(project, n: int) -> Item:
    """A real CT slice (pydicom's CT_small) in Hounsfield units, shifted by ``n`` HU."""
    hounsfield = pydicom.dcmread(dicom_path("CT_small.dcm")).pixel_array.astype(np.float32) - 1024 + n
    low, high = float(hounsfield.min()), float(hounsfield.max())
    png = encode_image(window_to_uint8(hounsfield, (low + high + 1) / 2, high - low + 1))
    return ItemFactory(
        project=project, width=hounsfield.shape[1], height=hounsfield.shape[0], modality="CT",
        image=ContentFile(png, name=f"ct{n}.png"), thumbnail=ContentFile(png, name=f"ct{n}-t.png"),
        array=ContentFile(encode_npy(hounsfield), name=f"ct{n}.npy"),
    )


def test_expert_pages_window_ct_in_hounsfield_units(
    project, expert_user, page, login, live_server, artifacts_dir, browser_errors
):
    scene = build_scene(project, n_regular=2, n_holdout=1, n_disputed=1, make_item=ct_item)
    disputed = scene.disputed[0]
    hounsfield = np.load(io.BytesIO(disputed.array.read()))
    login(page, expert_user.username)
    page.goto(f"{live_server.url}/review/{project.id}/")
    assert wait_for_item(page) == str(disputed.pk)
    wait_for_pixels(page)
    assert page.inner_text("[data-testid=window-readout]").endswith(" HU")
    page.keyboard.press("c")
    assert page.inner_text("[data-testid=window-readout]") == "W 80 · C 40 HU · Brain"
    assert np.array_equal(canvas_gray(page), window_to_uint8(hounsfield, 40, 80))
    box = page.locator("[data-testid=item-canvas]").bounding_box()
    page.mouse.move(box["x"] + 50.5 * box["width"] / disputed.width,
                    box["y"] + 60.5 * box["height"] / disputed.height)
    assert page.inner_text("[data-testid=pixel-readout]") == f"x 50 y 60: {int(hounsfield[60, 50])} HU"
    page.screenshot(path=str(artifacts_dir / "review-ct-brain-window.png"))
    page.keyboard.press("2")
    page.keyboard.press("Enter")
    page.wait_for_selector("[data-testid=review-app][data-finished=true]")

    # The blind hold-out page: the same viewer, presets and readout.
    page.goto(f"{live_server.url}/holdout/{project.id}/")
    wait_for_pixels(page)
    page.keyboard.press("b")
    assert page.inner_text("[data-testid=window-readout]") == "W 1800 · C 400 HU · Bone"
    holdout = np.load(io.BytesIO(scene.holdout[0].array.read()))
    assert np.array_equal(canvas_gray(page), window_to_uint8(holdout, 400, 1800))
    page.screenshot(path=str(artifacts_dir / "holdout-ct-bone-window.png"))
    assert browser_errors == []
