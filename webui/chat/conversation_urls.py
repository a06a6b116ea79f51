from django.urls import path

from webui.chat import conversation_views as views

app_name = "conversations"
urlpatterns = [
    path("search/", views.search_page, name="search"),
    path("import/", views.import_page, name="import"),
    path("c/<int:conversation_id>/rename/", views.rename, name="rename"),
    path("c/<int:conversation_id>/pin/", views.pin, name="pin"),
    path("c/<int:conversation_id>/archive/", views.archive, name="archive"),
    path("c/<int:conversation_id>/delete/", views.delete, name="delete"),
    path("c/<int:conversation_id>/export.md", views.export_markdown, name="export_markdown"),
    path("c/<int:conversation_id>/export.json", views.export_json, name="export_json"),
    path("c/<int:conversation_id>/share/", views.share, name="share"),
    path("c/<int:conversation_id>/share/<int:link_id>/revoke/", views.revoke, name="revoke_link"),
    path("s/<str:token>/", views.shared, name="shared"),
]
