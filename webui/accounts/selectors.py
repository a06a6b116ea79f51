"""Read-side questions about people: may they chat, are they admins, is a socket's session
still theirs."""

from __future__ import annotations

from importlib import import_module

from django.conf import settings
from django.contrib.auth import HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.utils.crypto import constant_time_compare

from webui.accounts.models import Profile


def is_admin(user: AbstractBaseUser | AnonymousUser) -> bool:
    """Admins run people, groups, models and settings in the app."""
    return bool(user.is_authenticated and user.is_active and user.is_staff)


def is_approved(user: AbstractBaseUser | AnonymousUser) -> bool:
    """False while an account waits for an admin's approval (approval sign-up mode)."""
    if not user.is_authenticated:
        return False
    try:
        return user.profile.approved  # type: ignore[union-attr]
    except Profile.DoesNotExist:
        return True  # made outside the app (createsuperuser, fixtures): trusted


def can_chat(user: AbstractBaseUser | AnonymousUser) -> bool:
    return bool(user.is_authenticated and user.is_active and is_approved(user))


def display_name(user: AbstractBaseUser) -> str:
    try:
        name = user.profile.display_name  # type: ignore[union-attr]
    except Profile.DoesNotExist:
        name = ""
    return name or user.get_username()


def session_user(user_id: int | None, session_key: str | None) -> AbstractBaseUser | None:
    """The user a websocket's session still belongs to, or None if it was signed out,
    deactivated, unapproved, deleted, or its password changed since."""
    if user_id is None or not session_key:
        return None
    user = (
        get_user_model()
        .objects.select_related("profile")
        .filter(pk=user_id, is_active=True)
        .first()
    )
    if user is None or not can_chat(user):
        return None
    store = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    data = store.load()
    if str(data.get(SESSION_KEY)) != str(user_id):
        return None
    if not constant_time_compare(data.get(HASH_SESSION_KEY, ""), user.get_session_auth_hash()):
        return None
    return user
