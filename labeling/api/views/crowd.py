"""The crowd labelling loop: next assignment, vote, undo; and lifting a worker's block."""

from __future__ import annotations

from functools import cache

from django.contrib.auth import get_user_model
from django.http import Http404, HttpRequest
from django.shortcuts import get_object_or_404
from django.urls import get_script_prefix, reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from labeling.api.permissions import IsProjectAdmin, IsProjectCrowd
from labeling.api.serializers.crowd import (
    AssignmentSerializer,
    ErrorSerializer,
    VoteRequestSerializer,
    VoteResponseSerializer,
)
from labeling.api.serializers.projects import MembershipSerializer
from labeling.models import REGION_TASK_TYPES, Assignment, LabelClass, Membership, Project, Vote
from labeling.selectors import crowd_context
from labeling.services import assignment as assignments
from labeling.services import votes
from labeling.services.gold import GoldStanding

# One HTTP status per refusal the services can give.
STATUS_OF = {
    assignments.WorkerBlocked: status.HTTP_403_FORBIDDEN,
    assignments.NotCrowdMember: status.HTTP_403_FORBIDDEN,
    assignments.LeaseNotFound: status.HTTP_404_NOT_FOUND,
    assignments.InvalidAnswer: status.HTTP_400_BAD_REQUEST,
    assignments.LeaseConflict: status.HTTP_409_CONFLICT,
}


def refusal_status(exc: assignments.CrowdError) -> int:
    # Services may raise a private subclass of one of these (e.g. an already answered lease).
    return next(STATUS_OF[cls] for cls in type(exc).__mro__ if cls in STATUS_OF)


def refusal(exc: assignments.CrowdError) -> Response:
    return Response({"detail": exc.message}, status=refusal_status(exc))


_EXPIRES_AT = serializers.DateTimeField()
NO_PROJECT = "No such project."


@cache
def route_parts(name: str, script_prefix: str) -> tuple[str, str]:
    """The path of the route ``name`` (one integer argument) split around that argument:
    ``reverse`` costs more than the rest of a crowd request. The script prefix is part of the
    key since it can differ per request."""
    marker = 987654321
    head, _, tail = reverse(name, args=[marker]).partition(str(marker))
    return head, tail


def _media_url(origin: str, name: str, pk: int) -> str:
    head, tail = route_parts(name, get_script_prefix())
    return f"{origin}{head}{pk}{tail}"


def assignment_body(
    request: HttpRequest,
    lease: Assignment,
    project: Project,
    progress: assignments.Progress | None = None,
    classes: list[tuple[str, int]] | None = None,
) -> dict:
    """What AssignmentSerializer gives, built as a plain dict: this runs on every request of the
    labelling loop, and the nested serializers cost more than the queries (tests compare both).
    ``progress`` and ``classes`` (name, index) are read here unless the caller has them."""
    item = lease.item
    if classes is None:
        classes = LabelClass.objects.filter(project=project).order_by("index").values_list("name", "index")
    if progress is None:
        progress = assignments.progress(request.user, project)
    return assignment_payload(
        request, lease.pk, lease.expires_at, item.pk, item.width, item.height, item.channels,
        classes, progress, task_type=project.task_type, max_regions=project.max_regions,
    )  # fmt: skip


def assignment_payload(
    request: HttpRequest, lease_id: int, expires_at, item_id: int, width: int, height: int,
    channels: int, classes, progress: assignments.Progress, *, task_type: str | None = None,
    max_regions: int | None = None,
) -> dict:
    """assignment_body from plain values (the crowd lane has no model instances). A region
    project's payload also says its task type and region limit (the classes are the region
    classes), so the page knows which tools to offer."""
    # The same origin build_absolute_uri uses (get_host checks ALLOWED_HOSTS).
    origin = f"{request.scheme}://{request.get_host()}"
    body = {
        "id": lease_id,
        "expires_at": _EXPIRES_AT.to_representation(expires_at),
        "item": {
            "id": item_id,
            "width": width,
            "height": height,
            "channels": channels,
            "image_url": _media_url(origin, "item-image", item_id),
            "thumbnail_url": _media_url(origin, "item-thumbnail", item_id),
        },
        "classes": [{"name": name, "key": str(index + 1)} for name, index in classes],
        "progress": vars(progress),
    }
    if task_type in REGION_TASK_TYPES:
        body["task_type"] = task_type
        body["max_regions"] = max_regions
    return body


def vote_payload(result: votes.VoteResult, progress: assignments.Progress) -> dict:
    """VoteResponseSerializer's shape, as a plain dict (see assignment_body)."""
    feedback = result.feedback
    return {
        "id": result.vote_id,
        "assignment": result.assignment_id,
        "kind": result.kind,
        "label": result.label,
        "feedback": None if feedback is None else gold_feedback_payload(feedback),
        "progress": vars(progress),
    }


def gold_feedback_payload(feedback: votes.GoldFeedback) -> dict:
    """GoldFeedbackSerializer's shape: the expert's class, or on a region project the
    expert's regions and the answer's score against them."""
    if feedback.expert_regions is not None:
        return {
            "gold": feedback.gold,
            "correct": feedback.correct,
            "metric": feedback.metric,
            "score": feedback.score,
            "expert_regions": feedback.expert_regions,
            "standing": standing_payload(feedback.standing),
        }
    return {
        "gold": feedback.gold,
        "correct": feedback.correct,
        "expert_label": feedback.expert_label,
        "standing": standing_payload(feedback.standing),
    }


def standing_payload(standing: GoldStanding | None) -> dict | None:
    """GoldStandingSerializer's shape: the worker's own gold score, the bar, and what the rule
    makes of it (a warning, or the block's message)."""
    if standing is None:
        return None
    message = (
        assignments.blocked_message(standing.reason()) if standing.blocks else standing.warning()
    )
    return {
        "status": standing.status,
        "accuracy": standing.accuracy,
        "answered": standing.answered,
        "threshold": standing.threshold,
        "min_answers": standing.min_answers,
        "message": message,
    }


def assignment_response(request: Request, lease: Assignment, project: Project, code: int = 200) -> Response:
    return Response(assignment_body(request, lease, project), status=code)


def exclude_ids(request: HttpRequest) -> list[int]:
    """``?exclude=`` as the next endpoints read it: ids of assignments, anything else ignored
    (a value of more than 18 digits cannot be one)."""
    return [int(v) for v in request.GET.getlist("exclude") if v.isdigit() and v.isascii() and len(v) <= 18]


def next_answer(request: HttpRequest, user, project_id: int) -> tuple[int, dict | None]:
    """GET next for an authenticated ``user``: (HTTP status, body), the role check included
    (IsProjectCrowd's answers). The crowd lane (api/crowd_lane.py) answers the same request
    with ``quorum_serve_next`` on PostgreSQL; tests compare both answers."""
    context = crowd_context(user, project_id)
    if context is None or context.role is None:
        return status.HTTP_404_NOT_FOUND, {"detail": NO_PROJECT}
    if not IsProjectCrowd().allows(user, context.role):
        return status.HTTP_403_FORBIDDEN, {"detail": IsProjectCrowd.message}
    exclude = exclude_ids(request)
    try:
        assignments.raise_if_blocked(context.blocked_reason)
        lease, progress = assignments.serve_next(user, context.project, exclude=exclude, block_checked=True)
    except assignments.CrowdError as exc:
        return refusal_status(exc), {"detail": exc.message}
    if lease is None:
        return status.HTTP_204_NO_CONTENT, None
    return status.HTTP_200_OK, assignment_body(request, lease, context.project, progress, context.classes)


def vote_answer(user, assignment_id: int, answer: dict, *, source: str) -> tuple[int, dict]:
    """POST vote with a validated ``answer`` (VoteRequestSerializer's validated_data): (HTTP
    status, body). IsProjectCrowd is checked by submit_vote(check_role=True) under the lease's
    lock, in the same round trip as the vote; a refusal gives the same 404/403 as the
    permission would. The crowd lane answers a recorded vote from the same database call."""
    try:
        result = votes.submit_vote(
            user,
            assignment_id,
            label=answer.get("label"),
            kind=answer["kind"],
            idempotency_key=answer["idempotency_key"],
            source=source,
            check_role=True,
            regions=answer.get("regions"),
        )
    except assignments.CrowdError as exc:
        return refusal_status(exc), {"detail": exc.message}
    progress = result.progress
    if progress is None:
        # The Python path and replays: read the lease's project (one query off the hot path).
        project = Assignment.objects.select_related("project").get(pk=assignment_id).project
        progress = assignments.progress(user, project)
    body = vote_payload(result, progress)
    return (status.HTTP_201_CREATED if result.created else status.HTTP_200_OK), body


class NextAssignmentView(APIView):
    # IsProjectCrowd's checks run in next_answer, on the same read as the handler's context.
    permission_classes = [IsAuthenticated]

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "exclude",
                OpenApiTypes.INT,
                many=True,
                description="Assignments you already show (to prefetch the one after).",
            )
        ],
        responses={
            200: AssignmentSerializer,
            204: OpenApiResponse(description="Nothing is left for you in this project."),
            403: ErrorSerializer,
            404: ErrorSerializer,
            409: ErrorSerializer,
        },
    )
    def get(self, request: Request, project_id: int) -> Response:
        """Your next item to label (the same one again while its lease runs)."""
        code, body = next_answer(request, request.user, project_id)
        return Response(body, status=code)


class _OwnAssignmentView(APIView):
    """Views on one of the caller's own leases; another worker's lease is a 404."""

    permission_classes = [IsAuthenticated, IsProjectCrowd]
    _project: Project | None = None

    def get_project(self) -> Project:
        if self._project is None:
            lease = Assignment.objects.filter(
                pk=self.kwargs["assignment_id"], worker=self.request.user
            ).select_related("project").first()
            if lease is None:
                raise Http404("No such assignment.")
            self._project = lease.project
        return self._project


class VoteView(_OwnAssignmentView):
    # IsProjectCrowd is checked by vote_answer (see there).
    permission_classes = [IsAuthenticated]

    @extend_schema(
        request=VoteRequestSerializer,
        responses={
            201: VoteResponseSerializer,
            200: OpenApiResponse(VoteResponseSerializer, description="A retry of an earlier POST."),
            400: OpenApiResponse(
                OpenApiTypes.OBJECT,
                description="{detail} for a refused answer (e.g. a class the project does not "
                "have), or {field: [messages]} for a malformed request.",
            ),
            403: ErrorSerializer,
            404: ErrorSerializer,
            409: ErrorSerializer,
        },
    )
    def post(self, request: Request, assignment_id: int) -> Response:
        """Answer an assignment with a class name, regions (region projects), or kind unsure / skip."""
        data = VoteRequestSerializer(data=request.data)
        if not data.is_valid():
            # Strangers learn nothing about the request, as from every other view: the
            # permission is checked first here (on the valid path submit_vote checks it).
            permission = IsProjectCrowd()
            if not permission.has_permission(request, self):
                self.permission_denied(request, message=permission.message)
            raise serializers.ValidationError(data.errors)
        source = Vote.Source.API if request.auth else Vote.Source.WEB
        code, body = vote_answer(request.user, assignment_id, data.validated_data, source=source)
        return Response(body, status=code)


class UndoView(_OwnAssignmentView):
    @extend_schema(
        request=None,
        responses={200: AssignmentSerializer, 403: ErrorSerializer, 409: ErrorSerializer},
    )
    def post(self, request: Request, assignment_id: int) -> Response:
        """Take back your last answer while its lease runs; the assignment is yours again."""
        try:
            lease = votes.undo_vote(request.user, assignment_id)
        except assignments.CrowdError as exc:
            return refusal(exc)
        return assignment_response(request, lease, lease.project)


class UnblockMemberView(APIView):
    permission_classes = [IsAuthenticated, IsProjectAdmin]

    def get_project(self) -> Project:
        return get_object_or_404(Project, pk=self.kwargs["project_id"])

    @extend_schema(request=None, responses={200: MembershipSerializer})
    def post(self, request: Request, project_id: int, user_id: int) -> Response:
        """Lift a worker's block; their flagged votes count again."""
        project = self.get_project()
        user = get_object_or_404(get_user_model(), pk=user_id)
        get_object_or_404(Membership, project=project, user=user)
        membership = votes.unblock_worker(project, user)
        return Response(MembershipSerializer(membership).data)
