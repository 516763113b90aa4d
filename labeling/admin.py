from django.contrib import admin

from labeling.models import (
    AggregationRun,
    Assignment,
    ExpertLabel,
    ImportBatch,
    Item,
    LabelClass,
    Membership,
    Project,
    Region,
    Vote,
)
from labeling.services.projects import validate_class_names


class LabelClassInline(admin.TabularInline):
    model = LabelClass
    extra = 2
    fields = ["index", "name", "description"]


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 1
    fields = ["user", "role", "is_blocked", "blocked_reason"]
    autocomplete_fields = ["user"]


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = ["name", "task_type", "overlap", "gold_rate", "holdout_fraction", "created_at"]
    search_fields = ["name"]
    inlines = [LabelClassInline, MembershipInline]
    readonly_fields = ["votes_since_aggregation", "created_at"]

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        validate_class_names(form.instance.class_names)

    def save_model(self, request, obj, form, change):
        if not change and obj.created_by_id is None:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)


@admin.register(Item)
class ItemAdmin(admin.ModelAdmin):
    list_display = ["id", "project", "source_name", "modality", "vote_count", "votes_wanted",
                    "is_gold", "is_holdout", "needs_review", "expert_answer"]
    list_filter = ["project", "is_gold", "is_holdout", "needs_review", "modality"]
    search_fields = ["source_name", "content_hash"]
    readonly_fields = ["content_hash", "vote_count", "uncertainty", "metadata", "created_at"]
    list_select_related = ["project", "expert_answer"]


@admin.register(Vote)
class VoteAdmin(admin.ModelAdmin):
    list_display = ["id", "project", "item", "worker", "kind", "label", "was_gold", "gold_correct",
                    "is_excluded", "source", "created_at"]
    list_filter = ["project", "kind", "source", "is_excluded", "was_gold"]
    list_select_related = ["project", "worker", "label"]
    raw_id_fields = ["item", "assignment"]


@admin.register(Assignment)
class AssignmentAdmin(admin.ModelAdmin):
    list_display = ["id", "project", "item", "worker", "status", "expires_at"]
    list_filter = ["project", "status"]
    raw_id_fields = ["item"]


@admin.register(ExpertLabel)
class ExpertLabelAdmin(admin.ModelAdmin):
    list_display = ["id", "item", "expert", "label", "source", "created_at"]
    list_filter = ["source", "item__project"]
    raw_id_fields = ["item"]


@admin.register(ImportBatch)
class ImportBatchAdmin(admin.ModelAdmin):
    list_display = ["id", "project", "source", "n_imported", "n_duplicates", "n_failed", "created_at"]
    readonly_fields = ["report"]


@admin.register(AggregationRun)
class AggregationRunAdmin(admin.ModelAdmin):
    list_display = ["id", "project", "method", "status", "n_votes", "holdout_accuracy", "created_at"]
    list_filter = ["project", "method", "status"]


admin.site.register(Membership)
admin.site.register(Region)
admin.site.site_header = "Quorum administration"
