"""Projects and their members."""

from __future__ import annotations

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import PolymorphicProxySerializer, extend_schema, extend_schema_view
from rest_framework import mixins, permissions, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from labeling.api.permissions import IsProjectAdmin, IsProjectMember
from labeling.api.serializers.projects import (
    CrowdProjectSerializer,
    MembershipSerializer,
    ProjectSerializer,
)
from labeling.models import Membership, Project
from labeling.selectors import projects_for, role_of
from labeling.services.projects import can_create_projects, set_membership


class CanCreateProjects(permissions.BasePermission):
    message = "Only site admins and users with the permission to add projects create projects."

    def has_permission(self, request, view) -> bool:
        return can_create_projects(request.user)


# Crowd workers get the short form of a project; the schema documents both shapes.
PROJECT_FOR_ROLE = PolymorphicProxySerializer(
    component_name="ProjectForRole",
    serializers=[ProjectSerializer, CrowdProjectSerializer],
    resource_type_field_name=None,
)


@extend_schema_view(
    list=extend_schema(responses=PROJECT_FOR_ROLE),
    retrieve=extend_schema(responses=PROJECT_FOR_ROLE),
)
class ProjectViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.UpdateModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """Projects the caller belongs to. Crowd workers see only the question and the classes."""

    serializer_class = ProjectSerializer
    queryset = Project.objects.prefetch_related("label_classes")

    def get_queryset(self):
        return projects_for(self.request.user).prefetch_related("label_classes").order_by("id")

    def get_project(self) -> Project:
        return get_object_or_404(Project, pk=self.kwargs["pk"])

    def get_permissions(self):
        if self.action == "create":
            return [permissions.IsAuthenticated(), CanCreateProjects()]
        if self.action in ("update", "partial_update", "destroy", "members"):
            return [permissions.IsAuthenticated(), IsProjectAdmin()]
        if self.action == "retrieve":
            return [permissions.IsAuthenticated(), IsProjectMember()]
        return [permissions.IsAuthenticated()]

    def get_serializer_class(self):
        if self.action in ("list", "retrieve") and getattr(self, "request", None) is not None:
            project_id = self.kwargs.get("pk")
            if project_id is not None:
                project = self.get_project()
                if role_of(self.request.user, project) == Membership.Role.CROWD:
                    return CrowdProjectSerializer
        return ProjectSerializer

    def list(self, request: Request, *args, **kwargs) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        data = [self._serialize_for_role(p) for p in page]
        return self.get_paginated_response(data)

    def _serialize_for_role(self, project: Project) -> dict:
        serializer = (
            CrowdProjectSerializer
            if role_of(self.request.user, project) == Membership.Role.CROWD
            else ProjectSerializer
        )
        return serializer(project, context=self.get_serializer_context()).data

    @extend_schema(request=MembershipSerializer, responses=MembershipSerializer(many=True))
    @action(
        detail=True,
        methods=["get", "post"],
        serializer_class=MembershipSerializer,
        pagination_class=None,
    )
    def members(self, request: Request, pk: str | None = None) -> Response:
        """List the project's members, or give a user a role (admins)."""
        project = self.get_project()
        if request.method == "POST":
            serializer = MembershipSerializer(data=request.data)
            serializer.is_valid(raise_exception=True)
            membership = set_membership(
                project=project,
                user=serializer.validated_data["user"],
                role=serializer.validated_data["role"],
            )
            return Response(MembershipSerializer(membership).data, status=status.HTTP_201_CREATED)
        memberships = project.memberships.select_related("user").order_by("user__username")
        return Response(MembershipSerializer(memberships, many=True).data)
