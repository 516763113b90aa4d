"""Training runs: admins launch, cancel and resume; experts and admins read runs and reports.

Crowd workers get 403 on every endpoint, non-members 404 (see ``labeling.api.permissions``).
"""

from __future__ import annotations

from django.http import FileResponse, Http404
from django.shortcuts import get_object_or_404
from django.urls import reverse
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import generics, mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response

from labeling.api.permissions import IsProjectAdmin, IsProjectExpert
from labeling.models import Project
from training import selectors, services
from training.api.serializers import (
    AttentionSerializer,
    LaunchRunSerializer,
    TrainingRunSerializer,
)
from training.models import Prediction, TrainingRun


class ProjectTrainingRunsView(generics.ListCreateAPIView):
    """``GET``: the project's runs, newest first. ``POST``: launch a run (admins)."""

    serializer_class = TrainingRunSerializer

    def get_project(self) -> Project:
        return get_object_or_404(Project, pk=self.kwargs["project_id"])

    def get_permissions(self):
        role = IsProjectAdmin if self.request.method == "POST" else IsProjectExpert
        return [IsAuthenticated(), role()]

    def get_queryset(self):
        return selectors.project_runs(self.get_project()).prefetch_related("epoch_metrics")

    @extend_schema(request=LaunchRunSerializer, responses={201: TrainingRunSerializer})
    def post(self, request: Request, *args, **kwargs) -> Response:
        project = self.get_project()
        launch = LaunchRunSerializer(data=request.data, context={"project": project})
        launch.is_valid(raise_exception=True)
        run = services.launch_run(project, request.user, **launch.validated_data)
        return Response(TrainingRunSerializer(run).data, status=status.HTTP_201_CREATED)


class TrainingRunViewSet(mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """One run: progress and report (experts, admins); cancel and resume (admins)."""

    serializer_class = TrainingRunSerializer
    queryset = TrainingRun.objects.select_related("project", "created_by")

    def get_project(self) -> Project:
        return self._run().project

    def _run(self) -> TrainingRun:
        if not hasattr(self, "_cached_run"):
            self._cached_run = get_object_or_404(self.get_queryset(), pk=self.kwargs["pk"])
        return self._cached_run

    def get_object(self) -> TrainingRun:
        return self._run()

    def get_permissions(self):
        role = IsProjectAdmin if self.action in ("cancel", "resume") else IsProjectExpert
        return [IsAuthenticated(), role()]

    def retrieve(self, request: Request, *args, **kwargs) -> Response:
        # a page polling a run is where a dead worker is noticed
        run = services.fail_if_worker_gone(self.get_object())
        return Response(self.get_serializer(run).data)

    @extend_schema(request=None, responses={200: TrainingRunSerializer, 409: OpenApiResponse()})
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str) -> Response:
        return self._change(services.request_cancel)

    @extend_schema(request=None, responses={200: TrainingRunSerializer, 409: OpenApiResponse()})
    @action(detail=True, methods=["post"])
    def resume(self, request: Request, pk: str) -> Response:
        return self._change(services.resume_run)

    def _change(self, service) -> Response:
        try:
            run = service(self.get_object())
        except services.RunStateError as error:
            return Response({"detail": str(error)}, status=status.HTTP_409_CONFLICT)
        return Response(self.get_serializer(run).data)

    @extend_schema(responses={(200, "application/octet-stream"): OpenApiResponse()})
    @action(detail=True, methods=["get"])
    def checkpoint(self, request: Request, pk: str) -> FileResponse:
        """The trained model file (safetensors with the model name, classes and preprocessing)."""
        path = selectors.model_file(self.get_object())
        if path is None:
            raise Http404("This run has no trained model yet.")
        return FileResponse(
            path.open("rb"), as_attachment=True, filename=f"quorum-run-{pk}-{path.name}"
        )

    @extend_schema(responses={(200, "image/png"): OpenApiResponse()})
    @action(
        detail=True, methods=["get"],
        url_path="plots/(?P<name>confusion|roc|calibration|annotators)", url_name="plot",
    )
    def plot(self, request: Request, pk: str, name: str) -> FileResponse:
        """A report plot; ``annotators``: the learned confusions of the most active annotators."""
        if name == "annotators":
            path = selectors.annotator_picture_file(self.get_object())
            if path is None:
                raise Http404("This run learned no annotator confusions.")
            return FileResponse(path.open("rb"), content_type="image/png")
        evaluation = selectors.evaluation_of(self.get_object())
        stored = getattr(evaluation, selectors.PLOTS[name]) if evaluation else None
        if not stored:
            raise Http404("This run has no such plot.")
        return FileResponse(stored.open("rb"), content_type="image/png")

    @extend_schema(responses={200: AttentionSerializer, 404: OpenApiResponse()})
    @action(
        detail=True, methods=["get"], url_path=r"attention/(?P<item_id>[0-9]+)",
        url_name="attention",
    )
    def attention(self, request: Request, pk: str, item_id: str) -> Response:
        """A MIL run's attention map on one item (hold-out or review), for a heatmap overlay."""
        run = self.get_object()
        prediction = (
            Prediction.objects.filter(run=run, item_id=item_id, attention__isnull=False)
            .select_related("item")
            .first()
        )
        if prediction is None:
            raise Http404("This run has no attention map for that item.")
        params = run.params or {}
        heatmap = services.heatmap_file(run, prediction.item_id)
        return Response(
            AttentionSerializer(
                {
                    "run": run.pk,
                    "item": prediction.item_id,
                    "attention": prediction.attention,
                    "patch_size": params.get("patch_size", run.project.patch_size),
                    "patch_stride": params.get("patch_stride", run.project.patch_stride),
                    "width": prediction.item.width,
                    "height": prediction.item.height,
                    "heatmap_url": (
                        reverse("training-run-heatmap", args=[run.pk, prediction.item_id])
                        if heatmap is not None
                        else None
                    ),
                }
            ).data
        )

    @extend_schema(responses={(200, "image/png"): OpenApiResponse()})
    @action(
        detail=True, methods=["get"], url_path=r"heatmaps/(?P<item_id>[0-9]+)",
        url_name="heatmap",
    )
    def heatmap(self, request: Request, pk: str, item_id: str) -> FileResponse:
        """The attention heatmap over a hold-out image, rendered when the MIL run finished."""
        path = services.heatmap_file(self.get_object(), int(item_id))
        if path is None:
            raise Http404("This run has no heatmap for that item.")
        return FileResponse(path.open("rb"), content_type="image/png")
