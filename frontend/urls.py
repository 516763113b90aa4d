from django.contrib.auth import views as auth_views
from django.urls import path

from frontend.views import home, training
from frontend.views import labeling as labeling_pages
from frontend.views.imports import import_page

urlpatterns = [
    path("", home.home, name="home"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("projects/<int:project_id>/train/", training.train, name="training-page"),
    path("runs/<int:run_id>/", training.run_page, name="training-run-page"),
    path("projects/<int:project_id>/import/", import_page, name="import"),
    path("label/<int:project_id>/", labeling_pages.label, name="label"),
]
