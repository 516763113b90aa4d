"""Expert work: the blind hold-out (the yardstick) and adjudication of crowd disagreement.

Hold-out
    A random slice of items, labelled by experts without seeing any crowd vote, consensus or
    model prediction. Up to two experts label each item (``ExpertLabel`` source ``holdout``).
    One label, or two that agree, set ``Item.expert_answer``; two that disagree clear it and
    put the item on the tie-break list, where a third expert or an admin decides (source
    ``tiebreak``, final). Agreement between the two is Cohen's kappa over items both labelled.
    Hold-out answers are never fed to aggregation or training: they score both.

Adjudication
    Items the crowd disagrees on (``Item.needs_review``, outside the hold-out) queue for experts,
    most uncertain first. An expert's label (source ``review``) is final: it sets
    ``expert_answer`` and clears ``needs_review``.

Regions (points, boxes, masks projects)
    The same queue serves region items: the expert sees each crowd annotator's regions
    (pseudonymised, with their reliability) and the consensus, and answers with a whole region
    set (``RegionAnswer`` source ``review``), which becomes ``Item.expert_regions``. Hold-out
    items without expert regions join the queue blind (no crowd region, no consensus); the
    answer (source ``holdout``) scores every method's latest run at once.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from django.db import transaction
from django.db.models import Count, Exists, F, OuterRef, Q, QuerySet
from sklearn.metrics import cohen_kappa_score

from labeling.aggregation.regions.answers import RegionAnswerError, parse_regions
from labeling.exports import wire_regions, worker_pseudonym
from labeling.models import (
    AggregationRun,
    ConsensusLabel,
    ExpertLabel,
    Item,
    LabelClass,
    Membership,
    Project,
    Region,
    RegionAnswer,
    RegionConsensus,
    Vote,
    WorkerReliability,
)
from labeling.selectors import is_site_admin, role_of
from labeling.services.aggregation import latest_runs_by_method

Source = ExpertLabel.Source

# Two blind opinions per hold-out item are enough to measure agreement; more cost expert time.
HOLDOUT_LABELS_PER_ITEM = 2


class ReviewError(Exception):
    """A refusal an expert can read; the API answers 400 (``status`` 409 for state conflicts)."""

    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ReviewConflict(ReviewError):
    status = 409


def resolve_label(project: Project, label: str | int) -> LabelClass:
    """A class of the project by name (case-insensitive) or by 1-based key ("1".."9")."""
    text = str(label).strip()
    classes = list(project.label_classes.all())
    for cls in classes:
        if cls.name.lower() == text.lower():
            return cls
    if text.isdigit():
        for cls in classes:
            if cls.index + 1 == int(text):
                return cls
    names = ", ".join(c.name for c in classes)
    raise ReviewError(f"Unknown class '{text[:100]}'; use one of: {names}.")


# -- region answers ---------------------------------------------------------------------------


def region_to_stored(region: Region, class_index: int) -> dict:
    """A ``Region`` row in the stored answer format (label = class index)."""
    shape = {"label": class_index, "shape": region.shape}
    if region.shape == Region.Shape.POINT:
        shape["points"] = [[region.x0, region.y0]]
    elif region.shape == Region.Shape.BOX:
        shape["points"] = [[region.x0, region.y0], [region.x1, region.y1]]
    elif region.shape == Region.Shape.POLYGON:
        shape["points"] = region.geometry["points"]
    else:
        shape["rle"] = region.geometry["rle"]
    return shape


def answer_regions(answer_ids) -> dict[int, list]:
    """Each ``RegionAnswer``'s regions in the stored format, by answer id (empty answers too)."""
    out: dict[int, list] = {int(a): [] for a in answer_ids}
    rows = (
        Region.objects.filter(answer_id__in=list(out))
        .select_related("label")
        .order_by("answer_id", "id")
    )
    for region in rows:
        out[region.answer_id].append(region_to_stored(region, region.label.index))
    return out


# -- hold-out ---------------------------------------------------------------------------------


@transaction.atomic
def draw_holdout(project: Project, fraction: float, seed: int = 0) -> list[int]:
    """Grow the hold-out to ``fraction`` of the project's items; returns the ids newly drawn.

    Items nobody voted on are drawn first (their expert labels will be truly blind and no crowd
    work is wasted); gold items are never drawn, as gold is answered in front of the crowd.
    """
    if not 0 <= fraction <= 1:
        raise ReviewError("The hold-out fraction must be between 0 and 1.")
    items = Item.objects.select_for_update().filter(project=project)
    n_total = items.count()
    have = items.filter(is_holdout=True).count()
    wanted = round(fraction * n_total) - have
    if wanted <= 0:
        return []
    rng = random.Random(seed)
    candidates = items.filter(is_holdout=False, is_gold=False)
    drawn: list[int] = []
    for pool in (candidates.filter(vote_count=0), candidates.filter(vote_count__gt=0)):
        ids = sorted(pool.values_list("id", flat=True))
        rng.shuffle(ids)
        drawn += ids[: wanted - len(drawn)]
        if len(drawn) >= wanted:
            break
    Item.objects.filter(id__in=drawn).update(is_holdout=True, needs_review=False)
    return sorted(drawn)


def _holdout_labels(item: Item) -> list[ExpertLabel]:
    return list(item.expert_labels.filter(source=Source.HOLDOUT).order_by("id"))


def holdout_todo(project: Project, expert) -> QuerySet:
    """Hold-out items this expert may still label blind, unlabelled ones first."""
    return (
        Item.objects.filter(project=project, is_holdout=True)
        .exclude(expert_labels__source=Source.IMPORT)
        .exclude(expert_labels__source=Source.TIEBREAK)
        .exclude(expert_labels__source=Source.HOLDOUT, expert_labels__expert=expert)
        .annotate(
            n_holdout=Count("expert_labels", filter=Q(expert_labels__source=Source.HOLDOUT))
        )
        .filter(n_holdout__lt=HOLDOUT_LABELS_PER_ITEM)
        .order_by("n_holdout", "id")
    )


def next_holdout_item(project: Project, expert) -> Item | None:
    return holdout_todo(project, expert).first()


def holdout_state(item: Item) -> str:
    """pending (no label), labelled (one), agreed (two the same), disputed, or resolved."""
    if item.expert_labels.filter(source=Source.TIEBREAK).exists():
        return "resolved"
    labels = {e.label_id for e in _holdout_labels(item)}
    if not labels:
        return "pending"
    if len(labels) > 1:
        return "disputed"
    return "agreed" if item.expert_labels.filter(source=Source.HOLDOUT).count() > 1 else "labelled"


def _settle_holdout(item: Item) -> None:
    """Set ``expert_answer`` from the hold-out labels: a tie-break wins, agreement sets it."""
    tiebreak = item.expert_labels.filter(source=Source.TIEBREAK).order_by("-id").first()
    if tiebreak is not None:
        answer = tiebreak.label_id
    else:
        labels = {e.label_id for e in _holdout_labels(item)}
        answer = labels.pop() if len(labels) == 1 else None
    Item.objects.filter(pk=item.pk).update(expert_answer_id=answer)
    item.expert_answer_id = answer


@transaction.atomic
def label_holdout(item: Item, expert, label: str | int) -> str:
    """Record one expert's blind label of a hold-out item; returns the item's new state."""
    item = Item.objects.select_for_update().select_related("project").get(pk=item.pk)
    if not item.is_holdout:
        raise ReviewError("This item is not in the hold-out.")
    if item.project.is_region_task:
        raise ReviewError("A region hold-out item is answered with regions (POST /api/review/items/<id>/regions/).")
    cls = resolve_label(item.project, label)
    others = item.expert_labels.filter(source=Source.HOLDOUT).exclude(expert=expert)
    if item.expert_labels.filter(source__in=[Source.TIEBREAK, Source.IMPORT]).exists():
        raise ReviewConflict("This hold-out item already has a final expert label.")
    if others.count() >= HOLDOUT_LABELS_PER_ITEM:
        raise ReviewConflict("Two experts already labelled this item.")
    own = item.expert_labels.filter(source=Source.HOLDOUT, expert=expert).first()
    if own is not None and own.label_id != cls.id and others.exists():
        # Once a second opinion exists the first may learn of a dispute; changing it then
        # would no longer be blind.
        raise ReviewConflict("Your label is final once a second expert has labelled the item.")
    ExpertLabel.objects.update_or_create(
        item=item, expert=expert, source=Source.HOLDOUT, defaults={"label": cls}
    )
    _settle_holdout(item)
    return holdout_state(item)


def holdout_disputes(project: Project, user=None) -> QuerySet:
    """Hold-out items whose two experts disagree and nobody has broken the tie yet.

    With ``user``: only the disputes that user may break (not one they labelled, unless admin).
    """
    disputed = (
        Item.objects.filter(project=project, is_holdout=True)
        .exclude(expert_labels__source=Source.TIEBREAK)
        .annotate(
            n_classes=Count(
                "expert_labels__label",
                filter=Q(expert_labels__source=Source.HOLDOUT),
                distinct=True,
            )
        )
        .filter(n_classes__gt=1)
        .order_by("id")
    )
    if user is not None and role_of(user, project) != Membership.Role.ADMIN:
        mine = ExpertLabel.objects.filter(item=OuterRef("pk"), source=Source.HOLDOUT, expert=user)
        disputed = disputed.exclude(Exists(mine))
    return disputed


@transaction.atomic
def break_tie(item: Item, user, label: str | int, note: str = "") -> ExpertLabel:
    """A third expert (or an admin) settles a disputed hold-out item; their label is final."""
    item = Item.objects.select_for_update().select_related("project").get(pk=item.pk)
    if not item.is_holdout:
        raise ReviewError("This item is not in the hold-out.")
    if holdout_state(item) != "disputed":
        raise ReviewConflict("Only a hold-out item two experts disagree on needs a tie-break.")
    is_admin = role_of(user, item.project) == Membership.Role.ADMIN or is_site_admin(user)
    if not is_admin and item.expert_labels.filter(source=Source.HOLDOUT, expert=user).exists():
        raise ReviewConflict("You labelled this item; a third expert or an admin breaks the tie.")
    cls = resolve_label(item.project, label)
    expert_label = ExpertLabel.objects.create(
        item=item, expert=user, label=cls, source=Source.TIEBREAK, note=note
    )
    _settle_holdout(item)
    return expert_label


@dataclass(frozen=True)
class Agreement:
    n_items: int
    observed: float | None
    kappa: float | None
    pairs: list[tuple[str, str]] = field(default_factory=list, repr=False)


def holdout_agreement(project: Project) -> Agreement:
    """Cohen's kappa between the first and second blind label over items two experts labelled."""
    rows = (
        ExpertLabel.objects.filter(item__project=project, source=Source.HOLDOUT)
        .order_by("item_id", "id")
        .values_list("item_id", "label__name")
    )
    by_item: dict[int, list[str]] = {}
    for item_id, name in rows:
        by_item.setdefault(item_id, []).append(name)
    pairs = [(v[0], v[1]) for v in by_item.values() if len(v) >= 2]
    if not pairs:
        return Agreement(n_items=0, observed=None, kappa=None)
    first, second = zip(*pairs, strict=True)
    observed = sum(a == b for a, b in pairs) / len(pairs)
    if len(set(first) | set(second)) < 2:
        # One class only: kappa is 0/0; the agreement is total and says nothing beyond that.
        kappa = None
    else:
        kappa = float(cohen_kappa_score(first, second, labels=project.class_names))
        kappa = None if math.isnan(kappa) else kappa
    return Agreement(n_items=len(pairs), observed=observed, kappa=kappa, pairs=pairs)


# -- adjudication -----------------------------------------------------------------------------


def review_queue(project: Project) -> QuerySet:
    """Items awaiting an expert: crowd disagreement, not hold-out, not adjudicated yet; on a
    region project also the hold-out items without expert regions (answered blind)."""
    order = (F("uncertainty").desc(nulls_last=True), "-vote_count", "id")
    if project.is_region_task:
        adjudicated = RegionAnswer.objects.filter(item=OuterRef("pk"), source=Source.REVIEW)
        disputed = Q(needs_review=True, is_holdout=False) & ~Exists(adjudicated)
        blind = Q(is_holdout=True, expert_regions__isnull=True)
        return Item.objects.filter(project=project).filter(disputed | blind).order_by(*order)
    adjudicated = ExpertLabel.objects.filter(item=OuterRef("pk"), source=Source.REVIEW)
    return (
        Item.objects.filter(project=project, needs_review=True, is_holdout=False)
        .exclude(Exists(adjudicated))
        .order_by(*order)
    )


@transaction.atomic
def adjudicate(item: Item, expert, label: str | int, note: str = "") -> ExpertLabel:
    """The expert's final answer on an item the crowd disagreed on."""
    item = Item.objects.select_for_update().select_related("project").get(pk=item.pk)
    if item.is_holdout:
        raise ReviewError("Hold-out items are labelled blind on the hold-out page.")
    if item.project.is_region_task:
        raise ReviewError("A region item is answered with regions (POST /api/review/items/<id>/regions/).")
    cls = resolve_label(item.project, label)
    expert_label, _ = ExpertLabel.objects.update_or_create(
        item=item, expert=expert, source=Source.REVIEW, defaults={"label": cls, "note": note}
    )
    Item.objects.filter(pk=item.pk).update(expert_answer=cls, needs_review=False)
    return expert_label


def latest_runs(project: Project) -> list[AggregationRun]:
    """The newest succeeded run of each aggregation method, default method first."""
    runs = latest_runs_by_method(project).values()
    return sorted(runs, key=lambda r: (r.method != project.default_method, r.method))


def review_evidence(item: Item) -> dict:
    """What an expert sees beside the image: votes per class, voters' reliability, every
    method's consensus and the latest trained model's prediction."""
    from training.models import Prediction, TrainingRun

    project = item.project
    classes = list(project.label_classes.all())
    votes = list(
        Vote.objects.filter(item=item, kind=Vote.Kind.LABEL, is_excluded=False)
        .select_related("label")
        .order_by("id")
    )
    runs = latest_runs(project)
    default_run = next((r for r in runs if r.method == project.default_method), None)
    reliability = {}
    if default_run is not None:
        reliability = {
            r.worker_id: r.accuracy
            for r in WorkerReliability.objects.filter(
                run=default_run, worker_id__in=[v.worker_id for v in votes]
            )
        }
    consensus = {
        c.run_id: c
        for c in ConsensusLabel.objects.filter(item=item, run__in=runs).select_related("label")
    }
    model_run = (
        TrainingRun.objects.filter(project=project, status=TrainingRun.Status.SUCCEEDED)
        .order_by("-finished_at", "-id")
        .first()
    )
    prediction = (
        Prediction.objects.filter(run=model_run, item=item).select_related("label").first()
        if model_run
        else None
    )
    return {
        "item": item,
        "classes": classes,
        "vote_counts": [
            {"label": c.name, "count": sum(v.label_id == c.id for v in votes)} for c in classes
        ],
        "voters": [
            {
                # Experts judge the vote by the voter's record, not by who they are.
                "worker": worker_pseudonym(project.id, v.worker_id),
                "label": v.label.name,
                "reliability": reliability.get(v.worker_id),
            }
            for v in votes
        ],
        "reliability_method": default_run.method if default_run else None,
        "consensus": [
            {
                "method": run.method,
                "run": run.id,
                "label": consensus[run.id].label.name,
                "confidence": consensus[run.id].confidence,
                "posterior": consensus[run.id].posterior,
            }
            for run in runs
            if run.id in consensus
        ],
        "prediction": (
            {
                "run": model_run.id,
                "backbone": model_run.backbone,
                "label_source": model_run.label_source,
                "label": prediction.label.name,
                "probabilities": prediction.probabilities,
            }
            if prediction
            else None
        ),
        "expert_labels": [
            {"source": e.source, "label": e.label.name, "note": e.note}
            for e in item.expert_labels.filter(source=Source.REVIEW).select_related("label")
        ],
    }


# -- regions ----------------------------------------------------------------------------------


@transaction.atomic
def adjudicate_regions(item: Item, expert, regions, note: str = "") -> RegionAnswer:
    """An expert's final region set for an item (wire format, checked by the shared validator):
    source ``review``, or ``holdout`` for a hold-out item (then scored against at once). Sending
    again replaces the expert's own answer; nothing is written when a region is refused."""
    from labeling.services.imports import record_region_answer
    from labeling.services.region_aggregation import rescore_holdout

    item = Item.objects.select_for_update().select_related("project").get(pk=item.pk)
    project = item.project
    if not project.is_region_task:
        raise ReviewError("This project's items are answered with a class, not with regions.")
    try:
        shapes = parse_regions(
            regions, task_type=project.task_type, classes=project.class_names,
            width=item.width, height=item.height, max_regions=project.max_regions,
        )
    except RegionAnswerError as exc:
        raise ReviewError(exc.message) from exc
    source = Source.HOLDOUT if item.is_holdout else Source.REVIEW
    if item.is_holdout:
        others = item.region_answers.exclude(expert=expert, source=Source.HOLDOUT)
        if others.exists():
            raise ReviewConflict("This hold-out item already has its expert regions.")
    # the expert's earlier answer goes with its Region rows (one per expert and source)
    item.region_answers.filter(expert=expert, source=source).delete()
    answer = record_region_answer(item, shapes, source=source, expert=expert, note=note)
    Item.objects.filter(pk=item.pk).update(needs_review=False)
    if item.is_holdout:
        rescore_holdout(project)
    return answer


def region_review_evidence(item: Item) -> dict:
    """What an expert sees beside a region item: each crowd annotator's regions (pseudonymised)
    with their reliability and the default method's consensus. A hold-out item is answered
    blind: neither is given, nor another expert's regions."""
    from labeling.services.region_aggregation import review_run

    project = item.project
    classes = list(project.label_classes.all())
    names = [c.name for c in classes]
    evidence = {
        "item": item,
        "classes": classes,
        "task_type": project.task_type,
        "max_regions": project.max_regions,
        "blind": item.is_holdout,
        "reliability_method": None,
        "annotators": [],
        "consensus": None,
        "expert_regions": [],
    }
    if item.is_holdout:
        return evidence
    run = review_run(project)
    votes = list(
        Vote.objects.filter(item=item, kind=Vote.Kind.REGIONS, is_excluded=False).order_by("id")
    )
    reliability = {}
    if run is not None:
        evidence["reliability_method"] = run.fitted_method
        reliability = {
            r.worker_id: r
            for r in WorkerReliability.objects.filter(run=run, worker_id__in=[v.worker_id for v in votes])
        }
        consensus = RegionConsensus.objects.filter(run=run, item=item).first()
        if consensus is not None:
            evidence["consensus"] = {
                "method": evidence["reliability_method"],
                "run": run.id,
                "regions": wire_regions(consensus.regions, names),
                "confidence": consensus.confidence,
                "agreement": consensus.agreement,
            }
    for v in votes:
        r = reliability.get(v.worker_id)
        detail = r.detail if r is not None else {}
        evidence["annotators"].append({
            # experts judge the regions by the annotator's record, not by who they are
            "worker": worker_pseudonym(project.id, v.worker_id),
            "regions": wire_regions(v.regions or [], names),
            "reliability": r.accuracy if r is not None else None,
            "sensitivity": detail.get("sensitivity"),
            "precision": detail.get("precision"),
        })
    reviewed = item.region_answers.filter(source=Source.REVIEW).order_by("-id").first()
    if reviewed is not None:
        evidence["expert_regions"] = wire_regions(answer_regions([reviewed.pk])[reviewed.pk], names)
    return evidence
