from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest, HttpResponse
from django.urls import include, path

from webui.accounts import urls as account_urls
from webui.accounts import views as account_views
from webui.chat.metrics_views import metrics_view


@login_not_required
def healthz(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok", content_type="text/plain")


urlpatterns = [
    path("admin/", admin.site.urls),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("setup/<str:token>/", account_views.first_admin_setup, name="setup"),
    path("healthz", healthz, name="healthz"),
    path("metrics", metrics_view, name="metrics"),
    path("", include("webui.accounts.urls")),
    path("", include((account_urls.manage_patterns, "manage"))),
    path(
        "reset/<uidb64>/<token>/",
        account_views.PasswordResetConfirmView.as_view(),
        name="password_reset_confirm",
    ),
    path("", include("webui.accounts.usage_urls")),
    path("", include("webui.accounts.lockout_urls")),
    path("", include("webui.chat.conversation_urls")),
    path("", include("webui.chat.settings_urls")),
    path("", include("webui.chat.urls")),
    path("", include("webui.library.urls")),
]
