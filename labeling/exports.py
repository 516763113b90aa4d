"""Streamed exports of a project's labels: rows are generated from ``values_list`` iterators in
chunks, so a project with millions of votes exports in constant memory.

Votes use crowd-kit's shape (``task``, ``worker``, ``label``): ``task`` is the item id,
``label`` the class name. Workers and experts appear as stable pseudonyms (``w`` + 12 hex
digits, an HMAC of the project and user ids under the site's secret key): the same person has
the same id in every export of a project, but ids cannot be joined across projects or traced to
an account without the key. No file names, DICOM or other item metadata are exported.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import json
from collections.abc import Iterable, Iterator
from functools import lru_cache

from django.conf import settings

from labeling.models import AggregationRun, ConsensusLabel, ExpertLabel, Item, Project, Vote

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
