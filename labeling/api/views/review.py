"""Expert work: the blind hold-out, its tie-breaks, adjudication of crowd disagreement, gold.

Item-scoped routes (``/api/holdout/<item>/...``, ``/api/review/<item>/...``) resolve the project
from the item, so the same role checks (404 for non-members) apply.
"""

from __future__ import annotations

from django.http import Http404
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import PolymorphicProxySerializer, extend_schema
from rest_framework import generics, status
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from labeling.api.permissions import IsProjectAdmin, IsProjectExpert
from labeling.api.serializers.review import (
    DisputeSerializer,
    EvidenceSerializer,
    GoldDrawRequestSerializer,
    GoldSetRequestSerializer,
    GoldSetResponseSerializer,
    HoldoutAgreementSerializer,
    HoldoutDrawRequestSerializer,
    HoldoutLabelResponseSerializer,
    HoldoutNextSerializer,
    LabelRequestSerializer,
    NotedLabelRequestSerializer,
    RegionAnswerRequestSerializer,
    RegionAnswerResponseSerializer,
    RegionEvidenceSerializer,
    ReviewErrorSerializer,
    ReviewLabelResponseSerializer,
    ReviewQueueItemSerializer,
    SubsetDrawResponseSerializer,
    TiebreakResponseSerializer,
)
from labeling.exports import wire_regions, worker_pseudonym
from labeling.models import ExpertLabel, Item, Project
from labeling.services import gold, review

ERRORS = {
    400: OpenApiTypes.OBJECT,
    403: ReviewErrorSerializer,
    404: ReviewErrorSerializer,
}
CONFLICT = {409: ReviewErrorSerializer}


def refusal(exc: review.ReviewError | gold.GoldError) -> Response:
    return Response({"detail": exc.message}, status=getattr(exc, "status", 400))


class ProjectScoped(APIView):
    """A view under ``/projects/<project_id>/``."""

    permission_classes = [IsAuthenticated, IsProjectExpert]

    def get_project(self) -> Project:
        if not hasattr(self, "_project"):
            self._project = get_object_or_404(Project, pk=self.kwargs["project_id"])
        return self._project


class ItemScoped(APIView):
    """A view under ``/<area>/<item_id>/``; the project is the item's."""

    permission_classes = [IsAuthenticated, IsProjectExpert]

    def get_item(self) -> Item:
        if not hasattr(self, "_item"):
            self._item = get_object_or_404(
                Item.objects.select_related("project"), pk=self.kwargs["item_id"]
            )
        return self._item

    def get_project(self) -> Project:
        return self.get_item().project


# -- hold-out ---------------------------------------------------------------------------------


class HoldoutNextView(ProjectScoped):
    @extend_schema(responses={200: HoldoutNextSerializer, **ERRORS})
    def get(self, request: Request, project_id: int) -> Response:
        """The next hold-out item for you to label blind: the image and the classes only."""
        project = self.get_project()
        todo = review.holdout_todo(project, request.user)
        payload = {
            "item": todo.first(),
            "classes": project.label_classes.all(),
            "remaining": todo.count(),
        }
        return Response(HoldoutNextSerializer(payload).data)


class HoldoutLabelView(ItemScoped):
    @extend_schema(
        request=LabelRequestSerializer,
        responses={200: HoldoutLabelResponseSerializer, **ERRORS, **CONFLICT},
    )
    def post(self, request: Request, item_id: int) -> Response:
        """Your blind label for a hold-out item (one per expert; sending again replaces it).

        The answer says only whether the item now has agreeing labels or a dispute, never what
        the other expert chose.
        """
        item = self.get_item()
        if not item.is_holdout:
            raise Http404("No such hold-out item.")
        data = LabelRequestSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            state = review.label_holdout(item, request.user, data.validated_data["label"])
        except review.ReviewError as exc:
            return refusal(exc)
        label = ExpertLabel.objects.get(
            item=item, expert=request.user, source=ExpertLabel.Source.HOLDOUT
        ).label.name
        return Response({"item": item.pk, "label": label, "state": state})


class HoldoutDrawView(ProjectScoped):
    permission_classes = [IsAuthenticated, IsProjectAdmin]

    @extend_schema(
        request=HoldoutDrawRequestSerializer, responses={200: SubsetDrawResponseSerializer, **ERRORS}
    )
    def post(self, request: Request, project_id: int) -> Response:
        """Grow the hold-out to a fraction of the items (admins); items without votes first."""
        project = self.get_project()
        data = HoldoutDrawRequestSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            drawn = review.draw_holdout(project, **data.validated_data)
        except review.ReviewError as exc:
            return refusal(exc)
        total = project.items.filter(is_holdout=True).count()
        return Response({"drawn": drawn, "total": total})


class HoldoutAgreementView(ProjectScoped):
    @extend_schema(responses={200: HoldoutAgreementSerializer, **ERRORS})
    def get(self, request: Request, project_id: int) -> Response:
        """Cohen's kappa between the two blind expert labels, over items both labelled."""
        project = self.get_project()
        agreement = review.holdout_agreement(project)
        return Response(
            {
                "n_items": agreement.n_items,
                "observed": agreement.observed,
                "cohen_kappa": agreement.kappa,
                "disputed": review.holdout_disputes(project).count(),
            }
        )


class HoldoutDisputesView(ProjectScoped, generics.ListAPIView):
    serializer_class = DisputeSerializer
    queryset = Item.objects.none()

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Item.objects.none()
        return review.holdout_disputes(self.get_project(), self.request.user)

    def list(self, request: Request, *args, **kwargs) -> Response:
        """Hold-out items two experts disagree on that you may settle (not your own)."""
        page = self.paginate_queryset(self.get_queryset())
        project = self.get_project()
        rows = [
            {
                "item": item,
                "labels": [
                    {"expert": worker_pseudonym(project.id, e.expert_id), "label": e.label.name}
                    for e in item.expert_labels.filter(source=ExpertLabel.Source.HOLDOUT)
                    .select_related("label")
                    .order_by("id")
                ],
            }
            for item in page
        ]
        return self.get_paginated_response(DisputeSerializer(rows, many=True).data)


class TiebreakView(ItemScoped):
    @extend_schema(
        request=NotedLabelRequestSerializer,
        responses={200: TiebreakResponseSerializer, **ERRORS, **CONFLICT},
    )
    def post(self, request: Request, item_id: int) -> Response:
        """Settle a disputed hold-out item (a third expert or an admin); this label is final."""
        item = self.get_item()
        if not item.is_holdout:
            raise Http404("No such hold-out item.")
        data = NotedLabelRequestSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            label = review.break_tie(item, request.user, **data.validated_data)
        except review.ReviewError as exc:
            return refusal(exc)
        return Response({"item": item.pk, "label": label.label.name})


# -- adjudication -----------------------------------------------------------------------------


class ReviewQueueView(ProjectScoped, generics.ListAPIView):
    """Items the crowd disagrees on, most uncertain first, then most voted."""

    serializer_class = ReviewQueueItemSerializer
    queryset = Item.objects.none()

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Item.objects.none()
        return review.review_queue(self.get_project())


class ReviewItemView(ItemScoped):
    @extend_schema(
        responses={
            200: PolymorphicProxySerializer(
                component_name="ReviewEvidence",
                serializers=[EvidenceSerializer, RegionEvidenceSerializer],
                resource_type_field_name=None,
            ),
            **ERRORS,
        }
    )
    def get(self, request: Request, item_id: int) -> Response:
        """The evidence on one item: votes per class, each voter's estimated reliability, each
        aggregation method's consensus, the latest model's prediction. A region item: each
        annotator's regions and reliability and the consensus; none of it on a hold-out item,
        which is answered blind."""
        item = self.get_item()
        if item.project.is_region_task:
            return Response(RegionEvidenceSerializer(review.region_review_evidence(item)).data)
        if item.is_holdout:
            raise Http404("Hold-out items are reviewed blind on the hold-out page.")
        evidence = review.review_evidence(item)
        return Response(EvidenceSerializer(evidence).data)


class ReviewLabelView(ItemScoped):
    @extend_schema(
        request=NotedLabelRequestSerializer,
        responses={200: ReviewLabelResponseSerializer, **ERRORS},
    )
    def post(self, request: Request, item_id: int) -> Response:
        """Your final label for an item the crowd disagreed on; it leaves the queue."""
        item = self.get_item()
        if item.is_holdout:
            raise Http404("Hold-out items are reviewed blind on the hold-out page.")
        data = NotedLabelRequestSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            label = review.adjudicate(item, request.user, **data.validated_data)
        except review.ReviewError as exc:
            return refusal(exc)
        following = review.review_queue(item.project).values_list("id", flat=True).first()
        return Response(
            {"item": item.pk, "label": label.label.name, "note": label.note, "next": following}
        )


class ReviewRegionsView(ItemScoped):
    @extend_schema(
        request=RegionAnswerRequestSerializer,
        responses={200: RegionAnswerResponseSerializer, **ERRORS, **CONFLICT},
    )
    def post(self, request: Request, item_id: int) -> Response:
        """Your final regions for a region item (the whole set; [] for nothing here): they become
        the item's expert regions and it leaves the queue. On a hold-out item they are the blind
        yardstick. A refused region is a 400 naming it; nothing is written then."""
        item = self.get_item()
        data = RegionAnswerRequestSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            answer = review.adjudicate_regions(item, request.user, **data.validated_data)
        except review.ReviewError as exc:
            return refusal(exc)
        project = item.project
        stored = review.answer_regions([answer.pk])[answer.pk]
        following = review.review_queue(project).values_list("id", flat=True).first()
        return Response({
            "item": item.pk,
            "source": answer.source,
            "regions": wire_regions(stored, project.class_names),
            "note": answer.note,
            "next": following,
        })


# -- gold -------------------------------------------------------------------------------------


class GoldDrawView(ProjectScoped):
    permission_classes = [IsAuthenticated, IsProjectAdmin]

    @extend_schema(
        request=GoldDrawRequestSerializer, responses={200: SubsetDrawResponseSerializer, **ERRORS}
    )
    def post(self, request: Request, project_id: int) -> Response:
        """Grow the gold set from expert-labelled items outside the hold-out (admins)."""
        project = self.get_project()
        data = GoldDrawRequestSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            drawn = gold.draw_gold(project, **data.validated_data)
        except gold.GoldError as exc:
            return refusal(exc)
        return Response({"drawn": drawn, "total": project.items.filter(is_gold=True).count()})


class GoldSetView(ProjectScoped):
    permission_classes = [IsAuthenticated, IsProjectAdmin]

    @extend_schema(
        request=GoldSetRequestSerializer, responses={200: GoldSetResponseSerializer, **ERRORS}
    )
    def post(self, request: Request, project_id: int) -> Response:
        """Mark or unmark the given items of this project as gold (admins)."""
        project = self.get_project()
        data = GoldSetRequestSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        items = project.items.filter(pk__in=data.validated_data["items"])
        try:
            updated = gold.set_gold(items, data.validated_data["is_gold"])
        except gold.GoldError as exc:
            return refusal(exc)
        return Response({"updated": updated}, status=status.HTTP_200_OK)

