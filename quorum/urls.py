from django.contrib import admin
from django.templatetags.static import static
from django.urls import include, path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView
from rest_framework.authtoken.views import obtain_auth_token


class FaviconView(RedirectView):
    """Browsers ask for /favicon.ico whatever the page links; the static URL is resolved per
    request, so a hashed (manifest) name works in production too."""

    permanent = False

    def get_redirect_url(self, *args, **kwargs) -> str:
        return static("frontend/favicon.ico")


urlpatterns = [
    path("favicon.ico", FaviconView.as_view(), name="favicon"),
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("api/redoc/", SpectacularRedocView.as_view(url_name="schema"), name="api-redoc"),
    path("api/token/", obtain_auth_token, name="api-token"),
    path("api/", include("labeling.api.urls")),
    path("api/", include("training.api.urls")),
    path("", include("frontend.urls")),
]

# The site's pages for refusals and errors (JSON under /api/): frontend/views/errors.py.
handler403 = "frontend.views.errors.permission_denied"
handler404 = "frontend.views.errors.page_not_found"
handler500 = "frontend.views.errors.server_error"
