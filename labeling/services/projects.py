"""Creating projects and managing who works on them."""

from __future__ import annotations

from collections.abc import Sequence

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import transaction

from labeling.models import LabelClass, Membership, Project
from labeling.selectors import is_site_admin

User = get_user_model()

# The model permission that lets a user who is not site staff create projects (as Label
# Studio's organisation owners and administrators do); give it in the Django admin.
CREATE_PERMISSION = "labeling.add_project"


def can_create_projects(user) -> bool:
    """Site staff, and users holding the "add project" permission; the creator then becomes
    the new project's admin."""
    return is_site_admin(user) or bool(user.is_authenticated and user.has_perm(CREATE_PERMISSION))

# Keys 1..9 pick classes on the annotator page; 0 is "unsure".
MAX_CLASSES = 9


def validate_class_names(names: Sequence[str], *, minimum: int = 2) -> list[str]:
    """Class names checked; ``minimum`` 1 for region projects (one kind of object to mark)."""
    cleaned = [str(n).strip() for n in names]
    if len(cleaned) < minimum:
        raise ValidationError(
            "A project needs at least two label classes." if minimum == 2
            else f"A project needs at least {minimum} class."
        )
    if len(cleaned) > MAX_CLASSES:
        raise ValidationError(f"A project has at most {MAX_CLASSES} label classes (keys 1-9).")
    if any(not n for n in cleaned):
        raise ValidationError("Label class names cannot be empty.")
    lowered = [n.lower() for n in cleaned]
    if len(set(lowered)) != len(lowered):
        raise ValidationError("Label class names must be unique.")
    reserved = {"unsure", "skip"} & set(lowered)
    if reserved:
        raise ValidationError(f"'{sorted(reserved)[0]}' is reserved for the worker's own answer.")
    return cleaned


@transaction.atomic
def create_project(*, name: str, classes: Sequence[str], created_by=None, **options) -> Project:
    """Create a project with its label classes in order; options are Project fields."""
    project = Project(name=name, created_by=created_by, **options)
    names = validate_class_names(classes, minimum=1 if project.is_region_task else 2)
    project.full_clean()
    project.save()
    LabelClass.objects.bulk_create(
        LabelClass(project=project, name=n, index=i) for i, n in enumerate(names)
    )
    if created_by is not None and not (created_by.is_staff or created_by.is_superuser):
        Membership.objects.create(project=project, user=created_by, role=Membership.Role.ADMIN)
    return project


@transaction.atomic
def set_membership(*, project: Project, user, role: str, is_simulated: bool = False) -> Membership:
    """Give a user a role on a project (replacing any earlier role)."""
    if role not in Membership.Role.values:
        raise ValidationError(f"Unknown role '{role}'; use one of {', '.join(Membership.Role.values)}.")
    membership, _ = Membership.objects.update_or_create(
        project=project, user=user, defaults={"role": role, "is_simulated": is_simulated}
    )
    return membership
