"""Sign-in lockouts (django-axes): who is locked out now, unlocking, and the client address
the throttle counts by."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import datetime

from axes.helpers import get_cool_off
from axes.models import AccessAttempt
from axes.utils import reset
from django.conf import settings
from django.db.models import Max, Sum
from django.http import HttpRequest
from django.utils import timezone


@dataclass(frozen=True)
class Lockout:
    username: str
    ip_address: str
    failures: int
    last_attempt: datetime
    until: datetime | None  # None: no cool-off configured, locked until unlocked


def locked_out() -> list[Lockout]:
    """Username + address pairs at or over the failure limit, as axes counts them: failures
    inside the cool-off window, summed over user agents (rotating them does not help)."""
    cool_off = get_cool_off()
    attempts = AccessAttempt.objects.all()
    if cool_off is not None:
        attempts = attempts.filter(attempt_time__gte=timezone.now() - cool_off)
    rows = (
        attempts.values("username", "ip_address")
        .annotate(failures=Sum("failures_since_start"), last_attempt=Max("attempt_time"))
        .filter(failures__gte=failure_limit())
        .order_by("-last_attempt", "username")
    )
    return [
        Lockout(
            username=row["username"] or "",
            ip_address=row["ip_address"] or "",
            failures=row["failures"],
            last_attempt=row["last_attempt"],
            until=row["last_attempt"] + cool_off if cool_off is not None else None,
        )
        for row in rows
    ]


def failure_limit() -> int:
    return settings.AXES_FAILURE_LIMIT


def cooloff_minutes() -> int | None:
    """How long a lockout lasts after the last failure, in whole minutes; None: forever."""
    cool_off = get_cool_off()
    return None if cool_off is None else round(cool_off.total_seconds() / 60)


def unlock(username: str) -> int:
    """Forget every failed sign-in for this username, from every address; returns how many
    records were removed (0: it was not locked)."""
    if not username:
        return 0  # axes' reset() with no filter would forget everyone's failures
    return reset(username=username)


def client_ip(request: HttpRequest) -> str | None:
    """The address sign-in failures are counted by (AXES_CLIENT_IP_CALLABLE).

    REMOTE_ADDR, the connection's peer, unless the admin declared N reverse proxies
    (CORRAL_TRUSTED_PROXY_COUNT): each appends the address it saw to X-Forwarded-For, so the
    N-th entry from the right is the one the outermost proxy saw. Entries to its left are
    the client's own claims and are never trusted.
    """
    remote = request.META.get("REMOTE_ADDR") or None
    count = getattr(settings, "AXES_IPWARE_PROXY_COUNT", None) or 0
    if count <= 0:
        return remote
    chain = [p.strip() for p in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")]
    chain = [p for p in chain if p]
    if len(chain) < count:
        return remote  # did not come through the declared proxies
    candidate = chain[-count]
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        return remote
