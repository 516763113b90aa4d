"""Expert hold-out, adjudication, gold, dashboard and export payloads.

The hold-out serializers carry the image and the classes only: never a crowd vote, consensus or
model prediction (the blind label would not be blind otherwise).
"""

from __future__ import annotations

from django.urls import reverse
from rest_framework import serializers

from labeling.models import Item, LabelClass


class ReviewErrorSerializer(serializers.Serializer):
    detail = serializers.CharField()


class ExpertClassSerializer(serializers.ModelSerializer):
    key = serializers.SerializerMethodField(help_text="Keyboard shortcut on the page.")

    class Meta:
        model = LabelClass
        fields = ["name", "key"]

    def get_key(self, obj: LabelClass) -> str:
        return str(obj.index + 1)


class ExpertItemSerializer(serializers.ModelSerializer):
    """An item's pixels as an expert reaches them: no file name, no metadata."""

    image_url = serializers.SerializerMethodField()
    thumbnail_url = serializers.SerializerMethodField()

    class Meta:
        model = Item
        fields = ["id", "width", "height", "channels", "image_url", "thumbnail_url"]

    def get_image_url(self, item: Item) -> str:
        return reverse("item-image", args=[item.pk])

    def get_thumbnail_url(self, item: Item) -> str:
        return reverse("item-thumbnail", args=[item.pk])


class LabelRequestSerializer(serializers.Serializer):
    label = serializers.CharField(
        max_length=100, help_text="A class name of the project, or its key ('1'..'9')."
    )


class NotedLabelRequestSerializer(LabelRequestSerializer):
    note = serializers.CharField(max_length=2000, required=False, allow_blank=True, default="")


class HoldoutNextSerializer(serializers.Serializer):
    item = ExpertItemSerializer(allow_null=True, help_text="Null when nothing is left for you.")
    classes = ExpertClassSerializer(many=True)
    remaining = serializers.IntegerField(help_text="Hold-out items you may still label.")


class HoldoutLabelResponseSerializer(serializers.Serializer):
    item = serializers.IntegerField()
    label = serializers.CharField()
    state = serializers.ChoiceField(
        choices=["labelled", "agreed", "disputed"],
        help_text="labelled: one expert so far; agreed; disputed: goes to the tie-break list.",
    )


class HoldoutDrawRequestSerializer(serializers.Serializer):
    fraction = serializers.FloatField(min_value=0.0, max_value=1.0)
    seed = serializers.IntegerField(required=False, default=0, min_value=0, max_value=2**31 - 1)


class SubsetDrawResponseSerializer(serializers.Serializer):
    drawn = serializers.ListField(child=serializers.IntegerField())
    total = serializers.IntegerField()


class HoldoutAgreementSerializer(serializers.Serializer):
    n_items = serializers.IntegerField(help_text="Hold-out items two experts labelled.")
    observed = serializers.FloatField(allow_null=True)
    cohen_kappa = serializers.FloatField(allow_null=True)
    disputed = serializers.IntegerField(help_text="Disagreements awaiting a tie-break.")


class DisputeLabelSerializer(serializers.Serializer):
    expert = serializers.CharField()
    label = serializers.CharField()


class DisputeSerializer(serializers.Serializer):
    item = ExpertItemSerializer()
    labels = DisputeLabelSerializer(many=True)


class TiebreakResponseSerializer(serializers.Serializer):
    item = serializers.IntegerField()
    label = serializers.CharField()


class ReviewQueueItemSerializer(ExpertItemSerializer):
    class Meta(ExpertItemSerializer.Meta):
        fields = [*ExpertItemSerializer.Meta.fields, "uncertainty", "vote_count"]


class EvidenceVoteCountSerializer(serializers.Serializer):
    label = serializers.CharField()
    count = serializers.IntegerField()


class EvidenceVoterSerializer(serializers.Serializer):
    worker = serializers.CharField(help_text="The voter's pseudonym (stable within the project).")
    label = serializers.CharField()
    reliability = serializers.FloatField(
        allow_null=True, help_text="Estimated accuracy from the default method's latest run."
    )


class EvidenceConsensusSerializer(serializers.Serializer):
    method = serializers.CharField()
    run = serializers.IntegerField()
    label = serializers.CharField()
    confidence = serializers.FloatField()
    posterior = serializers.ListField(child=serializers.FloatField())


class EvidencePredictionSerializer(serializers.Serializer):
    run = serializers.IntegerField()
    backbone = serializers.CharField()
    label_source = serializers.CharField()
    label = serializers.CharField()
    probabilities = serializers.ListField(child=serializers.FloatField())


class EvidencePriorLabelSerializer(serializers.Serializer):
    source = serializers.CharField()
    label = serializers.CharField()
    note = serializers.CharField(allow_blank=True)


class EvidenceSerializer(serializers.Serializer):
    item = ReviewQueueItemSerializer()
    classes = ExpertClassSerializer(many=True)
    vote_counts = EvidenceVoteCountSerializer(many=True)
    voters = EvidenceVoterSerializer(many=True)
    reliability_method = serializers.CharField(allow_null=True)
    consensus = EvidenceConsensusSerializer(many=True)
    prediction = EvidencePredictionSerializer(allow_null=True)
    expert_labels = EvidencePriorLabelSerializer(many=True)


class RegionShapeField(serializers.DictField):
    """One region in the wire format: label (class name), shape, and points or rle."""


class RegionAnnotatorSerializer(serializers.Serializer):
    worker = serializers.CharField(help_text="The annotator's pseudonym (stable within the project).")
    regions = serializers.ListField(child=RegionShapeField())
    reliability = serializers.FloatField(
        allow_null=True,
        help_text="F1 of sensitivity and precision (points, boxes) or (sensitivity + "
        "specificity) / 2 (masks), from the latest region run.",
    )
    sensitivity = serializers.FloatField(allow_null=True)
    precision = serializers.FloatField(allow_null=True)


class RegionConsensusEvidenceSerializer(serializers.Serializer):
    method = serializers.CharField()
    run = serializers.IntegerField()
    regions = serializers.ListField(
        child=RegionShapeField(), help_text="Wire format, each with its confidence."
    )
    confidence = serializers.FloatField()
    agreement = serializers.FloatField(allow_null=True)


class RegionEvidenceSerializer(serializers.Serializer):
    item = ReviewQueueItemSerializer()
    classes = ExpertClassSerializer(many=True)
    task_type = serializers.CharField()
    max_regions = serializers.IntegerField()
    blind = serializers.BooleanField(
        help_text="A hold-out item: answered without the crowd's regions or the consensus."
    )
    reliability_method = serializers.CharField(allow_null=True)
    annotators = RegionAnnotatorSerializer(many=True)
    consensus = RegionConsensusEvidenceSerializer(allow_null=True)
    expert_regions = serializers.ListField(
        child=RegionShapeField(), help_text="An earlier review answer of this item, if any."
    )


class RegionAnswerRequestSerializer(serializers.Serializer):
    regions = serializers.ListField(
        child=serializers.JSONField(), allow_empty=True,
        help_text="The whole region set in the wire format ([] for nothing here).",
    )
    note = serializers.CharField(max_length=2000, required=False, allow_blank=True, default="")


class RegionAnswerResponseSerializer(serializers.Serializer):
    item = serializers.IntegerField()
    source = serializers.ChoiceField(choices=["review", "holdout"])
    regions = serializers.ListField(child=RegionShapeField())
    note = serializers.CharField(allow_blank=True)
    next = serializers.IntegerField(allow_null=True, help_text="The next item in the queue.")


class ReviewLabelResponseSerializer(serializers.Serializer):
    item = serializers.IntegerField()
    label = serializers.CharField()
    note = serializers.CharField(allow_blank=True)
    next = serializers.IntegerField(allow_null=True, help_text="The next item in the queue.")


class GoldDrawRequestSerializer(serializers.Serializer):
    fraction = serializers.FloatField(min_value=0.0, max_value=1.0, required=False)
    count = serializers.IntegerField(min_value=0, max_value=10_000_000, required=False)
    seed = serializers.IntegerField(required=False, default=0, min_value=0, max_value=2**31 - 1)

    def validate(self, attrs):
        if ("fraction" in attrs) == ("count" in attrs):
            raise serializers.ValidationError("Give either a fraction or a count.")
        return attrs


class GoldSetRequestSerializer(serializers.Serializer):
    items = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=2**63 - 1), max_length=10_000
    )
    is_gold = serializers.BooleanField()


class GoldSetResponseSerializer(serializers.Serializer):
    updated = serializers.IntegerField()


# -- dashboard --------------------------------------------------------------------------------


class DashboardProgressSerializer(serializers.Serializer):
    items = serializers.IntegerField()
    votes = serializers.IntegerField()
    votes_per_item = serializers.ListField(child=serializers.DictField(child=serializers.IntegerField()))
    awaiting_review = serializers.IntegerField()
    holdout_total = serializers.IntegerField()
    holdout_labelled = serializers.IntegerField()
    holdout_disputed = serializers.IntegerField()
    gold_items = serializers.IntegerField()
    expert_labelled = serializers.IntegerField()


class DashboardAgreementPointSerializer(serializers.Serializer):
    run = serializers.IntegerField()
    method = serializers.CharField()
    created_at = serializers.DateTimeField()
    n_votes = serializers.IntegerField()
    fleiss_kappa = serializers.FloatField(allow_null=True)
    krippendorff_alpha = serializers.FloatField(allow_null=True)


class ExpertAgreementSerializer(serializers.Serializer):
    n_items = serializers.IntegerField()
    observed = serializers.FloatField(allow_null=True)
    cohen_kappa = serializers.FloatField(allow_null=True)


class DashboardAnnotatorSerializer(serializers.Serializer):
    user_id = serializers.IntegerField()
    username = serializers.CharField()
    pseudonym = serializers.CharField(help_text="The worker's id in exports.")
    votes = serializers.IntegerField()
    gold_answered = serializers.IntegerField()
    gold_accuracy = serializers.FloatField(allow_null=True)
    estimated_accuracy = serializers.FloatField(allow_null=True)
    confusion = serializers.ListField(
        child=serializers.ListField(child=serializers.FloatField()), allow_null=True
    )
    sensitivity = serializers.FloatField(allow_null=True, help_text="Region runs only.")
    precision = serializers.FloatField(allow_null=True, help_text="Region runs only.")
    specificity = serializers.FloatField(allow_null=True, help_text="Mask runs only.")
    is_blocked = serializers.BooleanField()
    blocked_reason = serializers.CharField(allow_blank=True)


class DashboardCalibrationBinSerializer(serializers.Serializer):
    low = serializers.FloatField()
    high = serializers.FloatField()
    n = serializers.IntegerField()
    confidence = serializers.FloatField()
    accuracy = serializers.FloatField()


class DashboardMethodScoreSerializer(serializers.Serializer):
    method = serializers.CharField()
    run = serializers.IntegerField()
    n = serializers.IntegerField(help_text="Hold-out items scored.")
    correct = serializers.IntegerField()
    accuracy = serializers.FloatField(allow_null=True)
    ci_low = serializers.FloatField(allow_null=True, help_text="95% Wilson interval.")
    ci_high = serializers.FloatField(allow_null=True)
    recall = serializers.DictField(child=serializers.FloatField(allow_null=True))
    calibration = DashboardCalibrationBinSerializer(many=True)


class DashboardRegionMethodSerializer(serializers.Serializer):
    method = serializers.CharField()
    run = serializers.IntegerField()
    chosen = serializers.CharField(allow_null=True, help_text="auto's pick.")
    metric = serializers.ChoiceField(choices=["f1", "dice"])
    metric_label = serializers.CharField()
    score = serializers.FloatField(
        allow_null=True, help_text="Mean F1 or Dice against the expert regions of the hold-out."
    )
    n = serializers.IntegerField(help_text="Hold-out items scored.")
    mean_agreement = serializers.FloatField(allow_null=True)


class DashboardRegionRunSerializer(serializers.Serializer):
    run = serializers.IntegerField(source="run.id")
    method = serializers.CharField()
    mean_agreement = serializers.FloatField(allow_null=True)
    holdout_metric = serializers.CharField()
    holdout_score = serializers.FloatField(source="run.holdout_accuracy", allow_null=True)
    holdout_size = serializers.IntegerField(source="run.holdout_size", allow_null=True)


class DashboardProjectSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()


class DashboardSerializer(serializers.Serializer):
    project = DashboardProjectSerializer()
    classes = serializers.ListField(child=serializers.CharField())
    default_method = serializers.CharField()
    progress = DashboardProgressSerializer()
    agreement = DashboardAgreementPointSerializer(many=True)
    expert_agreement = ExpertAgreementSerializer()
    annotators = DashboardAnnotatorSerializer(many=True)
    reliability_method = serializers.CharField(
        allow_null=True, help_text="The method whose run estimated the annotators."
    )
    methods = DashboardMethodScoreSerializer(many=True, help_text="Class projects.")
    region_run = DashboardRegionRunSerializer(allow_null=True, help_text="Region projects.")
    region_methods = DashboardRegionMethodSerializer(many=True, help_text="Region projects.")
