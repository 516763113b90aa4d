"""Seed the demo a newcomer sees: three role accounts and four projects of real medical images.

BCCD blood smears (label: the white-cell subtype of the whole image; the white-cell boxes are kept
as expert regions) and a PneumoniaMNIST subset (normal vs pneumonia). Each project gets a blind
hold-out, gold questions and a simulated crowd that votes through the real vote service, then an
aggregation with every method.

Two region projects on a few dozen BCCD smears: boxes around every WBC, RBC and platelet, and
points on their centres. The expert's boxes come in as a COCO file through the import service;
a simulated region crowd (missed cells, false marks, loose or tight boxes, jitter, a spammer, a
spread of skill) marks them through the real vote service; the expert answers then stay only on
the gold and hold-out items (a few hold-out items are left for the demo experts to draw blind),
and the region aggregation fuses the crowd's marks. Running it again changes nothing.
"""

from __future__ import annotations

import csv
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import BaseCommand, CommandError, call_command
from django.db import transaction
from django.db.models import Q
from PIL import Image
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from labeling.aggregation.regions.datasets import BCCD_SIZE, read_voc_boxes
from labeling.imports.coco import build_coco
from labeling.models import (
    ExpertLabel,
    ImportBatch,
    Item,
    Membership,
    Project,
    Region,
    RegionAnswer,
)
from labeling.services.gold import draw_gold
from labeling.services.imports import import_files, import_path
from labeling.services.projects import create_project, set_membership

User = get_user_model()

DEMO_ACCOUNTS = [
    # username, password, role on the demo projects, site staff
    ("admin", "quorum-admin", Membership.Role.ADMIN, True),
    ("expert", "quorum-expert", Membership.Role.EXPERT, False),
    ("expert2", "quorum-expert", Membership.Role.EXPERT, False),
    ("crowd", "quorum-crowd", Membership.Role.CROWD, False),
]
BCCD_PROJECT = "Blood smears: white-cell type"
BCCD_CLASSES = ["NEUTROPHIL", "EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE", "BASOPHIL"]
PNEUMONIA_PROJECT = "Chest X-ray: pneumonia"
PNEUMONIA_CLASSES = ["normal", "pneumonia"]
SIMULATED_CROWD = "accurate:4,noisy:4,class_biased:2,spammer:2"
GOLD_FRACTION = 0.1
# Hold-out items left for the demo experts to label blind (the rest keep the dataset's label).
BLIND_HOLDOUT_ITEMS = 12
BCCD_BOXES_PROJECT = "Blood smears: cells (boxes)"
BCCD_POINTS_PROJECT = "Blood smears: cell centres (points)"
REGION_CLASSES = ["WBC", "RBC", "Platelets"]
# Few and small, so the run command stays quick: BCCD smears hold ~20 cells each.
REGION_ITEMS = 30
REGION_CROWD = "expert:1,good:2,careless:1,loose:1,tight:1,shifted:1,spammer:1"
REGION_GOLD_FRACTION = 0.15
BLIND_REGION_HOLDOUT_ITEMS = 2
MIN_DEMO_ITEMS = 20


def _spread_over_classes(rows: list[dict], key: str, n_items: int | None) -> list[dict]:
    """At most ``n_items`` rows, taken from each class in turn (in file order within a class),
    so a small demo shows every class rather than the first rows' (mostly neutrophils)."""
    if n_items is None or n_items >= len(rows):
        return rows
    by_class: dict[str, list[dict]] = {}
    for row in rows:
        by_class.setdefault(row[key], []).append(row)
    queues = list(by_class.values())
    picked: list[dict] = []
    while len(picked) < n_items:
        for queue in queues:
            if queue and len(picked) < n_items:
                picked.append(queue.pop(0))
    return picked


@contextmanager
def _import_bar(what: str):
    """A progress bar for an import, moved by the import's own (done, total) callback so it
    ends at its total; log lines are written above it."""
    bar = tqdm(unit="file", desc=f"importing {what}", dynamic_ncols=True)
    with logging_redirect_tqdm(), bar:

        def progress(done: int, total: int, name: str) -> None:
            bar.total, bar.n = total, done
            bar.refresh()

        yield progress


class Command(BaseCommand):
    help = "Create the demo accounts and projects (idempotent)."

    def add_arguments(self, parser):
        parser.add_argument("--max-items", type=int, default=None,
                            help="At most this many images in each demo project (a quicker seed).")
        parser.add_argument("--pneumonia-items", type=int, default=400)
        parser.add_argument("--region-items", type=int, default=REGION_ITEMS)
        parser.add_argument("--seed", type=int, default=7)

    def handle(
        self, *args, max_items: int | None, pneumonia_items: int, region_items: int, seed: int, **options
    ):
        data_dir = Path(settings.QUORUM_DATA_DIR)
        if not data_dir.exists():
            raise CommandError(
                f"The demo reads real images from {data_dir}; set QUORUM_DATA_DIR to that folder."
            )
        if max_items is not None:
            if max_items < MIN_DEMO_ITEMS:
                raise CommandError(f"--max-items must be at least {MIN_DEMO_ITEMS} (gold and hold-out need items).")
            pneumonia_items, region_items = min(pneumonia_items, max_items), min(region_items, max_items)
        users = self._accounts()
        self._bccd(data_dir / "bccd", users, seed, max_items)
        self._pneumonia(data_dir / "pneumoniamnist" / "pneumoniamnist_28.npz", users, pneumonia_items, seed)
        for task_type in (Project.TaskType.BOXES, Project.TaskType.POINTS):
            self._bccd_region_project(data_dir / "bccd", users, task_type, region_items, seed)
        self._print_accounts()

    def _accounts(self) -> dict[str, User]:
        users = {}
        for username, password, _role, staff in DEMO_ACCOUNTS:
            user, created = User.objects.get_or_create(
                username=username, defaults={"is_staff": staff, "is_superuser": staff}
            )
            if created:
                user.set_password(password)
                user.save()
            users[username] = user
        return users

    def _members(self, project: Project, users: dict[str, User]) -> None:
        for username, _password, role, staff in DEMO_ACCOUNTS:
            if not staff:
                set_membership(project=project, user=users[username], role=role)

    def _bccd(self, folder: Path, users: dict[str, User], seed: int, n_items: int | None = None) -> None:
        if Project.objects.filter(name=BCCD_PROJECT).exists():
            return
        self.stdout.write("Importing the BCCD blood-smear demo project")
        with open(folder / "image_labels.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        labelled = _spread_over_classes([r for r in rows if r["wbc_type"]], "wbc_type", n_items)
        labels = {Path(r["image"]).name: r["wbc_type"] for r in labelled}
        with transaction.atomic():
            project = create_project(
                name=BCCD_PROJECT,
                classes=BCCD_CLASSES,
                created_by=users["admin"],
                question="Which type of white blood cell does this smear show?",
                description="BCCD dataset (MIT licence): 640x480 blood smears; the label is the "
                "white-cell subtype of the whole image.",
                overlap=3,
                max_overlap=5,
                gold_rate=0.1,
                holdout_fraction=0.2,
                expected_channels=3,
                patch_size=160,
                patch_stride=160,
            )
            self._members(project, users)
        with _import_bar("BCCD images") as progress:
            import_files(project, [folder / r["image"] for r in labelled], user=users["admin"],
                         source=ImportBatch.Source.DEMO, labels=labels, seed=seed, progress=progress)
        self._bccd_regions(project, folder / "Annotations")
        self._crowd(project, seed)

    def _bccd_regions(self, project: Project, annotations: Path) -> None:
        """The white-cell boxes: patch-level truth for scoring MIL attention."""
        regions = []
        for item in Item.objects.filter(project=project).only("id", "source_name"):
            xml_path = annotations / (Path(item.source_name).stem + ".xml")
            if not xml_path.exists():
                continue
            truth = read_voc_boxes(xml_path)
            for (x0, y0, x1, y1), name in zip(truth.boxes.tolist(), truth.classes, strict=True):
                if name == "WBC":
                    regions.append(Region(item=item, name="WBC", x0=x0, y0=y0, x1=x1, y1=y1))
        Region.objects.bulk_create(regions)

    def _bccd_region_project(
        self, folder: Path, users: dict[str, User], task_type: str, n_items: int, seed: int
    ) -> None:
        """Boxes (or their centres as points) on the first ``n_items`` smears, fused from a
        simulated crowd; see the module docstring."""
        name = BCCD_BOXES_PROJECT if task_type == Project.TaskType.BOXES else BCCD_POINTS_PROJECT
        if Project.objects.filter(name=name).exists():
            return
        self.stdout.write(f"Importing the BCCD {task_type} demo project")
        what = "box around" if task_type == Project.TaskType.BOXES else "point on the centre of"
        with transaction.atomic():
            project = create_project(
                name=name,
                classes=REGION_CLASSES,
                created_by=users["admin"],
                task_type=task_type,
                question=f"Mark every blood cell: a {what} each WBC, RBC and platelet.",
                description="BCCD dataset (MIT licence): 640x480 blood smears with one expert's box "
                "around every cell; the crowd is simulated over those boxes.",
                overlap=3,
                max_overlap=5,
                gold_rate=0.1,
                holdout_fraction=0.2,
                expected_channels=3,
            )
            self._members(project, users)
        images = sorted((folder / "JPEGImages").glob("*.jpg"))[:n_items]
        coco = build_coco(
            [self._coco_image(k, path, folder / "Annotations", task_type) for k, path in enumerate(images)],
            REGION_CLASSES,
            info={"description": "BCCD expert boxes (Pascal VOC) as COCO"},
        )
        with _import_bar(f"BCCD {task_type}") as progress:
            import_files(project, images, user=users["admin"], source=ImportBatch.Source.DEMO,
                         coco=coco, seed=seed, progress=progress)
        draw_gold(project, fraction=REGION_GOLD_FRACTION, seed=seed)
        call_command("simulate_crowd", str(project.id), workers=REGION_CROWD, seed=seed,
                     stdout=self.stdout)
        self._keep_expert_regions_on_gold_and_holdout(project)
        call_command("aggregate", str(project.id), stdout=self.stdout)

    @staticmethod
    def _coco_image(k: int, path: Path, annotations: Path, task_type: str) -> dict:
        truth = read_voc_boxes(annotations / f"{path.stem}.xml")
        regions = []
        for (x0, y0, x1, y1), label in zip(truth.boxes.tolist(), truth.classes, strict=True):
            if task_type == Project.TaskType.BOXES:
                regions.append({"label": label, "shape": "box", "points": [[x0, y0], [x1, y1]]})
            else:
                regions.append({"label": label, "shape": "point", "points": [[(x0 + x1) / 2, (y0 + y1) / 2]]})
        width, height = BCCD_SIZE
        return {"id": k + 1, "file_name": path.name, "width": width, "height": height, "regions": regions}

    def _keep_expert_regions_on_gold_and_holdout(self, project: Project) -> None:
        """The crowd has drawn from every item's expert regions; now only gold and hold-out
        items keep them (the consensus is the answer elsewhere), and a few hold-out items are
        left for the demo experts to draw blind."""
        holdout = Item.objects.filter(project=project, is_holdout=True).order_by("id")
        blind = list(holdout.values_list("id", flat=True)[:BLIND_REGION_HOLDOUT_ITEMS])
        forget = Item.objects.filter(project=project).filter(
            Q(is_gold=False, is_holdout=False) | Q(id__in=blind)
        )
        ids = list(forget.values_list("id", flat=True))
        Item.objects.filter(id__in=ids).update(expert_regions=None)
        RegionAnswer.objects.filter(item_id__in=ids, source=ExpertLabel.Source.IMPORT).delete()

    def _pneumonia(self, npz_path: Path, users: dict[str, User], n_items: int, seed: int) -> None:
        if Project.objects.filter(name=PNEUMONIA_PROJECT).exists():
            return
        self.stdout.write("Importing the PneumoniaMNIST demo project")
        data = np.load(npz_path)
        with transaction.atomic():
            project = create_project(
                name=PNEUMONIA_PROJECT,
                classes=PNEUMONIA_CLASSES,
                created_by=users["admin"],
                question="Does this chest X-ray show pneumonia?",
                description="PneumoniaMNIST (MedMNIST v2, CC BY 4.0), 28x28 chest X-rays.",
                overlap=3,
                max_overlap=5,
                gold_rate=0.1,
                holdout_fraction=0.2,
                expected_channels=1,
            )
            self._members(project, users)
        rng = np.random.default_rng(seed)
        picked = rng.choice(len(data["train_images"]), size=min(n_items, len(data["train_images"])), replace=False)
        labels = {}
        with tempfile.TemporaryDirectory() as tmp:
            for index in picked:
                name = f"pneumoniamnist_train_{index:05d}.png"
                Image.fromarray(data["train_images"][index]).save(Path(tmp) / name)
                labels[name] = PNEUMONIA_CLASSES[int(data["train_labels"][index][0])]
            with _import_bar("PneumoniaMNIST images") as progress:
                import_path(project, Path(tmp), user=users["admin"], source=ImportBatch.Source.DEMO,
                            labels=labels, seed=seed, progress=progress)
        self._crowd(project, seed)

    def _crowd(self, project: Project, seed: int) -> None:
        """Gold, a simulated crowd voting through the real services, then every method."""
        draw_gold(project, fraction=GOLD_FRACTION, seed=seed)
        call_command("simulate_crowd", str(project.id), workers=SIMULATED_CROWD, seed=seed,
                     stdout=self.stdout)
        self._leave_holdout_for_experts(project)
        call_command("aggregate", str(project.id), method="all", stdout=self.stdout)

    def _leave_holdout_for_experts(self, project: Project) -> None:
        """Forget the dataset's label on a few hold-out items so the experts have blind work."""
        items = Item.objects.filter(project=project, is_holdout=True).order_by("id")
        ids = list(items.values_list("id", flat=True)[:BLIND_HOLDOUT_ITEMS])
        ExpertLabel.objects.filter(item_id__in=ids, source=ExpertLabel.Source.IMPORT).delete()
        Item.objects.filter(id__in=ids).update(expert_answer=None)

    def _print_accounts(self) -> None:
        self.stdout.write(self.style.SUCCESS("\nDemo accounts (username / password / role):"))
        for username, password, role, _staff in DEMO_ACCOUNTS:
            self.stdout.write(f"  {username:<8} {password:<14} {role}")
