"""Streamed exports (project admins only: they carry every worker's answers and the hold-out
answers, which experts do not need in bulk).

Each response is a ``StreamingHttpResponse`` over the row generators of
:mod:`labeling.exports`, so memory stays flat however many votes a project has.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from django.http import StreamingHttpResponse
from django.utils.text import slugify
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response

from labeling import exports
from labeling.api.permissions import IsProjectAdmin
from labeling.api.serializers.review import ReviewErrorSerializer
from labeling.api.views.review import ProjectScoped
from labeling.models import Project

CSV = "text/csv"
JSONL = "application/jsonl"
ERRORS = {403: ReviewErrorSerializer, 404: ReviewErrorSerializer}


def stream(lines: Iterator[str], content_type: str, filename: str) -> StreamingHttpResponse:
    response = StreamingHttpResponse(lines, content_type=f"{content_type}; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["Cache-Control"] = "no-store"
    return response


class _Export(ProjectScoped):
    permission_classes = [IsAuthenticated, IsProjectAdmin]
    content_type = CSV
    suffix = "csv"
    rows: Callable[[Project], Iterator[str]]

    def filename(self, project: Project, name: str) -> str:
        return f"{slugify(project.name) or 'project'}-{name}.{self.suffix}"


def _export_view(name: str, rows: Callable[[Project], Iterator[str]], content_type: str,
                 suffix: str, doc: str) -> type[_Export]:
    class View(_Export):
        @extend_schema(responses={(200, content_type): OpenApiTypes.STR, **ERRORS}, description=doc)
        def get(self, request: Request, project_id: int) -> StreamingHttpResponse:
            project = self.get_project()
            return stream(rows(project), content_type, f"{slugify(project.name)}-{name}.{suffix}")

    View.__name__ = View.__qualname__ = f"{name.title().replace('_', '')}{suffix.title()}ExportView"
    return View


VotesCsvView = _export_view(
    "votes", exports.votes_csv, CSV, "csv",
    "Counted class votes as CSV in crowd-kit's shape: task (item id), worker (pseudonym), label.",
)
VotesJsonlView = _export_view(
    "votes", exports.votes_jsonl, JSONL, "jsonl",
    "The same votes as JSON Lines: one {task, worker, label} object per line.",
)
ExpertLabelsCsvView = _export_view(
    "expert_labels", exports.expert_labels_csv, CSV, "csv",
    "Every expert label: task, expert (pseudonym), label, source, note, created_at.",
)
HoldoutCsvView = _export_view(
    "holdout", exports.holdout_csv, CSV, "csv",
    "Every item's split (holdout: never train on it; pool), gold flag and final expert label.",
)


class ConsensusCsvView(_Export):
    @extend_schema(
        parameters=[
            OpenApiParameter(
                "method", str, description="Aggregation method; the project's default if absent."
            )
        ],
        responses={(200, CSV): OpenApiTypes.STR, **ERRORS},
    )
    def get(self, request: Request, project_id: int) -> StreamingHttpResponse | Response:
        """The latest consensus of one method: task, method, label, confidence, p_<class>..."""
        project = self.get_project()
        method = request.query_params.get("method") or project.default_method
        run = exports.latest_run(project, method)
        if run is None:
            return Response(
                {"detail": f"No finished aggregation run with method '{method[:40]}'."},
                status=404,
            )
        return stream(
            exports.consensus_csv(project, run), CSV, f"{slugify(project.name)}-consensus-{run.method}.csv"
        )
