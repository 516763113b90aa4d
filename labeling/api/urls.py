"""Routes of the labelling API; each area's views live in ``api/views/<area>.py``."""

from django.urls import include, path
from rest_framework.routers import DefaultRouter

from labeling.api.views import aggregation, crowd, dashboard, exports, media, projects, review
from labeling.api.views.imports import ImportBatchViewSet

router = DefaultRouter()
router.register("projects", projects.ProjectViewSet, basename="project")
router.register(r"projects/(?P<project_id>\d+)/imports", ImportBatchViewSet, basename="project-import")

urlpatterns = [
    path("", include(router.urls)),
    path("projects/<int:project_id>/next/", crowd.NextAssignmentView.as_view(), name="crowd-next"),
    path("assignments/<int:assignment_id>/vote/", crowd.VoteView.as_view(), name="crowd-vote"),
    path("assignments/<int:assignment_id>/undo/", crowd.UndoView.as_view(), name="crowd-undo"),
    path(
        "projects/<int:project_id>/members/<int:user_id>/unblock/",
        crowd.UnblockMemberView.as_view(),
        name="member-unblock",
    ),
    path("items/<int:item_id>/image/", media.ItemImageView.as_view(), name="item-image"),
    path("items/<int:item_id>/thumbnail/", media.ItemThumbnailView.as_view(), name="item-thumbnail"),
    path("items/<int:item_id>/pixels/", media.ItemPixelsView.as_view(), name="item-pixels"),
    path(
        "projects/<int:project_id>/aggregations/",
        aggregation.ProjectAggregationsView.as_view(),
        name="project-aggregations",
    ),
    path("aggregations/<int:pk>/", aggregation.AggregationRunDetailView.as_view(), name="aggregation-detail"),
    path("aggregations/<int:pk>/consensus/", aggregation.ConsensusListView.as_view(), name="aggregation-consensus"),
    path(
        "aggregations/<int:pk>/reliabilities/",
        aggregation.ReliabilityListView.as_view(),
        name="aggregation-reliabilities",
    ),
    # Expert hold-out, adjudication, gold, dashboard and exports (issue 6).
    path("projects/<int:project_id>/holdout/next/", review.HoldoutNextView.as_view(), name="holdout-next"),
    path("projects/<int:project_id>/holdout/draw/", review.HoldoutDrawView.as_view(), name="holdout-draw"),
    path("projects/<int:project_id>/holdout/agreement/", review.HoldoutAgreementView.as_view(), name="holdout-agreement"),
    path("projects/<int:project_id>/holdout/disputes/", review.HoldoutDisputesView.as_view(), name="holdout-disputes"),
    path("holdout/<int:item_id>/label/", review.HoldoutLabelView.as_view(), name="holdout-label"),
    path("holdout/<int:item_id>/tiebreak/", review.TiebreakView.as_view(), name="holdout-tiebreak"),
    path("projects/<int:project_id>/review/queue/", review.ReviewQueueView.as_view(), name="review-queue"),
    path("review/<int:item_id>/", review.ReviewItemView.as_view(), name="review-item"),
    path("review/<int:item_id>/label/", review.ReviewLabelView.as_view(), name="review-label"),
    path("review/items/<int:item_id>/regions/", review.ReviewRegionsView.as_view(), name="review-regions"),
    path("projects/<int:project_id>/gold/draw/", review.GoldDrawView.as_view(), name="gold-draw"),
    path("projects/<int:project_id>/gold/", review.GoldSetView.as_view(), name="gold-set"),
    path("projects/<int:project_id>/dashboard/", dashboard.DashboardView.as_view(), name="project-dashboard"),
    path("projects/<int:project_id>/exports/votes.csv", exports.VotesCsvView.as_view(), name="export-votes-csv"),
    path("projects/<int:project_id>/exports/votes.jsonl", exports.VotesJsonlView.as_view(), name="export-votes-jsonl"),
    path("projects/<int:project_id>/exports/consensus.csv", exports.ConsensusCsvView.as_view(), name="export-consensus-csv"),
    path("projects/<int:project_id>/exports/expert_labels.csv", exports.ExpertLabelsCsvView.as_view(), name="export-expert-labels-csv"),
    path("projects/<int:project_id>/exports/holdout.csv", exports.HoldoutCsvView.as_view(), name="export-holdout-csv"),
    path("projects/<int:project_id>/exports/consensus.coco.json", exports.ConsensusCocoView.as_view(), name="export-consensus-coco"),
    path("projects/<int:project_id>/exports/expert_regions.coco.json", exports.ExpertRegionsCocoView.as_view(), name="export-expert-regions-coco"),
    path("projects/<int:project_id>/exports/votes.coco.json", exports.RegionVotesCocoView.as_view(), name="export-votes-coco"),
    path("projects/<int:project_id>/exports/consensus_masks.zip", exports.ConsensusMasksZipView.as_view(), name="export-consensus-masks"),
]
