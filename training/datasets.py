"""Turn a project's items, votes and expert labels into the engine's arrays for one run.

* Training items are the non-hold-out items that carry the run's label source: their expert
  answer (``expert``) or at least one counted vote (every crowd source).
* The hold-out is every ``is_holdout`` item with an expert answer; the engine scores on it.
* Votes are the counted ones (``kind == label``, not excluded) on training items, coded to
  ``[0, n_workers)`` with :attr:`TrainingData.worker_ids` as the code -> user id lookup.
* ``majority_vote`` and ``dawid_skene`` targets are computed here, at launch, from those votes
  with ``labeling.aggregation`` (always current, unlike the latest stored ConsensusLabel);
  ``aggnet``, ``crowd_layer`` and ``crossfit_em`` start from the same Dawid-Skene fit. Expert
  answers given in review (and gold answers) are final, so they are clamped as known labels in
  both fits (:attr:`TrainingData.known_labels`).
* ``mil`` (bag projects) trains on bag labels from ``params["mil_labels"]`` (one of the sources
  above or ``crowd_layer``; default ``dawid_skene``), built exactly as for that source.
"""

from __future__ import annotations

import io
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from django.db.models import Exists, OuterRef
from PIL import Image

from labeling.aggregation import METHODS, VoteMatrix
from labeling.models import Item, Vote
from training.models import TrainingRun

if TYPE_CHECKING:  # torch loads only in the worker, not in every web process
    from training.engine import CrowdVotes, ItemSet

Source = TrainingRun.LabelSource
CROWD_SOURCES = (
    Source.MAJORITY_VOTE, Source.DAWID_SKENE, Source.AGGNET, Source.CROWD_LAYER, Source.CROSSFIT_EM
)
# the sources trained on the votes themselves, not only on targets computed from them
VOTE_SOURCES = (Source.AGGNET, Source.CROWD_LAYER, Source.CROSSFIT_EM)
MIL_LABELS = (Source.EXPERT, Source.MAJORITY_VOTE, Source.DAWID_SKENE, Source.CROWD_LAYER)


class NoLabelledItems(ValueError):
    """The project has no training item with the run's kind of label."""


@dataclass
class TrainingData:
    class_names: list[str]
    train: ItemSet
    holdout: ItemSet | None
    votes: CrowdVotes | None = None
    init_posteriors: np.ndarray | None = None
    init_confusions: np.ndarray | None = None
    worker_ids: list[int] = field(default_factory=list)
    # [N] class code of each training item whose answer is known (gold or expert), else -1
    known_labels: np.ndarray | None = None


def item_image(item: Item) -> np.ndarray | str:
    """The item's pixels for training: its full-precision array if it has one, else its rendering.

    A local file is handed over by path (the engine reads it lazily, batch by batch); remote
    storage has no path, so its bytes are decoded here.
    """
    stored = item.array if item.array else item.image
    stack = (item.metadata or {}).get("stack")
    if stack and item.array:
        # A stack (frames x H x W) trains on the slice its rendering shows: the engine is 2-D.
        with stored.open("rb") as handle:
            return np.load(io.BytesIO(handle.read()), allow_pickle=False)[stack["shown"]]
    try:
        return stored.path
    except NotImplementedError:
        with stored.open("rb") as handle:
            data = handle.read()
        if stored.name.endswith(".npy"):
            return np.load(io.BytesIO(data), allow_pickle=False)
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image)


def class_codes(run: TrainingRun) -> tuple[list[str], dict[int, int]]:
    """Class names in page order and LabelClass id -> engine class code."""
    classes = list(run.project.label_classes.order_by("index"))
    return [c.name for c in classes], {c.id: code for code, c in enumerate(classes)}


def holdout_items(run: TrainingRun):
    return Item.objects.filter(
        project=run.project, is_holdout=True, expert_answer__isnull=False
    ).order_by("id")


def counted_votes(project_id: int):
    return Vote.objects.filter(
        project_id=project_id, kind=Vote.Kind.LABEL, is_excluded=False, item__is_holdout=False
    )


def bag_label_source(run: TrainingRun) -> str:
    """The source of a run's training labels: its own, or for MIL the bag labels it uses."""
    if run.label_source == Source.MIL:
        return (run.params or {}).get("mil_labels", Source.DAWID_SKENE)
    return run.label_source


def build_training_data(
    run: TrainingRun, source: str | None = None, exclude: Collection[int] = ()
) -> TrainingData:
    """Everything :func:`training.engine.train` needs for ``run``; see the module docstring.

    ``source`` overrides the run's label source and ``exclude`` leaves items out of training
    (an ``auto`` run's candidates: the source being tried, without the validation items).
    """
    from training.engine import CrowdVotes, ItemSet

    source = source or bag_label_source(run)
    names, code_of = class_codes(run)
    holdout = list(holdout_items(run))
    holdout_set = (
        ItemSet(
            [item_image(i) for i in holdout],
            np.array([code_of[i.expert_answer_id] for i in holdout], dtype=np.int64),
            [i.id for i in holdout],
        )
        if holdout
        else None
    )
    candidates = (
        Item.objects.filter(project=run.project, is_holdout=False).exclude(pk__in=exclude).order_by("id")
    )
    if source == Source.EXPERT:
        items = list(candidates.filter(expert_answer__isnull=False))
        if not items:
            raise NoLabelledItems(f"no labelled items for label source {run.label_source}")
        targets = np.array([code_of[i.expert_answer_id] for i in items], dtype=np.int64)
        train = ItemSet([item_image(i) for i in items], targets, [i.id for i in items])
        return TrainingData(names, train, holdout_set)
    if source not in CROWD_SOURCES:
        raise NoLabelledItems(f"label source {run.label_source} is not available yet")

    votes_qs = counted_votes(run.project_id)
    items = list(candidates.filter(Exists(votes_qs.filter(item=OuterRef("pk")))))
    if not items:
        raise NoLabelledItems(f"no labelled items for label source {run.label_source}")
    position = {item.id: n for n, item in enumerate(items)}
    rows = np.array(
        list(votes_qs.filter(item__in=items).values_list("item_id", "worker_id", "label_id")),
        dtype=np.int64,
    ).reshape(-1, 3)
    worker_ids, worker_codes = np.unique(rows[:, 1], return_inverse=True)
    item_codes = np.array([position[i] for i in rows[:, 0]], dtype=np.int64)
    label_codes = np.array([code_of[c] for c in rows[:, 2]], dtype=np.int64)
    known = np.array(
        [code_of[i.expert_answer_id] if i.expert_answer_id else -1 for i in items], dtype=np.int64
    )
    matrix = VoteMatrix.from_codes(
        item_codes,
        worker_codes,
        label_codes,
        tasks=[i.id for i in items],
        workers=worker_ids,
        classes=names,
    )
    method = "majority_vote" if source == Source.MAJORITY_VOTE else "dawid_skene"
    aggregator = METHODS[method]().fit(matrix, known_labels=known)
    posteriors = np.asarray(aggregator.posteriors_, dtype=np.float64)
    train = ItemSet([item_image(i) for i in items], None, [i.id for i in items])
    data = TrainingData(
        names, train, holdout_set, worker_ids=[int(w) for w in worker_ids], known_labels=known
    )
    # the engine takes majority vote's argmax itself, breaking ties with the run's seed
    data.init_posteriors = posteriors
    if source in VOTE_SOURCES:
        data.votes = CrowdVotes(item_codes, worker_codes, label_codes, n_workers=len(worker_ids))
        data.init_confusions = np.asarray(aggregator.confusions_, dtype=np.float64)
    return data
