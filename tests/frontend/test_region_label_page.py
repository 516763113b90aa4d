"""The annotator page of region projects (issue 17): a crowd worker draws points, boxes,
polygons and brushed masks with the mouse (and a finger), edits them, and submits the whole set
as one vote; what is stored is what was drawn, in image pixels, whatever the zoom."""

from __future__ import annotations

import io

import numpy as np
import pytest
from django.core.files.base import ContentFile
from PIL import Image, ImageDraw

from labeling.aggregation.regions.answers import parse_regions, rle_decode
from labeling.models import ExpertLabel, Item, Membership, Project, Vote
from labeling.services.imports import record_region_answer
from tests.factories import ItemFactory, MembershipFactory, ProjectFactory, UserFactory
from tests.frontend.test_label_page import wait_for_pixels

pytestmark = pytest.mark.slow

WIDTH, HEIGHT = 360, 270
CLASSES = ["WBC", "RBC", "Platelet"]


def smear(seed: int) -> bytes:
    """A drawn blood smear: pale background, a few red cells and one stained white cell."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (WIDTH, HEIGHT), (236, 214, 220))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x, y = rng.integers(20, WIDTH - 20), rng.integers(20, HEIGHT - 20)
        draw.ellipse([x - 16, y - 16, x + 16, y + 16], fill=(205, 120, 130))
    draw.ellipse([150, 100, 200, 150], fill=(110, 70, 160))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def region_project(task_type: str, name: str, n_items: int = 2) -> Project:
    project = ProjectFactory(
        name=name, classes=CLASSES, task_type=task_type, overlap=1, max_overlap=1
    )
    for n in range(n_items):
        data = smear(n)
        ItemFactory(
            project=project, width=WIDTH, height=HEIGHT, channels=3,
            image=ContentFile(data, name=f"s{n}.png"), thumbnail=ContentFile(data, name=f"t{n}.png"),
        )  # fmt: skip
    return project


@pytest.fixture
def worker(db):
    return UserFactory(username="crowd1")


def join(project: Project, user) -> None:
    MembershipFactory(project=project, user=user, role=Membership.Role.CROWD)


def open_label_page(page, login, live_server, project: Project, username: str = "crowd1") -> int:
    login(page, username)
    page.goto(f"{live_server.url}/label/{project.id}/")
    page.wait_for_selector("[data-testid=label-app][data-ready=true]")
    wait_for_pixels(page)
    return int(page.get_attribute("[data-testid=item-image]", "data-item"))


def on_screen(page, x: float, y: float) -> tuple[float, float]:
    """Where image pixel coordinate (x, y) is in the page: through the viewer's zoom and pan,
    read from the transformed image's box (independent of the page's own arithmetic)."""
    return tuple(
        page.evaluate(
            "([x, y]) => { const img = document.querySelector('[data-testid=item-image]');"
            " const r = img.getBoundingClientRect();"
            " return [r.left + x * r.width / img.naturalWidth, r.top + y * r.height / img.naturalHeight]; }",
            [x, y],
        )
    )


def click(page, x: float, y: float) -> None:
    page.mouse.click(*on_screen(page, x, y))


def drag(page, start: tuple[float, float], end: tuple[float, float], steps: int = 8) -> None:
    page.mouse.move(*on_screen(page, *start))
    page.mouse.down()
    page.mouse.move(*on_screen(page, *end), steps=steps)
    page.mouse.up()


def region_count(page) -> int:
    return int(page.get_attribute("[data-testid=region-canvas]", "data-count"))


def submit_and_wait(
    page, item: int, button: str = "submit-regions", key: str | None = None
) -> Vote:
    """Submit (by the button, or the key when given), then wait for the vote to be stored and
    the page to move on."""
    if key:
        page.keyboard.press(key)
    else:
        page.click(f"[data-testid={button}]")
    page.wait_for_function(
        "item => { const img = document.querySelector('[data-testid=item-image]');"
        " return Number(img.dataset.item) !== item || !document.querySelector('[data-testid=done]').hidden; }",
        arg=item,
    )
    return Vote.objects.get(assignment__item_id=item)


def assert_points_close(stored, expected, tolerance: float = 1.5) -> None:
    got = np.asarray(stored, dtype=float)
    want = np.asarray(expected, dtype=float)
    assert got.shape == want.shape, (stored, expected)
    assert np.abs(got - want).max() <= tolerance, (stored, expected)


def test_worker_draws_boxes_deletes_one_and_submits(
    worker, page, login, live_server, artifacts_dir, browser_errors
):
    project = region_project(Project.TaskType.BOXES, "Blood cells (boxes)")
    join(project, worker)
    item = open_label_page(page, login, live_server, project)
    # Nothing about the answer or other workers is on the page.
    html = page.content()
    for secret in ("secret-source", "expert", "is_gold"):
        assert secret not in html
    assert page.locator("[data-testid=tool-box]").inner_text().startswith("X")
    assert page.is_disabled("[data-testid=submit-regions]")  # nothing drawn yet

    # Zoom out and pan so that the view is not the fitted one: the page maps through the zoom.
    page.keyboard.press("-")
    page.mouse.move(*on_screen(page, 180, 135))
    page.mouse.down(button="middle")
    page.mouse.move(*on_screen(page, 170, 125), steps=3)
    page.mouse.up(button="middle")
    drag(page, (150, 100), (200, 150))  # the white cell, class 1 (WBC)
    page.keyboard.press("2")  # RBC
    drag(page, (40, 30), (90, 75))
    drag(page, (230, 160), (280, 210))
    assert region_count(page) == 3
    assert page.inner_text("[data-testid=region-count]") == "3 regions"
    assert page.is_disabled("[data-testid=nothing-here]")

    # Select the second box and delete it with the key; move the third a little.
    page.keyboard.press("v")
    click(page, 60, 50)
    page.keyboard.press("Delete")
    assert region_count(page) == 2
    drag(page, (255, 185), (265, 190))
    # Resize the first box by its south-east handle.
    click(page, 175, 125)
    drag(page, (200, 150), (205, 152))
    page.screenshot(path=str(artifacts_dir / "region-label-page.png"))

    vote = submit_and_wait(page, item)
    assert vote.kind == Vote.Kind.REGIONS
    regions = sorted(vote.regions, key=lambda r: r["points"][0][0])
    assert [(r["label"], r["shape"]) for r in regions] == [(0, "box"), (1, "box")]
    assert_points_close(regions[0]["points"], [[150, 100], [205, 152]])
    assert_points_close(regions[1]["points"], [[240, 165], [290, 215]])
    assert browser_errors == []


def test_worker_draws_two_boxes_and_a_polygon_deletes_one_and_submits(
    worker, page, login, live_server, artifacts_dir, browser_errors
):
    """The issue's test, on a masks project (a box there is a rectangle mask): two boxes and a
    polygon drawn with the mouse, one box deleted, the rest submitted as one vote."""
    project = region_project(Project.TaskType.MASKS, "Blood cells (boxes and polygons)")
    join(project, worker)
    item = open_label_page(page, login, live_server, project)
    page.keyboard.press("x")  # box tool
    assert page.locator("[data-testid=tool-box]").get_attribute("class") == "on"
    drag(page, (150, 100), (200, 150))  # WBC
    page.keyboard.press("2")  # RBC
    drag(page, (40, 30), (90, 75))
    page.keyboard.press("g")  # polygon tool, still RBC
    for x, y in [(230, 160), (290, 170), (270, 220), (230, 160)]:
        click(page, x, y)
    assert region_count(page) == 3
    page.keyboard.press("v")
    click(page, 60, 50)  # the RBC box
    page.keyboard.press("Delete")
    assert region_count(page) == 2
    page.screenshot(path=str(artifacts_dir / "region-label-boxes-and-polygon.png"))

    vote = submit_and_wait(page, item)
    assert vote.kind == Vote.Kind.REGIONS
    shapes = sorted(vote.regions, key=lambda r: r["shape"])
    assert [(r["shape"], r["label"]) for r in shapes] == [("box", 0), ("polygon", 1)]
    assert_points_close(shapes[0]["points"], [[150, 100], [200, 150]])
    assert_points_close(shapes[1]["points"], [[230, 160], [290, 170], [270, 220]])
    assert browser_errors == []


def test_worker_draws_polygons_and_a_brush_mask(
    worker, page, login, live_server, artifacts_dir, browser_errors
):
    project = region_project(Project.TaskType.MASKS, "Blood cells (masks)")
    join(project, worker)
    item = open_label_page(page, login, live_server, project)
    assert page.locator("[data-testid=tool-polygon]").get_attribute("class") == "on"
    # A polygon closed on its first vertex, one closed with Enter, one with a double click.
    for x, y in [(150, 100), (200, 100), (200, 150), (150, 150), (150, 100)]:
        click(page, x, y)
    for x, y in [(20, 20), (60, 20), (40, 60)]:
        click(page, x, y)
    page.keyboard.press("Enter")
    for x, y in [(300, 200), (340, 200)]:
        click(page, x, y)
    page.mouse.dblclick(*on_screen(page, 320, 250))
    assert region_count(page) == 3
    # A self-crossing polygon is refused with a message; Escape drops it.
    for x, y in [(100, 200), (140, 240), (140, 200), (100, 240)]:
        click(page, x, y)
    page.keyboard.press("Enter")
    assert "crosses itself" in page.inner_text("[data-testid=status]")
    page.keyboard.press("Escape")
    assert region_count(page) == 3

    # Delete the triangle with the button.
    page.keyboard.press("v")
    click(page, 40, 35)
    page.click("[data-testid=region-delete]")
    assert region_count(page) == 2
    # Select the square and pull one corner out by its vertex handle.
    click(page, 175, 125)
    drag(page, (200, 150), (210, 160), steps=4)
    page.keyboard.press("2")  # the selected square becomes an RBC
    page.keyboard.press("Escape")  # let go of it: the next class key sets the brush's class only

    # Brush class 3 (Platelet) across a stripe, then erase its middle.
    page.keyboard.press("3")
    page.keyboard.press("d")
    page.evaluate(
        "() => { const b = document.querySelector('[data-testid=brush-size]');"
        " b.value = '4'; b.dispatchEvent(new Event('input')); }"
    )
    drag(page, (30, 200), (90, 200), steps=12)
    page.keyboard.press("e")
    drag(page, (60, 190), (60, 210), steps=4)
    assert region_count(page) == 3
    page.screenshot(path=str(artifacts_dir / "region-label-page-masks.png"))

    vote = submit_and_wait(page, item)
    shapes = {(r["shape"], r["label"]): r for r in vote.regions}
    polygons = sorted(
        (r for r in vote.regions if r["shape"] == "polygon"), key=lambda r: r["points"][0][0]
    )
    assert [p["label"] for p in polygons] == [1, 0]
    assert_points_close(polygons[0]["points"], [[150, 100], [200, 100], [210, 160], [150, 150]])
    assert_points_close(polygons[1]["points"], [[300, 200], [340, 200], [320, 250]])
    mask = rle_decode(shapes[("mask", 2)]["rle"])
    assert mask.shape == (HEIGHT, WIDTH)
    # The stroke: pixels along y = 200 from x = 30 to 90 within the brush, none far from it,
    # and the erased gap in the middle.
    rows, cols = np.nonzero(mask)
    assert rows.min() >= 200 - 6 and rows.max() <= 200 + 6
    assert cols.min() >= 30 - 6 and cols.max() <= 90 + 6
    assert mask[200, 35] and mask[200, 85] and not mask[200, 60]
    assert browser_errors == []


def test_points_undo_redo_class_keys_and_nothing_here(
    worker, page, login, live_server, browser_errors
):
    project = region_project(Project.TaskType.POINTS, "Blood cells (points)", n_items=3)
    join(project, worker)
    item = open_label_page(page, login, live_server, project)
    click(page, 100, 100)
    page.keyboard.press("3")
    click(page, 200, 120)
    click(page, 300, 240)
    assert region_count(page) == 3
    page.keyboard.press("Control+z")
    page.keyboard.press("Control+z")
    assert region_count(page) == 1
    page.keyboard.press("Control+Shift+Z")
    assert region_count(page) == 2
    # A new mark after an undo drops what could be redone.
    page.keyboard.press("Control+z")
    click(page, 50, 220)
    page.keyboard.press("Control+Shift+Z")
    assert region_count(page) == 2
    assert page.locator("[data-testid=region-class-3]").get_attribute("class") == "on"

    vote = submit_and_wait(page, item)
    assert sorted((r["label"], r["shape"]) for r in vote.regions) == [(0, "point"), (2, "point")]
    by_label = {r["label"]: r["points"] for r in vote.regions}
    assert_points_close(by_label[0], [[100, 100]])
    assert_points_close(by_label[2], [[50, 220]])

    # The next item: nothing there, said explicitly (Submit needs a region).
    second = int(page.get_attribute("[data-testid=item-image]", "data-item"))
    wait_for_pixels(page, second)
    assert second != item and region_count(page) == 0
    assert page.is_disabled("[data-testid=submit-regions]")
    vote = submit_and_wait(page, second, button="nothing-here")
    assert vote.kind == Vote.Kind.REGIONS and vote.regions == []

    # The last one is skipped by its key, a mark or not; Ctrl+Enter submits.
    third = int(page.get_attribute("[data-testid=item-image]", "data-item"))
    wait_for_pixels(page, third)
    click(page, 30, 30)
    vote = submit_and_wait(page, third, key="s")
    assert vote.kind == Vote.Kind.SKIP and vote.regions is None
    page.wait_for_selector("[data-testid=done]:not([hidden])")
    assert browser_errors == []


def test_touch_pinch_zooms_and_a_tap_marks_a_point(
    worker, new_page, login, live_server, artifacts_dir, browser_errors
):
    project = region_project(Project.TaskType.POINTS, "Blood cells (touch)", n_items=2)
    join(project, worker)
    page = new_page(820, 1180, has_touch=True, is_mobile=True)
    item = open_label_page(page, login, live_server, project)
    width_before = page.evaluate(
        "() => document.querySelector('[data-testid=item-image]').getBoundingClientRect().width"
    )
    # Two fingers spread apart: a pinch zooms in, and the first finger marks nothing.
    cdp = page.context.new_cdp_session(page)
    x, y = on_screen(page, 180, 135)

    def touch(kind: str, spread: float) -> None:
        points = [] if kind == "touchEnd" else [
            {"x": x - spread, "y": y, "id": 0}, {"x": x + spread, "y": y, "id": 1}
        ]  # fmt: skip
        cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": points})

    cdp.send(
        "Input.dispatchTouchEvent",
        {"type": "touchStart", "touchPoints": [{"x": x - 40, "y": y, "id": 0}]},
    )
    touch("touchStart", 40)
    for spread in (50, 60, 70, 80):
        touch("touchMove", spread)
    touch("touchEnd", 0)
    width_after = page.evaluate(
        "() => document.querySelector('[data-testid=item-image]').getBoundingClientRect().width"
    )
    assert width_after / width_before == pytest.approx(2, rel=0.05)
    assert region_count(page) == 0
    page.keyboard.press("2")
    page.touchscreen.tap(*on_screen(page, 180, 130))
    page.screenshot(path=str(artifacts_dir / "region-label-tablet.png"))
    page.wait_for_function(
        "() => document.querySelector('[data-testid=region-canvas]').dataset.count === '1'"
    )
    vote = submit_and_wait(page, item, key="Control+Enter")
    assert [(r["label"], r["shape"]) for r in vote.regions] == [(1, "point")]
    assert_points_close(vote.regions[0]["points"], [[180, 130]])
    assert browser_errors == []


def test_gold_feedback_shows_the_score_and_the_experts_regions(
    worker, page, login, live_server, artifacts_dir, browser_errors
):
    project = region_project(Project.TaskType.BOXES, "Blood cells (gold)", n_items=2)
    project.gold_rate = 1.0  # gold first, so the test knows when it comes
    project.save(update_fields=["gold_rate"])
    gold = project.items.order_by("id").first()
    gold.source_name = "GOLD-secret-file.png"
    gold.save(update_fields=["source_name"])
    expert = [
        {"label": "WBC", "shape": "box", "points": [[150, 100], [200, 150]]},
        {"label": "RBC", "shape": "box", "points": [[20, 20], [60, 60]]},
    ]
    shapes = parse_regions(
        expert, task_type="boxes", classes=CLASSES, width=WIDTH, height=HEIGHT, max_regions=10
    )
    record_region_answer(gold, shapes, source=ExpertLabel.Source.IMPORT)
    Item.objects.filter(pk=gold.pk).update(is_gold=True)
    join(project, worker)

    item = open_label_page(page, login, live_server, project)
    assert item == gold.pk
    html = page.content()
    for secret in ("GOLD-secret-file", "is_gold", "expert"):
        assert secret not in html  # nothing tells a gold item apart before it is answered
    drag(page, (151, 101), (199, 149))  # the white cell; the red one is missed
    page.click("[data-testid=submit-regions]")
    banner = page.locator("[data-testid=feedback]")
    banner.wait_for(state="visible")
    # One of two expert boxes found, no false one: F1 = 2/3.
    assert "your F1 is 0.67 against the expert" in banner.inner_text()
    assert page.get_attribute("[data-testid=region-canvas]", "data-layers") == "expert"
    assert page.is_visible("[data-testid=next-item]") and page.is_disabled(
        "[data-testid=submit-regions]"
    )
    # The answered item stays on screen, read only: a drag does not draw.
    drag(page, (250, 200), (300, 240))
    assert region_count(page) == 1
    page.screenshot(path=str(artifacts_dir / "region-label-gold-feedback.png"))
    vote = Vote.objects.get(assignment__item=gold)
    assert vote.kind == Vote.Kind.REGIONS and len(vote.regions) == 1

    page.keyboard.press("Enter")  # next item
    page.wait_for_function(
        "item => Number(document.querySelector('[data-testid=item-image]').dataset.item) !== item",
        arg=item,
    )
    assert banner.is_hidden() and page.is_hidden("[data-testid=next-item]")
    assert page.get_attribute("[data-testid=region-canvas]", "data-layers") == ""
    assert region_count(page) == 0
    drag(page, (250, 200), (300, 240))
    assert region_count(page) == 1
    assert browser_errors == []


def test_a_worker_failing_region_gold_is_warned_then_blocked(
    worker, page, login, live_server, artifacts_dir, browser_errors
):
    project = region_project(Project.TaskType.BOXES, "Blood cells (blocked)", n_items=4)
    project.gold_rate = 1.0
    project.gold_min_answers = 3
    project.gold_accuracy_threshold = 0.5
    project.save()
    expert = [{"label": "WBC", "shape": "box", "points": [[150, 100], [200, 150]]}]
    for gold in project.items.all():
        shapes = parse_regions(
            expert, task_type="boxes", classes=CLASSES, width=WIDTH, height=HEIGHT, max_regions=10
        )
        record_region_answer(gold, shapes, source=ExpertLabel.Source.IMPORT)
    project.items.update(is_gold=True)
    join(project, worker)

    def next_item(shown: int) -> int:
        page.click("[data-testid=next-item]")
        page.wait_for_function(
            "item => Number(document.querySelector('[data-testid=item-image]').dataset.item) !== item",
            arg=shown,
        )
        wait_for_pixels(page)
        return int(page.get_attribute("[data-testid=item-image]", "data-item"))

    shown = open_label_page(page, login, live_server, project)
    standing = page.locator("[data-testid=standing]")
    for n in (1, 2):
        page.click("[data-testid=nothing-here]")  # the expert boxed a cell: F1 0, a miss
        page.wait_for_selector("[data-testid=next-item]:not([hidden])")
        assert "your F1 is 0.00" in page.inner_text("[data-testid=feedback]")
        if n == 1:
            assert standing.is_hidden()  # one miss alone is no warning
            shown = next_item(shown)
    standing.wait_for(state="visible")
    assert "gold accuracy is 0% over 2 gold questions" in standing.inner_text()
    shown = next_item(shown)
    assert standing.is_visible()  # it stays while it holds
    drag(page, (20, 20), (60, 60), steps=4)  # a wrong box: F1 0 again, and the block
    page.click("[data-testid=submit-regions]")
    blocked = page.locator("[data-testid=blocked]")
    blocked.wait_for(state="visible")
    assert blocked.inner_text().startswith("You are blocked from this project")
    assert page.is_hidden("[data-testid=item-image]") and region_count(page) == 0
    assert page.is_disabled("[data-testid=submit-regions]")
    assert page.is_disabled("[data-testid=nothing-here]")
    assert Membership.objects.get(project=project, user=worker).is_blocked
    page.screenshot(path=str(artifacts_dir / "region-label-blocked.png"))
    assert all("403" in e or "Forbidden" in e for e in browser_errors)
