"""In DEBUG (the embedded mode's default) Django answers a 404 with its technical page (the URL
patterns, in yellow) instead of the 404 handler: a newcomer would meet it on their first typo.
This puts the site's own 404 there (JSON under /api/); production (DEBUG off) never needs it.
"""

from __future__ import annotations

from django.conf import settings

from frontend.views.errors import page_not_found


class SiteNotFoundPage:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if (
            settings.DEBUG
            and response.status_code == 404
            and response.get("Content-Type", "").startswith("text/html")
            and not getattr(response, "site_error_page", False)
            and not request.path.startswith((f"/{settings.STATIC_URL}", f"/{settings.MEDIA_URL}"))
        ):
            return page_not_found(request)
        return response
