"""Aggregate a project's votes with one method or all of them and print how they compare."""

from __future__ import annotations

import io
import json

from django.core.management import BaseCommand, CommandError
from rich.console import Console
from rich.table import Table

from labeling.models import AggregationRun, Project
from labeling.services.aggregation import (
    InvalidAggregation,
    aggregate_project,
    expert_agreement,
    method_names,
    request_aggregation,
)


def find_project(ref: str) -> Project:
    """A project by id or by exact name."""
    project = Project.objects.filter(pk=int(ref)).first() if ref.isdigit() else None
    project = project or Project.objects.filter(name=ref).first()
    if project is None:
        raise CommandError(f"No project with id or name '{ref}'.")
    return project


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _num(value: float | None, fmt: str = ".3f") -> str:
    return "-" if value is None else format(value, fmt)


class Command(BaseCommand):
    help = "Aggregate a project's crowd votes (one method or all) and print a comparison table."

    def add_arguments(self, parser):
        parser.add_argument("project", help="Project id or name.")
        parser.add_argument(
            "--method",
            default=None,
            help=f"One of {', '.join(method_names())}, or 'all' (default: the project's default).",
        )
        parser.add_argument("--params", default="{}", help='Method parameters as JSON, e.g. \'{"n_iter": 50}\'.')
        mode = parser.add_mutually_exclusive_group()
        mode.add_argument("--sync", action="store_true", help="Run here and now (the default).")
        mode.add_argument("--queue", action="store_true", help="Queue the runs for a Celery worker instead.")

    def handle(self, *args, project: str, method: str | None, params: str, queue: bool, **options):
        target = find_project(project)
        methods = method_names() if method == "all" else [method or target.default_method]
        try:
            parsed = json.loads(params)
        except json.JSONDecodeError as exc:
            raise CommandError(f"--params is not valid JSON: {exc}") from exc
        if not isinstance(parsed, dict):
            raise CommandError("--params must be a JSON object.")
        runs = []
        try:
            for name in methods:
                if queue:
                    runs.append(request_aggregation(target, name, trigger="command", params=parsed))
                else:
                    runs.append(aggregate_project(target.pk, name, params=parsed, trigger="command"))
        except InvalidAggregation as exc:
            raise CommandError(exc.message) from exc
        if queue:
            ids = ", ".join(str(r.pk) for r in runs)
            self.stdout.write(f"Queued aggregation run(s) {ids} of '{target.name}'.")
            return
        self.stdout.write(self._table(target, runs))

    def _table(self, project: Project, runs: list[AggregationRun]) -> str:
        table = Table(title=f"Aggregation of '{project.name}'")
        for header in ("method", "status", "items", "votes", "hold-out acc. (n)", "expert agr. (n)",
                       "Fleiss k", "Kripp. a", "seconds"):
            table.add_column(header, justify="left" if header in ("method", "status") else "right")
        for run in runs:
            agreement, n_agreement = expert_agreement(run)
            status = run.status if run.status != AggregationRun.Status.FAILED else f"failed: {run.failure_reason}"
            table.add_row(
                run.method + (" *" if run.method == project.default_method else ""),
                status,
                str(run.n_items),
                str(run.n_votes),
                f"{_pct(run.holdout_accuracy)} ({run.holdout_size})",
                f"{_pct(agreement)} ({n_agreement})",
                _num(run.fleiss_kappa),
                _num(run.krippendorff_alpha),
                _num(run.seconds, ".2f"),
            )
        buffer = io.StringIO()
        Console(file=buffer, width=140, color_system=None).print(table)
        footer = "* the project's default method: its run steers review and votes wanted."
        return buffer.getvalue() + footer
