"""Region answers: every bad-input rule with its message, normalisation, COCO RLE and gold scores."""

import numpy as np
import pytest

from labeling.aggregation.regions.answers import (
    RegionAnswerError,
    Shape,
    check_rle,
    class_masks,
    is_simple_polygon,
    parse_regions,
    rle_decode,
    rle_encode,
    score_answer,
    shapes_from_stored,
)

CLASSES = ["WBC", "RBC"]


def parse(regions, task_type="boxes", width=100, height=80, max_regions=5):
    return parse_regions(
        regions, task_type=task_type, classes=CLASSES, width=width, height=height, max_regions=max_regions
    )


def square(x0=10, y0=10, side=20):
    return [[x0, y0], [x0 + side, y0], [x0 + side, y0 + side], [x0, y0 + side]]


@pytest.mark.parametrize(
    ("task_type", "regions", "message"),
    [
        ("boxes", {"label": "WBC"}, "regions must be a list"),
        ("boxes", [{"label": "WBC", "shape": "box", "points": [[1, 1], [2, 2]]}] * 6,
         "6 regions is more than this project's limit of 5"),
        ("boxes", [{"label": "platelet", "shape": "box", "points": [[1, 1], [2, 2]]}],
         "region 0: unknown class 'platelet'; this project's classes are WBC, RBC"),
        ("boxes", [{"label": "WBC", "shape": "box", "points": [[1, 1], [2, 2]]},
                   {"label": "WBC", "shape": "point", "points": [[1, 1]]}],
         "region 1: a point is not allowed in a boxes project; use box"),
        ("masks", [{"label": "WBC", "shape": "point", "points": [[1, 1]]}],
         "region 0: a point is not allowed in a masks project; use polygon, box or mask"),
        ("points", [{"label": "WBC", "shape": "circle", "points": [[1, 1]]}],
         "region 0: unknown shape 'circle'; use point"),
        ("boxes", [{"label": "WBC", "shape": "box", "points": [[5, 1], [5, 9]]}],
         "region 0: the box has zero area"),
        ("boxes", [{"label": "WBC", "shape": "box", "points": [[9, 9], [5, 5]]}],
         "region 0: box corners must be"),
        ("boxes", [{"label": "WBC", "shape": "box", "points": [[90, 10], [101, 20]]}],
         "region 0: the box (90, 10)-(101, 20) is outside the image (100 x 80)"),
        ("boxes", [{"label": "WBC", "shape": "box", "points": [[1, 1]]}],
         "region 0: a box has two corners"),
        ("points", [{"label": "RBC", "shape": "point", "points": [[50, -1]]}],
         "region 0: point (50, -1) is outside the image (100 x 80)"),
        ("points", [{"label": "RBC", "shape": "point", "points": [[50, "a"]]}],
         'region 0: "points" must be a list of [x, y] pairs'),
        ("points", [{"label": "RBC", "shape": "point", "points": [[50, True]]}],
         'region 0: "points" must be a list of [x, y] pairs'),
        ("points", [{"label": "RBC", "shape": "point", "points": [[1, 1], [2, 2]]}],
         "region 0: a point has exactly one [x, y], got 2"),
        ("masks", [{"label": "WBC", "shape": "polygon", "points": [[1, 1], [5, 5], [1, 1]]}],
         "region 0: a polygon needs at least 3 vertices, got 2"),
        ("masks", [{"label": "WBC", "shape": "polygon", "points": [[0, 0], [10, 10], [10, 0], [0, 10]]}],
         "region 0: the polygon intersects itself"),
        ("masks", [{"label": "WBC", "shape": "polygon", "points": [[0, 0], [5, 5], [10, 10]]}],
         "region 0: the polygon has zero area"),
        ("masks", [{"label": "WBC", "shape": "polygon", "points": [[0, 0], [10, 0], [200, 10]]}],
         "region 0: polygon vertex (200, 10) is outside the image"),
        ("masks", [{"label": "WBC", "shape": "mask", "rle": {"size": [80, 99], "counts": [7920]}}],
         "region 0: the mask's size [80, 99] is not the image's [80, 100]"),
        ("masks", [{"label": "WBC", "shape": "mask", "rle": {"size": [80, 100], "counts": [7000]}}],
         "region 0: the mask's counts sum to 7000, not height x width = 8000"),
        ("masks", [{"label": "WBC", "shape": "mask", "rle": {"size": [80, 100], "counts": "eNo"}}],
         "region 0: compressed RLE is not accepted"),
        ("masks", [{"label": "WBC", "shape": "mask", "rle": {"size": [80, 100], "counts": [8001, -1]}}],
         "region 0: the mask's \"counts\" must be a list of non-negative integers"),
        ("masks", [{"label": "WBC", "shape": "mask"}], 'region 0: a mask needs "rle"'),
        ("masks", ["WBC"], "region 0: a region is an object"),
        ("masks", [{"label": "WBC", "shape": "polygon", "points": [[1, 1], [5, 1], [3, 4]] * 400}],
         "region 0: a polygon has at most 1000 vertices, got 1200"),
        ("masks", [{"label": "WBC", "shape": "polygon", "points": [[1, 1], [5, 1], [3, 4]] * 1500}] * 5,
         "the polygons have 22500 vertices in all, more than 20000 in one answer"),
    ],
)
def test_every_bad_input_names_the_region_and_the_rule(task_type, regions, message):
    with pytest.raises(RegionAnswerError) as caught:
        parse(regions, task_type=task_type)
    assert message in caught.value.message


def test_a_valid_answer_is_normalised_to_class_indexes():
    shapes = parse(
        [
            {"label": "RBC", "shape": "box", "points": [[0, 0], [100, 80]]},  # the whole image
            {"label": "WBC", "shape": "box", "points": [[1.5, 2], [3, 4.25]]},
        ]
    )
    assert [s.to_stored() for s in shapes] == [
        {"label": 1, "shape": "box", "points": [[0.0, 0.0], [100.0, 80.0]]},
        {"label": 0, "shape": "box", "points": [[1.5, 2.0], [3.0, 4.25]]},
    ]
    assert shapes[1].to_wire(CLASSES)["label"] == "WBC"
    assert parse([]) == []


def test_a_polygon_drops_repeated_vertices_and_a_closing_one():
    poly = square() + [[10, 10]]
    (shape,) = parse([{"label": "WBC", "shape": "polygon", "points": [poly[0], *poly]}], task_type="masks")
    assert shape.points.tolist() == square()
    assert shape.bounding_box() == (10, 10, 30, 30)


def test_simple_polygons():
    assert is_simple_polygon(square())
    assert is_simple_polygon([[0, 0], [10, 0], [10, 10], [5, 2], [0, 10]])  # concave
    assert not is_simple_polygon([[0, 0], [10, 0], [10, 10], [0, 10], [5, 0]])  # vertex on an edge
    assert not is_simple_polygon([[0, 0], [10, 0], [5, 0], [5, 5]])  # folds back on itself
    # a star drawn in one stroke crosses itself five times
    angles = np.arange(5) * 4 * np.pi / 5
    assert not is_simple_polygon(np.stack([np.cos(angles), np.sin(angles)], axis=1))
    # a large simple polygon (a circle's outline) is checked block by block
    t = np.linspace(0, 2 * np.pi, 1000, endpoint=False)
    circle = np.stack([np.cos(t), np.sin(t)], axis=1) * 100
    assert is_simple_polygon(circle, block=64)
    # the same outline with one vertex pulled across the far side
    crossed = circle.copy()
    crossed[10] = [-150, 0]
    assert not is_simple_polygon(crossed, block=64)


def test_rle_round_trip_is_column_major_and_starts_with_zeros():
    mask = np.zeros((3, 4), bool)
    mask[0, 0] = True
    mask[1:3, 2] = True
    rle = rle_encode(mask)
    # column by column: 1 set, 6 clear (rest of column 0, column 1, first of column 2), 2 set, 3 clear
    assert rle == {"size": [3, 4], "counts": [0, 1, 6, 2, 3]}
    assert (rle_decode(rle) == mask).all()
    assert rle_encode(np.zeros((2, 2), bool)) == {"size": [2, 2], "counts": [4]}
    rng = np.random.default_rng(0)
    for _ in range(5):
        m = rng.random((7, 11)) > 0.6
        assert (rle_decode(rle_encode(m)) == m).all()
        assert check_rle(rle_encode(m), 7, 11) is None


def test_a_mask_region_keeps_its_rle_and_its_bounding_box():
    mask = np.zeros((80, 100), bool)
    mask[20:30, 40:45] = True
    (shape,) = parse([{"label": "RBC", "shape": "mask", "rle": rle_encode(mask)}], task_type="masks")
    assert shape.label == 1 and (rle_decode(shape.rle) == mask).all()
    assert shape.bounding_box() == (40, 20, 45, 30)
    assert shapes_from_stored([shape.to_stored()])[0].rle == shape.rle


def test_polygon_rasterisation_covers_pixels_whose_centre_is_inside():
    (shape,) = parse([{"label": "WBC", "shape": "polygon", "points": square(10, 10, 20)}], task_type="masks")
    masks = class_masks([shape], 2, 80, 100)
    assert masks[0].sum() == 400 and masks[1].sum() == 0
    assert masks[0][10:30, 10:30].all()


def test_a_box_on_a_mask_project_is_the_rectangle_of_pixels_whose_centre_is_inside():
    (box, polygon) = parse([{"label": "WBC", "shape": "box", "points": [[10, 10], [30, 20]]},
                            {"label": "WBC", "shape": "polygon", "points": square(25, 15, 10)}],
                           task_type="masks")  # fmt: skip
    masks = class_masks([box], 2, 80, 100)
    assert masks[0].sum() == 200 and masks[0][10:20, 10:30].all() and masks[1].sum() == 0
    # the same area drawn as a polygon or as a box is the same mask
    (as_polygon,) = parse([{"label": "WBC", "shape": "polygon",
                            "points": [[10, 10], [30, 10], [30, 20], [10, 20]]}], task_type="masks")  # fmt: skip
    assert (class_masks([as_polygon], 2, 80, 100) == masks).all()
    union = class_masks([box, polygon], 2, 80, 100)[0]
    assert union.sum() == 200 + 100 - 5 * 5  # squares overlap on x 25..30, y 15..20
    assert _score("masks", [box], [as_polygon]) == ("dice", 1.0)


def _score(task_type, answer, truth, **kw):
    return score_answer(
        answer, truth, task_type=task_type, height=kw.get("height", 80), width=kw.get("width", 100),
        match_distance=kw.get("distance", 10), match_iou=kw.get("iou", 0.5),
    )


def test_point_f1_counts_matches_within_the_distance_and_within_a_class():
    truth = shapes_from_stored([
        {"label": 0, "shape": "point", "points": [[10, 10]]},
        {"label": 0, "shape": "point", "points": [[50, 50]]},
        {"label": 1, "shape": "point", "points": [[80, 20]]},
    ])  # fmt: skip
    answer = shapes_from_stored([
        {"label": 0, "shape": "point", "points": [[14, 13]]},   # 5 px: a match
        {"label": 0, "shape": "point", "points": [[50, 65]]},   # 15 px: too far
        {"label": 0, "shape": "point", "points": [[80, 20]]},   # right place, wrong class
    ])  # fmt: skip
    assert _score("points", answer, truth) == ("f1", pytest.approx(2 * 1 / 6))
    assert _score("points", answer, truth, distance=20)[1] == pytest.approx(2 * 2 / 6)
    assert _score("points", [], []) == ("f1", 1.0)
    assert _score("points", [], truth) == ("f1", 0.0)


def test_box_f1_at_the_iou_threshold():
    truth = shapes_from_stored([{"label": 0, "shape": "box", "points": [[0, 0], [10, 10]]}])
    shifted = shapes_from_stored([{"label": 0, "shape": "box", "points": [[2, 0], [12, 10]]}])  # IoU 8/12
    assert _score("boxes", shifted, truth)[1] == pytest.approx(1.0)
    assert _score("boxes", shifted, truth, iou=0.7)[1] == pytest.approx(0.0)


def test_mask_dice_of_the_union_per_class_averaged_over_classes_present():
    a = np.zeros((80, 100), bool)
    a[0:10, 0:10] = True
    b = np.zeros((80, 100), bool)
    b[0:10, 5:15] = True  # half of a
    truth = [Shape(0, "mask", rle=rle_encode(a))]
    # two pieces whose union is b: Dice 0.5 for class 0; a class-1 mark the expert has not: 0
    answer = [
        Shape(0, "mask", rle=rle_encode(b & (np.arange(100) < 10))),
        Shape(0, "polygon", points=np.array([[10.0, 0], [15, 0], [15, 10], [10, 10]])),
        Shape(1, "polygon", points=np.array(square(50, 50, 10), dtype=float)),
    ]
    assert _score("masks", answer[:2], truth) == ("dice", pytest.approx(0.5))
    assert _score("masks", answer, truth)[1] == pytest.approx(0.25)
    assert _score("masks", truth, truth)[1] == pytest.approx(1.0)
    assert _score("masks", [], [])[1] == 1.0
