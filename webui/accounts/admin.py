"""Django's admin for people, made to take effect at once like the app's own pages:
deactivating, demoting, deleting or setting a password here also ends that person's
sessions or closes their open sockets (webui.accounts.sessions)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.http import HttpRequest, HttpResponse

from webui.accounts import sessions
from webui.accounts.models import Invite, SiteSettings
from webui.chat import services

User = get_user_model()


class CorralUserAdmin(UserAdmin):
    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        if not change:
            return
        if "is_active" in form.changed_data and not obj.is_active:
            sessions.end_all(obj, "Your account was deactivated.")
            services.stop_answers_of(obj)
        elif "is_staff" in form.changed_data and not obj.is_staff:
            sessions.close_sockets(obj.pk, "Your role changed: reload the page.")

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        sessions.end_all(obj, "Your account was deleted.")
        super().delete_model(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: Any) -> None:
        for person in queryset:
            sessions.end_all(person, "Your account was deleted.")
        super().delete_queryset(request, queryset)

    def user_change_password(
        self, request: HttpRequest, id: str, form_url: str = ""
    ) -> HttpResponse:
        response = super().user_change_password(request, id, form_url)
        if request.method == "POST" and response.status_code == 302:  # the form was saved
            person = User.objects.filter(pk=id).first()
            if person is not None:
                keep = request.session.session_key if person.pk == request.user.pk else None
                sessions.end_all(person, "Your password changed.", keep_session_key=keep)
        return response


admin.site.unregister(User)
admin.site.register(User, CorralUserAdmin)


@admin.register(SiteSettings)
class SiteSettingsAdmin(admin.ModelAdmin):
    list_display = ["signup_mode", "invite_days"]


@admin.register(Invite)
class InviteAdmin(admin.ModelAdmin):
    list_display = ["role", "note", "created_by", "created_at", "expires_at", "used_by"]
    readonly_fields = ["token_hash"]
