"""Streamed exports of a project's labels: rows are generated from ``values_list`` iterators in
chunks, so a project with millions of votes exports in constant memory.

Votes use crowd-kit's shape (``task``, ``worker``, ``label``): ``task`` is the item id,
``label`` the class name. Workers and experts appear as stable pseudonyms (``w`` + 12 hex
digits, an HMAC of the project and user ids under the site's secret key): the same person has
the same id in every export of a project, but ids cannot be joined across projects or traced to
an account without the key. No file names, DICOM or other item metadata are exported.

Region projects export COCO JSON (the consensus of a region run with each object's confidence
as ``score``; the final expert regions; every counted region vote with its worker's pseudonym
as ``annotator``, which the COCO import reads back as crowd votes), the consensus masks as
PNGs in a zip, and the votes as JSON Lines. COCO images are named by the stored rendering
(content hash), never by the source file, and carry the item id as their ``id``.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
import zipfile
from collections.abc import Iterable, Iterator
from functools import lru_cache
from itertools import islice
from pathlib import PurePosixPath

import numpy as np
from django.conf import settings
from django.utils.text import slugify
from PIL import Image

from labeling.aggregation.regions.answers import rle_decode
from labeling.imports.coco import category_index, coco_annotation, coco_categories, coco_image
from labeling.models import (
    AggregationRun,
    ConsensusLabel,
    ExpertLabel,
    Item,
    Project,
    RegionConsensus,
    Vote,
)

CHUNK_SIZE = 2000


@lru_cache(maxsize=65536)
def worker_pseudonym(project_id: int, user_id: int | None) -> str:
    if user_id is None:
        return ""
    digest = hmac.new(
        settings.SECRET_KEY.encode(), f"quorum-worker:{project_id}:{user_id}".encode(), hashlib.sha256
    )
    return "w" + digest.hexdigest()[:12]


class _Echo:
    """A write-only file: csv.writer hands back each formatted line instead of buffering."""

    def write(self, value: str) -> str:
        return value


def csv_lines(header: list[str], rows: Iterable[Iterable]) -> Iterator[str]:
    writer = csv.writer(_Echo())
    yield writer.writerow(header)
    for row in rows:
        yield writer.writerow(row)


def _class_names(project: Project) -> dict[int, str]:
    return dict(project.label_classes.values_list("id", "name"))


def vote_rows(project: Project) -> Iterator[tuple[int, str, str]]:
    """(task, worker, label) for every counted class vote; unsure, skips and votes of blocked
    workers are left out, as aggregation leaves them out."""
    names = _class_names(project)
    rows = (
        Vote.objects.filter(project=project, kind=Vote.Kind.LABEL, is_excluded=False)
        .order_by("id")
        .values_list("item_id", "worker_id", "label_id")
        .iterator(chunk_size=CHUNK_SIZE)
    )
    for item_id, worker_id, label_id in rows:
        yield item_id, worker_pseudonym(project.id, worker_id), names[label_id]


def votes_csv(project: Project) -> Iterator[str]:
    return csv_lines(["task", "worker", "label"], vote_rows(project))


def votes_jsonl(project: Project) -> Iterator[str]:
    """One object per counted vote: ``{task, worker, label}``, or for a region project
    ``{task, worker, regions}`` with the regions in the wire format (class names)."""
    if project.is_region_task:
        for task, worker, regions in region_vote_rows(project):
            yield json.dumps({"task": task, "worker": worker, "regions": regions}) + "\n"
        return
    for task, worker, label in vote_rows(project):
        yield json.dumps({"task": task, "worker": worker, "label": label}) + "\n"


def latest_run(project: Project, method: str) -> AggregationRun | None:
    return (
        project.aggregation_runs.filter(method=method, status=AggregationRun.Status.SUCCEEDED)
        .order_by("-created_at", "-id")
        .first()
    )


def consensus_csv(project: Project, run: AggregationRun) -> Iterator[str]:
    """task, label, confidence, then the posterior of each class (``p_<class>``)."""
    names = _class_names(project)
    classes = project.class_names
    rows = (
        ConsensusLabel.objects.filter(run=run)
        .order_by("item_id")
        .values_list("item_id", "label_id", "confidence", "posterior")
        .iterator(chunk_size=CHUNK_SIZE)
    )
    header = ["task", "method", "label", "confidence", *(f"p_{c}" for c in classes)]
    return csv_lines(
        header,
        (
            (item_id, run.method, names[label_id], f"{conf:.6g}", *(f"{p:.6g}" for p in post))
            for item_id, label_id, conf, post in rows
        ),
    )


def expert_labels_csv(project: Project) -> Iterator[str]:
    names = _class_names(project)
    rows = (
        ExpertLabel.objects.filter(item__project=project)
        .order_by("id")
        .values_list("item_id", "expert_id", "label_id", "source", "note", "created_at")
        .iterator(chunk_size=CHUNK_SIZE)
    )
    return csv_lines(
        ["task", "expert", "label", "source", "note", "created_at"],
        (
            (item_id, worker_pseudonym(project.id, expert_id), names[label_id], source, note,
             created.isoformat())
            for item_id, expert_id, label_id, source, note, created in rows
        ),
    )


def holdout_csv(project: Project) -> Iterator[str]:
    """Every item's split: ``holdout`` (never train on it) or ``pool``; gold flag; the final
    expert answer where one exists."""
    names = _class_names(project)
    rows = (
        Item.objects.filter(project=project)
        .order_by("id")
        .values_list("id", "is_holdout", "is_gold", "expert_answer_id")
        .iterator(chunk_size=CHUNK_SIZE)
    )
    return csv_lines(
        ["task", "split", "is_gold", "expert_label"],
        (
            (item_id, "holdout" if holdout else "pool", int(gold), names.get(answer, ""))
            for item_id, holdout, gold, answer in rows
        ),
    )


# Region projects ---------------------------------------------------------------------------


def _class_list(project: Project) -> list[str]:
    return list(project.label_classes.order_by("index").values_list("name", flat=True))


def wire_regions(stored: Iterable[dict], classes: list[str]) -> list[dict]:
    """Stored shapes (label = class index) in the wire format (label = class name)."""
    return [{**shape, "label": classes[int(shape["label"])]} for shape in stored]


def region_vote_rows(project: Project) -> Iterator[tuple[int, str, list[dict]]]:
    """(task, worker, regions) for every counted region vote, workers pseudonymised."""
    classes = _class_list(project)
    rows = (
        Vote.objects.filter(project=project, kind=Vote.Kind.REGIONS, is_excluded=False)
        .order_by("item_id", "id")
        .values_list("item_id", "worker_id", "regions")
        .iterator(chunk_size=CHUNK_SIZE)
    )
    for item_id, worker_id, regions in rows:
        yield item_id, worker_pseudonym(project.id, worker_id), wire_regions(regions, classes)


def latest_region_run(project: Project, method: str | None = None) -> AggregationRun | None:
    """The newest succeeded run of ``method`` (any region method when None) with a consensus."""
    runs = project.aggregation_runs.filter(
        status=AggregationRun.Status.SUCCEEDED,
        pk__in=RegionConsensus.objects.filter(run__project=project).values("run_id"),
    )
    if method:
        runs = runs.filter(method=method)
    return runs.order_by("-created_at", "-id").first()


def _coco_image_of(item_id: int, image_name: str, width: int, height: int) -> dict:
    return coco_image({"id": item_id, "file_name": PurePosixPath(image_name).name,
                       "width": width, "height": height})


def coco_json(
    categories: list[str],
    images: Iterable[dict],
    annotated: Iterable[tuple[int, list[dict]]],
    info: dict,
) -> Iterator[str]:
    """A COCO document streamed: ``images`` (COCO image objects) and ``annotated`` ((image id,
    wire shapes) pairs) are each walked once, so neither is held in memory."""
    ids = category_index(categories)
    yield f'{{"info": {json.dumps(info)}, "categories": {json.dumps(coco_categories(categories))}, "images": ['
    for k, image in enumerate(images):
        yield ("," if k else "") + "\n" + json.dumps(image)
    yield '],\n"annotations": ['
    n = 0
    for image_id, shapes in annotated:
        for shape in shapes:
            n += 1
            yield ("," if n > 1 else "") + "\n" + json.dumps(coco_annotation(shape, image_id, n, ids))
    yield "]}\n"


def _items_info(queryset) -> Iterator[dict]:
    rows = queryset.order_by("id").values_list("id", "image", "width", "height").iterator(chunk_size=CHUNK_SIZE)
    for item_id, image, width, height in rows:
        yield _coco_image_of(item_id, image, width, height)


def consensus_coco(project: Project, run: AggregationRun) -> Iterator[str]:
    """The run's consensus per item as COCO, each object's confidence as ``score``."""
    classes = _class_list(project)
    consensus = RegionConsensus.objects.filter(run=run)

    def annotated():
        rows = consensus.order_by("item_id").values_list("item_id", "regions").iterator(chunk_size=CHUNK_SIZE)
        for item_id, regions in rows:
            yield item_id, wire_regions(regions, classes)

    items = Item.objects.filter(project=project, region_consensus__run=run)
    info = {"description": f"{project.name}: consensus of aggregation run {run.pk} ({run.method})"}
    return coco_json(classes, _items_info(items), annotated(), info)


def expert_regions_coco(project: Project) -> Iterator[str]:
    """Every item's final expert regions (import, hold-out or review) as COCO; an item whose
    answer is "nothing here" is listed without annotations."""
    # imported here: the review service imports this module (pseudonyms)
    from labeling.services.review import answer_regions

    classes = _class_list(project)
    items = Item.objects.filter(project=project, expert_regions__isnull=False)

    def annotated():
        rows = items.order_by("id").values_list("id", "expert_regions_id").iterator(chunk_size=CHUNK_SIZE)
        while chunk := list(islice(rows, CHUNK_SIZE)):
            regions = answer_regions([answer for _, answer in chunk])
            for item_id, answer in chunk:
                yield item_id, wire_regions(regions[answer], classes)

    info = {"description": f"{project.name}: final expert regions"}
    return coco_json(classes, _items_info(items), annotated(), info)


def region_votes_coco(project: Project) -> Iterator[str]:
    """Every counted region vote as COCO annotations carrying the worker's pseudonym as
    ``annotator``; each image lists in ``annotators`` everyone who answered it, so an empty
    vote ("nothing here"), which has no annotation, is still there."""
    classes = _class_list(project)
    votes = Vote.objects.filter(project=project, kind=Vote.Kind.REGIONS, is_excluded=False)

    def images():
        rows = (
            votes.order_by("item_id", "id")
            .values_list("item_id", "worker_id", "item__image", "item__width", "item__height")
            .iterator(chunk_size=CHUNK_SIZE)
        )
        current, annotators = None, []
        for item_id, worker_id, image, width, height in rows:
            if current is not None and current["id"] != item_id:
                yield {**current, "annotators": annotators}
                current = None
            if current is None:
                current, annotators = _coco_image_of(item_id, image, width, height), []
            annotators.append(worker_pseudonym(project.id, worker_id))
        if current is not None:
            yield {**current, "annotators": annotators}

    def annotated():
        for task, worker, regions in region_vote_rows(project):
            yield task, [{**shape, "annotator": worker} for shape in regions]

    info = {"description": f"{project.name}: crowd region votes (pseudonymous annotators)"}
    return coco_json(classes, images(), annotated(), info)


class _ZipPipe:
    """A write-only stream for ZipFile that hands out what was written since the last take."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.chunks.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        data, self.chunks = b"".join(self.chunks), []
        return data


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def consensus_masks_zip(project: Project, run: AggregationRun) -> Iterator[bytes]:
    """A zip streamed file by file: per item and class present, ``item-<id>/<class>.png`` (the
    binarised consensus, 255 inside) and, where the run stored a soft map, ``<class>-p.png``
    (probability x 255); ``masks.csv`` lists them with each mask's confidence."""
    classes = _class_list(project)
    pipe = _ZipPipe()
    index_lines = [["task", "class", "mask", "probability", "confidence"]]
    with zipfile.ZipFile(pipe, mode="w", compression=zipfile.ZIP_DEFLATED) as archive:
        rows = (
            RegionConsensus.objects.filter(run=run).order_by("item_id")
            .values_list("item_id", "regions", "probability_map").iterator(chunk_size=100)
        )
        storage = RegionConsensus._meta.get_field("probability_map").storage
        for item_id, regions, probability_map in rows:
            soft = None
            if probability_map:
                with storage.open(probability_map) as handle:
                    soft = np.load(handle)
            for shape in regions:
                if shape.get("shape") != "mask":
                    continue
                k = int(shape["label"])
                name = f"item-{item_id}/{slugify(classes[k]) or k}"
                archive.writestr(f"{name}.png", _png(rle_decode(shape["rle"]).astype(np.uint8) * 255))
                p_name = ""
                if soft is not None and k < len(soft):
                    p_name = f"{name}-p.png"
                    probability = np.clip(np.asarray(soft[k], dtype=np.float32), 0, 1)
                    archive.writestr(p_name, _png(np.round(probability * 255).astype(np.uint8)))
                confidence = shape.get("confidence")
                index_lines.append([item_id, classes[k], f"{name}.png", p_name,
                                    "" if confidence is None else f"{confidence:.6g}"])
                yield pipe.take()
        archive.writestr("masks.csv", "".join(csv_lines(index_lines[0], index_lines[1:])))
    yield pipe.take()
