"""Serializers of the training API: the launch form, a run with its epochs and its report."""

from __future__ import annotations

from django.urls import reverse
from rest_framework import serializers

from training import selectors, services
from training.models import EpochMetric, Evaluation, TrainingRun


class LaunchRunSerializer(serializers.Serializer):
    """What an admin chooses when launching a run; the project comes from the URL."""

    label_source = serializers.ChoiceField(choices=TrainingRun.LabelSource.choices)
    backbone = serializers.CharField(max_length=100, default="tf_efficientnet_lite0")
    weights = serializers.ChoiceField(
        choices=TrainingRun.Weights.choices, default=TrainingRun.Weights.IMAGENET
    )
    weights_path = serializers.CharField(
        max_length=500, required=False, allow_blank=True, default="",
        help_text="weights=file: a checkpoint path on the worker; weights=hub: the timm tag.",
    )
    image_size = serializers.IntegerField(min_value=16, max_value=2048, default=224)
    epochs = serializers.IntegerField(min_value=1, max_value=1000, default=10)
    batch_size = serializers.IntegerField(min_value=1, max_value=4096, default=32)
    learning_rate = serializers.FloatField(min_value=1e-8, max_value=1.0, default=1e-3)
    augment = serializers.BooleanField(default=True)
    seed = serializers.IntegerField(min_value=0, max_value=2**31 - 1, default=0)
    params = serializers.DictField(
        required=False, default=dict, help_text=f"Method options: {sorted(services.PARAM_FIELDS)}."
    )

    def validate(self, attrs: dict) -> dict:
        try:
            services.check_launch_settings(self.context["project"], attrs)
        except services.LaunchError as error:
            raise serializers.ValidationError({error.field: [str(error)]}) from error
        return attrs


class EpochMetricSerializer(serializers.ModelSerializer):
    class Meta:
        model = EpochMetric
        fields = ["epoch", "train_loss", "holdout_loss", "holdout_accuracy", "seconds",
                  "images_per_second"]


class EvaluationSerializer(serializers.ModelSerializer):
    plots = serializers.SerializerMethodField()

    class Meta:
        model = Evaluation
        fields = ["n_items", "accuracy", "balanced_accuracy", "roc_auc", "ece", "per_class",
                  "confusion", "extra", "plots"]

    def get_plots(self, evaluation: Evaluation) -> dict[str, str]:
        return {
            name: reverse("training-run-plot", args=[evaluation.run_id, name])
            for name, field in selectors.PLOTS.items()
            if getattr(evaluation, field)
        }


class AttentionSerializer(serializers.Serializer):
    """A MIL run's attention over one item's patch grid, in the item's pixel coordinates."""

    run = serializers.IntegerField()
    item = serializers.IntegerField()
    attention = serializers.ListField(
        child=serializers.ListField(child=serializers.FloatField()),
        help_text="Attention weight per patch, rows x cols; sums to 1.",
    )
    patch_size = serializers.IntegerField()
    patch_stride = serializers.IntegerField()
    width = serializers.IntegerField(help_text="The item's width in pixels.")
    height = serializers.IntegerField()
    heatmap_url = serializers.CharField(
        allow_null=True, help_text="PNG of the heatmap over the image, for gallery items."
    )


class TrainingRunSerializer(serializers.ModelSerializer):
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True, allow_null=True)
    is_finished = serializers.BooleanField(read_only=True)
    epoch_metrics = EpochMetricSerializer(many=True, read_only=True)
    evaluation = serializers.SerializerMethodField()
    checkpoint_url = serializers.SerializerMethodField()

    class Meta:
        model = TrainingRun
        fields = [
            "id", "project", "created_by", "status", "is_finished", "label_source", "backbone",
            "weights", "weights_path", "image_size", "epochs", "batch_size", "learning_rate",
            "augment", "seed", "params", "device", "progress", "current_epoch", "n_train_items",
            "n_holdout_items", "cancel_requested", "failure_reason", "annotator_reliability",
            "created_at", "started_at", "heartbeat_at", "finished_at", "epoch_metrics",
            "evaluation", "checkpoint_url", "holder_name", "lease_until", "interruptions",
        ]
        read_only_fields = fields

    def get_evaluation(self, run: TrainingRun) -> dict | None:
        evaluation = selectors.evaluation_of(run)
        return EvaluationSerializer(evaluation).data if evaluation is not None else None

    def get_checkpoint_url(self, run: TrainingRun) -> str | None:
        if run.status != TrainingRun.Status.SUCCEEDED:
            return None
        return reverse("training-run-checkpoint", args=[run.pk])
