"""The annotator page: a crowd worker labels by keyboard, sees gold feedback, and nothing else."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from django.conf import settings
from django.core.files.base import ContentFile
from PIL import Image, ImageDraw

from labeling.models import Assignment, Item, Vote
from tests.factories import ItemFactory, give_expert_answer

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

    # Zoom, pan and window/level, then reset: the viewer's state shows in the image transform.
    image = page.locator("[data-testid=item-image]")
    fitted = image.evaluate("img => img.style.transform")
    page.keyboard.press("+")
    page.keyboard.press("ArrowUp")
    assert image.evaluate("img => img.style.transform") != fitted
    assert "brightness(1.1)" in image.evaluate("img => img.style.filter")
    page.keyboard.press("r")
    assert image.evaluate("img => img.style.transform") == fitted
    assert "brightness(1)" in image.evaluate("img => img.style.filter")

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
    page.locator("[data-testid=brightness]").fill("1.5")
    assert "brightness(1.5)" in page.locator("[data-testid=item-image]").evaluate("i => i.style.filter")
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
