"""Let a simulated crowd label a project whose items have expert answers.

Each simulated worker is a real user (``sim-<project id>-<archetype>-<n>``, a crowd member
marked ``is_simulated``) with a confusion matrix from :mod:`labeling.aggregation.simulation`.
They work exactly like people on the annotator page: ``next_item`` hands out a lease (overlap,
leases, gold mixing, hold-out exclusion, blocking) and ``submit_vote`` records the answer, drawn
from the worker's confusion row of the item's expert answer. Workers take turns in a random
order until a whole round hands nobody an item, so a re-run only adds votes where items still
want them.

On a points or boxes project each worker is a :class:`RegionAnnotator` of
:mod:`labeling.aggregation.regions.simulation` (missed objects, false marks, jitter, loose or
tight boxes, spammers, a spread of skill) marking the item's expert regions, class by class,
and the summary gives each archetype's mean F1 against the expert at the project's match rule.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from django.contrib.auth import get_user_model
from django.core.management import BaseCommand, CommandError
from django.db.models import F, Sum
from django.db.models.functions import Greatest
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from labeling.aggregation.regions import simulation as region_simulation
from labeling.aggregation.regions.answers import detection_score, shapes_from_stored
from labeling.aggregation.simulation import WorkerProfile, make_profiles, parse_mix
from labeling.management.commands.aggregate import find_project
from labeling.models import AggregationRun, Item, Membership, Project, Region, Vote
from labeling.services.aggregation import maybe_trigger_aggregation
from labeling.services.assignment import CrowdError, WorkerBlocked, next_item
from labeling.services.projects import set_membership
from labeling.services.votes import submit_vote

User = get_user_model()

DEFAULT_MIX = "accurate:5,noisy:3,class_biased:2,spammer:2,adversarial:1"
DEFAULT_REGION_MIX = region_simulation.DEFAULT_MIX
# Region workers' skill varies around their archetype by up to this share (sensitivity, jitter).
REGION_SKILL_SPREAD = 0.15
# A worker whose answer is refused this often in a row is stopped, so the loop always ends.
MAX_REFUSALS = 3


@dataclass
class SimulatedWorker:
    user: object
    profile: WorkerProfile | region_simulation.RegionAnnotator
    refusals: int = 0


@dataclass
class SimulationSummary:
    votes: int = 0
    rounds: int = 0
    votes_by_archetype: Counter = field(default_factory=Counter)
    correct_by_archetype: Counter = field(default_factory=Counter)
    blocked: list[str] = field(default_factory=list)

    def agreement(self, archetype: str) -> float | None:
        n = self.votes_by_archetype[archetype]
        return self.correct_by_archetype[archetype] / n if n else None


def simulated_workers(project: Project, mix: str, seed: int) -> list[SimulatedWorker]:
    """Create (or reuse) one crowd member per worker in ``mix``."""
    if project.is_region_task:
        profiles = region_simulation.make_annotators(mix, seed=seed, spread=REGION_SKILL_SPREAD)
    else:
        profiles = make_profiles(parse_mix(mix), project.label_classes.count(), seed=seed)
    seen: Counter = Counter()
    workers = []
    for profile in profiles:
        seen[profile.archetype] += 1
        username = f"sim-{project.pk}-{profile.archetype}-{seen[profile.archetype]}"
        user, created = User.objects.get_or_create(username=username)
        if created:
            user.set_unusable_password()
            user.save(update_fields=["password"])
        membership = Membership.objects.filter(project=project, user=user).first()
        if membership is None or not membership.is_simulated:
            set_membership(project=project, user=user, role=Membership.Role.CROWD, is_simulated=True)
        workers.append(SimulatedWorker(user, profile))
    return workers


def open_slots_left(project: Project) -> int:
    """Votes the items still want: hold-out included, gold aside (a gold item is served beyond
    its plan)."""
    left = Item.objects.filter(project=project, is_gold=False).aggregate(
        n=Sum(Greatest(F("votes_wanted") - F("vote_count"), 0))
    )["n"]
    return int(left or 0)


class SlotProgress:
    """The progress bar: this run's votes on planned (non-gold) items, out of those plus the
    votes the items still want, read after each round. The count only grows; the total grows
    when a blocked worker's votes are set aside or an aggregation reopens uncertain items, and
    shrinks when it closes confident ones. Counting every vote against the regular items' slots
    at the start ran past the total (gold and hold-out votes) and never saw the plan change."""

    def __init__(self, project: Project, enabled: bool):
        self.project = project
        gold = Item.objects.filter(project=project, is_gold=True).values_list("id", flat=True)
        self.gold = set(gold)
        self.done = 0
        self.bar = tqdm(
            total=open_slots_left(project), unit="vote", desc="simulated votes",
            disable=not enabled, dynamic_ncols=True,
        )

    def voted(self, item_id: int) -> None:
        if item_id not in self.gold:
            self.done += 1

    def refresh(self) -> None:
        self.bar.total = self.done + open_slots_left(self.project)
        self.bar.n = self.done
        self.bar.refresh()

    def close(self) -> None:
        self.refresh()
        self.bar.close()


def _reopened(project: Project) -> bool:
    """The crowd ran dry: a run the product triggers now may send uncertain items back out.

    Only a run finished here (Celery eager, as in tests) can reopen items before we stop.
    """
    run = maybe_trigger_aggregation(project.pk)
    if run is None:
        return False
    run.refresh_from_db()
    return run.status == AggregationRun.Status.SUCCEEDED and open_slots_left(project) > 0


def simulate(
    project: Project,
    mix: str | None = None,
    *,
    seed: int = 0,
    votes_per_item: int | None = None,
    progress: bool = False,
) -> SimulationSummary:
    """Vote with a simulated crowd through the assignment and vote services."""
    answers = RegionAnswers(project) if project.is_region_task else ClassAnswers(project)
    mix = mix or (DEFAULT_REGION_MIX if project.is_region_task else DEFAULT_MIX)
    if not answers.truth:
        raise CommandError(
            f"Project '{project.name}' has no item with an expert answer to simulate votes from."
        )
    if votes_per_item is not None:
        # Items the adaptive rule has not touched yet (never aggregated) follow the new plan.
        Item.objects.filter(
            project=project, is_gold=False, is_holdout=False, uncertainty__isnull=True
        ).update(votes_wanted=votes_per_item)
    workers = simulated_workers(project, mix, seed)
    rng = np.random.default_rng(seed)
    summary = SimulationSummary()
    # Log lines (a blocked worker, an aggregation run) are written above the bar, not into it.
    with logging_redirect_tqdm():
        _vote_until_done(project, workers, answers, rng, summary, SlotProgress(project, progress))
    summary.blocked = sorted(
        Membership.objects.filter(
            project=project, is_simulated=True, is_blocked=True, user__in=[w.user for w in workers]
        ).values_list("user__username", flat=True)
    )
    return summary


class ClassAnswers:
    """A class vote drawn from the worker's confusion row of the item's expert answer."""

    agreement = "agree with the expert answer"

    def __init__(self, project: Project):
        self.classes = list(project.label_classes.order_by("index").values_list("name", flat=True))
        self.truth = dict(
            Item.objects.filter(project=project, expert_answer__isnull=False).values_list(
                "id", "expert_answer__index"
            )
        )

    def answer(self, profile: WorkerProfile, item_id: int, rng: np.random.Generator) -> tuple[dict, float]:
        """The vote's fields, and 1 when it agrees with the expert (0 otherwise)."""
        true_class = self.truth.get(item_id)
        if true_class is None:
            # Without an expert answer there is nothing to draw an answer from.
            return {"label": None, "kind": Vote.Kind.SKIP}, 0.0
        label = self.classes[rng.choice(len(self.classes), p=profile.confusion[true_class])]
        return {"label": label, "kind": Vote.Kind.LABEL}, float(label == self.classes[true_class])


class RegionAnswers:
    """A region vote: the worker's marks of the item's expert points or boxes, class by class."""

    agreement = "mean F1 against the expert's regions"

    def __init__(self, project: Project):
        if project.task_type not in (Project.TaskType.POINTS, Project.TaskType.BOXES):
            raise CommandError(
                f"Simulated region crowds mark points or boxes; '{project.name}' is a "
                f"{project.task_type} project."
            )
        self.kind = project.task_type
        self.threshold = (
            project.region_match_distance if self.kind == Project.TaskType.POINTS else project.region_match_iou
        )
        self.classes = list(project.label_classes.order_by("index").values_list("name", flat=True))
        items = Item.objects.filter(project=project, expert_regions__isnull=False)
        self.sizes = dict(items.values_list("id", "width"))
        self.heights = dict(items.values_list("id", "height"))
        rows = Region.objects.filter(answer__in=items.values("expert_regions")).values_list(
            "item_id", "label__index", "x0", "y0", "x1", "y1"
        )
        marks: dict[int, list[list[list[float]]]] = {
            i: [[] for _ in self.classes] for i in self.sizes
        }
        for item_id, index, x0, y0, x1, y1 in rows:
            marks[item_id][index].append([x0, y0, x1, y1] if self.kind == "boxes" else [x0, y0])
        dim = 4 if self.kind == "boxes" else 2
        self.truth = {
            i: [np.asarray(c, dtype=np.float64).reshape(-1, dim) for c in per_class]
            for i, per_class in marks.items()
        }

    def answer(
        self, annotator: region_simulation.RegionAnnotator, item_id: int, rng: np.random.Generator
    ) -> tuple[dict, float]:
        """The vote's fields, and its F1 against the expert at the project's match rule."""
        truth = self.truth.get(item_id)
        if truth is None:
            return {"label": None, "kind": Vote.Kind.SKIP}, 0.0
        size = (self.sizes[item_id], self.heights[item_id])
        simulate = region_simulation.simulate_boxes if self.kind == "boxes" else region_simulation.simulate_points
        regions, stored, expert = [], [], []
        for index, objects in enumerate(truth):
            marks = simulate([objects], [annotator], 1, size, seed=rng).iloc[0, 2]
            for mark in np.round(marks, 1).tolist():
                if self.kind == "boxes" and (mark[2] - mark[0] < 1 or mark[3] - mark[1] < 1):
                    continue  # clipped at the image's edge to nothing: no one draws that
                points = [mark[:2], mark[2:]] if self.kind == "boxes" else [mark]
                shape = "box" if self.kind == "boxes" else "point"
                regions.append({"label": self.classes[index], "shape": shape, "points": points})
                stored.append({"label": index, "shape": shape, "points": points})
            expert += [
                {"label": index, "shape": "box" if self.kind == "boxes" else "point",
                 "points": [o[:2], o[2:]] if self.kind == "boxes" else [o]}
                for o in objects.tolist()
            ]
        score = detection_score(shapes_from_stored(stored), shapes_from_stored(expert), self.kind, self.threshold)
        return {"label": None, "kind": Vote.Kind.REGIONS, "regions": regions}, score


def _vote_until_done(
    project: Project, workers: list[SimulatedWorker], answers: ClassAnswers | RegionAnswers,
    rng: np.random.Generator, summary: SimulationSummary, bar: SlotProgress,
) -> None:
    """Workers take turns until a whole round hands nobody an item."""
    active = list(workers)
    while active:
        summary.rounds += 1
        cast = 0
        for index in rng.permutation(len(active)):
            worker = active[index]
            try:
                lease = next_item(worker.user, project)
            except WorkerBlocked:
                worker.refusals = MAX_REFUSALS
                continue
            except CrowdError:
                worker.refusals += 1
                continue
            if lease is None:
                continue
            vote, score = answers.answer(worker.profile, lease.item_id, rng)
            try:
                submit_vote(
                    worker.user, lease.pk, idempotency_key=f"sim-{lease.pk}",
                    source=Vote.Source.SIMULATED, **vote,
                )
            except CrowdError:
                worker.refusals += 1
                continue
            worker.refusals = 0
            cast += 1
            bar.voted(lease.item_id)
            archetype = worker.profile.archetype
            summary.votes_by_archetype[archetype] += 1
            summary.correct_by_archetype[archetype] += score
        summary.votes += cast
        bar.refresh()
        active = [w for w in active if w.refusals < MAX_REFUSALS]
        if not cast and not _reopened(project):
            break
    bar.close()


class Command(BaseCommand):
    help = "Simulate crowd workers voting on a project with expert answers, through the real services."

    def add_arguments(self, parser):
        parser.add_argument("project", help="Project id or name.")
        parser.add_argument(
            "--workers", default=None,
            help="Archetype:count list: for class projects accurate, noisy, class_biased, spammer, "
            f"adversarial (default {DEFAULT_MIX}); for points and boxes projects "
            f"{', '.join(region_simulation.ARCHETYPES)} (default {DEFAULT_REGION_MIX}).",
        )
        parser.add_argument(
            "--votes-per-item", type=int, default=None,
            help="Votes wanted per item not yet aggregated (default: the project's plan).",
        )
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--no-progress", action="store_true", help="Hide the progress bar.")

    def handle(self, *args, project: str, workers: str | None, votes_per_item: int | None, seed: int,
               no_progress: bool, **options):
        target = find_project(project)
        if votes_per_item is not None and votes_per_item < 1:
            raise CommandError("--votes-per-item must be at least 1.")
        workers = workers or (DEFAULT_REGION_MIX if target.is_region_task else DEFAULT_MIX)
        try:
            if target.is_region_task:
                region_simulation.make_annotators(workers)
            else:
                parse_mix(workers)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        summary = simulate(
            target, workers, seed=seed, votes_per_item=votes_per_item, progress=not no_progress
        )
        self.stdout.write(
            f"Simulated crowd on '{target.name}': {summary.votes} votes in {summary.rounds} rounds; "
            f"{open_slots_left(target)} votes still wanted."
        )
        measure = RegionAnswers.agreement if target.is_region_task else ClassAnswers.agreement
        for archetype, n in sorted(summary.votes_by_archetype.items()):
            agreement = summary.agreement(archetype)
            if agreement is None:
                shown = "-"
            else:
                shown = f"{agreement:.2f}" if target.is_region_task else f"{agreement:.0%}"
            self.stdout.write(f"  {archetype:<13} {n:>6} votes, {shown} {measure}")
        blocked = ", ".join(summary.blocked) or "none"
        self.stdout.write(f"  blocked workers: {blocked}")
