"""Item images: the only way pixels reach a browser (MEDIA_URL is not served).

Crowd workers see an item only while they lease it or after they voted on it; experts and
admins of the project see any of its items; everyone else gets 404. The response names no
file, so the original file name never travels with the pixels.

The viewer also reads an item's full-precision pixels (e.g. CT in Hounsfield units) from
``/pixels/``, under the same rules, to window them itself; nothing else about the item travels
with them (see :func:`labeling.imports.rendering.viewer_pixels`).
"""

from __future__ import annotations

import gzip
import io
import json
import mimetypes

import numpy as np
from django.http import FileResponse, Http404, HttpResponse
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.views import APIView

from labeling.imports.rendering import viewer_pixels
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


# Gzip level 1: CT slices shrink to about half in a few milliseconds; higher levels gain little.
PIXELS_GZIP_LEVEL = 1


class ItemPixelsView(APIView):
    """The item's full-precision pixels for the viewer: raw little-endian values, their layout
    in the ``X-Pixels`` header (JSON: dtype, frames, height, width, channels, range, window,
    unit, invert). 204 when the rendering holds every value (8-bit pictures): the viewer
    windows the image itself."""

    permission_classes = [IsAuthenticated]

    @extend_schema(responses={(200, "application/octet-stream"): OpenApiTypes.BINARY, 204: None})
    def get(self, request: Request, item_id: int) -> HttpResponse:
        item = get_object_or_404(Item.objects.select_related("project"), pk=item_id)
        if not can_see_item(request.user, item) or not item.image:
            raise Http404("No such image.")
        if not item.array:
            response = HttpResponse(status=204)
            response["Cache-Control"] = "private, max-age=3600"
            return response
        with item.array.open("rb") as handle:
            array = np.load(io.BytesIO(handle.read()), allow_pickle=False)
        metadata = item.metadata or {}
        data, layout = viewer_pixels(
            array,
            window=metadata.get("window"),
            unit="HU" if item.modality.upper() == "CT" else "",
            invert=metadata.get("photometric_interpretation") == "MONOCHROME1",
            slices=(metadata.get("stack") or {}).get("slices", 0),
        )
        headers = {"X-Pixels": json.dumps(layout), "Cache-Control": "private, max-age=3600"}
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            data = gzip.compress(data, compresslevel=PIXELS_GZIP_LEVEL)
            headers["Content-Encoding"] = "gzip"
        headers["Vary"] = "Accept-Encoding"
        return HttpResponse(data, content_type="application/octet-stream", headers=headers)
