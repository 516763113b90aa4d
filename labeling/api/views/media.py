"""Item images: the only way pixels reach a browser (MEDIA_URL is not served).

Crowd workers see an item only while they lease it or after they voted on it; experts and
admins of the project see any of its items; everyone else gets 404. The response names no
file, so the original file name never travels with the pixels.
"""

from __future__ import annotations

import mimetypes

from django.http import FileResponse, Http404
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.views import APIView

from labeling.models import Item, Membership
from labeling.selectors import has_role, role_of
from labeling.services.assignment import live_leases


def can_see_item(user, item: Item) -> bool:
    role = role_of(user, item.project)
    if role is None:
        return False
    if has_role(user, item.project, Membership.Role.EXPERT):
        return True
    return (
        live_leases().filter(item=item, worker=user).exists()
        or item.votes.filter(worker=user).exists()
    )


class _ItemFileView(APIView):
    permission_classes = [IsAuthenticated]
    field = "image"

    @extend_schema(responses={(200, "image/*"): OpenApiTypes.BINARY})
    def get(self, request: Request, item_id: int) -> FileResponse:
        item = get_object_or_404(Item.objects.select_related("project"), pk=item_id)
        stored = getattr(item, self.field)
        if not can_see_item(request.user, item) or not stored:
            raise Http404("No such image.")
        content_type = mimetypes.guess_type(stored.name)[0] or "application/octet-stream"
        response = FileResponse(stored.open("rb"), content_type=content_type)
        # FileResponse derives a filename from the stored path; send none at all.
        if "Content-Disposition" in response:
            del response["Content-Disposition"]
        response["Cache-Control"] = "private, max-age=3600"
        return response


class ItemImageView(_ItemFileView):
    """The item's rendering as the annotator page shows it."""

    field = "image"


class ItemThumbnailView(_ItemFileView):
    """A small preview of the item."""

    field = "thumbnail"
