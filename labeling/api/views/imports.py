"""Importing images into a project: upload a batch, list the batches and their reports."""

from __future__ import annotations

from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
)
from rest_framework import mixins, permissions, status, viewsets
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from labeling.api.permissions import IsProjectAdmin
from labeling.api.serializers.imports import ImportBatchSerializer, ImportUploadSerializer
from labeling.models import ImportBatch, Project
from labeling.services.imports import (
    ImportRefused,
    check_upload_sizes,
    import_files,
    is_refused,
    refused_message,
)

PROJECT_ID = OpenApiParameter("project_id", OpenApiTypes.INT, OpenApiParameter.PATH)


@extend_schema_view(
    list=extend_schema(parameters=[PROJECT_ID], summary="List the project's import batches"),
    create=extend_schema(
        parameters=[PROJECT_ID],
        summary="Import images",
        description="Multipart upload of images (PNG, JPEG, TIFF, DICOM, .zip) with an optional "
        "labels CSV. DICOM files are de-identified before anything is stored. 201 when at least "
        "one file was imported or was already there; 400 with the per-file report when none "
        "could be, and then nothing is written (no batch, no item, no file). Region projects: "
        "a COCO file (field coco, or the one .json in the upload) gives the images' expert "
        "regions; anything wrong with it or with any image is a 400 naming it, and nothing "
        "is written.",
        request={"multipart/form-data": ImportUploadSerializer},
        responses={
            201: ImportBatchSerializer,
            400: OpenApiResponse(
                OpenApiTypes.OBJECT,
                description="Nothing could be imported ({detail} and the per-file report of an "
                "unsaved batch: id null), the labels were refused ({detail}), or a field is "
                "invalid ({field: [messages]}).",
            ),
            413: OpenApiResponse(description="A file is over QUORUM_MAX_UPLOAD_BYTES ({detail})."),
        },
    ),
)
class ImportBatchViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    """Import batches of one project (project admins)."""

    serializer_class = ImportBatchSerializer
    permission_classes = [permissions.IsAuthenticated, IsProjectAdmin]
    parser_classes = [MultiPartParser, FormParser]

    def get_project(self) -> Project:
        if not hasattr(self, "_project"):
            self._project = get_object_or_404(Project, pk=self.kwargs["project_id"])
        return self._project

    def get_queryset(self):
        return ImportBatch.objects.filter(project=self.get_project()).select_related("created_by")

    def create(self, request: Request, project_id: str | None = None) -> Response:
        upload = ImportUploadSerializer(data=request.data)
        upload.is_valid(raise_exception=True)
        files = upload.validated_data["files"]
        labels = upload.validated_data.get("labels")
        coco = upload.validated_data.get("coco")
        try:
            check_upload_sizes([*files, *([labels] if labels else []), *([coco] if coco else [])])
            batch = import_files(self.get_project(), files, user=request.user,
                                 source=ImportBatch.Source.API, labels=labels, coco=coco,
                                 coco_as=upload.validated_data["coco_as"],
                                 stack=upload.validated_data["stack"])
        except ImportRefused as exc:
            return Response({"detail": str(exc)}, status=exc.status_code)
        if is_refused(batch):
            return Response(
                {"detail": refused_message(batch), **ImportBatchSerializer(batch).data},
                status=status.HTTP_400_BAD_REQUEST,
            )
        return Response(ImportBatchSerializer(batch).data, status=status.HTTP_201_CREATED)
