"""Gold items: an explicit subset of expert-labelled items mixed into crowd work to score workers;
when a worker is served one (a per-worker schedule), and how their answers on them are judged.

Gold is drawn only from items with an expert answer and outside the hold-out: the hold-out is
the blind yardstick and must never be shown with its answer, while gold answers are, in effect,
revealed to the crowd through feedback.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Q

from labeling.models import REGION_TASK_TYPES, Item, Project, Vote


class GoldError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _has_expert_answer(project: Project) -> Q:
    """An expert's class, or on a region project (points, boxes, masks) their regions."""
    if project.is_region_task:
        return Q(expert_regions__isnull=False)
    return Q(expert_answer__isnull=False)


def gold_candidates(project: Project):
    return Item.objects.filter(_has_expert_answer(project), project=project, is_holdout=False)


@transaction.atomic
def draw_gold(
    project: Project, *, fraction: float | None = None, count: int | None = None, seed: int = 0
) -> list[int]:
    """Grow the gold set to ``count`` items, or ``fraction`` of the eligible ones.

    Returns the ids newly marked gold; a set already at or above the target is left alone.
    """
    if (fraction is None) == (count is None):
        raise GoldError("Give either a fraction or a count of gold items.")
    if fraction is not None and not 0 <= fraction <= 1:
        raise GoldError("The gold fraction must be between 0 and 1.")
    if count is not None and count < 0:
        raise GoldError("The gold count cannot be negative.")
    eligible = gold_candidates(project).select_for_update()
    target = count if count is not None else round(fraction * eligible.count())
    wanted = target - eligible.filter(is_gold=True).count()
    if wanted <= 0:
        return []
    ids = sorted(eligible.filter(is_gold=False).values_list("id", flat=True))
    random.Random(seed).shuffle(ids)
    drawn = sorted(ids[:wanted])
    Item.objects.filter(id__in=drawn).update(is_gold=True)
    return drawn


@transaction.atomic
def set_gold(items: Iterable[Item], flag: bool) -> int:
    """Mark or unmark items as gold; refuses hold-out items and items without an expert answer."""
    ids = [item.pk for item in items]
    rows = Item.objects.select_for_update().filter(pk__in=ids)
    if flag:
        bad = rows.filter(is_holdout=True).values_list("id", flat=True)
        if bad:
            raise GoldError(f"Hold-out items cannot be gold: {sorted(bad)[:10]}.")
        # A region project's items need the expert's regions (read without locking projects).
        region = Q(project__task_type__in=REGION_TASK_TYPES)
        missing = (region & Q(expert_regions__isnull=True)) | (~region & Q(expert_answer__isnull=True))
        bad = sorted(Item.objects.filter(missing, pk__in=ids).values_list("id", flat=True))
        if bad:
            raise GoldError(f"Gold items need an expert answer: {bad[:10]}.")
    return rows.update(is_gold=flag)


# --- Judging workers on gold -------------------------------------------------------------------

# A worker is warned once their score is within this of the project's threshold.
GOLD_WARN_MARGIN = 0.1
# A warning needs this many scored gold answers: one miss alone says little.
GOLD_WARN_AFTER = 2


@dataclass(frozen=True)
class GoldStanding:
    """A worker's gold record (since their last block) and what the project's rule makes of it.

    ``accuracy`` is balanced: the share right per expert class, averaged over the classes of the
    worker's gold questions. Raw accuracy let a worker who answers the commonest class to
    everything pass: 59 in 100 of the BCCD demo's gold are neutrophils, over a 50% threshold.
    Balanced, answering one class scores 1 / classes; the rule also fails a score no better than
    that (with two classes, 50% is chance whatever the threshold).
    """

    answered: int
    correct: int
    classes: int
    accuracy: float | None
    min_answers: int
    threshold: float

    @property
    def failing(self) -> bool:
        if self.accuracy is None:
            return False
        one_class = self.classes >= 2 and self.accuracy <= 1 / self.classes
        return self.accuracy < self.threshold or one_class

    @property
    def blocks(self) -> bool:
        return self.answered >= self.min_answers and self.failing

    @property
    def warned(self) -> bool:
        if self.blocks or self.accuracy is None or self.answered < GOLD_WARN_AFTER:
            return False
        return self.failing or self.accuracy < self.threshold + GOLD_WARN_MARGIN

    @property
    def status(self) -> str:
        return "blocked" if self.blocks else "warning" if self.warned else "ok"

    def reason(self) -> str:
        """Why the rule blocks (or would block) this record, as the block's reason."""
        score = f"gold accuracy {self.accuracy:.0%} over {self.answered} gold questions"
        if self.accuracy is not None and self.accuracy >= self.threshold:
            return f"{score} is no better than giving one answer to every question"
        return f"{score} is below the project's {self.threshold:.0%}"

    def warning(self) -> str | None:
        """What the worker is told while warned: their score, and the bar."""
        if not self.warned:
            return None
        score = f"Your gold accuracy is {self.accuracy:.0%} over {self.answered} gold questions"
        if self.failing and self.accuracy >= self.threshold:
            return (
                f"{score}, no better than giving one answer to every question. Look at each "
                "image: workers who stay there are blocked from this project."
            )
        return (
            f"{score}. Workers under {self.threshold:.0%} after {self.min_answers} gold "
            "questions are blocked from this project."
        )


def gold_standing(
    per_class: Sequence[tuple[int, int]], *, min_answers: int, threshold: float
) -> GoldStanding:
    """The one blocking rule, on a record of (answered, right) per expert class: the Python
    services count it with :func:`gold_record`, ``quorum_record_vote`` in the vote's call."""
    rows = [(int(n), int(r)) for n, r in per_class if n]
    accuracy = sum(r / n for n, r in rows) / len(rows) if rows else None
    return GoldStanding(
        answered=sum(n for n, _ in rows),
        correct=sum(r for _, r in rows),
        classes=len(rows),
        accuracy=accuracy,
        min_answers=min_answers,
        threshold=threshold,
    )


def gold_record(worker, project: Project | int, *, since: datetime | None = None) -> list[tuple[int, int]]:
    """The worker's scored gold answers since ``since`` as (answered, right) per expert class,
    in class id order: quorum_record_vote's count (migration 0011), which tests compare."""
    votes = Vote.objects.filter(project=project, worker=worker, was_gold=True, gold_correct__isnull=False)
    if since is not None:
        votes = votes.filter(created_at__gt=since)
    rows = (
        votes.values("item__expert_answer_id")
        .annotate(n=Count("id"), r=Count("id", filter=Q(gold_correct=True)))
        .order_by("item__expert_answer_id")
        .values_list("n", "r")
    )
    return list(rows)


# --- When gold is served -----------------------------------------------------------------------

# The rate in millionths: integer arithmetic, so quorum_gold_slot computes the same slots.
_RATE_SCALE = 1_000_000


def gold_schedule_key(project_id: int, worker_id: int, midnight: datetime) -> str:
    """The secret of a worker's gold schedule in a project for a day: without it the slots
    cannot be foretold. Keyed by the day, as the stream position (votes today) restarts."""
    message = f"{project_id}:{worker_id}:{midnight.isoformat()}".encode()
    return hashlib.blake2b(message, key=_schedule_secret(), digest_size=16).hexdigest()


@cache
def _schedule_secret() -> bytes:
    return hashlib.blake2b(settings.SECRET_KEY.encode(), person=b"quorum-gold").digest()


def _hash32(text: str) -> int:
    return int(text[:8], 16)


def is_gold_slot(position: int, rate: float, key: str) -> bool:
    """Whether the item at ``position`` (0-based) of a worker's stream is a gold question.

    The stream is cut into blocks of 1 / ``rate`` positions on average, shifted by a phase
    from ``key``; each block holds one gold question at an offset hashed from ``key`` and the
    block. So the rate holds block by block, gold comes at most twice in a row (end of one
    block, start of the next) and never after a gap of two blocks, and the slots cannot be
    foretold without the key. The database twin is ``quorum_gold_slot`` (migration 0011).
    """
    r = math.floor(rate * _RATE_SCALE + 0.5)
    if r <= 0:
        return False
    if r >= _RATE_SCALE:
        return True
    span = (_RATE_SCALE + r - 1) // r
    v = position + _hash32(key) % span
    block = v * r // _RATE_SCALE
    first = (block * _RATE_SCALE + r - 1) // r
    length = ((block + 1) * _RATE_SCALE + r - 1) // r - first
    offset = _hash32(hashlib.md5(f"{key}:{block}".encode(), usedforsecurity=False).hexdigest()) % length
    return v - first == offset


def gold_warning(worker, project: Project) -> str | None:
    """The warning the worker is under in the project now (read only: blocking is the votes')."""
    from labeling.models import Membership

    membership = Membership.objects.filter(project=project, user=worker).only("blocked_at").first()
    if membership is None:
        return None
    record = gold_record(worker, project, since=membership.blocked_at)
    return gold_standing(
        record, min_answers=project.gold_min_answers, threshold=project.gold_accuracy_threshold
    ).warning()
