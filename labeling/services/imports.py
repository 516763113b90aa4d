"""Importing images into a project: one service behind the command, the upload page and the API.

Each file is decoded (and, for DICOM, de-identified) in memory, then written in its own
transaction: its items, their files and any imported expert label appear together or not at
all. A bad file becomes a ``failed`` line of the batch report and does not stop the others.
Stored files are named by content hash, never by the source name.

A refused import (no file imported or found already there) writes nothing, not even its batch:
every entry point answers it as refused input (API 400, page 400, command error) with the
per-file reasons, and the import history lists only imports that changed the project.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import logging
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.files.base import ContentFile
from django.db import IntegrityError, transaction
from django.utils import timezone

from labeling.aggregation.regions.answers import (
    RegionAnswerError,
    Shape,
    parse_regions,
    parse_shape,
)
from labeling.imports import DecodedFile, ImportFileError, content_hash, decode_file
from labeling.imports.archives import (
    SourceFile,
    folder_sources,
    from_bytes,
    from_path,
    is_zip,
    zip_sources,
)
from labeling.imports.coco import CocoDataset, CocoFileError, parse_coco
from labeling.imports.frames import stack_frames, stack_series
from labeling.imports.labels import LabelFileError, match_class, parse_label_csv, resolve_labels
from labeling.imports.rendering import encode_image, encode_npy, encode_thumbnail
from labeling.models import (
    Assignment,
    ExpertLabel,
    ImportBatch,
    Item,
    LabelClass,
    Membership,
    Project,
    Region,
    RegionAnswer,
    Vote,
)
from labeling.services.assignment import CrowdError
from labeling.services.projects import set_membership
from labeling.services.votes import submit_vote

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int, str], None]
"""Called after each file with (files done, files in all, name of the file just done)."""

LabelsInput = Mapping[str, str] | bytes | str | Path | Any
"""A ``{filename: class}`` dict, CSV bytes, a path to a CSV, or an open/uploaded CSV file."""

CocoInput = Mapping[str, Any] | bytes | str | Path | Any
"""A parsed COCO document, its bytes, a path to it, or an open/uploaded JSON file."""

IMPORTED, DUPLICATE, FAILED = "imported", "duplicate", "failed"


class ImportRefused(Exception):
    """The whole import is refused before anything is written (HTTP 400 / CommandError)."""

    status_code = 400


class UploadTooLarge(ImportRefused):
    status_code = 413


def max_upload_bytes() -> int:
    return int(settings.QUORUM_MAX_UPLOAD_BYTES)


def check_upload_sizes(files: Iterable[Any]) -> None:
    """Refuse an upload in which one file is over ``QUORUM_MAX_UPLOAD_BYTES``."""
    limit = max_upload_bytes()
    for upload in files:
        size = getattr(upload, "size", None)
        if size is not None and size > limit:
            raise UploadTooLarge(
                f"'{upload.name}' is {size:,} bytes; files may be at most {limit:,} bytes "
                "(QUORUM_MAX_UPLOAD_BYTES). Split the upload or use the import_images command."
            )


def dicom_uid_key() -> bytes:
    """The key of the UID replacement hash: stable for an installation, secret to outsiders."""
    return hashlib.sha256(b"quorum-dicom-uid:" + settings.SECRET_KEY.encode()).digest()


def load_labels(labels: LabelsInput | None, project: Project) -> dict[str, str]:
    """``{filename: class name}`` checked against the project's classes, or ImportRefused."""
    if labels is None:
        return {}
    class_names = project.class_names
    try:
        if isinstance(labels, Mapping):
            return resolve_labels(labels, class_names)
        return parse_label_csv(_read_input(labels, "labels"), class_names)
    except LabelFileError as exc:
        raise ImportRefused(f"Labels refused, nothing was imported. {exc}") from exc


def _read_input(value: bytes | str | Path | Any, what: str) -> bytes:
    """The bytes of a side file (labels, COCO): given as bytes, a path, or an open file."""
    if isinstance(value, str | Path):
        try:
            return Path(value).read_bytes()
        except OSError as exc:
            raise ImportRefused(f"cannot read the {what} file {value}: {exc}") from exc
    if isinstance(value, bytes):
        return value
    return value.read()


COCO_REFUSED = "COCO import refused, nothing was imported."
COCO_EXPERT, COCO_VOTES = "expert", "votes"
"""What a COCO file's regions become: the items' expert answers, or crowd votes of its annotators."""


def load_coco(coco: CocoInput, project: Project, coco_as: str = COCO_EXPERT) -> CocoDataset:
    """The COCO file read for ``project``'s task type and checked against its classes and
    region limit (and, for crowd votes, naming every annotation's annotator), or ImportRefused
    naming what is wrong."""
    if coco_as not in (COCO_EXPERT, COCO_VOTES):
        raise ImportRefused(f"{COCO_REFUSED} coco_as must be '{COCO_EXPERT}' or '{COCO_VOTES}', not '{coco_as}'.")
    if not project.is_region_task:
        raise ImportRefused(
            f"{COCO_REFUSED} COCO regions need a points, boxes or masks project; "
            f"'{project.name}' is a {project.get_task_type_display().lower()} project."
        )
    data = coco if isinstance(coco, Mapping) else _read_input(coco, "COCO")
    try:
        dataset = parse_coco(data, project.task_type)
    except CocoFileError as exc:
        raise ImportRefused(f"{COCO_REFUSED} {exc}") from exc
    class_names = project.class_names
    for image in dataset.images:
        # one answer per annotator (crowd votes), or the image's whole set (an expert answer)
        answers = image.regions_by_annotator() if coco_as == COCO_VOTES else {None: image.regions}
        for annotator, shapes in answers.items():
            if len(shapes) > project.max_regions:
                who = f" by '{annotator}'" if annotator is not None else ""
                raise ImportRefused(
                    f"{COCO_REFUSED} image '{image.file_name}' has {len(shapes)} regions{who}; "
                    f"this project allows at most {project.max_regions} per answer."
                )
        for shape in image.shapes:
            if coco_as == COCO_VOTES and shape.annotator is None:
                raise ImportRefused(
                    f"{COCO_REFUSED} annotation {shape.annotation_id!r} on '{image.file_name}' "
                    "names no annotator; crowd votes need an 'annotator' on every annotation."
                )
            name = match_class(shape.shape["label"], class_names)
            if name is None:
                raise ImportRefused(
                    f"{COCO_REFUSED} annotation {shape.annotation_id!r} on '{image.file_name}' "
                    f"is of category '{shape.shape['label']}', not a class of this project "
                    f"({', '.join(class_names)})."
                )
            shape.shape["label"] = name
            # the rules every region answer meets (a polygon that crosses itself, ...)
            try:
                parse_shape(shape.shape, 0, task_type=project.task_type, classes=class_names,
                            width=image.width, height=image.height)
            except RegionAnswerError as exc:
                problem = exc.message.partition(": ")[2] or exc.message
                raise ImportRefused(
                    f"{COCO_REFUSED} annotation {shape.annotation_id!r} on '{image.file_name}': "
                    f"{problem}"
                ) from exc
    return dataset


def _coco_among(
    files: list[SourceFile], project: Project, coco_as: str
) -> tuple[list[SourceFile], CocoDataset | None]:
    """A region project's upload may carry its COCO file beside the images (or in the zip)."""
    found = [f for f in files if f.name.lower().endswith(".json") and not f.error]
    if not found:
        return files, None
    if len(found) > 1:
        names = ", ".join(f"'{f.name}'" for f in found)
        raise ImportRefused(f"{COCO_REFUSED} The upload holds {len(found)} JSON files ({names}); send one COCO file.")
    return [f for f in files if f is not found[0]], load_coco(found[0].read(), project, coco_as)


def _import_with_coco(
    run: _Run, files: list[SourceFile], coco: CocoDataset, coco_as: str,
    progress: ProgressCallback | None,
) -> ImportBatch:
    """Store the images and their COCO regions in one transaction: a file that fails, a COCO
    image without its file, a size that differs or a shape the project refuses rolls every
    row back and deletes every stored file (ImportRefused, so every entry point answers 400)."""
    if run.stack:
        raise ImportRefused(f"{COCO_REFUSED} A COCO import cannot stack frames.")
    failed = [line for line in run.report if line["status"] == FAILED]
    run.written = []
    storage = Item._meta.get_field("image").storage
    try:
        with transaction.atomic():
            for done, source_file in enumerate(files, start=1):
                line = _import_one(run, source_file)
                run.report.append(line)
                if line["status"] == FAILED:
                    failed.append(line)
                if progress is not None:
                    progress(done, len(files), source_file.name)
            if failed:
                more = f" ({len(failed) - 1} other files failed too)" if len(failed) > 1 else ""
                raise ImportRefused(
                    f"{COCO_REFUSED} '{failed[0]['name']}': {failed[0]['message']}{more}"
                )
            items = _coco_items(run, coco)
            record = _record_coco_votes if coco_as == COCO_VOTES else _record_coco_answers
            run.batch.n_labels = record(run, coco, items)
            batch = _finish(run)
            if batch.pk is None:
                raise ImportRefused(f"{COCO_REFUSED} There was no image to import.")
    except BaseException:
        _delete_files(storage, run.written)
        run.batch.pk = None
        raise
    return batch


def _coco_items(run: _Run, coco: CocoDataset) -> dict[int, Item]:
    """The item of each COCO image (by its index in ``coco.images``), matched by file name:
    the name as imported, or its end after a folder or archive name."""
    lines = [line for line in run.report if line["status"] in (IMPORTED, DUPLICATE)]
    matched: dict[int, int] = {}
    for index, image in enumerate(coco.images):
        wanted = image.file_name.replace("\\", "/")
        while wanted.startswith("./"):
            wanted = wanted[2:]
        hits = [line for line in lines if line["name"] == wanted or line["name"].endswith("/" + wanted)]
        if not hits:
            base = Path(wanted).name
            hits = [line for line in lines if Path(line["name"]).name == base]
        if not hits:
            raise ImportRefused(
                f"{COCO_REFUSED} Image '{image.file_name}' of the COCO file is not among the "
                "uploaded files."
            )
        if len(hits) > 1:
            names = ", ".join(f"'{line['name']}'" for line in hits)
            raise ImportRefused(f"{COCO_REFUSED} Image '{image.file_name}' matches {names}.")
        if len(hits[0]["item_ids"]) != 1:
            raise ImportRefused(
                f"{COCO_REFUSED} '{hits[0]['name']}' has {len(hits[0]['item_ids'])} frames; a COCO "
                "image is one picture."
            )
        matched[index] = hits[0]["item_ids"][0]
    if len(set(matched.values())) < len(matched):
        raise ImportRefused(f"{COCO_REFUSED} Two COCO images are the same picture.")
    items = Item.objects.in_bulk(list(matched.values()))
    out = {}
    for index, item_id in matched.items():
        image, item = coco.images[index], items[item_id]
        if (item.width, item.height) != (image.width, image.height):
            raise ImportRefused(
                f"{COCO_REFUSED} Image '{image.file_name}' is {item.width}x{item.height} pixels; "
                f"the COCO file says {image.width}x{image.height}."
            )
        out[index] = item
    return out


def _record_coco_answers(run: _Run, coco: CocoDataset, items: dict[int, Item]) -> int:
    """Each COCO image's shapes as the item's imported expert answer (an image without
    annotations: "nothing here"); an item that already has expert regions keeps them."""
    project = run.project
    class_names = project.class_names
    recorded = 0
    for index, item in items.items():
        if item.expert_regions_id is not None:
            continue
        image = coco.images[index]
        shapes = parse_regions(image.regions, task_type=project.task_type, classes=class_names,
                               width=image.width, height=image.height,
                               max_regions=len(image.regions))
        record_region_answer(item, shapes, source=ExpertLabel.Source.IMPORT)
        recorded += 1
    return recorded


def _record_coco_votes(run: _Run, coco: CocoDataset, items: dict[int, Item]) -> int:
    """Each annotator's shapes on each image as their crowd vote, through the vote service on a
    lease made for it (counts, tallies, gold scoring and the aggregation trigger as for any
    vote); an annotator the image lists without annotations answered "nothing here". The
    annotators become pseudonymous crowd members; a vote already there is kept."""
    project = run.project
    recorded = 0
    workers: dict[str, Any] = {}
    for index, item in items.items():
        image = coco.images[index]
        for annotator, shapes in image.regions_by_annotator().items():
            worker = workers.get(annotator)
            if worker is None:
                worker = workers[annotator] = _imported_annotator(project, annotator)
            if Vote.objects.filter(item=item, worker=worker).exists():
                continue
            lease = Assignment.objects.create(
                project=project, item=item, worker=worker,
                expires_at=timezone.now() + timedelta(minutes=project.lease_minutes),
            )
            try:
                submit_vote(worker, lease.pk, label=None, kind=Vote.Kind.REGIONS, regions=shapes,
                            idempotency_key=f"coco-import-{lease.pk}", source=Vote.Source.API)
            except CrowdError as exc:
                raise ImportRefused(
                    f"{COCO_REFUSED} The vote of annotator '{annotator}' on '{image.file_name}' "
                    f"was refused: {exc}"
                ) from exc
            recorded += 1
    return recorded


def _imported_annotator(project: Project, annotator: str):
    """The crowd member standing for a COCO file's annotator: named by a keyed hash of the name
    (stable across imports into the project, the name itself not stored)."""
    digest = hmac.new(
        settings.SECRET_KEY.encode(), f"quorum-coco-annotator:{project.pk}:{annotator}".encode(),
        hashlib.sha256,
    ).hexdigest()[:12]
    user, created = get_user_model().objects.get_or_create(username=f"coco-{project.pk}-{digest}")
    if created:
        user.set_unusable_password()
        user.save(update_fields=["password"])
    if not Membership.objects.filter(project=project, user=user).exists():
        set_membership(project=project, user=user, role=Membership.Role.CROWD)
    return user


def record_region_answer(
    item: Item, shapes: list[Shape], *, source: str, expert=None, note: str = ""
) -> RegionAnswer:
    """An expert's (or an import's) checked region set for ``item`` as a RegionAnswer with its
    Region rows; it becomes the item's final expert regions."""
    classes = {c.index: c for c in LabelClass.objects.filter(project_id=item.project_id)}
    answer = RegionAnswer.objects.create(item=item, expert=expert, source=source, note=note)
    Region.objects.bulk_create(
        _region_row(item, answer, shape, classes[shape.label], expert) for shape in shapes
    )
    Item.objects.filter(pk=item.pk).update(expert_regions=answer)
    item.expert_regions = answer
    return answer


def _region_row(item: Item, answer: RegionAnswer, shape: Shape, label: LabelClass, expert) -> Region:
    stored = shape.to_stored()
    geometry = {key: stored[key] for key in ("points", "rle") if key in stored}
    if shape.shape in ("point", "box"):
        geometry = {}  # the bounding box holds them
    x0, y0, x1, y1 = shape.bounding_box()
    return Region(
        item=item, answer=answer, label=label, name=label.name, shape=shape.shape,
        x0=x0, y0=y0, x1=x1, y1=y1, geometry=geometry, created_by=expert,
    )


@dataclass
class _Run:
    """State of one import while it runs."""

    project: Project
    batch: ImportBatch
    labels: dict[str, str]
    classes: dict[str, LabelClass]
    rng: np.random.Generator
    max_pixels: int
    max_bytes: int
    uid_key: bytes
    report: list[dict] = field(default_factory=list)
    written: list[str] | None = None
    """Set when the whole import is one transaction (COCO): every file stored so far, to delete
    if it rolls back."""
    labels_by_basename: dict[str, str] = field(default_factory=dict)
    stack: bool = False
    series: dict[str, list[tuple[str, DecodedFile]]] = field(default_factory=dict)
    """Stack imports: single slices held back by series until every file is read."""


def import_path(project: Project, path: str | Path, **options: Any) -> ImportBatch:
    """Import a folder (recursively), a .zip archive or a single file; see :func:`import_files`."""
    path = Path(path)
    if not path.exists():
        raise ImportRefused(f"{path} does not exist")
    if path.is_dir():
        return import_files(project, folder_sources(path), **options)
    return import_files(project, [path], **options)


def import_files(
    project: Project,
    sources: Iterable[SourceFile | Path | tuple[str, bytes] | Any],
    *,
    user=None,
    source: str = ImportBatch.Source.API,
    labels: LabelsInput | None = None,
    seed: int | None = None,
    progress: ProgressCallback | None = None,
    stack: bool = False,
    coco: CocoInput | None = None,
    coco_as: str = COCO_EXPERT,
) -> ImportBatch:
    """Import files into ``project`` and return the batch with its per-file report.

    ``sources`` may hold :class:`SourceFile`, paths, ``(name, bytes)`` pairs, or uploaded files
    (anything with ``name`` and ``read()``); .zip files among them are opened and their entries imported. ``labels``
    (see :data:`LabelsInput`) are checked before anything is written. ``seed`` makes the
    hold-out draw reproducible. ``stack`` imports each multi-frame grayscale file, and the
    single slices of each DICOM series (in slice order), as one item whose slices the viewer
    scrolls (see :func:`stack_frames`, :func:`stack_series`) instead of an item per frame/file.

    In the batch, ``n_imported`` counts the items created (a multi-frame DICOM file gives one
    per frame); ``n_duplicates`` and ``n_failed`` count files; ``n_labels`` counts the expert
    labels recorded. When no file was imported or found already there, the batch comes back
    unsaved (``pk`` is None, see :func:`is_refused`) with its report, and nothing was written.

    Region projects: ``coco`` (see :data:`CocoInput`), or the one ``.json`` file among the
    sources, is a COCO file of regions for the images: the items' expert answers, or with
    ``coco_as="votes"`` the crowd votes of its annotators (see :func:`_record_coco_votes`).
    Then the import is all or nothing (see :func:`_import_with_coco`) and ``n_labels`` counts
    the region answers (expert answers or votes) recorded.
    """
    label_map = load_labels(labels, project)
    coco_data = load_coco(coco, project, coco_as) if coco is not None else None
    max_bytes = max_upload_bytes()
    with contextlib.ExitStack() as archives:
        files, early_failures = _expand(sources, archives, max_bytes)
        if coco_data is None and project.is_region_task:
            files, coco_data = _coco_among(files, project, coco_as)
        # Saved with the first item it holds (see _store), so a refused import writes no row.
        batch = ImportBatch(project=project, source=source, created_by=user)
        run = _Run(
            project=project,
            batch=batch,
            labels=label_map,
            classes={c.name: c for c in project.label_classes.all()},
            rng=np.random.default_rng(seed),
            max_pixels=int(settings.QUORUM_MAX_IMAGE_PIXELS),
            max_bytes=max_bytes,
            uid_key=dicom_uid_key(),
            stack=stack,
        )
        run.labels_by_basename = _by_basename(label_map)
        run.report.extend(early_failures)
        if coco_data is not None:
            return _import_with_coco(run, files, coco_data, coco_as, progress)
        total = len(files)
        for done, source_file in enumerate(files, start=1):
            line = _import_one(run, source_file)
            if line is not None:  # None: a slice held back for its series
                run.report.append(line)
            if progress is not None:
                progress(done, total, source_file.name)
        run.report.extend(_store_series(run))
    return _finish(run)


def is_refused(batch: ImportBatch) -> bool:
    """Whether :func:`import_files` refused every file (and so wrote nothing)."""
    return batch.pk is None


def refused_message(batch: ImportBatch) -> str:
    """The one-line reason of a refused import, the same on every entry point."""
    if not batch.report:
        return "Nothing was imported: there was no file to import."
    n = len(batch.report)
    return (
        f"Nothing was imported: {'the file was' if n == 1 else f'all {n} files were'} refused "
        "(reasons per file below), and nothing was stored."
    )


def _expand(
    sources: Iterable[Any], archives: contextlib.ExitStack, max_bytes: int
) -> tuple[list[SourceFile], list[dict]]:
    """Flatten the inputs into source files, opening zip archives (kept open in ``archives``)."""
    files: list[SourceFile] = []
    failures: list[dict] = []
    for item in sources:
        if isinstance(item, SourceFile):
            source_file = item
        elif isinstance(item, str | Path):
            source_file = from_path(Path(item))
        elif isinstance(item, tuple):
            source_file = from_bytes(*item)
        else:  # an uploaded file
            name = Path(getattr(item, "name", "") or "upload").name
            source_file = SourceFile(name=name, read=item.read, size=getattr(item, "size", None))
        if not is_zip(source_file.name) or source_file.error:
            files.append(source_file)
            continue
        try:
            if isinstance(item, str | Path) or hasattr(item, "seek"):
                handle = item  # a path, or an uploaded file ZipFile can seek in
            else:
                handle = io.BytesIO(source_file.read())
            archive = archives.enter_context(zipfile.ZipFile(handle))
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            failures.append(_line(source_file.name, FAILED, f"not a readable zip archive: {exc}"))
            continue
        # Entries of an uploaded archive are named after it, those of import_path(zip) are not.
        prefix = "" if isinstance(item, str | Path) else f"{source_file.name}/"
        files.extend(zip_sources(archive, max_bytes=max_bytes, prefix=prefix))
    return files, failures


def _line(name: str, status: str, message: str = "", item_ids: list[int] | None = None) -> dict:
    return {"name": name, "status": status, "message": message, "item_ids": item_ids or []}


def _label_for(run: _Run, name: str) -> LabelClass | None:
    """The label row for a file: by its path as imported, else by base name on both sides."""
    class_name = run.labels.get(name)
    if class_name is None:
        class_name = run.labels_by_basename.get(Path(name).name)
    return run.classes[class_name] if class_name is not None else None


def _by_basename(labels: dict[str, str]) -> dict[str, str]:
    """Label rows keyed by base name, leaving out names two rows give different classes."""
    found: dict[str, str | None] = {}
    for key, class_name in labels.items():
        base = Path(key.replace("\\", "/")).name
        found[base] = class_name if found.get(base, class_name) == class_name else None
    return {base: name for base, name in found.items() if name is not None}


def _import_one(run: _Run, source_file: SourceFile) -> dict | None:
    name = source_file.name
    if source_file.error:
        return _line(name, FAILED, source_file.error)
    if source_file.size is not None and source_file.size > run.max_bytes:
        return _line(name, FAILED, f"{source_file.size:,} bytes exceeds the limit of {run.max_bytes:,} bytes")
    try:
        data = source_file.read()
        decoded = decode_file(
            name,
            data,
            max_pixels=run.max_pixels,
            uid_key=run.uid_key,
            window_preset=run.project.window_preset,
            keep_original=run.project.keep_original_files,
        )
        if run.stack and decoded.series and len(decoded.frames) == 1 and decoded.channels == 1:
            _check_channels(run.project, decoded)
            run.series.setdefault(decoded.series, []).append((name, decoded))
            return None
        if run.stack:
            decoded = stack_frames(decoded)
        _check_channels(run.project, decoded)
        return _store(run, name, decoded)
    except ImportFileError as exc:
        return _line(name, FAILED, str(exc))
    except Exception as exc:  # one broken file must not end the batch; the admin sees why
        logger.exception("import of %s failed", name)
        return _line(name, FAILED, f"unexpected error: {type(exc).__name__}: {exc}")


def _check_channels(project: Project, decoded: DecodedFile) -> None:
    expected = project.expected_channels
    if expected and decoded.channels != expected:
        kinds = {1: "grayscale", 3: "colour"}
        raise ImportFileError(
            f"the image has {decoded.channels} channel(s) ({kinds.get(decoded.channels, '?')}) "
            f"but this project expects {expected} ({kinds.get(expected, '?')})"
        )


def _store_series(run: _Run) -> list[dict]:
    """The slices a stack import held back, stored as one item per series (and slice size)."""
    lines = []
    for files in run.series.values():
        for names, decoded in stack_series(files):
            name = names[0] if len(names) == 1 else f"{names[0]} (series of {len(names)} files)"
            try:
                lines.append(_store(run, name, decoded, sources=names))
            except ImportFileError as exc:
                lines.append(_line(name, FAILED, str(exc)))
            except Exception as exc:  # as in _import_one: the admin sees why
                logger.exception("import of %s failed", name)
                lines.append(_line(name, FAILED, f"unexpected error: {type(exc).__name__}: {exc}"))
    run.series.clear()
    return lines


def _series_label(run: _Run, names: list[str]) -> LabelClass | None:
    """The label rows of a series' files, which must agree."""
    found = {label.name: label for n in names if (label := _label_for(run, n)) is not None}
    if len(found) > 1:
        raise ImportFileError(f"the files of this series have different labels: {', '.join(sorted(found))}")
    return next(iter(found.values()), None)


def _store(run: _Run, name: str, decoded: DecodedFile, sources: list[str] | None = None) -> dict:
    hashes = [
        content_hash(f.pixels, f.frame_index if decoded.hash_frame_index else None)
        for f in decoded.frames
    ]
    existing = dict(
        Item.objects.filter(project=run.project, content_hash__in=hashes).values_list(
            "content_hash", "id"
        )
    )
    label = _label_for(run, name) if sources is None else _series_label(run, sources)
    new = [(h, f) for h, f in zip(hashes, decoded.frames, strict=True) if h not in existing]
    if not new:
        ids = [existing[h] for h in hashes]
        message = "already imported in this project"
        if label is not None and _label_existing(run, ids, label):
            message += f"; its known label '{label.name}' was recorded"
        return _line(name, DUPLICATE, message, ids)

    storage = Item._meta.get_field("image").storage
    written: list[str] = []
    if run.batch.pk is None:
        # Outside the file's transaction: a rollback there must not leave a stale pk here.
        run.batch.save()
    try:
        with transaction.atomic():
            items = _write_items(run, name, decoded, new, label, written)
            Item.objects.bulk_create(items)
            if label is not None:
                ExpertLabel.objects.bulk_create(
                    ExpertLabel(item=item, expert=None, label=label, source=ExpertLabel.Source.IMPORT)
                    for item in items
                )
                run.batch.n_labels += len(items)
    except IntegrityError:
        _delete_files(storage, written)
        # The same pixels arrived at the same moment through another import.
        return _line(name, DUPLICATE, "already imported in this project (concurrently)")
    except BaseException:
        _delete_files(storage, written)
        raise
    if run.written is not None:
        run.written.extend(written)
    messages = []
    if len(new) < len(hashes):
        messages.append(f"{len(hashes) - len(new)} of {len(hashes)} frames were already imported")
    if decoded.note:
        messages.append(decoded.note)
    ids = [item.pk for item in items]
    return _line(name, IMPORTED, "; ".join(messages), ids)


def _write_items(
    run: _Run,
    name: str,
    decoded: DecodedFile,
    new: list,
    label: LabelClass | None,
    written: list[str],
) -> list[Item]:
    project = run.project
    items = []
    original_name = ""
    for digest, frame in new:
        item = Item(
            project=project,
            batch=run.batch,
            content_hash=digest,
            source_name=name[:500],
            frame_index=frame.frame_index,
            width=decoded.width,
            height=decoded.height,
            channels=decoded.channels,
            modality=decoded.modality,
            metadata=decoded.metadata,
            is_holdout=bool(run.rng.random() < project.holdout_fraction),
            votes_wanted=project.overlap,
            expert_answer=label,
        )
        image_format = frame.encoded_format
        extension = "jpg" if image_format == "jpeg" else "png"
        image_bytes = frame.encoded or encode_image(frame.display, image_format)
        _save(item.image, f"{digest}.{extension}", image_bytes, written)
        _save(item.thumbnail, f"{digest}-thumb.{extension}",
              encode_thumbnail(frame.display, image_format), written)
        if frame.array is not None:
            _save(item.array, f"{digest}.npy", encode_npy(frame.array), written)
        if decoded.original is not None:
            if not original_name:
                _save(item.original, f"{digest}.dcm", decoded.original, written)
                original_name = item.original.name
            else:
                # Frames of one file share its one de-identified copy.
                item.original.name = original_name
        items.append(item)
    return items


def _save(field_file, filename: str, data: bytes, written: list[str]) -> None:
    field_file.save(filename, ContentFile(data), save=False)
    written.append(field_file.name)


def _delete_files(storage, names: list[str]) -> None:
    for stored_name in names:
        try:
            storage.delete(stored_name)
        except OSError:
            logger.warning("could not delete %s after a failed import", stored_name)


def _label_existing(run: _Run, item_ids: list[int], label: LabelClass) -> bool:
    """A re-imported image may bring the label it lacked; an existing expert answer stays."""
    unlabelled = list(
        Item.objects.filter(id__in=item_ids, expert_answer__isnull=True).values_list("id", flat=True)
    )
    if not unlabelled:
        return False
    with transaction.atomic():
        Item.objects.filter(id__in=unlabelled).update(expert_answer=label)
        ExpertLabel.objects.bulk_create(
            ExpertLabel(item_id=i, expert=None, label=label, source=ExpertLabel.Source.IMPORT)
            for i in unlabelled
        )
    run.batch.n_labels += len(unlabelled)
    return True


def _finish(run: _Run) -> ImportBatch:
    batch = run.batch
    batch.report = run.report
    batch.n_imported = sum(len(line["item_ids"]) for line in run.report if line["status"] == IMPORTED)
    batch.n_duplicates = sum(1 for line in run.report if line["status"] == DUPLICATE)
    batch.n_failed = sum(1 for line in run.report if line["status"] == FAILED)
    if batch.n_imported + batch.n_duplicates == 0:
        if batch.pk is not None:
            # Saved for a file whose write then failed: it holds no item.
            batch.delete()
            batch.pk = None
        return batch
    batch.save()
    return batch
