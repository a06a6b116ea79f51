from django.urls import path

from webui.accounts import manage_views, views

app_name = "accounts"
urlpatterns = [
    path("signup/", views.signup, name="signup"),
    path("invite/<str:token>/", views.invite_signup, name="invite"),
    path("waiting/", views.waiting, name="waiting"),
    path("account/", views.account, name="account"),
    path("account/sign-out-everywhere/", views.sign_out_everywhere, name="sign_out_everywhere"),
]

manage_patterns = [
    path("manage/people/", manage_views.people_page, name="people"),
    path("manage/people/<int:user_id>/delete/", manage_views.person_delete, name="person_delete"),
    path(
        "manage/people/<int:user_id>/do/<slug:action>/",
        manage_views.person_action,
        name="person_action",
    ),
    path("manage/invites/", manage_views.invites_page, name="invites"),
    path(
        "manage/invites/<int:invite_id>/revoke/", manage_views.invite_revoke, name="invite_revoke"
    ),
    path("manage/settings/", manage_views.settings_page, name="settings"),
    path("manage/groups/", manage_views.groups_page, name="groups"),
    path("manage/groups/<int:group_id>/", manage_views.group_page, name="group"),
    path("manage/models/", manage_views.models_page, name="models"),
    path("manage/models/register/", manage_views.register_model, name="register_model"),
    path("manage/models/<int:model_id>/", manage_views.model_page, name="model"),
]
