"""``manage.py import_images <project id or name> <folder-or-zip> [--labels labels.csv] [--coco coco.json] [--seed N]``."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from labeling.models import ImportBatch, Project
from labeling.services.imports import ImportRefused, import_path, is_refused, refused_message


class Command(BaseCommand):
    help = "Import a folder, a .zip or a single image/DICOM file into a project."

    def add_arguments(self, parser) -> None:
        parser.add_argument("project", help="Project id or exact name.")
        parser.add_argument("path", help="Folder (searched recursively), .zip archive or file.")
        parser.add_argument("--labels", help="CSV of known expert labels: filename,label.")
        parser.add_argument(
            "--coco", help="Region projects: COCO JSON of the images' expert regions (all or nothing)."
        )
        parser.add_argument(
            "--coco-as", choices=["expert", "votes"], default="expert",
            help="The COCO regions are expert answers (default) or its annotators' crowd votes.",
        )
        parser.add_argument("--seed", type=int, default=None, help="Seed of the hold-out draw.")
        parser.add_argument(
            "--stack", action="store_true",
            help="A multi-frame DICOM file becomes one item read slice by slice (default: an item per frame).",
        )
        parser.add_argument("--no-progress", action="store_true", help="No progress bar.")

    def handle(self, *args, **options) -> None:
        project = self._project(options["project"])
        path = Path(options["path"])
        console = Console(file=self.stdout._out, highlight=False, soft_wrap=True)
        labels = Path(options["labels"]) if options["labels"] else None
        coco = Path(options["coco"]) if options["coco"] else None
        with Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=options["no_progress"],
            transient=True,
        ) as bar:
            task = bar.add_task(f"Importing into {project.name}", total=None)

            def progress(done: int, total: int, name: str) -> None:
                bar.update(task, completed=done, total=total)

            try:
                batch = import_path(
                    project, path, source=ImportBatch.Source.COMMAND, labels=labels, coco=coco,
                    coco_as=options["coco_as"],
                    seed=options["seed"], progress=progress, stack=options["stack"],
                )
            except ImportRefused as exc:
                raise CommandError(str(exc)) from exc
        self._summary(console, batch)
        if is_refused(batch):
            raise CommandError(refused_message(batch).replace("below", "above"))

    def _project(self, key: str) -> Project:
        project = None
        if key.isdigit():
            project = Project.objects.filter(pk=int(key)).first()
        if project is None:
            project = Project.objects.filter(name=key).first()
        if project is None:
            raise CommandError(f"No project with id or name '{key}'.")
        return project

    def _summary(self, console: Console, batch: ImportBatch) -> None:
        failed = [line for line in batch.report if line["status"] == "failed"]
        if failed:
            table = Table(title="Files not imported", show_lines=False)
            table.add_column("File")
            table.add_column("Reason")
            for line in failed:
                table.add_row(line["name"], line["message"])
            console.print(table)
        title = f"Import batch {batch.pk}" if batch.pk else "Refused import (nothing stored)"
        summary = Table(title=f"{title} into {batch.project.name}")
        summary.add_column("Items imported", justify="right")
        summary.add_column("Duplicates", justify="right")
        summary.add_column("Failed", justify="right")
        summary.add_column("Labels", justify="right")
        summary.add_row(*(str(n) for n in (batch.n_imported, batch.n_duplicates, batch.n_failed,
                                           batch.n_labels)))
        console.print(summary)
