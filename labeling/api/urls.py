"""Routes of the labelling API; each area's views live in ``api/views/<area>.py``."""

from django.urls import include, path
from rest_framework.routers import DefaultRouter

from labeling.api.views import projects

router = DefaultRouter()
router.register("projects", projects.ProjectViewSet, basename="project")

urlpatterns = [
    path("", include(router.urls)),
]
