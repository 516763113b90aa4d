"""Training runs of a timm CNN on a project's labels, their per-epoch metrics, their evaluation
against the expert hold-out, and the predictions they make for review."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from labeling.models import Item, LabelClass, Project


class TrainingRun(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    class LabelSource(models.TextChoices):
        EXPERT = "expert", "Expert labels only (upper bound)"
        MAJORITY_VOTE = "majority_vote", "Majority vote"
        DAWID_SKENE = "dawid_skene", "Dawid-Skene posteriors (soft targets)"
        AGGNET = "aggnet", "AggNet (EM with the CNN in the loop)"
        CROWD_LAYER = "crowd_layer", "Crowd layer (end to end on raw votes)"
        MIL = "mil", "Attention MIL on bags"
        AUTO = "auto", "Picked by validation (gold or expert items outside the hold-out)"
        CONSENSUS = "consensus", "Region consensus (STAPLE soft map, fused points or boxes)"
        CROSSFIT_EM = "crossfit_em", "Cross-fitted EM (out-of-fold CNN prior, then soft labels)"

    class Weights(models.TextChoices):
        IMAGENET = "imagenet", "ImageNet-pretrained"
        FILE = "file", "Local checkpoint file"
        HUB = "hub", "timm pretrained tag from a hub"
        NONE = "none", "Random initialisation"

    TERMINAL = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="training_runs")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    backbone = models.CharField(max_length=100, default="tf_efficientnet_lite0")
    weights = models.CharField(max_length=10, choices=Weights.choices, default=Weights.IMAGENET)
    weights_path = models.CharField(
        max_length=500, blank=True, help_text="Local checkpoint file, or the hub tag."
    )
    label_source = models.CharField(max_length=16, choices=LabelSource.choices)
    image_size = models.PositiveIntegerField(default=224)
    epochs = models.PositiveIntegerField(default=10)
    batch_size = models.PositiveIntegerField(default=32)
    learning_rate = models.FloatField(default=1e-3)
    augment = models.BooleanField(default=True)
    seed = models.PositiveIntegerField(default=0)
    params = models.JSONField(default=dict, blank=True, help_text="Method options, e.g. trace_lambda.")
    device = models.CharField(max_length=20, blank=True)
    progress = models.FloatField(default=0.0)
    current_epoch = models.PositiveIntegerField(default=0)
    n_train_items = models.PositiveIntegerField(default=0)
    n_holdout_items = models.PositiveIntegerField(default=0)
    cancel_requested = models.BooleanField(default=False)
    failure_reason = models.TextField(blank=True)
    celery_task_id = models.CharField(max_length=100, blank=True)
    checkpoint = models.CharField(max_length=500, blank=True, help_text="Last good checkpoint.")
    annotator_reliability = models.JSONField(
        default=dict, blank=True, help_text="Worker id -> learned confusion (AggNet, crowd layer)."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(
        null=True, blank=True, help_text="Last sign of life from the worker running it."
    )
    finished_at = models.DateTimeField(null=True, blank=True)
    holder = models.CharField(
        max_length=255, blank=True,
        help_text="The process that holds the run: host/pid/process start (training.leases).",
    )
    holder_name = models.CharField(
        max_length=255, blank=True, help_text="The holder as people know it: Celery node and pid."
    )
    lease_until = models.DateTimeField(
        null=True, blank=True, help_text="The holder's lease; its heartbeat thread renews it."
    )
    interruptions = models.JSONField(
        default=list, blank=True,
        help_text="Each time the holder died: when, at which epoch, and where the run resumed.",
    )

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"run {self.pk} ({self.label_source}, {self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in self.TERMINAL


class EpochMetric(models.Model):
    run = models.ForeignKey(TrainingRun, on_delete=models.CASCADE, related_name="epoch_metrics")
    epoch = models.PositiveIntegerField()
    train_loss = models.FloatField()
    holdout_loss = models.FloatField(null=True, blank=True)
    holdout_accuracy = models.FloatField(null=True, blank=True)
    seconds = models.FloatField()
    images_per_second = models.FloatField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["run", "epoch"]
        constraints = [
            models.UniqueConstraint(fields=["run", "epoch"], name="epochmetric_unique"),
        ]


class Evaluation(models.Model):
    """The report of a finished run, always on the expert hold-out."""

    run = models.OneToOneField(TrainingRun, on_delete=models.CASCADE, related_name="evaluation")
    n_items = models.PositiveIntegerField()
    accuracy = models.FloatField()
    balanced_accuracy = models.FloatField()
    roc_auc = models.FloatField(null=True, blank=True)
    ece = models.FloatField(null=True, blank=True)
    per_class = models.JSONField(help_text="Class name -> precision, recall, f1, support.")
    confusion = models.JSONField(help_text="Row = expert label, column = prediction.")
    extra = models.JSONField(default=dict, blank=True, help_text="E.g. MIL localisation scores.")
    confusion_plot = models.FileField(upload_to="reports/", blank=True)
    roc_plot = models.FileField(upload_to="reports/", blank=True)
    calibration_plot = models.FileField(upload_to="reports/", blank=True)
    created_at = models.DateTimeField(auto_now_add=True)


class Prediction(models.Model):
    run = models.ForeignKey(TrainingRun, on_delete=models.CASCADE, related_name="predictions")
    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="predictions")
    label = models.ForeignKey(LabelClass, on_delete=models.RESTRICT, related_name="+")
    probabilities = models.JSONField()
    attention = models.JSONField(
        null=True, blank=True, help_text="MIL: attention weight per patch, grid rows x cols."
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["run", "item"], name="prediction_unique"),
        ]
