from django.urls import path

from webui.accounts import views

app_name = "accounts"
urlpatterns = [
    path("waiting/", views.waiting, name="waiting"),
]
