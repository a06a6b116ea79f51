"""What admins do to people. Every change that takes rights away closes that person's
open websockets at once (webui.accounts.sessions)."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.contrib.auth.tokens import default_token_generator
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q, QuerySet
from django.urls import reverse
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode

from webui.accounts import sessions
from webui.accounts.models import Profile
from webui.chat import services


def search_people(query: str = "") -> QuerySet:
    people = get_user_model().objects.select_related("profile").order_by("username")
    query = query.strip()
    if query:
        people = people.filter(
            Q(username__icontains=query)
            | Q(email__icontains=query)
            | Q(profile__display_name__icontains=query)
        )
    return people


def pending_count() -> int:
    return Profile.objects.filter(approved=False, user__is_active=True).count()


def _not_yourself(actor: AbstractBaseUser, person: AbstractBaseUser, what: str) -> None:
    if actor.pk == person.pk:
        raise ValidationError(f"You cannot {what} yourself; ask another admin.")


def approve(person: AbstractBaseUser) -> None:
    Profile.objects.update_or_create(user=person, defaults={"approved": True})


def deactivate(actor: AbstractBaseUser, person: AbstractBaseUser) -> None:
    _not_yourself(actor, person, "deactivate")
    with transaction.atomic():
        person.is_active = False
        person.save(update_fields=["is_active"])
        sessions.end_all(person, "Your account was deactivated.")
    services.stop_answers_of(person)


def reactivate(person: AbstractBaseUser) -> None:
    person.is_active = True
    person.save(update_fields=["is_active"])


def promote(person: AbstractBaseUser) -> None:
    person.is_staff = True
    person.is_superuser = True
    person.save(update_fields=["is_staff", "is_superuser"])


def demote(actor: AbstractBaseUser, person: AbstractBaseUser) -> None:
    _not_yourself(actor, person, "demote")
    with transaction.atomic():
        person.is_staff = False
        person.is_superuser = False
        person.save(update_fields=["is_staff", "is_superuser"])
        sessions.close_sockets(person.pk, "Your role changed: reload the page.")


def password_reset_path(person: AbstractBaseUser) -> str:
    """A one-time link where the person sets a new password. It stops working once used
    (the token depends on the password hash) or after PASSWORD_RESET_TIMEOUT."""
    uid = urlsafe_base64_encode(force_bytes(person.pk))
    token = default_token_generator.make_token(person)
    return reverse("password_reset_confirm", kwargs={"uidb64": uid, "token": token})


def delete(actor: AbstractBaseUser, person: AbstractBaseUser) -> None:
    """Delete the person and, with them, their conversations."""
    _not_yourself(actor, person, "delete")
    with transaction.atomic():
        sessions.end_all(person, "Your account was deleted.")
        person.delete()
