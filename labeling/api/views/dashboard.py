"""The admin dashboard's numbers as JSON (the page draws the same numbers as charts)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response

from labeling import reports
from labeling.api.permissions import IsProjectAdmin
from labeling.api.serializers.review import DashboardSerializer, ReviewErrorSerializer
from labeling.api.views.review import ProjectScoped


class DashboardView(ProjectScoped):
    permission_classes = [IsAuthenticated, IsProjectAdmin]

    @extend_schema(
        responses={200: DashboardSerializer, 403: ReviewErrorSerializer, 404: ReviewErrorSerializer}
    )
    def get(self, request: Request, project_id: int) -> Response:
        """Progress, agreement over time, annotators, and every method scored on the hold-out."""
        return Response(DashboardSerializer(reports.dashboard(self.get_project())).data)
