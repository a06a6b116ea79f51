"""Conversation management: the sidebar list, rename, pin, archive and delete.

Everything is scoped to the owner: a conversation id that is not the person's own raises
``Conversation.DoesNotExist`` (views answer 404), exactly like one that does not exist.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import redis
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q

from webui.chat import selectors, services, stop_flags, streams
from webui.chat.models import Conversation, Message, TitleStatus

logger = logging.getLogger("corral.conversations")

SIDEBAR_PAGE_SIZE = 50
TITLE_MAX_CHARS = Conversation._meta.get_field("title").max_length or 200
# How long a delete waits for a running answer to notice its stop flag (polled every
# 0.25 s by the worker) before the rows go; the worker then drops the attempt by itself.
DELETE_GRACE_S = 2.0


# Sidebar -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SidebarPage:
    """One page of the sidebar: pinned first, then newest first.

    Iterating yields the conversations, so templates can loop over it directly.
    ``next_cursor`` is None on the last page.
    """

    items: list[Conversation]
    next_cursor: str | None
    cursor: str | None

    def __iter__(self) -> Iterator[Conversation]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


def _encode_cursor(conversation: Conversation) -> str:
    micros = int(conversation.updated_at.timestamp() * 1_000_000)
    return f"{int(conversation.pinned)}-{micros}-{conversation.pk}"


def _decode_cursor(cursor: str) -> tuple[bool, datetime, int] | None:
    try:
        pinned, micros, pk = (int(part) for part in cursor.split("-"))
        when = datetime.fromtimestamp(micros / 1_000_000, tz=UTC)
    except (ValueError, OverflowError, OSError):
        return None
    if pinned not in (0, 1) or pk < 1:
        return None
    return bool(pinned), when, pk


def _after(pinned: bool, updated_at: datetime, pk: int) -> Q:
    """Rows that come after (pinned, updated_at, pk) in (-pinned, -updated_at, -id) order."""
    same_pin_older = Q(pinned=pinned) & (
        Q(updated_at__lt=updated_at) | Q(updated_at=updated_at, pk__lt=pk)
    )
    return same_pin_older | Q(pinned=False) if pinned else same_pin_older


def sidebar_page(
    user: AbstractBaseUser | AnonymousUser,
    cursor: str | None = None,
    limit: int = SIDEBAR_PAGE_SIZE,
) -> SidebarPage:
    """A page of the person's unarchived conversations, keyset-paginated.

    The cursor is the last row's (pinned, updated_at, id), so every page is one index range
    scan on (owner, archived, -pinned, -updated_at, -id) with a LIMIT: no OFFSET, no COUNT,
    however many conversations there are. An unreadable cursor gives the first page.
    """
    rows = selectors.conversations_for(user).filter(archived=False)
    position = _decode_cursor(cursor) if cursor else None
    if position is not None:
        rows = rows.filter(_after(*position))
    rows = rows.only("id", "title", "pinned", "updated_at").order_by(
        "-pinned", "-updated_at", "-id"
    )
    items = list(rows[: limit + 1])
    more = len(items) > limit
    items = items[:limit]
    return SidebarPage(
        items=items,
        next_cursor=_encode_cursor(items[-1]) if more and items else None,
        cursor=cursor if position is not None else None,
    )


# Changes ------------------------------------------------------------------------------


def clean_title(title: str) -> str:
    """One line, trimmed, 1..TITLE_MAX_CHARS characters."""
    cleaned = " ".join((title or "").split())
    if not cleaned:
        raise ValidationError("Give the conversation a title.", code="empty")
    if len(cleaned) > TITLE_MAX_CHARS:
        raise ValidationError(
            f"A title can be at most {TITLE_MAX_CHARS} characters long.", code="too_long"
        )
    return cleaned


def rename(user: AbstractBaseUser, conversation_id: int, title: str) -> Conversation:
    """Set the title the person chose; marked USER so an automatic title never replaces it.

    The conversation keeps its place in the sidebar (renaming is not activity), and open
    tabs redraw their header from a fresh snapshot.
    """
    cleaned = clean_title(title)
    with transaction.atomic():
        changed = (
            selectors.conversations_for(user)
            .filter(pk=conversation_id)
            .update(title=cleaned, title_status=TitleStatus.USER)
        )
        if not changed:
            raise Conversation.DoesNotExist
        streams.publish_event(conversation_id, {"type": "conversation.changed"})
    return selectors.owned_conversation(user, conversation_id)


def set_pinned(user: AbstractBaseUser, conversation_id: int, pinned: bool) -> None:
    """Pin to (or unpin from) the top of the sidebar. Not activity: updated_at stays."""
    changed = selectors.conversations_for(user).filter(pk=conversation_id).update(pinned=pinned)
    if not changed:
        raise Conversation.DoesNotExist


def set_archived(user: AbstractBaseUser, conversation_id: int, archived: bool) -> None:
    """Hide from (or bring back to) the sidebar; search still finds archived ones."""
    changed = selectors.conversations_for(user).filter(pk=conversation_id).update(archived=archived)
    if not changed:
        raise Conversation.DoesNotExist


def _stop_active_answers(user: AbstractBaseUser, conversation: Conversation) -> list[int]:
    """Stop every queued or running answer of the conversation; their ids."""
    active = list(
        conversation.messages.filter(
            role=Message.Role.ASSISTANT, status__in=Message.ACTIVE
        ).values_list("pk", flat=True)
    )
    for message_id in active:
        try:
            services.stop_answer(user=user, message_id=message_id)
        except Message.DoesNotExist:
            pass
        except redis.RedisError:
            # Without the flag the worker still gives up at its next checkpoint, when it
            # finds the row gone.
            logger.warning("could not ask answer %s to stop", message_id, exc_info=True)
    return active


def _wait_until_ended(message_ids: list[int], grace_s: float) -> None:
    deadline = time.monotonic() + grace_s
    while Message.objects.filter(pk__in=message_ids, status__in=Message.ACTIVE).exists():
        if time.monotonic() >= deadline:
            return
        time.sleep(0.1)


def _forget_redis_keys(attempts: list[tuple[int, int]], still_running: set[int]) -> None:
    """Replay lists and stop flags of every attempt of every answer (best-effort: they
    expire within an hour anyway). The stop flag of an answer still running is kept, so
    its worker halts as soon as it looks."""
    pairs = [(message_id, n) for message_id, count in attempts for n in range(1, count + 1)]
    streams.delete_replays(pairs)
    for message_id, attempt in pairs:
        if message_id not in still_running:
            stop_flags.clear(message_id, attempt)


def delete_conversation(
    user: AbstractBaseUser, conversation_id: int, *, grace_s: float = DELETE_GRACE_S
) -> None:
    """Delete a conversation for good: stop its answers first, then delete its rows (its
    messages and share links go with it), then its Redis keys.

    Open tabs of the conversation are told, and their socket closes as "not available".
    """
    conversation = selectors.owned_conversation(user, conversation_id)
    active = _stop_active_answers(user, conversation)
    if active and grace_s > 0:
        _wait_until_ended(active, grace_s)
    with transaction.atomic():
        answers = list(
            Message.objects.filter(
                conversation_id=conversation.pk, role=Message.Role.ASSISTANT
            ).values_list("pk", "attempts", "status")
        )
        still_running = {pk for pk, _, status in answers if status == Message.Status.RUNNING}
        attempts = [(pk, count) for pk, count, _ in answers if count]
        streams.publish_event(conversation.pk, {"type": "conversation.changed"})
        conversation.delete()
        transaction.on_commit(
            lambda: _forget_redis_keys(attempts, still_running),
            robust=True,
        )
