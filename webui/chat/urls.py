from django.urls import path

from webui.chat import fleet_views, views

app_name = "chat"
urlpatterns = [
    path("", views.home, name="home"),
    path("c/new/", views.start_conversation, name="start"),
    path("c/<int:conversation_id>/", views.conversation_page, name="conversation"),
    path("models/import-ollama/", views.import_ollama_models, name="import_ollama"),
    path("queue/", views.queue_page, name="queue"),
    path("fleet/", fleet_views.fleet_page, name="fleet"),
]
