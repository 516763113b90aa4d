"""Routes of the training API."""

from django.urls import include, path
from rest_framework.routers import SimpleRouter

router = SimpleRouter()

urlpatterns = [
    path("", include(router.urls)),
]
