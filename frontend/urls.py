from django.contrib.auth import views as auth_views
from django.urls import path

from frontend.views import dashboard, home, projects, review, training
from frontend.views import labeling as labeling_pages
from frontend.views.imports import import_page

urlpatterns = [
    path("", home.home, name="home"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("projects/new/", projects.project_create, name="project-create"),
    path("projects/<int:project_id>/train/", training.train, name="training-page"),
    path("runs/<int:run_id>/", training.run_page, name="training-run-page"),
    path("runs/<int:run_id>/regions/<str:name>.png", training.region_picture, name="training-run-region-picture"),
    path("projects/<int:project_id>/import/", import_page, name="import"),
    path("label/<int:project_id>/", labeling_pages.label, name="label"),
    # Expert review, blind hold-out and the admin dashboard (issue 6).
    path("review/<int:project_id>/", review.review_page, name="review"),
    path("holdout/<int:project_id>/", review.holdout_page, name="holdout"),
    path("projects/<int:project_id>/", dashboard.dashboard, name="dashboard"),
    path("projects/<int:project_id>/annotators/<int:user_id>/block/", dashboard.block, name="annotator-block"),
    path("projects/<int:project_id>/annotators/<int:user_id>/unblock/", dashboard.unblock, name="annotator-unblock"),
    path("projects/<int:project_id>/holdout/draw/", dashboard.draw_subset, {"subset": "holdout"}, name="holdout-draw-page"),
    path("projects/<int:project_id>/gold/draw/", dashboard.draw_subset, {"subset": "gold"}, name="gold-draw-page"),
]
