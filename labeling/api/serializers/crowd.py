"""What crowd workers send and receive. Gold items and regular items have the same shape.

Never here: other workers' votes, per-item vote counts, gold flags, expert or consensus
labels, source file names, DICOM metadata, hold-out status.
"""

from __future__ import annotations

from django.urls import reverse
from rest_framework import serializers

from labeling.models import Assignment, Item, LabelClass, Vote


class CrowdItemSerializer(serializers.ModelSerializer):
    image_url = serializers.SerializerMethodField()
    thumbnail_url = serializers.SerializerMethodField()

    class Meta:
        model = Item
        fields = ["id", "width", "height", "channels", "image_url", "thumbnail_url"]

    def _url(self, name: str, item: Item) -> str:
        path = reverse(name, args=[item.pk])
        request = self.context.get("request")
        return request.build_absolute_uri(path) if request else path

    def get_image_url(self, item: Item) -> str:
        return self._url("item-image", item)

    def get_thumbnail_url(self, item: Item) -> str:
        return self._url("item-thumbnail", item)


class CrowdClassSerializer(serializers.ModelSerializer):
    key = serializers.SerializerMethodField(help_text="Keyboard shortcut on the annotator page.")

    class Meta:
        model = LabelClass
        fields = ["name", "key"]

    def get_key(self, obj: LabelClass) -> str:
        return str(obj.index + 1)


class ProgressSerializer(serializers.Serializer):
    votes_today = serializers.IntegerField()
    items_left = serializers.IntegerField(help_text="Items that still need votes you have not given.")


class AssignmentSerializer(serializers.ModelSerializer):
    """A lease on one item; answer it with POST /api/assignments/<id>/vote/ before expires_at."""

    item = CrowdItemSerializer(read_only=True)
    classes = serializers.SerializerMethodField()
    progress = serializers.SerializerMethodField()

    class Meta:
        model = Assignment
        fields = ["id", "expires_at", "item", "classes", "progress"]

    def get_classes(self, obj: Assignment) -> list[dict]:
        return CrowdClassSerializer(obj.project.label_classes.all(), many=True).data

    def to_representation(self, obj: Assignment) -> dict:
        data = super().to_representation(obj)
        if obj.project.is_region_task:
            # Region projects: which tools to offer (the classes are the region classes).
            data["task_type"] = obj.project.task_type
            data["max_regions"] = obj.project.max_regions
        return data

    def get_progress(self, obj: Assignment) -> dict:
        return ProgressSerializer(self.context["progress"]).data


class VoteRequestSerializer(serializers.Serializer):
    label = serializers.CharField(
        required=False, allow_null=True, max_length=100, help_text="A class name of the project."
    )
    kind = serializers.ChoiceField(
        choices=Vote.Kind.choices,
        required=False,
        help_text="'label' (default when a label is given), 'regions' (implied by regions), "
        "'unsure' or 'skip'.",
    )
    regions = serializers.ListField(
        child=serializers.JSONField(),
        required=False,
        help_text='Region projects: the whole answer, [] for nothing here; each region is '
        '{"label": class name, "shape": "point" | "box" | "polygon" | "mask", "points": '
        '[[x, y], ...] or "rle": {"size": [h, w], "counts": [...]}} in image pixels.',
    )
    idempotency_key = serializers.CharField(
        max_length=100, help_text="Any unique string per answer; a retry with it is answered once."
    )

    def validate(self, attrs: dict) -> dict:
        if not attrs.get("kind"):
            attrs["kind"] = Vote.Kind.REGIONS if "regions" in attrs else Vote.Kind.LABEL
        if attrs["kind"] == Vote.Kind.LABEL and not attrs.get("label"):
            raise serializers.ValidationError({"label": "Give a class name, or kind unsure/skip."})
        if attrs["kind"] == Vote.Kind.REGIONS and "regions" not in attrs:
            raise serializers.ValidationError({"regions": "Give the regions ([] for nothing here)."})
        if attrs["kind"] != Vote.Kind.REGIONS and "regions" in attrs:
            raise serializers.ValidationError({"regions": f"A '{attrs['kind']}' answer carries no regions."})
        return attrs


class GoldStandingSerializer(serializers.Serializer):
    """The worker's own gold score and what the project's rule makes of it."""

    status = serializers.ChoiceField(
        choices=["ok", "warning", "blocked"],
        help_text="'warning' as the score nears the project's bar; 'blocked' once under it.",
    )
    accuracy = serializers.FloatField(
        allow_null=True, help_text="Share right per expert class, averaged over the classes."
    )
    answered = serializers.IntegerField(help_text="Gold questions scored since the last block.")
    threshold = serializers.FloatField()
    min_answers = serializers.IntegerField()
    message = serializers.CharField(allow_null=True, help_text="The warning or the block, to show.")


class GoldFeedbackSerializer(serializers.Serializer):
    gold = serializers.BooleanField()
    correct = serializers.BooleanField(help_text="Region answers: the score is at least 0.5.")
    expert_label = serializers.CharField(required=False, help_text="Class projects only.")
    metric = serializers.ChoiceField(
        choices=["f1", "dice"], required=False, allow_null=True,
        help_text="Region projects: F1 (points, boxes) or Dice (masks); null for unsure/skip.",
    )
    score = serializers.FloatField(required=False, allow_null=True, help_text="Region projects, 0..1.")
    expert_regions = serializers.ListField(
        child=serializers.JSONField(), required=False,
        help_text="Region projects: the expert's regions (wire format), shown after answering.",
    )
    standing = GoldStandingSerializer(
        allow_null=True, help_text="After a scored answer (not unsure or skip); null otherwise."
    )


class VoteResponseSerializer(serializers.Serializer):
    id = serializers.IntegerField(source="vote_id")
    assignment = serializers.IntegerField(source="assignment_id")
    kind = serializers.CharField()
    label = serializers.CharField(allow_null=True)
    feedback = GoldFeedbackSerializer(
        allow_null=True, help_text="Only after answering a gold question; null otherwise."
    )
    progress = ProgressSerializer()


class ErrorSerializer(serializers.Serializer):
    detail = serializers.CharField()
