"""Who may sign in and what they may use: site-wide sign-up mode, invites, approval,
quotas, and the sessions each person holds (so "sign out everywhere" can end them)."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import Group
from django.db import models
from django.db.models import Q


class SignupMode(models.TextChoices):
    CLOSED = "closed", "Closed: invite links only"
    APPROVAL = "approval", "Approval: new accounts wait for an admin"
    OPEN = "open", "Open: anyone can sign up"


class Role(models.TextChoices):
    USER = "user", "Person"
    ADMIN = "admin", "Admin"


class SiteSettings(models.Model):
    """One row (pk=1), made by the migration. Its row lock also serializes first-admin setup."""

    signup_mode = models.CharField(
        max_length=10, choices=SignupMode.choices, default=SignupMode.CLOSED
    )
    invite_days = models.PositiveSmallIntegerField(default=7)

    class Meta:
        verbose_name = "site settings"
        verbose_name_plural = "site settings"

    def __str__(self) -> str:
        return "Site settings"

    @classmethod
    def load(cls) -> SiteSettings:
        return cls.objects.get_or_create(pk=1)[0]


class Profile(models.Model):
    """What Django's user lacks: approval and a display name. Made for every new user."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="profile"
    )
    # False while an account made in approval mode waits for an admin.
    approved = models.BooleanField(default=True)
    display_name = models.CharField(max_length=150, blank=True)

    def __str__(self) -> str:
        return f"Profile of {self.user_id}"


class Invite(models.Model):
    """A one-time sign-up link. Only the token's hash is stored."""

    token_hash = models.CharField(max_length=64, unique=True)
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.USER)
    note = models.CharField(max_length=200, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    used_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"Invite {self.pk} ({self.role})"


class Quota(models.Model):
    """Limits for one person or one group; empty means "no limit of this kind here".
    A person's effective limit is the strictest of their own, their groups' and the default."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="quota",
    )
    group = models.OneToOneField(
        Group, null=True, blank=True, on_delete=models.CASCADE, related_name="quota"
    )
    tokens_per_day = models.PositiveIntegerField(null=True, blank=True)
    messages_per_minute = models.PositiveIntegerField(null=True, blank=True)
    concurrent_answers = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(user__isnull=False, group__isnull=True)
                | Q(user__isnull=True, group__isnull=False),
                name="quota_for_one_user_or_group",
            )
        ]

    def __str__(self) -> str:
        return f"Quota of {'user ' + str(self.user_id) if self.user_id else self.group}"


class UserSession(models.Model):
    """A session a person signed in with, so all of them can be ended at once."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="signed_in_sessions"
    )
    session_key = models.CharField(max_length=40, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"Session of {self.user_id}"
