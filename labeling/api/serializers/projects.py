from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from labeling.models import REGION_TASK_TYPES, LabelClass, Membership, Project
from labeling.services.aggregation import InvalidAggregation, check_method
from labeling.services.projects import create_project, validate_class_names


class LabelClassSerializer(serializers.ModelSerializer):
    key = serializers.SerializerMethodField(help_text="Keyboard shortcut on the annotator page.")

    class Meta:
        model = LabelClass
        fields = ["id", "name", "index", "key"]

    def get_key(self, obj: LabelClass) -> str:
        return str(obj.index + 1)


PROJECT_SETTINGS = [
    "description",
    "task_type",
    "question",
    "overlap",
    "max_overlap",
    "gold_rate",
    "holdout_fraction",
    "lease_minutes",
    "confidence_threshold",
    "gold_min_answers",
    "gold_accuracy_threshold",
    "aggregate_every",
    "default_method",
    "window_preset",
    "keep_original_files",
    "expected_channels",
    "patch_size",
    "patch_stride",
    "region_match_distance",
    "region_match_iou",
    "max_regions",
]
# Region answers are checked shape by shape (a polygon's edges pairwise): a bound on the work
# one answer can ask for.
MAX_REGIONS_LIMIT = 5000


class ProjectSerializer(serializers.ModelSerializer):
    """A project as its admins see it."""

    label_classes = LabelClassSerializer(many=True, read_only=True)
    classes = serializers.ListField(
        child=serializers.CharField(max_length=100),
        write_only=True,
        min_length=1,
        max_length=9,
        help_text="Label class names in key order (creation only); at least two, or one for "
        "a region project (points, boxes, masks).",
    )
    role = serializers.SerializerMethodField()

    class Meta:
        model = Project
        fields = ["id", "name", "role", "label_classes", "classes", *PROJECT_SETTINGS, "created_at"]
        read_only_fields = ["created_at"]

    # Only experts and admins get this form; the enum keeps it apart from CrowdProject.
    @extend_schema_field({"type": "string", "enum": ["expert", "admin"]})
    def get_role(self, obj: Project) -> str | None:
        from labeling.selectors import role_of

        request = self.context.get("request")
        return role_of(request.user, obj) if request else None

    def validate_classes(self, value: list[str]) -> list[str]:
        # One class is enough to mark objects; the count is checked against the task type in
        # create_project (a class project needs two).
        try:
            return validate_class_names(value, minimum=1)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.messages) from exc

    # Field by field, so that a form shows every problem at once (validate() runs only when
    # all fields passed).
    def _share(self, value: float) -> float:
        if not 0 <= value <= 1:
            raise serializers.ValidationError("Must be between 0 and 1.")
        return value

    validate_gold_rate = validate_holdout_fraction = _share
    validate_confidence_threshold = validate_gold_accuracy_threshold = _share

    def validate_overlap(self, value: int) -> int:
        if value < 1:
            raise serializers.ValidationError("At least one vote per item.")
        return value

    def validate_region_match_distance(self, value: float) -> float:
        if not 0 < value < float("inf"):
            raise serializers.ValidationError("Must be a distance in pixels above 0.")
        return value

    def validate_region_match_iou(self, value: float) -> float:
        if not 0 < value <= 1:
            raise serializers.ValidationError("Must be above 0 and at most 1.")
        return value

    def validate_max_regions(self, value: int) -> int:
        if not 1 <= value <= MAX_REGIONS_LIMIT:
            raise serializers.ValidationError(f"Must be between 1 and {MAX_REGIONS_LIMIT}.")
        return value

    def validate_expected_channels(self, value: int | None) -> int | None:
        if value not in (None, 1, 3):
            raise serializers.ValidationError("Use 1, 3 or leave empty.")
        return value

    def validate(self, attrs):
        overlap = attrs.get("overlap", getattr(self.instance, "overlap", 3))
        max_overlap = attrs.get("max_overlap", getattr(self.instance, "max_overlap", 7))
        if max_overlap < overlap:
            raise serializers.ValidationError({"max_overlap": "Must be at least the overlap k."})
        task_type = attrs.get("task_type")
        if self.instance is not None and task_type and task_type != self.instance.task_type:
            # Votes, gold and consensus of one task type mean nothing under another.
            if self.instance.items.exists():
                raise serializers.ValidationError(
                    {"task_type": "The task type cannot change once the project has items."}
                )
        method = attrs.get("default_method")
        if method is not None:
            # the method must be one the project's kind of task can run (no failed runs later)
            kind = Project(task_type=task_type or getattr(self.instance, "task_type", Project.TaskType.IMAGE))
            try:
                check_method(method, None, kind)
            except InvalidAggregation as exc:
                raise serializers.ValidationError({"default_method": str(exc)}) from exc
        if self.instance is None and task_type not in REGION_TASK_TYPES and len(attrs.get("classes", ())) < 2:
            raise serializers.ValidationError(
                {"classes": "A project needs at least two label classes (one is enough to mark regions)."}
            )
        return attrs

    def create(self, validated_data):
        classes = validated_data.pop("classes")
        try:
            return create_project(
                classes=classes, created_by=self.context["request"].user, **validated_data
            )
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.message_dict if hasattr(exc, "error_dict") else exc.messages) from exc

    def update(self, instance, validated_data):
        if "classes" in validated_data:
            raise serializers.ValidationError(
                {"classes": "Label classes cannot change once a project exists."}
            )
        return super().update(instance, validated_data)


class CrowdProjectSerializer(serializers.ModelSerializer):
    """What a crowd worker may know about a project: its question and classes, nothing else."""

    label_classes = LabelClassSerializer(many=True, read_only=True)
    role = serializers.SerializerMethodField()

    class Meta:
        model = Project
        fields = ["id", "name", "question", "label_classes", "role"]

    @extend_schema_field({"type": "string", "enum": ["crowd"]})
    def get_role(self, obj: Project) -> str:
        return Membership.Role.CROWD


class UsernameField(serializers.SlugRelatedField):
    """A user by username; a NUL byte is refused before the lookup (PostgreSQL cannot even
    compare text with one: a 500 found by schemathesis)."""

    def to_internal_value(self, data):
        if isinstance(data, str) and "\x00" in data:
            raise serializers.ValidationError("Null characters are not allowed.")
        return super().to_internal_value(data)


class MembershipSerializer(serializers.ModelSerializer):
    username = serializers.CharField(source="user.username", read_only=True)
    user = UsernameField(
        slug_field="username", queryset=Membership._meta.get_field("user").related_model.objects.all()
    )

    class Meta:
        model = Membership
        fields = ["id", "user", "username", "role", "is_blocked", "blocked_reason", "blocked_at"]
        read_only_fields = ["is_blocked", "blocked_reason", "blocked_at"]
