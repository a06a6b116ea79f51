"""Signal receivers, connected in AccountsConfig.ready()."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.http import HttpRequest

from webui.accounts import sessions
from webui.accounts.models import Profile


def make_profile(sender: Any, instance: AbstractBaseUser, created: bool, **kwargs: Any) -> None:
    if created and not kwargs.get("raw"):
        Profile.objects.get_or_create(user=instance)


def remember_session(
    sender: Any, request: HttpRequest, user: AbstractBaseUser, **kwargs: Any
) -> None:
    if hasattr(request, "session"):
        sessions.remember(user, request.session.session_key)


def forget_session(
    sender: Any, request: HttpRequest, user: AbstractBaseUser | None, **kwargs: Any
) -> None:
    if hasattr(request, "session"):
        sessions.forget(request.session.session_key, user.pk if user is not None else None)
