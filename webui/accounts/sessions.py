"""Sessions a person holds, and ending them: one (sign out), all (sign out everywhere),
or all but the current one (password change). Open websockets of an ended session are
closed through the person's channel group; every socket message re-checks the session
too (webui.accounts.selectors.session_user), so a missed event cannot keep one alive."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.contrib.sessions.models import Session
from django.db import transaction

from webui.accounts.models import UserSession
from webui.chat import streams

SIGNED_OUT = "signed_out"


def remember(user: AbstractBaseUser, session_key: str | None) -> None:
    if session_key:
        UserSession.objects.update_or_create(session_key=session_key, defaults={"user": user})


def close_sockets(
    user_id: int,
    reason: str,
    *,
    session_key: str | None = None,
    keep_session_key: str | None = None,
) -> None:
    """Close the person's open sockets (only those of ``session_key`` if given; all but
    ``keep_session_key`` if given), after commit. The page says ``reason``."""
    streams.publish_user_event(
        user_id,
        {
            "type": "account.revoked",
            "reason": reason,
            "session": session_key,
            "keep_session": keep_session_key,
        },
    )


def forget(session_key: str | None, user_id: int | None) -> None:
    """A session was signed out: drop its record and close its sockets."""
    if not session_key:
        return
    UserSession.objects.filter(session_key=session_key).delete()
    if user_id is not None:
        close_sockets(user_id, "You signed out.", session_key=session_key)


def end_all(user: AbstractBaseUser, reason: str, *, keep_session_key: str | None = None) -> int:
    """Sign the person out of every session (but ``keep_session_key``) and close sockets."""
    with transaction.atomic():
        keys = list(
            UserSession.objects.filter(user=user)
            .exclude(session_key=keep_session_key or "")
            .values_list("session_key", flat=True)
        )
        Session.objects.filter(session_key__in=keys).delete()
        UserSession.objects.filter(session_key__in=keys).delete()
        close_sockets(user.pk, reason, keep_session_key=keep_session_key)
    return len(keys)
