from django.urls import path

from webui.accounts import lockout_views

app_name = "lockouts"
urlpatterns = [
    path("manage/lockouts/", lockout_views.lockout_list, name="list"),
    path("manage/lockouts/unlock/", lockout_views.unlock, name="unlock"),
]
