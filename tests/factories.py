"""factory_boy factories for the domain models."""

from __future__ import annotations

import hashlib
import io

import factory
import numpy as np
from django.contrib.auth import get_user_model
from django.core.files.base import ContentFile
from PIL import Image

from labeling.models import ExpertLabel, Item, LabelClass, Membership, Project


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}")
    password = factory.django.Password("pw-quorum-test")


class ProjectFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Project
        skip_postgeneration_save = True

    name = factory.Sequence(lambda n: f"Project {n}")
    question = "Which class is this?"
    overlap = 3
    max_overlap = 5
    gold_rate = 0.0
    holdout_fraction = 0.0
    # the model's default is "auto" (several fits per run); tests of one method's behaviour pin it
    default_method = "dawid_skene"

    @factory.post_generation
    def classes(obj, create, extracted, **kwargs):
        names = extracted or ["normal", "abnormal"]
        for i, name in enumerate(names):
            LabelClass.objects.create(project=obj, name=name, index=i)


class MembershipFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Membership

    project = factory.SubFactory(ProjectFactory)
    user = factory.SubFactory(UserFactory)
    role = Membership.Role.CROWD


def png_bytes(seed: int, size: int = 8, mode: str = "L") -> bytes:
    """A tiny, unique PNG image."""
    rng = np.random.default_rng(seed)
    shape = (size, size) if mode == "L" else (size, size, 3)
    pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode=None).save(buffer, format="PNG")
    return buffer.getvalue()


class ItemFactory(factory.django.DjangoModelFactory):
    """An item with a real tiny PNG rendering; the hash is of its bytes."""

    class Meta:
        model = Item

    project = factory.SubFactory(ProjectFactory)
    source_name = factory.Sequence(lambda n: f"secret-source-{n}.png")
    width = 8
    height = 8
    channels = 1
    votes_wanted = factory.LazyAttribute(lambda o: o.project.overlap)

    @factory.lazy_attribute_sequence
    def content_hash(self, n):
        return hashlib.sha256(f"item-{n}".encode()).hexdigest()

    @factory.lazy_attribute_sequence
    def image(self, n):
        return ContentFile(png_bytes(n), name=f"item-{n}.png")

    @factory.lazy_attribute_sequence
    def thumbnail(self, n):
        return ContentFile(png_bytes(n), name=f"item-{n}-thumb.png")


def label_of(project: Project, name: str) -> LabelClass:
    return project.label_classes.get(name=name)


def give_expert_answer(item: Item, name: str, *, gold: bool = False, expert=None) -> ExpertLabel:
    label = label_of(item.project, name)
    expert_label = ExpertLabel.objects.create(
        item=item, expert=expert, label=label, source=ExpertLabel.Source.IMPORT
    )
    item.expert_answer = label
    item.is_gold = gold
    item.save(update_fields=["expert_answer", "is_gold"])
    return expert_label
