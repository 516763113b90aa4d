"""The simulated crowd votes through the real assignment and vote services."""

from __future__ import annotations

import numpy as np
import pytest
from django.core.management import CommandError, call_command
from django.db.models import F

from labeling.management.commands.simulate_crowd import simulate
from labeling.models import Item, Membership, Project, Vote
from tests.factories import ItemFactory, ProjectFactory, give_expert_answer

pytestmark = pytest.mark.django_db


def truth_project(n_items: int = 24, classes: tuple[str, ...] = ("normal", "pneumonia"), seed: int = 0,
                  **options) -> Project:
    """A project whose items all have an expert answer (as if imported with labels)."""
    project = ProjectFactory(classes=list(classes), **options)
    rng = np.random.default_rng(seed)
    for _ in range(n_items):
        give_expert_answer(ItemFactory(project=project), classes[int(rng.integers(len(classes)))])
    return project


def test_simulated_workers_vote_through_the_services_up_to_the_overlap():
    project = truth_project(overlap=3)
    summary = simulate(project, "accurate:3,spammer:3", seed=1)

    assert summary.votes == 24 * 3 == Vote.objects.filter(project=project).count()
    assert set(Vote.objects.filter(project=project).values_list("source", flat=True)) == {Vote.Source.SIMULATED}
    assert not Item.objects.filter(project=project, vote_count__gt=F("votes_wanted")).exists()
    assert not Item.objects.filter(project=project, vote_count__lt=F("votes_wanted")).exists()
    # Every vote came with a lease, as on the annotator page.
    assert not Vote.objects.filter(project=project, assignment__isnull=True).exists()

    members = Membership.objects.filter(project=project, is_simulated=True).select_related("user")
    assert sorted(m.user.username for m in members) == sorted(
        f"sim-{project.pk}-{a}-{n}" for a in ("accurate", "spammer") for n in (1, 2, 3)
    )
    assert {m.role for m in members} == {Membership.Role.CROWD}
    assert summary.agreement("accurate") > summary.agreement("spammer")

    again = simulate(project, "accurate:3,spammer:3", seed=2)
    assert again.votes == 0
    assert Membership.objects.filter(project=project, is_simulated=True).count() == 6


def test_gold_blocks_adversarial_workers_and_the_holdout_gets_crowd_votes():
    project = truth_project(
        n_items=20, overlap=3, gold_rate=0.5, gold_min_answers=3, gold_accuracy_threshold=0.5,
    )
    items = list(project.items.order_by("id"))
    Item.objects.filter(pk__in=[i.pk for i in items[:5]]).update(is_gold=True)
    Item.objects.filter(pk__in=[i.pk for i in items[5:8]]).update(is_holdout=True)

    # Gold is served in random order, so an accurate worker may rarely be unlucky: four of them.
    summary = simulate(project, "accurate:4,adversarial:2", seed=3)

    assert {f"sim-{project.pk}-adversarial-1", f"sim-{project.pk}-adversarial-2"} <= set(summary.blocked)
    assert len(summary.blocked) <= 3
    blocked_votes = Vote.objects.filter(project=project, worker__username__contains="adversarial")
    assert blocked_votes.exists() and not blocked_votes.filter(is_excluded=False).exists()
    # Hold-out items are voted on like the rest: their consensus is scored against the experts.
    assert Vote.objects.filter(item__is_holdout=True, is_excluded=False).exists()
    regular = Item.objects.filter(project=project, is_gold=False)
    # Excluded votes freed their slots, which the accurate workers filled.
    assert set(regular.values_list("vote_count", flat=True)) == {3}


def test_command_prints_a_summary_and_respects_votes_per_item(capsys):
    project = truth_project(n_items=10)
    call_command("simulate_crowd", str(project.pk), workers="accurate:2,noisy:1", votes_per_item=2,
                 seed=4, no_progress=True)
    out = capsys.readouterr().out
    assert f"Simulated crowd on '{project.name}': 20 votes" in out
    assert "accurate" in out and "blocked workers: none" in out
    assert set(project.items.values_list("vote_count", flat=True)) == {2}


def test_command_refuses_bad_input():
    project = truth_project(n_items=2)
    with pytest.raises(CommandError, match="unknown archetype"):
        call_command("simulate_crowd", project.name, workers="wizard:2")
    with pytest.raises(CommandError, match="No project"):
        call_command("simulate_crowd", "no such project")
    bare = ProjectFactory()
    ItemFactory(project=bare)
    with pytest.raises(CommandError, match="no item with an expert answer"):
        call_command("simulate_crowd", str(bare.pk), workers="accurate:1")


def test_progress_bar_never_passes_its_total_and_log_lines_stay_whole(capsys):
    """The run command's bar counted every vote, gold and hold-out included, against the
    regular items' slots (it ran past 100%), and log lines were written into its line."""
    import logging
    import re
    import sys

    project = truth_project(
        n_items=20, overlap=3, gold_rate=0.5, gold_min_answers=3, gold_accuracy_threshold=0.5,
    )
    items = list(project.items.order_by("id"))
    Item.objects.filter(pk__in=[i.pk for i in items[:5]]).update(is_gold=True)
    Item.objects.filter(pk__in=[i.pk for i in items[5:8]]).update(is_holdout=True)
    console = logging.StreamHandler(sys.stderr)  # as settings.LOGGING's, on the captured stderr
    root = logging.getLogger()
    root.addHandler(console)
    level, root.level = root.level, logging.INFO
    try:
        summary = simulate(project, "accurate:4,adversarial:2", seed=3, progress=True)
    finally:
        root.removeHandler(console)
        root.setLevel(level)
    err = capsys.readouterr().err
    assert summary.blocked and "blocked" in err
    states = [(int(n), int(total)) for n, total in re.findall(r"(\d+)/(\d+) \[", err)]
    assert states and all(n <= total for n, total in states), states
    counts = [n for n, _ in states]
    assert counts == sorted(counts)  # it only moves forward
    # Done: the 15 non-gold items' 45 slots, and the slots the blocked workers' set-aside
    # votes freed, voted again.
    excluded = Vote.objects.filter(project=project, is_excluded=True, item__is_gold=False).count()
    assert states[-1] == (45 + excluded, 45 + excluded)
    # Each log line starts a line of its own: none is glued to a redraw of the bar.
    for segment in re.split(r"[\r\n]", err):
        assert not ("simulated votes" in segment and "blocked" in segment), segment


# Region projects ------------------------------------------------------------------------------

def box_project(n_items: int = 12, **options) -> Project:
    """A boxes project whose items have the expert's boxes (two classes, 2-4 objects each)."""
    from labeling.aggregation.regions.answers import parse_regions
    from labeling.services.imports import record_region_answer

    project = ProjectFactory(classes=["cell", "platelet"], task_type=Project.TaskType.BOXES, **options)
    rng = np.random.default_rng(0)
    for _ in range(n_items):
        item = ItemFactory(project=project, width=64, height=48)
        regions = []
        for _k in range(int(rng.integers(2, 5))):
            x, y = rng.uniform(2, 40), rng.uniform(2, 30)
            regions.append({"label": ["cell", "platelet"][int(rng.integers(2))], "shape": "box",
                            "points": [[x, y], [x + 12, y + 10]]})
        shapes = parse_regions(regions, task_type="boxes", classes=["cell", "platelet"], width=64,
                               height=48, max_regions=300)
        record_region_answer(item, shapes, source="import")
    return project


def test_region_crowd_marks_the_expert_boxes_through_the_vote_service(capsys):
    project = box_project(overlap=3)
    call_command("simulate_crowd", str(project.pk), workers="expert:2,careless:1,spammer:1",
                 seed=5, no_progress=True)
    votes = Vote.objects.filter(project=project)
    assert votes.count() == 12 * 3
    assert set(votes.values_list("kind", flat=True)) == {Vote.Kind.REGIONS}
    assert not votes.filter(assignment__isnull=True).exists()
    for vote in votes:
        assert all(r["shape"] == "box" and r["label"] in (0, 1) for r in vote.regions)
    out = capsys.readouterr().out
    assert "mean F1 against the expert's regions" in out
    # the spammer's random boxes rarely hit a cell; the experts find nearly all of them
    scores = {line.split()[0]: float(line.split()[3]) for line in out.splitlines()
              if "mean F1" in line}
    assert scores["expert"] > 0.8 > 0.3 > scores["spammer"]
    assert scores["expert"] > scores["careless"]


def test_region_crowd_refuses_masks_projects_and_class_archetypes():
    project = box_project(n_items=2)
    with pytest.raises(CommandError, match="unknown archetype 'accurate'"):
        call_command("simulate_crowd", str(project.pk), workers="accurate:2")
    Project.objects.filter(pk=project.pk).update(task_type=Project.TaskType.MASKS)
    with pytest.raises(CommandError, match="mark points or boxes"):
        call_command("simulate_crowd", str(project.pk), workers="good:2")
