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
from labeling.models import AggregationRun, Project

CSV = "text/csv"
JSONL = "application/jsonl"
JSON = "application/json"
ZIP = "application/zip"
ERRORS = {403: ReviewErrorSerializer, 404: ReviewErrorSerializer}
REGION_ERRORS = {400: ReviewErrorSerializer, **ERRORS}


def stream(lines: Iterator[str] | Iterator[bytes], content_type: str, filename: str) -> StreamingHttpResponse:
    charset = "" if content_type == ZIP else "; charset=utf-8"
    response = StreamingHttpResponse(lines, content_type=f"{content_type}{charset}")
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


METHOD = OpenApiParameter(
    "method", str, description="Region aggregation method; the latest region run of any method if absent."
)


class _RegionExport(_Export):
    """An export of a region project (points, boxes, masks): 400 for another task type; with
    ``of_run``, of the latest region run (of ``?method=``), 404 when there is none."""

    task_types: tuple[str, ...] = ("points", "boxes", "masks")
    of_run = False
    content_type = JSON
    suffix = "coco.json"
    name = ""

    def rows(self, project: Project, run: AggregationRun | None) -> Iterator:
        raise NotImplementedError

    def get(self, request: Request, project_id: int) -> StreamingHttpResponse | Response:
        project = self.get_project()
        if project.task_type not in self.task_types:
            kinds = " or ".join(self.task_types)
            return Response(
                {"detail": f"This export is for {kinds} projects; '{project.name}' is a "
                           f"{project.get_task_type_display().lower()} project."},
                status=400,
            )
        run, name = None, self.name
        if self.of_run:
            method = (request.query_params.get("method") or "")[:40]
            run = exports.latest_region_run(project, method or None)
            if run is None:
                named = f" with method '{method}'" if method else ""
                return Response({"detail": f"No finished region aggregation run{named}."}, status=404)
            name = f"{name}-{run.method}"
        return stream(self.rows(project, run), self.content_type, self.filename(project, name))


class ConsensusCocoView(_RegionExport):
    of_run = True
    name = "consensus"

    @extend_schema(parameters=[METHOD], responses={(200, JSON): OpenApiTypes.OBJECT, **REGION_ERRORS})
    def get(self, request: Request, project_id: int) -> StreamingHttpResponse | Response:
        """The latest region consensus as COCO JSON: each fused object with its confidence as
        ``score``; images carry the item id and the stored rendering's name."""
        return super().get(request, project_id)

    def rows(self, project: Project, run: AggregationRun | None) -> Iterator[str]:
        return exports.consensus_coco(project, run)


class ExpertRegionsCocoView(_RegionExport):
    name = "expert_regions"

    @extend_schema(responses={(200, JSON): OpenApiTypes.OBJECT, **REGION_ERRORS})
    def get(self, request: Request, project_id: int) -> StreamingHttpResponse | Response:
        """Every item's final expert regions (import, hold-out, review) as COCO JSON."""
        return super().get(request, project_id)

    def rows(self, project: Project, run: AggregationRun | None) -> Iterator[str]:
        return exports.expert_regions_coco(project)


class RegionVotesCocoView(_RegionExport):
    name = "votes"

    @extend_schema(responses={(200, JSON): OpenApiTypes.OBJECT, **REGION_ERRORS})
    def get(self, request: Request, project_id: int) -> StreamingHttpResponse | Response:
        """Each annotator's raw regions as COCO JSON, the worker's pseudonym as ``annotator``
        on each annotation and in each image's ``annotators`` (who answered it, so an empty
        answer is kept); the COCO import reads both back."""
        return super().get(request, project_id)

    def rows(self, project: Project, run: AggregationRun | None) -> Iterator[str]:
        return exports.region_votes_coco(project)


class ConsensusMasksZipView(_RegionExport):
    task_types = ("masks",)
    of_run = True
    content_type = ZIP
    suffix = "zip"
    name = "consensus-masks"

    @extend_schema(parameters=[METHOD], responses={(200, ZIP): OpenApiTypes.BINARY, **REGION_ERRORS})
    def get(self, request: Request, project_id: int) -> StreamingHttpResponse | Response:
        """The latest consensus masks as PNGs in a zip: ``item-<id>/<class>.png`` (255 inside),
        ``<class>-p.png`` (the soft probability x 255) and ``masks.csv``."""
        return super().get(request, project_id)

    def rows(self, project: Project, run: AggregationRun | None) -> Iterator[bytes]:
        return exports.consensus_masks_zip(project, run)
