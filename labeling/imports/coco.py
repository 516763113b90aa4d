"""COCO JSON in and out for region projects, free of Django.

The format is the one of the COCO detection and segmentation data (T.-Y. Lin et al., "Microsoft
COCO: Common Objects in Context", ECCV 2014; the "Data format" section of the dataset's site):
a JSON object with ``images`` (``id``, ``file_name``, ``width``, ``height``), ``categories``
(``id``, ``name``) and ``annotations`` (``image_id``, ``category_id``, ``bbox`` = ``[x, y,
width, height]`` and ``segmentation``: a list of polygons, each a flat ``[x1, y1, x2, y2, ...]``,
or a run-length encoding ``{"size": [h, w], "counts": ...}`` whose counts are a list of
integers or COCO's compressed string). Coordinates are continuous pixel coordinates, x right,
y down, as in Quorum's wire format.

:func:`parse_coco` reads a file into each image's shapes in the wire format of a region answer
(``{"label": category name, "shape": ..., "points"/"rle": ...}``) for one task type, or raises
:class:`CocoFileError` naming the first thing that is wrong (the whole file is refused, so an
import writes nothing). :func:`build_coco` writes shapes back out; reading its output gives
the same shapes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from labeling.aggregation.regions.answers import rle_decode

TASK_SHAPES = {"points": "point", "boxes": "box", "masks": "mask or polygon"}


class CocoFileError(ValueError):
    """The COCO file cannot be used; the message says where and what is wrong."""


@dataclass(frozen=True)
class CocoShape:
    """One wire-format shape read from one annotation (a multi-polygon annotation gives several)."""

    annotation_id: Any
    annotator: str | None
    shape: dict


@dataclass(frozen=True)
class CocoImage:
    id: Any
    file_name: str
    width: int
    height: int
    shapes: list[CocoShape] = field(default_factory=list)
    annotators: list[str] = field(default_factory=list)
    """Who answered the image (the image's ``annotators``, a Quorum extension), so that an
    annotator who marked nothing there still has an answer."""

    @property
    def regions(self) -> list[dict]:
        """Every shape on the image, in file order (an empty list: nothing marked)."""
        return [s.shape for s in self.shapes]

    def regions_by_annotator(self) -> dict[str | None, list[dict]]:
        """Shapes grouped by the annotation's ``annotator`` (None where the file names none);
        an annotator the image lists without annotations has an empty list."""
        groups: dict[str | None, list[dict]] = {name: [] for name in self.annotators}
        for s in self.shapes:
            groups.setdefault(s.annotator, []).append(s.shape)
        return groups


@dataclass(frozen=True)
class CocoDataset:
    categories: list[str]
    """Category names in the file's order."""
    images: list[CocoImage]
    annotators: list[str]
    """Annotator names the annotations carry (crowd imports), in order of first appearance."""


def parse_coco(data: bytes | str | dict, task_type: str) -> CocoDataset:
    """Each image's shapes for a ``points``, ``boxes`` or ``masks`` project.

    boxes: each annotation's ``bbox``; points: its visible ``keypoints``, else its bbox centre;
    masks: its ``segmentation`` (each polygon a ``polygon`` shape, an RLE a ``mask`` shape with
    uncompressed counts). An annotation may name its ``annotator`` (a string or number, or
    ``attributes.annotator``), and an image the ``annotators`` who answered it, for crowd votes.
    """
    if task_type not in TASK_SHAPES:
        raise CocoFileError(f"unknown task type {task_type!r}; expected one of {list(TASK_SHAPES)}")
    document = _load(data)
    categories = _categories(document)
    images = _images(document)
    by_image: dict[Any, list[CocoShape]] = {key: [] for key in images}
    annotators: dict[str, None] = {}
    for index, ann in enumerate(_list(document, "annotations")):
        where = _where(index, ann)
        if not isinstance(ann, dict):
            raise CocoFileError(f"{where} is not an object")
        image_id = _required(ann, "image_id", where)
        category_id = _required(ann, "category_id", where)
        if _key(image_id) not in images:
            raise CocoFileError(f"{where}: image_id {image_id!r} is not among the file's images")
        if _key(category_id) not in categories:
            raise CocoFileError(
                f"{where}: category_id {category_id!r} is not among the file's categories"
            )
        image = images[_key(image_id)]
        label = categories[_key(category_id)]
        annotator = _annotator(ann, where)
        if annotator is not None:
            annotators.setdefault(annotator, None)
        for shape in _shapes(ann, task_type, image, label, where):
            by_image[_key(image_id)].append(CocoShape(ann.get("id"), annotator, shape))
    return CocoDataset(
        categories=list(categories.values()),
        images=[
            CocoImage(i["id"], i["file_name"], i["width"], i["height"], by_image[key], i["annotators"])
            for key, i in images.items()
        ],
        annotators=list(annotators),
    )


def _load(data: bytes | str | dict) -> dict:
    if isinstance(data, dict):
        document = data
    else:
        try:
            document = json.loads(data)
        except UnicodeDecodeError as exc:
            raise CocoFileError(f"the COCO file is not UTF-8 text: {exc}") from exc
        except json.JSONDecodeError as exc:
            raise CocoFileError(f"the COCO file is not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise CocoFileError(
            f"the COCO file must be a JSON object with images, annotations and categories, "
            f"not a {type(document).__name__}"
        )
    return document


def _list(document: dict, key: str) -> list:
    if key not in document:
        raise CocoFileError(f"the COCO file has no '{key}' list")
    value = document[key]
    if not isinstance(value, list):
        raise CocoFileError(f"'{key}' must be a list, not a {type(value).__name__}")
    return value


def _key(value: Any) -> Any:
    """Ids compare as JSON wrote them; 3 and 3.0 are one id, "3" another."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _required(obj: dict, key: str, where: str) -> Any:
    if key not in obj or obj[key] is None:
        raise CocoFileError(f"{where} has no '{key}'")
    value = obj[key]
    if isinstance(value, list | dict):
        raise CocoFileError(f"{where}: '{key}' must be a number or a string")
    return value


def _where(index: int, obj: Any) -> str:
    if isinstance(obj, dict) and obj.get("id") is not None:
        return f"annotation {index} (id {obj['id']!r})"
    return f"annotation {index}"


def _categories(document: dict) -> dict[Any, str]:
    found: dict[Any, str] = {}
    for index, cat in enumerate(_list(document, "categories")):
        where = f"category {index}"
        if not isinstance(cat, dict):
            raise CocoFileError(f"{where} is not an object")
        cat_id = _required(cat, "id", where)
        name = cat.get("name")
        if not isinstance(name, str) or not name.strip():
            raise CocoFileError(f"{where} (id {cat_id!r}) has no 'name'")
        if _key(cat_id) in found:
            raise CocoFileError(f"{where}: id {cat_id!r} is used by two categories")
        if name.strip() in found.values():
            raise CocoFileError(f"{where}: the name '{name.strip()}' is used by two categories")
        found[_key(cat_id)] = name.strip()
    if not found:
        raise CocoFileError("the COCO file lists no categories")
    return found


def _images(document: dict) -> dict[Any, dict]:
    found: dict[Any, dict] = {}
    names: set[str] = set()
    for index, image in enumerate(_list(document, "images")):
        where = f"image {index}"
        if not isinstance(image, dict):
            raise CocoFileError(f"{where} is not an object")
        image_id = _required(image, "id", where)
        where = f"image {index} (id {image_id!r})"
        file_name = image.get("file_name")
        if not isinstance(file_name, str) or not file_name.strip():
            raise CocoFileError(f"{where} has no 'file_name'")
        size = {}
        for key in ("width", "height"):
            value = image.get(key)
            if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value) or value < 1:
                raise CocoFileError(f"{where}: '{key}' must be a positive whole number, got {value!r}")
            size[key] = int(value)
        if _key(image_id) in found:
            raise CocoFileError(f"{where}: id {image_id!r} is used by two images")
        if file_name in names:
            raise CocoFileError(f"{where}: the file name '{file_name}' is listed twice")
        names.add(file_name)
        annotators = image.get("annotators", [])
        if not isinstance(annotators, list) or not all(
            isinstance(a, str | int) and not isinstance(a, bool) for a in annotators
        ):
            raise CocoFileError(f"{where}: 'annotators' must be a list of names")
        found[_key(image_id)] = {"id": image_id, "file_name": file_name, **size,
                                 "annotators": [str(a) for a in annotators]}
    return found


def _annotator(ann: dict, where: str) -> str | None:
    value = ann.get("annotator")
    if value is None and isinstance(ann.get("attributes"), dict):
        value = ann["attributes"].get("annotator")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise CocoFileError(f"{where}: 'annotator' must be a string or a whole number")
    return str(value)


def _numbers(value: Any, what: str, where: str) -> list[float]:
    if not isinstance(value, list) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in value
    ):
        raise CocoFileError(f"{where}: {what} must be a list of numbers")
    numbers = [float(v) for v in value]
    if not all(math.isfinite(v) for v in numbers):
        raise CocoFileError(f"{where}: {what} holds a number that is not finite")
    return numbers


def _inside(x: float, y: float, image: dict) -> bool:
    return 0 <= x <= image["width"] and 0 <= y <= image["height"]


def _bbox(ann: dict, image: dict, where: str) -> tuple[float, float, float, float]:
    if "bbox" not in ann:
        raise CocoFileError(f"{where} has no 'bbox'")
    numbers = _numbers(ann["bbox"], "'bbox'", where)
    if len(numbers) != 4:
        raise CocoFileError(f"{where}: 'bbox' must be [x, y, width, height], got {len(numbers)} numbers")
    x, y, w, h = numbers
    if w <= 0 or h <= 0:
        raise CocoFileError(f"{where}: the box [x, y, w, h] = {ann['bbox']} has zero area")
    if not (_inside(x, y, image) and _inside(x + w, y + h, image)):
        raise CocoFileError(
            f"{where}: the box {ann['bbox']} reaches outside its {image['width']}x"
            f"{image['height']} image '{image['file_name']}'"
        )
    return x, y, x + w, y + h


def _shapes(ann: dict, task_type: str, image: dict, label: str, where: str) -> list[dict]:
    if task_type == "boxes":
        x0, y0, x1, y1 = _bbox(ann, image, where)
        return [{"label": label, "shape": "box", "points": [[x0, y0], [x1, y1]]}]
    if task_type == "points":
        return [{"label": label, "shape": "point", "points": [p]} for p in _points(ann, image, where)]
    if "segmentation" not in ann or ann["segmentation"] in (None, [], {}):
        raise CocoFileError(f"{where} has no 'segmentation' (a masks project needs one)")
    segmentation = ann["segmentation"]
    if isinstance(segmentation, dict):
        return [{"label": label, "shape": "mask", "rle": _rle(segmentation, image, where)}]
    if not isinstance(segmentation, list):
        raise CocoFileError(f"{where}: 'segmentation' must be a list of polygons or an RLE object")
    return [
        {"label": label, "shape": "polygon", "points": _polygon(polygon, image, f"{where} polygon {k}")}
        for k, polygon in enumerate(segmentation)
    ]


def _points(ann: dict, image: dict, where: str) -> list[list[float]]:
    if ann.get("keypoints") is None:
        x0, y0, x1, y1 = _bbox(ann, image, where)
        return [[(x0 + x1) / 2, (y0 + y1) / 2]]
    numbers = _numbers(ann["keypoints"], "'keypoints'", where)
    if len(numbers) % 3:
        raise CocoFileError(f"{where}: 'keypoints' must be x, y, visibility triples")
    points = []
    for k in range(0, len(numbers), 3):
        x, y, visibility = numbers[k : k + 3]
        if visibility <= 0:
            continue  # COCO's "not labelled"
        if not _inside(x, y, image):
            raise CocoFileError(
                f"{where}: keypoint {k // 3} ({x:g}, {y:g}) lies outside its "
                f"{image['width']}x{image['height']} image"
            )
        points.append([x, y])
    if not points:
        raise CocoFileError(f"{where}: no keypoint is marked visible")
    return points


def _polygon(polygon: Any, image: dict, where: str) -> list[list[float]]:
    numbers = _numbers(polygon, "a polygon", where)
    if len(numbers) % 2:
        raise CocoFileError(f"{where}: an odd count of coordinates ({len(numbers)})")
    vertices = [[numbers[k], numbers[k + 1]] for k in range(0, len(numbers), 2)]
    # a closing vertex equal to the first one is COCO-legal and adds nothing
    if len(vertices) > 3 and vertices[0] == vertices[-1]:
        vertices = vertices[:-1]
    if len(vertices) < 3:
        raise CocoFileError(f"{where} has {len(vertices)} vertices; a polygon needs at least 3")
    for k, (x, y) in enumerate(vertices):
        if not _inside(x, y, image):
            raise CocoFileError(
                f"{where}: vertex {k} ({x:g}, {y:g}) lies outside its "
                f"{image['width']}x{image['height']} image"
            )
    return vertices


def _rle(rle: dict, image: dict, where: str) -> dict:
    size = rle.get("size")
    if (
        not isinstance(size, list) or len(size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in size)
    ):
        raise CocoFileError(f"{where}: the RLE's 'size' must be [height, width]")
    if size != [image["height"], image["width"]]:
        raise CocoFileError(
            f"{where}: the RLE's size {size} (height, width) is not its image's "
            f"[{image['height']}, {image['width']}]"
        )
    counts = rle.get("counts")
    if isinstance(counts, str):
        try:
            counts = decompress_counts(counts)
        except ValueError as exc:
            raise CocoFileError(f"{where}: the RLE's compressed counts are damaged: {exc}") from exc
    elif not isinstance(counts, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in counts
    ):
        raise CocoFileError(f"{where}: the RLE's 'counts' must be whole numbers or COCO's string")
    if any(v < 0 for v in counts):
        raise CocoFileError(f"{where}: the RLE's counts hold a negative run")
    total = sum(counts)
    if total != size[0] * size[1]:
        raise CocoFileError(
            f"{where}: the RLE's runs cover {total} pixels; its {size[0]}x{size[1]} size has "
            f"{size[0] * size[1]}"
        )
    if not any(counts[1::2]):
        raise CocoFileError(f"{where}: the RLE marks no pixel")
    return {"size": list(size), "counts": list(counts)}


# COCO's compressed RLE string: each count (from the fourth on, as the difference to the count
# two before it, which is small for smooth outlines) is written in 5-bit groups, low first,
# each group + 48 as one character, bit 0x20 set while more groups follow, the last group's
# bit 0x10 being the sign.
def compress_counts(counts: Sequence[int]) -> str:
    """COCO's compressed string of uncompressed RLE counts."""
    out: list[str] = []
    for index, count in enumerate(counts):
        value = int(count) - (int(counts[index - 2]) if index > 2 else 0)
        more = True
        while more:
            group = value & 0x1F
            value >>= 5
            more = value != -1 if group & 0x10 else value != 0
            out.append(chr(group + 48 + (0x20 if more else 0)))
    return "".join(out)


def decompress_counts(text: str) -> list[int]:
    """The counts of COCO's compressed RLE string; ValueError for a character outside it."""
    counts: list[int] = []
    position = 0
    while position < len(text):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(text):
                raise ValueError("the string ends inside a count")
            group = ord(text[position]) - 48
            if not 0 <= group < 64:
                raise ValueError(f"character {text[position]!r} at {position} is not in the encoding")
            value |= (group & 0x1F) << shift
            more = bool(group & 0x20)
            position += 1
            shift += 5
            if not more and group & 0x10:
                value -= 1 << shift  # sign-extend
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


def build_coco(
    images: Iterable[dict],
    categories: Sequence[str],
    *,
    info: dict | None = None,
    compress_masks: bool = True,
) -> dict:
    """A COCO document from ``{"id", "file_name", "width", "height", "regions": [wire shapes,
    label = category name, optional "confidence" and "annotator"]}`` per image (categories get
    ids 1..n in the given order; see :func:`coco_annotation` for each shape)."""
    category_ids = category_index(categories)
    out_images, annotations = [], []
    for image in images:
        out_images.append(coco_image(image))
        for shape in image.get("regions", []):
            annotations.append(
                coco_annotation(shape, image["id"], len(annotations) + 1, category_ids,
                                compress_masks=compress_masks)
            )
    return {
        "info": info or {},
        "images": out_images,
        "categories": coco_categories(categories),
        "annotations": annotations,
    }


def category_index(categories: Sequence[str]) -> dict[str, int]:
    return {name: k + 1 for k, name in enumerate(categories)}


def coco_categories(categories: Sequence[str]) -> list[dict]:
    return [{"id": k + 1, "name": name} for k, name in enumerate(categories)]


def coco_image(image: dict) -> dict:
    out = {key: image[key] for key in ("id", "file_name", "width", "height")}
    if image.get("annotators"):
        out["annotators"] = list(image["annotators"])
    return out


def coco_annotation(
    shape: dict, image_id: Any, annotation_id: int, category_ids: dict[str, int],
    *, compress_masks: bool = True,
) -> dict:
    """One wire shape (label = category name) as a COCO annotation.

    Boxes give ``bbox``; polygons a one-polygon ``segmentation``; masks an RLE
    ``segmentation`` (compressed string, COCO's file form, unless ``compress_masks`` is false)
    with ``iscrowd`` 1 as COCO writes RLE; points ``keypoints`` (one visible keypoint) and a
    zero-size ``bbox`` at the point. A ``confidence`` becomes ``score`` (as in COCO's result
    files) and an ``annotator`` is kept.
    """
    ann = {"id": annotation_id, "image_id": image_id, "category_id": category_ids[shape["label"]],
           "iscrowd": 0, **_geometry(shape, compress_masks)}
    if shape.get("confidence") is not None:
        ann["score"] = float(shape["confidence"])
    if shape.get("annotator") is not None:
        ann["annotator"] = shape["annotator"]
    return ann


def _geometry(shape: dict, compress_masks: bool) -> dict:
    kind = shape["shape"]
    if kind == "point":
        (x, y), = shape["points"]
        return {"bbox": [x, y, 0, 0], "area": 0, "keypoints": [x, y, 2], "num_keypoints": 1}
    if kind == "box":
        (x0, y0), (x1, y1) = shape["points"]
        return {"bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0)}
    if kind == "polygon":
        xy = np.asarray(shape["points"], dtype=np.float64)
        x0, y0 = xy.min(axis=0)
        x1, y1 = xy.max(axis=0)
        # shoelace formula
        area = 0.5 * abs(float(np.dot(xy[:, 0], np.roll(xy[:, 1], -1)) - np.dot(xy[:, 1], np.roll(xy[:, 0], -1))))
        return {"segmentation": [[float(v) for v in xy.reshape(-1)]],
                "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)], "area": area}
    if kind == "mask":
        rle = shape["rle"]
        mask = rle_decode(rle)
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        bbox = (
            [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]
            if len(rows) else [0, 0, 0, 0]
        )
        counts = compress_counts(rle["counts"]) if compress_masks else list(rle["counts"])
        return {"segmentation": {"size": list(rle["size"]), "counts": counts}, "bbox": bbox,
                "area": int(mask.sum()), "iscrowd": 1}
    raise ValueError(f"unknown shape {kind!r}")
