"""Read-side queries. Everything a user can reach is looked up through its owner."""

from __future__ import annotations

from typing import Any, TypedDict

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import Q, QuerySet

from webui.accounts.selectors import is_admin
from webui.chat.models import Conversation, LanguageModel, Message


def conversations_for(user: AbstractBaseUser | AnonymousUser) -> QuerySet[Conversation]:
    return Conversation.objects.filter(owner_id=user.pk)


def get_conversation_for(
    user: AbstractBaseUser | AnonymousUser, conversation_id: int
) -> Conversation | None:
    """The user's conversation with this id, or None (callers answer 404)."""
    return conversations_for(user).filter(pk=conversation_id).first()


def owned_conversation(
    user: AbstractBaseUser | AnonymousUser, conversation_id: int
) -> Conversation:
    """The user's conversation with this id; Conversation.DoesNotExist for anyone else's."""
    conversation = get_conversation_for(user, conversation_id)
    if conversation is None:
        raise Conversation.DoesNotExist
    return conversation


def get_message_for(user: AbstractBaseUser | AnonymousUser, message_id: int) -> Message | None:
    return (
        Message.objects.select_related("conversation")
        .filter(pk=message_id, conversation__owner_id=user.pk)
        .first()
    )


def enabled_models() -> QuerySet[LanguageModel]:
    return LanguageModel.objects.filter(enabled=True)


def models_for(user: AbstractBaseUser | AnonymousUser) -> QuerySet[LanguageModel]:
    """The enabled models this person may use: those open to everyone (no groups) and
    those of their groups. Admins may use every enabled model."""
    models = enabled_models()
    if is_admin(user):
        return models
    in_my_groups = LanguageModel.groups.through.objects.filter(group__user=user.pk).values(
        "languagemodel_id"
    )
    return models.filter(Q(groups=None) | Q(pk__in=in_my_groups)).distinct()


class MessagePayload(TypedDict):
    """One message as the browser draws it (snapshots and state events)."""

    id: int
    role: str
    parent: int | None
    content: str
    status: str
    error: str
    seq: int
    attempt: int
    version: int
    model: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    time_to_first_token_ms: int | None
    tokens_per_second: float | None


class SnapshotMessage(MessagePayload, total=False):
    """In a snapshot, a message also says which version of its turn it is, and a waiting
    answer its place in the queue."""

    versions: dict[str, Any]
    queue: dict[str, Any]


def message_payload(message: Message) -> MessagePayload:
    """What the browser needs to draw one message (snapshots and state events)."""
    return {
        "id": message.pk,
        "role": message.role,
        "parent": message.parent_id,
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


def branch_to(leaf: Message | None, messages: list[Message]) -> list[Message]:
    """The messages from the first one down to ``leaf``, following parent links."""
    by_id = {m.pk: m for m in messages}
    path = []
    node = by_id.get(leaf.pk) if leaf is not None else None
    while node is not None:
        path.append(node)
        node = by_id.get(node.parent_id) if node.parent_id else None
    return path[::-1]


def versions_of(message: Message, messages: list[Message]) -> list[int]:
    """Ids of the versions of ``message`` (itself included), oldest first."""
    return sorted(
        m.pk for m in messages if m.parent_id == message.parent_id and m.role == message.role
    )


def latest_leaf_under(message: Message, messages: list[Message]) -> Message:
    """Follow the newest child down from ``message``: where a version switch lands."""
    node = message
    while children := [m for m in messages if m.parent_id == node.pk]:
        node = max(children, key=lambda m: m.pk)
    return node


def current_branch(conversation: Conversation) -> tuple[list[Message], list[Message]]:
    """(the branch on screen, every message of the conversation)."""
    messages = list(conversation.messages.select_related("model"))
    leaf = next((m for m in messages if m.pk == conversation.current_leaf_id), None)
    if leaf is None and messages:
        leaf = messages[-1]
    return branch_to(leaf, messages), messages


def conversation_snapshot(conversation: Conversation) -> dict[str, Any]:
    from webui.chat import queue  # it orders messages selected here

    branch, everything = current_branch(conversation)
    payloads: list[SnapshotMessage] = []
    for message in branch:
        versions = versions_of(message, everything)
        payloads.append(
            {
                **message_payload(message),
                "versions": {"ids": versions, "index": versions.index(message.pk) + 1},
            }
        )
    pools = {m.model.pool for m in branch if m.status == Message.Status.QUEUED and m.model}
    places: dict[int, dict[str, Any]] = {}
    for pool in pools:
        places.update(queue.queue_positions(pool))
    for payload in payloads:
        if payload["id"] in places:
            payload["queue"] = places[payload["id"]]
    return {
        "type": "snapshot",
        "conversation": {"id": conversation.pk, "title": str(conversation)},
        "messages": payloads,
    }
