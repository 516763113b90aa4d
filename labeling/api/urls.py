"""Routes of the labelling API; each area's views live in ``api/views/<area>.py``."""

from django.urls import include, path
from rest_framework.routers import DefaultRouter

from labeling.api.views import projects
from labeling.api.views.imports import ImportBatchViewSet

router = DefaultRouter()
router.register("projects", projects.ProjectViewSet, basename="project")
router.register(r"projects/(?P<project_id>\d+)/imports", ImportBatchViewSet, basename="project-import")

urlpatterns = [
    path("", include(router.urls)),
]
