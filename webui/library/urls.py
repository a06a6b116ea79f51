from django.urls import path

from webui.library import views

app_name = "library"
urlpatterns = [
    path("manage/library/jobs.json", views.jobs_json, name="jobs"),
    path("manage/library/jobs/<int:job_id>/cancel/", views.cancel_job, name="cancel_job"),
    path("manage/library/install-default/", views.install_default, name="install_default"),
    path("manage/library/quantize/", views.quantize, name="quantize"),
    path("manage/library/convert/", views.convert, name="convert"),
    path("manage/library/uploads/", views.upload_start, name="upload_start"),
    path("manage/library/uploads/<uuid:upload_id>/", views.upload_detail, name="upload"),
    path("manage/library/uploads/<uuid:upload_id>/chunk/", views.upload_chunk, name="upload_chunk"),
    path(
        "manage/library/uploads/<uuid:upload_id>/finish/",
        views.upload_finish,
        name="upload_finish",
    ),
    path(
        "manage/library/uploads/<uuid:upload_id>/discard/",
        views.upload_discard,
        name="upload_discard",
    ),
    path("manage/library/ollama/", views.ollama_page, name="ollama"),
    path(
        "manage/library/ollama/<int:server_id>/<slug:action>/",
        views.ollama_action,
        name="ollama_action",
    ),
]
