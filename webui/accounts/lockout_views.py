"""Admins' page of sign-in lockouts, with an Unlock button per entry. Logic lives in
webui.accounts.lockouts."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from webui.accounts import lockouts
from webui.accounts.decorators import admin_required


@admin_required
def lockout_list(request: HttpRequest) -> HttpResponse:
    context = {
        "lockouts": lockouts.locked_out(),
        "failure_limit": lockouts.failure_limit(),
        "cooloff_minutes": lockouts.cooloff_minutes(),
    }
    return render(request, "accounts/lockouts.html", context)


@admin_required
@require_POST
def unlock(request: HttpRequest) -> HttpResponse:
    username = request.POST.get("username", "")
    if lockouts.unlock(username):
        messages.success(request, f"{username} can sign in again.")
    else:
        messages.info(request, f"{username or 'That username'} was not locked out.")
    return redirect("lockouts:list")
