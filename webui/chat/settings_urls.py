from django.urls import path

from webui.chat import settings_views

app_name = "conversation_settings"
urlpatterns = [
    path("c/<int:conversation_id>/settings/", settings_views.save_settings, name="save"),
]
