"""Gold items: an explicit subset of expert-labelled items mixed into crowd work to score workers.

Gold is drawn only from items with an expert answer and outside the hold-out: the hold-out is
the blind yardstick and must never be shown with its answer, while gold answers are, in effect,
revealed to the crowd through feedback.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from django.db import transaction

from labeling.models import Item, Project


class GoldError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def gold_candidates(project: Project):
    return Item.objects.filter(
        project=project, is_holdout=False, expert_answer__isnull=False
    )


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
        bad = rows.filter(expert_answer__isnull=True).values_list("id", flat=True)
        if bad:
            raise GoldError(f"Gold items need an expert answer: {sorted(bad)[:10]}.")
    return rows.update(is_gold=flag)
