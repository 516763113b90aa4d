from django.contrib import admin

from training.models import EpochMetric, Evaluation, TrainingRun


class EpochMetricInline(admin.TabularInline):
    model = EpochMetric
    extra = 0
    readonly_fields = ["epoch", "train_loss", "holdout_loss", "holdout_accuracy", "seconds",
                       "images_per_second"]


@admin.register(TrainingRun)
class TrainingRunAdmin(admin.ModelAdmin):
    list_display = ["id", "project", "label_source", "backbone", "status", "current_epoch", "epochs",
                    "created_at"]
    list_filter = ["project", "status", "label_source"]
    inlines = [EpochMetricInline]
    readonly_fields = ["status", "progress", "current_epoch", "failure_reason", "checkpoint",
                       "celery_task_id", "started_at", "finished_at", "device"]


admin.site.register(Evaluation)
