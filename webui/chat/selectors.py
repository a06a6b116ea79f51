"""Read-side queries. Everything a user can reach is looked up through its owner."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import QuerySet

from webui.chat.models import Conversation, LanguageModel, Message


def conversations_for(user: AbstractBaseUser | AnonymousUser) -> QuerySet[Conversation]:
    return Conversation.objects.filter(owner_id=user.pk)


def get_conversation_for(
    user: AbstractBaseUser | AnonymousUser, conversation_id: int
) -> Conversation | None:
    """The user's conversation with this id, or None (callers answer 404)."""
    return conversations_for(user).filter(pk=conversation_id).first()


def get_message_for(user: AbstractBaseUser | AnonymousUser, message_id: int) -> Message | None:
    return (
        Message.objects.select_related("conversation")
        .filter(pk=message_id, conversation__owner_id=user.pk)
        .first()
    )


def enabled_models() -> QuerySet[LanguageModel]:
    return LanguageModel.objects.filter(enabled=True)


def message_payload(message: Message) -> dict[str, Any]:
    """What the browser needs to draw one message (snapshots and state events)."""
    return {
        "id": message.pk,
        "role": message.role,
        "content": message.content,
        "status": message.status,
        "error": message.error,
        "seq": message.seq,
        "attempt": message.attempts,
        "version": message.version,
        "model": message.model.name if message.model_id and message.model else None,
        "prompt_tokens": message.prompt_tokens,
        "completion_tokens": message.completion_tokens,
        "time_to_first_token_ms": message.time_to_first_token_ms,
        "tokens_per_second": message.tokens_per_second,
    }


def conversation_snapshot(conversation: Conversation) -> dict[str, Any]:
    from webui.chat import jobs

    messages = list(conversation.messages.select_related("model").all())
    payloads = [message_payload(message) for message in messages]
    pools = {m.model.pool for m in messages if m.status == Message.Status.QUEUED and m.model}
    places: dict[int, dict[str, Any]] = {}
    for pool in pools:
        places.update(jobs.queue_positions(pool))
    for payload in payloads:
        if payload["id"] in places:
            payload["queue"] = places[payload["id"]]
    return {
        "type": "snapshot",
        "conversation": {"id": conversation.pk, "title": str(conversation)},
        "messages": payloads,
    }
