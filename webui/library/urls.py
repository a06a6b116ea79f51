from django.urls import path

from webui.library import views

app_name = "library"
urlpatterns = [
    path("manage/library/jobs.json", views.jobs_json, name="jobs"),
    path("manage/library/jobs/<int:job_id>/cancel/", views.cancel_job, name="cancel_job"),
    path("manage/library/install-default/", views.install_default, name="install_default"),
    path("manage/library/quantize/", views.quantize, name="quantize"),
    path("manage/library/convert/", views.convert, name="convert"),
    path("manage/library/ollama/", views.ollama_page, name="ollama"),
    path(
        "manage/library/ollama/<int:server_id>/<slug:action>/",
        views.ollama_action,
        name="ollama_action",
    ),
]
