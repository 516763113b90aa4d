"""Seed the demo a newcomer sees: three role accounts and two projects of real medical images.

BCCD blood smears (label: the white-cell subtype of the whole image; the white-cell boxes are kept
as expert regions) and a PneumoniaMNIST subset (normal vs pneumonia). Each project gets a blind
hold-out, gold questions and a simulated crowd that votes through the real vote service, then an
aggregation with every method. Running it again changes nothing.
"""

from __future__ import annotations

import csv
import tempfile
import xml.etree.ElementTree as ET
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import BaseCommand, CommandError, call_command
from django.db import transaction
from PIL import Image
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from labeling.models import ExpertLabel, ImportBatch, Item, Membership, Project, Region
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
        parser.add_argument("--pneumonia-items", type=int, default=400)
        parser.add_argument("--seed", type=int, default=7)

    def handle(self, *args, pneumonia_items: int, seed: int, **options):
        data_dir = Path(settings.QUORUM_DATA_DIR)
        if not data_dir.exists():
            raise CommandError(
                f"The demo reads real images from {data_dir}; set QUORUM_DATA_DIR to that folder."
            )
        users = self._accounts()
        self._bccd(data_dir / "bccd", users, seed)
        self._pneumonia(data_dir / "pneumoniamnist" / "pneumoniamnist_28.npz", users, pneumonia_items, seed)
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

    def _bccd(self, folder: Path, users: dict[str, User], seed: int) -> None:
        if Project.objects.filter(name=BCCD_PROJECT).exists():
            return
        self.stdout.write("Importing the BCCD blood-smear demo project")
        with open(folder / "image_labels.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        labelled = [r for r in rows if r["wbc_type"]]
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
            for obj in ET.parse(xml_path).getroot().iter("object"):
                if obj.findtext("name") != "WBC":
                    continue
                box = obj.find("bndbox")
                x0, y0, x1, y1 = (float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
                regions.append(Region(item=item, name="WBC", x0=x0, y0=y0, x1=x1, y1=y1))
        Region.objects.bulk_create(regions)

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
