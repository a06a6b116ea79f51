"""Quotas: how much one person may use, and the check every new answer passes first.

A person's effective limit of each kind is the strictest of their own quota, the quota of
each group they belong to, and the site default (``CORRAL_*`` settings). Limits count
answers in progress (``Message`` rows) and the usage ledger (``AnswerRecord`` rows, kept
when a conversation is deleted, none for imported answers):

- concurrent answers: queued or running now;
- messages per minute: answers *created* in the last 60 s, whatever their status, so a
  send-then-stop loop is limited too;
- tokens per day: prompt + completion tokens of answers created since 00:00 UTC.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, Group
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Count, Min, Q, Sum
from django.utils import timezone

from webui import config
from webui.accounts.models import Quota
from webui.chat.models import AnswerRecord, Message

KINDS = ("tokens_per_day", "messages_per_minute", "concurrent_answers")
RATE_WINDOW = timedelta(seconds=60)
# Each kind's site default: its key in settings.CORRAL, also its name in webui.config
# (the fallback: tests override CORRAL with dicts that may lack the newer keys).
_DEFAULTS = {
    "tokens_per_day": "TOKENS_PER_DAY",
    "messages_per_minute": "MESSAGES_PER_MINUTE",
    "concurrent_answers": "MAX_ACTIVE_PER_USER",
}
# For messages: what one unit of each kind is called.
_UNITS = {
    "tokens_per_day": "tokens per day",
    "messages_per_minute": "messages per minute",
    "concurrent_answers": "answers at a time",
}
_CODES = {
    "tokens_per_day": "tokens",
    "messages_per_minute": "rate",
    "concurrent_answers": "concurrent",
}

Level = Literal["user", "group", "default"]


@dataclass(frozen=True)
class Limit:
    """One kind of limit: its value (None = unlimited) and the level that set it."""

    value: int | None = None
    level: Level | None = None
    group: str = ""  # the group's name when level == "group"

    @property
    def unlimited(self) -> bool:
        return self.value is None

    @property
    def source(self) -> str:
        """Where the limit comes from, for people reading a page."""
        if self.level == "user":
            return "personal quota"
        if self.level == "group":
            return f"group “{self.group}”"
        if self.level == "default":
            return "site default"
        return ""


@dataclass(frozen=True)
class Limits:
    tokens_per_day: Limit
    messages_per_minute: Limit
    concurrent_answers: Limit

    def items(self) -> list[tuple[str, Limit]]:
        return [(kind, getattr(self, kind)) for kind in KINDS]


@dataclass(frozen=True)
class Usage:
    """What counts against the limits right now."""

    active: int  # queued or running answers
    last_minute: int  # answers created in the last 60 s
    oldest_in_minute: datetime | None  # the earliest of those
    tokens_today: int  # prompt + completion tokens of answers created since 00:00 UTC
    now: datetime


def site_default(kind: str) -> int | None:
    """The site-wide limit of ``kind`` from the environment; 0 (or less) means unlimited."""
    key = _DEFAULTS[kind]
    value = settings.CORRAL.get(key, getattr(config, key))
    return value if value and value > 0 else None


def _quotas_of(user: AbstractBaseUser) -> tuple[Quota | None, list[Quota]]:
    """The person's own quota and their groups' quotas (by group name), in one query."""
    own, groups = None, []
    rows = Quota.objects.filter(Q(user=user) | Q(group__user=user)).select_related("group")
    for quota in rows.order_by("group__name").distinct():
        if quota.user_id == user.pk:
            own = quota
        else:
            groups.append(quota)
    return own, groups


def _strictest(candidates: list[Limit]) -> Limit:
    """The lowest set value; on a tie the first (personal, then groups, then default)."""
    best = Limit()
    for candidate in candidates:
        if candidate.value is None:
            continue
        if best.value is None or candidate.value < best.value:
            best = candidate
    return best


def effective_limits(user: AbstractBaseUser) -> Limits:
    """The strictest limit of each kind across the person, their groups and the site."""
    own, groups = _quotas_of(user)
    limits = {}
    for kind in KINDS:
        candidates = []
        if own is not None:
            candidates.append(Limit(getattr(own, kind), "user"))
        candidates += [Limit(getattr(q, kind), "group", q.group.name) for q in groups]
        candidates.append(Limit(site_default(kind), "default"))
        limits[kind] = _strictest(candidates)
    return Limits(**limits)


def start_of_day(now: datetime) -> datetime:
    """00:00 UTC of ``now``'s day: the daily token count starts here."""
    return now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def current_usage(
    user: AbstractBaseUser,
    now: datetime | None = None,
    *,
    active: bool = True,
    ledger: bool = True,
) -> Usage:
    """Everything the limits count: answers in progress, and from the usage ledger (which
    outlives deleted conversations) the answers of the last minute and today's tokens.
    ``active=False`` / ``ledger=False`` skip a part (counted as zero): every message sent
    asks, and a limit that is not set needs no count."""
    now = now or timezone.now()
    minute_ago = now - RATE_WINDOW
    midnight = start_of_day(now)
    recent = Q(created_at__gte=minute_ago)
    today = Q(created_at__gte=midnight)
    in_progress = 0
    if active:
        in_progress = Message.objects.filter(
            conversation__owner=user, role=Message.Role.ASSISTANT, status__in=Message.ACTIVE
        ).count()
    figures: dict[str, Any] = {"last_minute": 0, "oldest": None, "prompt": 0, "completion": 0}
    if ledger:
        figures = AnswerRecord.objects.filter(
            owner=user, created_at__gte=min(minute_ago, midnight)
        ).aggregate(
            last_minute=Count("pk", filter=recent),
            oldest=Min("created_at", filter=recent),
            prompt=Sum("prompt_tokens", filter=today),
            completion=Sum("completion_tokens", filter=today),
        )
    return Usage(
        active=in_progress,
        last_minute=figures["last_minute"],
        oldest_in_minute=figures["oldest"],
        tokens_today=(figures["prompt"] or 0) + (figures["completion"] or 0),
        now=now,
    )


def wait_text(delta: timedelta) -> str:
    """A wait for people, rounded up: "42 s", "60 s", "3 min", "5 h 12 min"."""
    seconds = max(1, math.ceil(delta.total_seconds()))
    if seconds <= 60:  # every wait for the message rate
        return f"{seconds} s"
    minutes = math.ceil(seconds / 60)
    hours, minutes = divmod(minutes, 60)
    if not hours:
        return f"{minutes} min"
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


IN_THE_BOX = "Your message is still in the box."


def check_admission(user: AbstractBaseUser) -> None:
    """Refuse a new answer that would exceed one of the person's limits, saying which and
    when it resets. Call it inside the transaction that saves the answer, after locking
    the person's row, so two tabs cannot both slip under a limit.

    Admins are not exempt: they share the same workers, and can raise their own quota.
    """
    limits = effective_limits(user)
    for kind, limit in limits.items():
        if limit.value == 0:  # set by an admin: waiting frees nothing
            raise ValidationError(
                f"Your limit is 0 {_UNITS[kind]} ({limit.source}), so you cannot send "
                f"messages for now; ask an admin to raise it. {IN_THE_BOX}",
                code=_CODES[kind],
            )
    tokens = limits.tokens_per_day.value
    concurrent = limits.concurrent_answers.value
    rate = limits.messages_per_minute.value
    usage = current_usage(
        user, active=concurrent is not None, ledger=tokens is not None or rate is not None
    )
    # The longest wait first: it is the one that decides when the person can send again.
    if tokens is not None and usage.tokens_today >= tokens:
        reset = start_of_day(usage.now) + timedelta(days=1)
        raise ValidationError(
            f"You have used {usage.tokens_today:,} of your {tokens:,} tokens for today; "
            f"the limit resets at 00:00 UTC (in {wait_text(reset - usage.now)}). {IN_THE_BOX}",
            code="tokens",
        )
    if concurrent is not None and usage.active >= concurrent:
        raise ValidationError(
            f"You already have {usage.active} answer{'s' if usage.active != 1 else ''} in "
            f"progress (the limit is {concurrent} at a time). Wait for one to finish or stop "
            "one; your message is still in the box.",
            code="concurrent",
        )
    if rate is not None and usage.last_minute >= rate and usage.oldest_in_minute is not None:
        wait = usage.oldest_in_minute + RATE_WINDOW - usage.now
        raise ValidationError(
            f"You have reached your limit of {rate:,} message{'s' if rate != 1 else ''} per "
            f"minute; you can send again in {wait_text(wait)}. {IN_THE_BOX}",
            code="rate",
        )


# Editing quotas (admins) ----------------------------------------------------------------


def quota_values(*, user: AbstractBaseUser | None = None, group: Group | None = None) -> dict:
    """The values stored at one level, for a form; all None when there is no quota row."""
    quota = Quota.objects.filter(user=user, group=group).first()
    return {kind: getattr(quota, kind) if quota else None for kind in KINDS}


def set_quota(
    *,
    user: AbstractBaseUser | None = None,
    group: Group | None = None,
    tokens_per_day: int | None,
    messages_per_minute: int | None,
    concurrent_answers: int | None,
) -> Quota | None:
    """Store one person's or one group's quota. All blank deletes the row: no limit at
    that level, and nothing left to confuse the next reader."""
    if (user is None) == (group is None):
        raise ValueError("a quota is for one user or one group")
    values = {
        "tokens_per_day": tokens_per_day,
        "messages_per_minute": messages_per_minute,
        "concurrent_answers": concurrent_answers,
    }
    owner = {"user": user} if user is not None else {"group": group}
    with transaction.atomic():
        if all(value is None for value in values.values()):
            Quota.objects.filter(**owner).delete()
            return None
        quota, _ = Quota.objects.update_or_create(**owner, defaults=values)
    return quota
