from django.urls import path

from webui.accounts import usage_views

app_name = "usage"
urlpatterns = [
    path("usage/", usage_views.my_usage, name="mine"),
    path("manage/usage/", usage_views.everyone_usage, name="everyone"),
    path("manage/people/<int:user_id>/quota/", usage_views.person_quota, name="person_quota"),
    path("manage/groups/<int:group_id>/quota/", usage_views.group_quota, name="group_quota"),
]
