"""Read-only share links: the owner makes and revokes them; anyone with the token reads.

A shared page shows the conversation's title, the owner's display name and the finished
messages of the branch that was on screen when the link was made (what is written later
stays private), nothing else: no ids, no other conversation, no
account details. A revoked or unknown token is indistinguishable from a missing page.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import QuerySet
from django.utils import timezone

from webui.accounts.selectors import display_name
from webui.chat import selectors
from webui.chat.models import Message, SharedLink

# Longer than anything secrets.token_urlsafe(32) makes (43 characters); cheap to refuse.
MAX_TOKEN_CHARS = 64


def active_links(user: AbstractBaseUser, conversation_id: int) -> QuerySet[SharedLink]:
    """The conversation's links that still work, newest first."""
    conversation = selectors.owned_conversation(user, conversation_id)
    return conversation.shared_links.filter(revoked_at=None).order_by("-created_at", "-pk")


def create_link(user: AbstractBaseUser, conversation_id: int) -> SharedLink:
    """A new unguessable link (256 random bits) to the conversation."""
    conversation = selectors.owned_conversation(user, conversation_id)
    return SharedLink.objects.create(
        conversation=conversation,
        token=secrets.token_urlsafe(32),
        leaf_id=conversation.current_leaf_id,
    )


def revoke_link(user: AbstractBaseUser, conversation_id: int, link_id: int) -> None:
    """Turn a link off for good (the row stays, as a record)."""
    changed = SharedLink.objects.filter(
        pk=link_id,
        conversation_id=conversation_id,
        conversation__owner_id=user.pk,
        revoked_at=None,
    ).update(revoked_at=timezone.now())
    if (
        not changed
        and not SharedLink.objects.filter(
            pk=link_id, conversation_id=conversation_id, conversation__owner_id=user.pk
        ).exists()
    ):
        raise SharedLink.DoesNotExist


@dataclass(frozen=True)
class SharedConversation:
    title: str
    owner_name: str
    messages: list[dict[str, Any]]


def shared_conversation(token: str) -> SharedConversation | None:
    """What a link shows, or None for a revoked or unknown token (callers answer 404)."""
    if not token or len(token) > MAX_TOKEN_CHARS:
        return None
    link = (
        SharedLink.objects.select_related("conversation__owner")
        # A deactivated person's links go dark with their account.
        .filter(token=token, revoked_at=None, conversation__owner__is_active=True)
        .first()
    )
    if link is None:
        return None
    conversation = link.conversation
    everything = list(conversation.messages.select_related("model"))
    leaf = next((m for m in everything if m.pk == link.leaf_id), None)
    branch = selectors.branch_to(leaf, everything)
    messages = [
        {
            "role": message.role,
            "content": message.content,
            "model": message.model.name if message.model_id and message.model else None,
        }
        for message in branch
        if message.status not in Message.ACTIVE and message.content
    ]
    return SharedConversation(
        title=str(conversation) if conversation.title else "Shared conversation",
        owner_name=display_name(conversation.owner),
        messages=messages,
    )
