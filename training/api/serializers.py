"""Serializers of the training API: the launch form, a run with its epochs and its report."""

from __future__ import annotations

from django.urls import reverse
from rest_framework import serializers

from training import devices, selectors, services
from training.models import EpochMetric, Evaluation, TrainingRun

CLASS_BALANCE_CHOICES = [
    ("auto", "Auto: class-weighted loss when the classes are skewed (largest/smallest > 1.5)"),
    ("loss", "Class-weighted loss (inverse class frequency)"),
    ("sampler", "Balanced sampling (inverse class frequency)"),
    ("none", "None"),
]
# stored in the run's params, with these defaults when the request leaves them out
PARAM_CHOICES = {"class_balance": "auto", "lead_metric": selectors.DEFAULT_LEAD_METRIC}
# left out of a request: the defaults for the device the training workers run on
DEVICE_DEFAULTS = ("backbone", "image_size", "epochs", "batch_size")


class LaunchRunSerializer(serializers.Serializer):
    """What an admin chooses when launching a run; the project comes from the URL.

    ``backbone``, ``image_size``, ``epochs`` and ``batch_size`` default to what suits the
    training workers' device (``training.devices``): 224 px for 10 epochs on a GPU, 64 px for
    3 on a CPU.
    """

    label_source = serializers.ChoiceField(choices=TrainingRun.LabelSource.choices)
    backbone = serializers.CharField(max_length=100, required=False)
    weights = serializers.ChoiceField(
        choices=TrainingRun.Weights.choices, default=TrainingRun.Weights.IMAGENET
    )
    weights_path = serializers.CharField(
        max_length=500, required=False, allow_blank=True, default="",
        help_text="weights=file: a checkpoint path on the worker; weights=hub: the timm tag.",
    )
    image_size = serializers.IntegerField(min_value=16, max_value=2048, required=False)
    epochs = serializers.IntegerField(min_value=1, max_value=1000, required=False)
    batch_size = serializers.IntegerField(min_value=1, max_value=4096, required=False)
    learning_rate = serializers.FloatField(min_value=1e-8, max_value=1.0, default=1e-3)
    augment = serializers.BooleanField(default=True)
    seed = serializers.IntegerField(min_value=0, max_value=2**31 - 1, default=0)
    params = serializers.DictField(
        required=False, default=dict, help_text=f"Method options: {sorted(services.PARAM_FIELDS)}."
    )
    class_balance = serializers.ChoiceField(
        choices=CLASS_BALANCE_CHOICES, required=False,
        help_text="Remedy for skewed classes (default auto); stored in params.",
    )
    lead_metric = serializers.ChoiceField(
        choices=list(selectors.LEAD_METRICS.items()), required=False,
        help_text="The score the report leads with (default balanced accuracy); stored in params.",
    )

    def validate(self, attrs: dict) -> dict:
        for name, value in devices.launch_defaults().items():
            if name in DEVICE_DEFAULTS:
                attrs.setdefault(name, value)
        params = dict(attrs.get("params") or {})
        for name, default in PARAM_CHOICES.items():
            if name in attrs:
                params[name] = attrs.pop(name)
            else:
                params.setdefault(name, default)
        attrs["params"] = params
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
    summary = serializers.SerializerMethodField(
        help_text="The lead metric (the run's choice), the others, per-class scores with "
        "undefined ones as null, and warnings (zero recall, no hold-out items, one class)."
    )

    class Meta:
        model = Evaluation
        fields = ["n_items", "accuracy", "balanced_accuracy", "roc_auc", "ece", "per_class",
                  "confusion", "extra", "plots", "summary"]

    def get_summary(self, evaluation: Evaluation) -> dict:
        return selectors.report_summary(evaluation.run, evaluation)

    def get_plots(self, evaluation: Evaluation) -> dict[str, str]:
        plots = {
            name: reverse("training-run-plot", args=[evaluation.run_id, name])
            for name, field in selectors.PLOTS.items()
            if getattr(evaluation, field)
        }
        if selectors.annotator_picture_file(evaluation.run) is not None:
            plots["annotators"] = reverse("training-run-plot", args=[evaluation.run_id, "annotators"])
        return plots


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
    crowd_model = serializers.SerializerMethodField(
        help_text="The crowd model trained (source, crowd-layer form and init), how it was "
        "picked (launch, validation or default) with the validation scores, and the sentence "
        "the run page shows; null for sources without one."
    )

    class Meta:
        model = TrainingRun
        fields = [
            "id", "project", "created_by", "status", "is_finished", "label_source", "backbone",
            "weights", "weights_path", "image_size", "epochs", "batch_size", "learning_rate",
            "augment", "seed", "params", "device", "progress", "current_epoch", "n_train_items",
            "n_holdout_items", "cancel_requested", "failure_reason", "annotator_reliability",
            "created_at", "started_at", "heartbeat_at", "finished_at", "epoch_metrics",
            "evaluation", "checkpoint_url", "holder_name", "lease_until", "interruptions",
            "crowd_model",
        ]
        read_only_fields = fields

    def get_evaluation(self, run: TrainingRun) -> dict | None:
        evaluation = selectors.evaluation_of(run)
        return EvaluationSerializer(evaluation).data if evaluation is not None else None

    def get_crowd_model(self, run: TrainingRun) -> dict | None:
        return selectors.crowd_model_of(run)

    def get_checkpoint_url(self, run: TrainingRun) -> str | None:
        if run.status != TrainingRun.Status.SUCCEEDED:
            return None
        return reverse("training-run-checkpoint", args=[run.pk])
