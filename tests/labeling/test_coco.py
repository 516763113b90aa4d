"""COCO JSON for region projects: the parser's every refusal, RLE in both forms, the import as
expert answers on every entry point with nothing partial on any error, and the round trip."""

from __future__ import annotations

import copy
import io
import json

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command
from PIL import Image

from labeling.aggregation.regions.answers import rle_decode, rle_encode
from labeling.imports.coco import (
    CocoFileError,
    build_coco,
    compress_counts,
    decompress_counts,
    parse_coco,
)
from labeling.models import ImportBatch, Item, LabelClass, Project, Region, RegionAnswer
from labeling.services.imports import ImportRefused, import_files
from tests.labeling.test_imports import assert_nothing_stored, make_zip, media_files

W, H = 20, 16


def picture(seed: int, width: int = W, height: int = H) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def square_mask(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    mask = np.zeros((H, W), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def coco_file(annotations: list[dict] | None = None, **overrides) -> dict:
    """Two 20x16 images, classes WBC (7) and RBC (9), a box and a polygon and two RLE masks."""
    doc = {
        "images": [
            {"id": 1, "file_name": "smear/a.png", "width": W, "height": H},
            {"id": 2, "file_name": "b.png", "width": W, "height": H},
        ],
        "categories": [{"id": 7, "name": "WBC"}, {"id": 9, "name": "RBC"}],
        "annotations": annotations if annotations is not None else [
            {"id": 11, "image_id": 1, "category_id": 7, "bbox": [2, 3, 6, 5],
             "segmentation": [[2, 3, 8, 3, 8, 8, 2, 8]]},
            {"id": 12, "image_id": 1, "category_id": 9, "bbox": [10, 1, 4, 4],
             "segmentation": rle_encode(square_mask(10, 1, 14, 5))},
            {"id": 13, "image_id": 1, "category_id": 9, "bbox": [12, 8, 5, 6],
             "segmentation": {"size": [H, W],
                              "counts": compress_counts(rle_encode(square_mask(12, 8, 17, 14))["counts"])}},
        ],
    }
    doc.update(overrides)
    return doc


# The parser ---------------------------------------------------------------------------------

def test_boxes_points_and_masks_from_one_file():
    doc = coco_file()
    boxes = parse_coco(json.dumps(doc).encode(), "boxes")
    assert boxes.categories == ["WBC", "RBC"]
    a, b = boxes.images
    assert (a.file_name, a.width, a.height, b.regions) == ("smear/a.png", W, H, [])
    assert a.regions == [
        {"label": "WBC", "shape": "box", "points": [[2, 3], [8, 8]]},
        {"label": "RBC", "shape": "box", "points": [[10, 1], [14, 5]]},
        {"label": "RBC", "shape": "box", "points": [[12, 8], [17, 14]]},
    ]
    points = parse_coco(doc, "points").images[0].regions
    assert points[0] == {"label": "WBC", "shape": "point", "points": [[5.0, 5.5]]}
    masks = parse_coco(doc, "masks").images[0].regions
    assert masks[0] == {"label": "WBC", "shape": "polygon", "points": [[2, 3], [8, 3], [8, 8], [2, 8]]}
    # both RLE forms come out uncompressed, and decode to the masks that were written
    assert masks[1]["shape"] == masks[2]["shape"] == "mask"
    assert (rle_decode(masks[1]["rle"]) == square_mask(10, 1, 14, 5)).all()
    assert (rle_decode(masks[2]["rle"]) == square_mask(12, 8, 17, 14)).all()
    assert all(isinstance(c, int) for c in masks[2]["rle"]["counts"])


def test_keypoints_give_points_and_annotators_are_kept():
    doc = coco_file([
        {"id": 1, "image_id": 2, "category_id": 7, "keypoints": [3, 4, 2, 0, 0, 0, 5, 6, 1],
         "annotator": "ann-1"},
        {"id": 2, "image_id": 2, "category_id": 9, "bbox": [0, 0, 4, 2],
         "attributes": {"annotator": 17}},
    ])
    data = parse_coco(doc, "points")
    assert data.images[1].regions_by_annotator() == {
        "ann-1": [{"label": "WBC", "shape": "point", "points": [[3, 4]]},
                  {"label": "WBC", "shape": "point", "points": [[5, 6]]}],
        "17": [{"label": "RBC", "shape": "point", "points": [[2.0, 1.0]]}],
    }
    assert data.annotators == ["ann-1", "17"]


def test_compressed_counts_match_hand_encoded_strings():
    """Vectors worked by hand from the format: 5-bit groups + 48, 0x20 = more, 0x10 = sign,
    from the fourth count on the difference to the count two before."""
    assert compress_counts([5, 3, 2]) == "532"
    assert compress_counts([100, 3, 2, 1]) == "T332N"  # 100 = 4 + 3 * 32; 1 - 3 = -2 -> 'N'
    assert decompress_counts("T332N") == [100, 3, 2, 1]
    assert decompress_counts("") == []


def test_compressed_counts_round_trip_random_masks():
    rng = np.random.default_rng(0)
    for _ in range(200):
        mask = rng.random((int(rng.integers(1, 40)), int(rng.integers(1, 40)))) < rng.random()
        rle = rle_encode(mask)
        assert decompress_counts(compress_counts(rle["counts"])) == rle["counts"]
        assert (rle_decode({"size": rle["size"], "counts": decompress_counts(compress_counts(rle["counts"]))}) == mask).all()


def with_annotation(**fields) -> dict:
    ann = {"id": 5, "image_id": 1, "category_id": 7, "bbox": [1, 1, 3, 3],
           "segmentation": [[1, 1, 4, 1, 4, 4]]}
    ann.update(fields)
    return coco_file([{k: v for k, v in ann.items() if v is not None}])


MALFORMED = [
    ("not json", b"{images: [", "boxes", "not JSON"),
    ("not utf-8", b"\xff\xfe\x00{", "boxes", "not UTF-8|not JSON"),
    ("a list", b"[]", "boxes", "must be a JSON object"),
    ("no images", {k: v for k, v in coco_file().items() if k != "images"}, "boxes", "no 'images' list"),
    ("no annotations", {k: v for k, v in coco_file().items() if k != "annotations"}, "boxes",
     "no 'annotations' list"),
    ("no categories", coco_file(categories=[]), "boxes", "lists no categories"),
    ("images not a list", coco_file(images={"id": 1}), "boxes", "'images' must be a list"),
    ("image without size", coco_file(images=[{"id": 1, "file_name": "a.png", "width": 3}]), "boxes",
     r"'height' must be a positive whole number"),
    ("image without name", coco_file(images=[{"id": 1, "width": 3, "height": 3}]), "boxes",
     "has no 'file_name'"),
    ("two images one id", coco_file(images=[{"id": 1, "file_name": "a.png", "width": 3, "height": 3},
                                            {"id": 1, "file_name": "b.png", "width": 3, "height": 3}]),
     "boxes", "used by two images"),
    ("one file twice", coco_file(images=[{"id": 1, "file_name": "a.png", "width": 3, "height": 3},
                                         {"id": 2, "file_name": "a.png", "width": 3, "height": 3}]),
     "boxes", "listed twice"),
    ("two categories one id", coco_file(categories=[{"id": 1, "name": "a"}, {"id": 1, "name": "b"}]),
     "boxes", "used by two categories"),
    ("category without name", coco_file(categories=[{"id": 1}]), "boxes", "has no 'name'"),
    ("annotation without image", with_annotation(image_id=None), "boxes", "has no 'image_id'"),
    ("annotation without category", with_annotation(category_id=None), "boxes", "has no 'category_id'"),
    ("unknown image", with_annotation(image_id=99), "boxes", "image_id 99 is not among"),
    ("unknown category", with_annotation(category_id=3), "boxes", "category_id 3 is not among"),
    ("no bbox", with_annotation(bbox=None), "boxes", "has no 'bbox'"),
    ("bbox of three", with_annotation(bbox=[1, 2, 3]), "boxes", r"\[x, y, width, height\]"),
    ("bbox of text", with_annotation(bbox=[1, 2, "3", 4]), "boxes", "list of numbers"),
    ("bbox of zero area", with_annotation(bbox=[1, 2, 0, 4]), "boxes", "zero area"),
    ("bbox negative", with_annotation(bbox=[1, 2, 3, -4]), "boxes", "zero area"),
    ("bbox outside", with_annotation(bbox=[15, 2, 6, 4]), "boxes", "outside its 20x16 image"),
    ("bbox left of the image", with_annotation(bbox=[-1, 2, 3, 4]), "boxes", "outside"),
    ("bbox infinite", with_annotation(bbox=[1, 2, 1e400, 4]), "boxes", "not finite"),
    ("keypoint outside", with_annotation(keypoints=[30, 3, 2]), "points", "keypoint 0 .* outside"),
    ("keypoints not triples", with_annotation(keypoints=[3, 3]), "points", "triples"),
    ("no visible keypoint", with_annotation(keypoints=[3, 3, 0]), "points", "no keypoint is marked"),
    ("no segmentation", with_annotation(segmentation=None), "masks", "has no 'segmentation'"),
    ("polygon of two vertices", with_annotation(segmentation=[[1, 1, 4, 1]]), "masks",
     "polygon 0 has 2 vertices; a polygon needs at least 3"),
    ("closed polygon of two vertices", with_annotation(segmentation=[[1, 1, 4, 1, 4, 4, 1, 1]]),
     "masks", None),  # three distinct vertices closed: valid
    ("polygon odd count", with_annotation(segmentation=[[1, 1, 4, 1, 4]]), "masks", "odd count"),
    ("polygon outside", with_annotation(segmentation=[[1, 1, 40, 1, 4, 4]]), "masks",
     r"vertex 1 \(40, 1\) lies outside"),
    ("segmentation a string", with_annotation(segmentation="mask"), "masks",
     "list of polygons or an RLE"),
    ("RLE size mismatch", with_annotation(segmentation={"size": [H, W + 1], "counts": [H * (W + 1)]}),
     "masks", r"RLE's size \[16, 21\] .* not its image's \[16, 20\]"),
    ("RLE size of one number", with_annotation(segmentation={"size": [H], "counts": [H]}), "masks",
     r"'size' must be \[height, width\]"),
    ("RLE runs short", with_annotation(segmentation={"size": [H, W], "counts": [10, 5]}), "masks",
     "cover 15 pixels; its 16x20 size has 320"),
    ("RLE negative run", with_annotation(segmentation={"size": [H, W], "counts": [330, -10]}), "masks",
     "negative run"),
    ("RLE counts of text", with_annotation(segmentation={"size": [H, W], "counts": ["5"]}), "masks",
     "whole numbers or COCO's string"),
    ("RLE damaged string", with_annotation(segmentation={"size": [H, W], "counts": "T3 ~"}), "masks",
     "compressed counts are damaged"),
    ("RLE string ends in a count", with_annotation(segmentation={"size": [H, W], "counts": "T"}), "masks",
     "ends inside a count"),
    ("RLE of no pixel", with_annotation(segmentation={"size": [H, W], "counts": [H * W]}), "masks",
     "marks no pixel"),
]


@pytest.mark.parametrize(("case", "data", "task", "message"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_files_are_refused_with_what_is_wrong(case, data, task, message):
    if isinstance(data, dict):
        data = json.dumps(data, allow_nan=True)
    if message is None:
        parse_coco(data, task)
        return
    with pytest.raises(CocoFileError, match=message):
        parse_coco(data, task)


def test_messages_name_the_annotation():
    with pytest.raises(CocoFileError, match=r"annotation 0 \(id 5\): the box .* zero area"):
        parse_coco(with_annotation(bbox=[1, 2, 0, 4]), "boxes")
    with pytest.raises(CocoFileError, match="unknown task type"):
        parse_coco(coco_file(), "image")


def test_build_then_parse_gives_the_same_shapes():
    original = parse_coco(coco_file(), "masks")
    images = [{"id": i.id, "file_name": i.file_name, "width": i.width, "height": i.height,
               "regions": i.regions} for i in original.images]
    for compress in (True, False):
        doc = build_coco(images, original.categories, compress_masks=compress)
        assert isinstance(doc["annotations"][1]["segmentation"]["counts"], str if compress else list)
        again = parse_coco(json.dumps(doc), "masks")
        assert [i.regions for i in again.images] == [i.regions for i in original.images]
    boxes = parse_coco(coco_file(), "boxes")
    doc = build_coco([{"id": 1, "file_name": "x.png", "width": W, "height": H,
                       "regions": boxes.images[0].regions}], boxes.categories)
    assert doc["annotations"][0]["bbox"] == [2, 3, 6, 5]
    assert parse_coco(doc, "boxes").images[0].regions == boxes.images[0].regions
    points = [{"label": "RBC", "shape": "point", "points": [[4.5, 7.25]]}]
    doc = build_coco([{"id": 1, "file_name": "x.png", "width": W, "height": H, "regions": points}],
                     ["WBC", "RBC"])
    assert parse_coco(doc, "points").images[0].regions == points


# The import ---------------------------------------------------------------------------------


@pytest.fixture
def region_project(project) -> Project:
    return as_region_project(project)


def as_region_project(project: Project) -> Project:
    """The admin's project turned into a masks project with classes WBC and RBC."""
    project.task_type = Project.TaskType.MASKS
    project.save(update_fields=["task_type"])
    for cls, name in zip(project.label_classes.order_by("index"), ["WBC", "RBC"], strict=True):
        LabelClass.objects.filter(pk=cls.pk).update(name=name)
    return project


def images_zip() -> bytes:
    return make_zip({"smear/a.png": picture(1), "b.png": picture(2)})


def stored_answer(item: Item) -> list[dict]:
    classes = dict(item.project.label_classes.values_list("id", "name"))
    out = []
    for r in Region.objects.filter(answer=item.expert_regions).order_by("id"):
        out.append((classes[r.label_id], r.shape, [r.x0, r.y0, r.x1, r.y1], r.geometry))
    return out


@pytest.mark.django_db
def test_import_records_expert_regions_with_the_images(region_project):
    batch = import_files(region_project, [("set.zip", images_zip())], coco=json.dumps(coco_file()).encode(),
                         seed=0)
    assert batch.pk and batch.n_imported == 2 and batch.n_labels == 2
    a = Item.objects.get(source_name="set.zip/smear/a.png")
    b = Item.objects.get(source_name="set.zip/b.png")
    assert a.expert_regions.source == "import" and a.expert_regions.expert is None
    regions = stored_answer(a)
    assert regions[0] == ("WBC", "polygon", [2, 3, 8, 8], {"points": [[2, 3], [8, 3], [8, 8], [2, 8]]})
    assert regions[1][:3] == ("RBC", "mask", [10, 1, 14, 5])
    assert (rle_decode(regions[2][3]["rle"]) == square_mask(12, 8, 17, 14)).all()
    # an image the COCO file lists without annotations: "nothing here"
    assert b.expert_regions is not None and stored_answer(b) == []
    assert RegionAnswer.objects.count() == 2


@pytest.mark.django_db
def test_file_names_match_by_path_end_or_base_name(region_project):
    doc = broken(lambda d: (d["images"][0].update(file_name="./smear/a.png"),
                            d["images"][1].update(file_name="images/b.png")))
    batch = import_files(region_project, [("set.zip", images_zip())], coco=doc)
    assert batch.n_labels == 2


@pytest.mark.django_db
def test_category_names_match_the_classes_case_insensitively(region_project):
    doc = broken(lambda d: d["categories"][0].update(name="wbc"))
    import_files(region_project, [("set.zip", images_zip())], coco=doc)
    a = Item.objects.get(source_name="set.zip/smear/a.png")
    assert stored_answer(a)[0][0] == "WBC"


@pytest.mark.django_db
def test_a_json_inside_the_zip_is_the_coco_file(region_project):
    data = make_zip({"smear/a.png": picture(1), "b.png": picture(2),
                     "annotations.json": json.dumps(coco_file()).encode()})
    batch = import_files(region_project, [("set.zip", data)])
    assert batch.n_imported == 2 and batch.n_labels == 2
    two = make_zip({"a.png": picture(1), "x.json": b"{}", "y.json": b"{}"})
    with pytest.raises(ImportRefused, match="2 JSON files"):
        import_files(region_project, [("two.zip", two)])


def broken(doc_change) -> bytes:
    doc = copy.deepcopy(coco_file())
    doc_change(doc)
    return json.dumps(doc).encode()


NOT_PARTIAL = [
    ("a malformed annotation", lambda d: d["annotations"][2]["segmentation"].update(size=[3, 3]),
     None, "RLE's size"),
    ("an unknown class", lambda d: d["categories"][1].update(name="Platelets"), None,
     "category 'Platelets', not a class of this project"),
    ("an image missing from the upload", lambda d: d["images"].append(
        {"id": 3, "file_name": "c.png", "width": W, "height": H}), None, "'c.png' of the COCO file is not among"),
    ("a size that differs", lambda d: d["images"][1].update(width=W + 1), None,
     "'b.png' is 20x16 pixels; the COCO file says 21x16"),
    ("a polygon that crosses itself", lambda d: d["annotations"][0].update(
        segmentation=[[2, 2, 8, 8, 8, 2, 2, 8]]), None, "annotation 11 on 'smear/a.png': the polygon intersects itself"),
    ("an image that fails", lambda d: None, {"b.png": b"not a picture at all"}, "'set.zip/b.png': not an image"),
    ("too many regions", lambda d: d["annotations"].extend(
        [{"image_id": 2, "category_id": 7, "segmentation": [[1, 1, 3, 1, 3, 3]]}] * 4), None,
     "has 4 regions; this project allows at most 3"),
]


@pytest.mark.django_db
@pytest.mark.parametrize(("case", "change", "files", "message"), NOT_PARTIAL, ids=[c[0] for c in NOT_PARTIAL])
def test_nothing_partial_on_any_error(region_project, settings, case, change, files, message):
    region_project.max_regions = 3
    region_project.save(update_fields=["max_regions"])
    entries = {"smear/a.png": picture(1), "b.png": picture(2), **(files or {})}
    with pytest.raises(ImportRefused, match=message) as refused:
        import_files(region_project, [("set.zip", make_zip(entries))], coco=broken(change))
    assert str(refused.value).startswith("COCO import refused, nothing was imported.")
    assert_nothing_stored(settings)
    assert not RegionAnswer.objects.exists() and not Region.objects.exists()


@pytest.mark.django_db
def test_an_expert_answer_counts_every_annotators_regions_against_the_limit(region_project, settings):
    region_project.max_regions = 2
    region_project.save(update_fields=["max_regions"])
    doc = broken(lambda d: [ann.update(annotator=f"a{k}") for k, ann in enumerate(d["annotations"])])
    with pytest.raises(ImportRefused, match="'smear/a.png' has 3 regions; this project allows at most 2"):
        import_files(region_project, [("set.zip", images_zip())], coco=doc)
    assert_nothing_stored(settings)
    # as crowd votes each annotator's answer holds one region
    assert import_files(region_project, [("set.zip", images_zip())], coco=doc, coco_as="votes").n_labels == 3


@pytest.mark.django_db
def test_failure_while_recording_the_answers_deletes_the_stored_images(region_project, settings, monkeypatch):
    from labeling.services import imports

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(imports, "_region_row", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        import_files(region_project, [("set.zip", images_zip())], coco=json.dumps(coco_file()).encode())
    assert_nothing_stored(settings)


@pytest.mark.django_db
def test_reimport_keeps_the_first_answer(region_project):
    import_files(region_project, [("set.zip", images_zip())], coco=json.dumps(coco_file()).encode())
    first = dict(Item.objects.values_list("id", "expert_regions_id"))
    batch = import_files(region_project, [("set.zip", images_zip())], coco=json.dumps(coco_file()).encode())
    assert batch.n_duplicates == 2 and batch.n_labels == 0
    assert dict(Item.objects.values_list("id", "expert_regions_id")) == first


@pytest.mark.django_db
def test_a_classification_project_refuses_coco(project, settings):
    with pytest.raises(ImportRefused, match="need a points, boxes or masks project"):
        import_files(project, [("a.png", picture(1))], coco=json.dumps(coco_file()).encode())
    assert_nothing_stored(settings)


@pytest.mark.django_db
def test_boxes_project_reads_the_boxes(region_project):
    region_project.task_type = Project.TaskType.BOXES
    region_project.save(update_fields=["task_type"])
    import_files(region_project, [("set.zip", images_zip())], coco=json.dumps(coco_file()).encode())
    a = Item.objects.get(source_name="set.zip/smear/a.png")
    assert [r[:3] for r in stored_answer(a)] == [
        ("WBC", "box", [2, 3, 8, 8]), ("RBC", "box", [10, 1, 14, 5]), ("RBC", "box", [12, 8, 17, 14])]


# Entry points: API, page, command ------------------------------------------------------------

def url(project) -> str:
    return f"/api/projects/{project.id}/imports/"


@pytest.mark.django_db
def test_api_imports_coco_and_answers_400_naming_the_fault(region_project, admin_client, settings):
    upload = {"files": [SimpleUploadedFile("set.zip", images_zip())],
              "coco": SimpleUploadedFile("coco.json", broken(lambda d: d["annotations"][0].update(
                  segmentation=[[1, 1, 2, 2]])))}
    response = admin_client.post(url(region_project), upload, format="multipart")
    assert response.status_code == 400
    assert "polygon 0 has 2 vertices" in response.json()["detail"]
    assert_nothing_stored(settings)
    upload = {"files": [SimpleUploadedFile("set.zip", images_zip())],
              "coco": SimpleUploadedFile("coco.json", json.dumps(coco_file()).encode()), "coco_as": "crowd"}
    response = admin_client.post(url(region_project), upload, format="multipart")
    assert response.status_code == 400 and "coco_as" in response.json()
    upload = {"files": [SimpleUploadedFile("set.zip", images_zip())],
              "coco": SimpleUploadedFile("coco.json", json.dumps(coco_file()).encode())}
    response = admin_client.post(url(region_project), upload, format="multipart")
    assert response.status_code == 201, response.json()
    assert response.json()["n_labels"] == 2
    assert Item.objects.filter(expert_regions__isnull=False).count() == 2


@pytest.mark.django_db
def test_page_imports_coco(region_project, admin_user, settings):
    from django.test import Client

    page = Client()
    page.force_login(admin_user)
    assert b'name="coco"' in page.get(f"/projects/{region_project.id}/import/").content
    bad = page.post(f"/projects/{region_project.id}/import/", {
        "files": [SimpleUploadedFile("set.zip", images_zip())],
        "coco": SimpleUploadedFile("coco.json", b"{not json"),
    })
    assert bad.status_code == 400 and b"COCO import refused" in bad.content
    assert_nothing_stored(settings)
    good = page.post(f"/projects/{region_project.id}/import/", {
        "files": [SimpleUploadedFile("set.zip", images_zip())],
        "coco": SimpleUploadedFile("coco.json", json.dumps(coco_file()).encode()),
    })
    assert good.status_code == 302
    assert ImportBatch.objects.get().n_labels == 2


@pytest.mark.django_db
def test_command_imports_coco(region_project, tmp_path, settings):
    folder = tmp_path / "set"
    (folder / "smear").mkdir(parents=True)
    (folder / "smear" / "a.png").write_bytes(picture(1))
    (folder / "b.png").write_bytes(picture(2))
    coco = tmp_path / "coco.json"
    coco.write_text(json.dumps(coco_file(annotations=[{"image_id": 1, "category_id": 7, "bbox": [1, 1, 2, 2]}])))
    with pytest.raises(CommandError, match="has no 'segmentation'"):
        call_command("import_images", str(region_project.id), str(folder), coco=str(coco), no_progress=True)
    assert media_files(settings) == []
    coco.write_text(json.dumps(coco_file()))
    call_command("import_images", str(region_project.id), str(folder), coco=str(coco), no_progress=True)
    assert Item.objects.get(source_name="smear/a.png").expert_regions.regions.count() == 3


# Round trip ---------------------------------------------------------------------------------

@pytest.mark.django_db
@pytest.mark.parametrize("task_type", ["masks", "boxes", "points"])
def test_round_trip_import_export_import(region_project, admin_client, task_type):
    region_project.task_type = task_type
    region_project.save(update_fields=["task_type"])
    original = json.dumps(coco_file()).encode()
    import_files(region_project, [("set.zip", images_zip())], coco=original)
    response = admin_client.get(f"/api/projects/{region_project.id}/exports/expert_regions.coco.json")
    assert response.status_code == 200 and response["Content-Type"].startswith("application/json")
    exported = json.loads(b"".join(response.streaming_content))
    assert "set.zip" not in json.dumps(exported)  # stored names only, never the source's
    items = {i.pk: i for i in Item.objects.all()}
    assert {img["id"] for img in exported["images"]} == set(items)
    again = parse_coco(exported, task_type)
    first = parse_coco(original, task_type)
    by_source = {i.file_name.split("/")[-1]: i.regions for i in first.images}
    for image in again.images:
        source = items[image.id].source_name.split("/")[-1]
        assert image.regions == by_source[source], source
        assert (image.width, image.height) == (W, H)
