"""People whose account waits for approval can see one page and sign out; nothing else."""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import reverse

from webui.accounts.selectors import is_approved


class ApprovalRequiredMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        user = request.user
        if user.is_authenticated and not is_approved(user):
            allowed = (reverse("accounts:waiting"), reverse("logout"), settings.STATIC_URL)
            if not request.path.startswith(tuple("/" + p.lstrip("/") for p in allowed)):
                return redirect("accounts:waiting")
        return self.get_response(request)
