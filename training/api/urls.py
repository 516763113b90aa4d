"""Routes of the training API."""

from django.urls import include, path
from rest_framework.routers import SimpleRouter

from training.api import views

router = SimpleRouter()
router.register("training-runs", views.TrainingRunViewSet, basename="training-run")

urlpatterns = [
    path(
        "projects/<int:project_id>/training-runs/",
        views.ProjectTrainingRunsView.as_view(),
        name="project-training-runs",
    ),
    path("", include(router.urls)),
]
