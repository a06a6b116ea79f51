from __future__ import annotations

from django.contrib.auth import login
from django.contrib.auth.decorators import login_not_required
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from webui.accounts import services


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
                login(request, user)
                return redirect("chat:home")
    return render(
        request,
        "accounts/setup.html",
        {"errors": errors, "username": username},
        status=400 if errors else 200,
    )


def waiting(request: HttpRequest) -> HttpResponse:
    return render(request, "accounts/waiting.html")
