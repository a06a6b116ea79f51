"""Sign-up: the site's mode, one-time invite links, and accounts waiting for approval."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from webui.accounts.models import Invite, Profile, Role, SignupMode, SiteSettings


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _check_days(days: int) -> None:
    if not 1 <= days <= 365:
        raise ValidationError("Invites last between 1 and 365 days.")


def create_invite(
    *, created_by: AbstractBaseUser, role: str = Role.USER, note: str = "", days: int | None = None
) -> tuple[Invite, str]:
    """A new one-time invite and its token (shown once; only its hash is kept)."""
    if role not in Role.values:
        raise ValidationError("Unknown role.")
    days = days or SiteSettings.load().invite_days
    _check_days(days)
    token = secrets.token_urlsafe(32)
    invite = Invite.objects.create(
        token_hash=_hash(token),
        role=role,
        note=note[:200],
        created_by=created_by,
        expires_at=timezone.now() + timedelta(days=days),
    )
    return invite, token


def usable_invites():
    """Unused, unrevoked, unexpired invites whose creator could still make them: a
    deactivated or deleted admin's links stop working, and a demoted admin's admin
    invites."""
    people = get_user_model().objects
    return (
        Invite.objects.filter(
            used_at__isnull=True, revoked_at__isnull=True, expires_at__gt=timezone.now()
        )
        # Subqueries, not joins: sign-up locks these rows (FOR UPDATE). A deleted creator
        # leaves NULL, which no subquery matches.
        .filter(created_by_id__in=people.filter(is_active=True).values("pk"))
        .exclude(role=Role.ADMIN, created_by_id__in=people.filter(is_staff=False).values("pk"))
    )


def invite_for_token(token: str) -> Invite | None:
    """The invite a link names, if it can still be used."""
    return usable_invites().filter(token_hash=_hash(token)).first()


def revoke_invite(invite_id: int) -> None:
    Invite.objects.filter(pk=invite_id, used_at__isnull=True).update(revoked_at=timezone.now())


def signup_allowed(invite_token: str | None) -> bool:
    """May someone open the sign-up form (with this invite, if any)?"""
    if invite_token:
        return invite_for_token(invite_token) is not None
    return SiteSettings.load().signup_mode != SignupMode.CLOSED


def sign_up(*, username: str, password: str, invite_token: str | None = None) -> AbstractBaseUser:
    """Create an account. In approval mode it waits for an admin, invited or not; an
    invite's role applies either way. The password was validated by the form."""
    with transaction.atomic():
        mode = SiteSettings.objects.select_for_update().get_or_create(pk=1)[0].signup_mode
        role = Role.USER
        invite = None
        if invite_token:
            invite = (
                usable_invites().select_for_update().filter(token_hash=_hash(invite_token)).first()
            )
            if invite is None:
                raise ValidationError("This invite link is no longer valid.", code="invite")
            role = invite.role
        elif mode == SignupMode.CLOSED:
            raise ValidationError("Sign-up is by invitation only.", code="closed")
        User = get_user_model()
        if User.objects.filter(username__iexact=username).exists():
            raise ValidationError("That username is taken.", code="username")
        admin = role == Role.ADMIN
        user = User.objects.create_user(
            username=username, password=password, is_staff=admin, is_superuser=admin
        )
        Profile.objects.update_or_create(
            user=user, defaults={"approved": mode != SignupMode.APPROVAL}
        )
        if invite is not None:
            invite.used_by = user
            invite.used_at = timezone.now()
            invite.save(update_fields=["used_by", "used_at"])
    return user


def set_signup_mode(mode: str, invite_days: int | None = None) -> SiteSettings:
    if mode not in SignupMode.values:
        raise ValidationError("Unknown sign-up mode.")
    site = SiteSettings.load()
    site.signup_mode = mode
    if invite_days is not None:
        _check_days(invite_days)
        site.invite_days = invite_days
    site.save()
    return site
