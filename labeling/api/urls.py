"""Routes of the labelling API; each area's views live in ``api/views/<area>.py``."""

from django.urls import include, path
from rest_framework.routers import DefaultRouter

from labeling.api.views import aggregation, crowd, media, projects
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
]
