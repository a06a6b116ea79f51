"""First-run setup: a one-time link, printed on the console, where the first admin is made.

No page ever makes the first visitor an admin: only someone who can read the server's
console (or run ``manage.py corral_setup_link``) gets the link, and it stops working as
soon as any user exists.
"""

from __future__ import annotations

import secrets

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.contrib.auth.password_validation import validate_password
from django.core import signing
from django.core.exceptions import ValidationError
from django.db import transaction

from webui.accounts.models import SiteSettings

SALT = "corral.first-admin-setup"
MAX_AGE_S = 7 * 24 * 3600


def needs_setup() -> bool:
    return not get_user_model().objects.exists()


def make_setup_token() -> str:
    return signing.dumps({"nonce": secrets.token_urlsafe(16)}, salt=SALT)


def setup_token_is_valid(token: str) -> bool:
    try:
        signing.loads(token, salt=SALT, max_age=MAX_AGE_S)
    except signing.BadSignature:
        return False
    return needs_setup()


def create_first_admin(*, token: str, username: str, password: str) -> AbstractBaseUser:
    User = get_user_model()
    with transaction.atomic():
        # Two people using the link at the same moment: both could see "no user yet" and
        # both become admins. Locking the one SiteSettings row first makes the second wait
        # here until the first commits, and then see its user (PostgreSQL row lock; SQLite's
        # IMMEDIATE transactions already serialize writers).
        SiteSettings.objects.select_for_update().get_or_create(pk=1)
        if not setup_token_is_valid(token):
            raise ValidationError("This setup link is no longer valid.")
        user = User(username=username, is_staff=True, is_superuser=True)
        User.username_validator(username)
        if not username:
            raise ValidationError("Choose a username.")
        validate_password(password, user)
        user.set_password(password)
        user.save()
    return user
