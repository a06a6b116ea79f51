"""Pages for everyone: first-admin setup, sign-up (open, approval or invite), waiting for
approval, and one's own account (password, display name, sign out everywhere)."""

from __future__ import annotations

from typing import Any

from django.contrib import messages as flash
from django.contrib.auth import login, logout, update_session_auth_hash
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_not_required
from django.contrib.auth.forms import PasswordChangeForm, UserCreationForm
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from webui.accounts import invites, selectors, services, sessions
from webui.accounts.models import Profile, SignupMode, SiteSettings

# Users made here have no ``backend`` attribute; several backends are configured.
LOGIN_BACKEND = "django.contrib.auth.backends.ModelBackend"


@login_not_required
def first_admin_setup(request: HttpRequest, token: str) -> HttpResponse:
    if not services.setup_token_is_valid(token):
        raise Http404("This setup link is not valid.")
    errors: list[str] = []
    username = ""
    if request.method == "POST":
        username = request.POST.get("username", "").strip()
        password = request.POST.get("password", "")
        if password != request.POST.get("password2", ""):
            errors.append("The two passwords differ.")
        else:
            try:
                user = services.create_first_admin(
                    token=token, username=username, password=password
                )
            except ValidationError as exc:
                errors.extend(exc.messages)
            else:
                login(request, user, backend=LOGIN_BACKEND)
                return redirect("chat:home")
    return render(
        request,
        "accounts/setup.html",
        {"errors": errors, "username": username},
        status=400 if errors else 200,
    )


def _signup(request: HttpRequest, invite_token: str | None) -> HttpResponse:
    invite = invites.invite_for_token(invite_token) if invite_token else None
    if invite_token and invite is None:
        raise Http404("This invite link is not valid.")
    mode = SiteSettings.load().signup_mode
    if invite is None and mode == SignupMode.CLOSED:
        return render(request, "accounts/signup_closed.html", status=403)
    form = UserCreationForm(request.POST or None)
    status = 200
    if request.method == "POST":
        if form.is_valid():
            try:
                user = invites.sign_up(
                    username=form.cleaned_data["username"],
                    password=form.cleaned_data["password1"],
                    invite_token=invite_token,
                )
            except ValidationError as exc:
                form.add_error(None, exc)
            else:
                login(request, user, backend=LOGIN_BACKEND)
                return redirect("chat:home")  # or the waiting page, in approval mode
        status = 400
    context = {"form": form, "invite": invite, "approval": mode == SignupMode.APPROVAL}
    return render(request, "accounts/signup.html", context, status=status)


@login_not_required
def signup(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("chat:home")
    return _signup(request, None)


@login_not_required
def invite_signup(request: HttpRequest, token: str) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("chat:home")
    return _signup(request, token)


def waiting(request: HttpRequest) -> HttpResponse:
    if selectors.is_approved(request.user):
        return redirect("chat:home")
    return render(request, "accounts/waiting.html")


def account(request: HttpRequest) -> HttpResponse:
    """One's own account: display name, password, sessions."""
    password_form = PasswordChangeForm(request.user)
    if request.method == "POST" and request.POST.get("form") == "password":
        password_form = PasswordChangeForm(request.user, request.POST)
        if password_form.is_valid():
            user = password_form.save()
            update_session_auth_hash(request, user)  # this tab stays signed in...
            sessions.remember(user, request.session.session_key)  # ...under a new key
            sessions.end_all(
                user,
                "Your password changed: sign in again.",
                keep_session_key=request.session.session_key,
            )
            flash.success(request, "Password changed. Your other sessions were signed out.")
            return redirect("accounts:account")
    elif request.method == "POST" and request.POST.get("form") == "profile":
        name = " ".join(request.POST.get("display_name", "").split())[:150]
        Profile.objects.update_or_create(user=request.user, defaults={"display_name": name})
        flash.success(request, "Display name saved.")
        return redirect("accounts:account")
    context: dict[str, Any] = {
        "password_form": password_form,
        "display_name": selectors.display_name(request.user),
    }
    status = 400 if password_form.errors else 200
    return render(request, "accounts/account.html", context, status=status)


@require_POST
def sign_out_everywhere(request: HttpRequest) -> HttpResponse:
    sessions.end_all(request.user, "You signed out of every session.")
    logout(request)
    return redirect("login")


class PasswordResetConfirmView(auth_views.PasswordResetConfirmView):
    """Django's one-time reset link (made by an admin on the People page). Setting the
    password also ends every session and closes open sockets."""

    template_name = "accounts/password_reset_confirm.html"
    success_url = "/login/?reset=1"

    def form_valid(self, form: Any) -> HttpResponse:
        response = super().form_valid(form)
        sessions.end_all(form.user, "Your password was reset: sign in again.")
        return response
