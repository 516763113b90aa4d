"""Aggregation runs: admins queue them, experts and admins read results. Crowd: never."""

from __future__ import annotations

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import generics, permissions, status
from rest_framework.request import Request
from rest_framework.response import Response

from labeling.api.permissions import IsProjectAdmin, IsProjectExpert
from labeling.api.serializers.aggregation import (
    AggregationRequestSerializer,
    AggregationRunSerializer,
    ConsensusLabelSerializer,
    WorkerReliabilitySerializer,
)
from labeling.models import AggregationRun, ConsensusLabel, Project, WorkerReliability
from labeling.services.aggregation import InvalidAggregation, request_aggregation


class ProjectAggregationsView(generics.ListAPIView):
    """A project's aggregation runs, newest first; POST queues a new run (admins)."""

    serializer_class = AggregationRunSerializer

    def get_project(self) -> Project:
        return get_object_or_404(Project, pk=self.kwargs["project_id"])

    def get_permissions(self):
        role = IsProjectAdmin() if self.request.method == "POST" else IsProjectExpert()
        return [permissions.IsAuthenticated(), role]

    def get_queryset(self):
        return AggregationRun.objects.filter(project_id=self.kwargs["project_id"]).order_by(
            "-created_at", "-id"
        )

    @extend_schema(request=AggregationRequestSerializer, responses={202: AggregationRunSerializer})
    def post(self, request: Request, project_id: int) -> Response:
        serializer = AggregationRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            run = request_aggregation(
                self.get_project(),
                serializer.validated_data["method"],
                user=request.user,
                params=serializer.validated_data["params"],
            )
        except InvalidAggregation as exc:
            # a method of the other kind of project (class vs region)
            return Response({"method": [exc.message]}, status=status.HTTP_400_BAD_REQUEST)
        return Response(AggregationRunSerializer(run).data, status=status.HTTP_202_ACCEPTED)


class _RunScoped:
    """Views under one run: the run's project decides who may read."""

    permission_classes = [permissions.IsAuthenticated, IsProjectExpert]

    def get_run(self) -> AggregationRun:
        return get_object_or_404(AggregationRun.objects.select_related("project"), pk=self.kwargs["pk"])

    def get_project(self) -> Project:
        return self.get_run().project


class AggregationRunDetailView(_RunScoped, generics.RetrieveAPIView):
    serializer_class = AggregationRunSerializer
    queryset = AggregationRun.objects.all()


class ConsensusListView(_RunScoped, generics.ListAPIView):
    """The run's consensus per item, in item order."""

    serializer_class = ConsensusLabelSerializer

    def get_queryset(self):
        return ConsensusLabel.objects.filter(run_id=self.kwargs["pk"]).select_related("label").order_by("item_id")


class ReliabilityListView(_RunScoped, generics.ListAPIView):
    """Each voter's estimated accuracy and confusion matrix in this run."""

    serializer_class = WorkerReliabilitySerializer

    def get_queryset(self):
        return (
            WorkerReliability.objects.filter(run_id=self.kwargs["pk"])
            .select_related("worker")
            .order_by("worker__username")
        )
