"""Automatic titles: after a conversation's first answer, its model writes a short title.

A title is a low-priority job on the model's own pool: a worker takes it only when no
answer waits in that pool, and gives it up (to run again later) as soon as one arrives,
so it never delays anyone's answer, and for a while it does not make a worker give up a
loaded model either (``_writable_here``). A title the person wrote is never overwritten.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from datetime import datetime, timedelta
from typing import cast

from django.db.models import Q, QuerySet
from django.db.models.functions import Now

from inference import (
    BackendError,
    ChatMessage,
    GenerationRequest,
    Role,
    SamplingOptions,
    get_backend,
    loaded_models,
)
from webui import config
from webui.chat import queue, selectors, streams
from webui.chat.models import Backend, Conversation, Message, TitleStatus, storable_text
from workers.generation import model_spec

logger = logging.getLogger("corral.titles")

TITLE_CHARS = 80
EXCERPT_CHARS = 1500
INSTRUCTION = (
    "Write a title of at most six words for the conversation above. "
    "Reply with the title only: no quotes, no punctuation at the end."
)
OPTIONS = SamplingOptions(temperature=0.2, max_tokens=20, repeat_penalty=1.1)
ANSWER_WAITING_POLL_S = 0.2
LOST_AFTER = timedelta(minutes=2)
# How long a title whose model is not loaded waits for a worker that has it (or room for
# it), counted from its conversation's last change; then any worker writes it.
WAIT_FOR_LOADED_MODEL = timedelta(minutes=10)


def request_title(answer: Message) -> bool:
    """After ``answer`` finished: ask for a title if the conversation still has its
    provisional one. True if a title job now waits."""
    if not config.AUTO_TITLE or answer.status != Message.Status.DONE or not answer.content:
        return False
    return bool(
        Conversation.objects.filter(
            pk=answer.conversation_id, title_status=TitleStatus.PROVISIONAL
        ).update(title_status=TitleStatus.PENDING)
    )


def pending_in(pool: str) -> bool:
    return Conversation.objects.filter(title_status=TitleStatus.PENDING, model__pool=pool).exists()


def _writable_here(pool: str) -> QuerySet[Conversation]:
    """The pool's conversations waiting for a title that this process may write. A title
    does not make it give up a loaded model (the next answer for that one would wait
    seconds to load it again): when it holds as many as it may, titles of models it has
    not loaded wait for a worker that has theirs loaded or room for it, for
    ``WAIT_FOR_LOADED_MODEL`` at most; then any worker writes them."""
    pending = Conversation.objects.filter(
        title_status=TitleStatus.PENDING, model__pool=pool, model__enabled=True
    )
    loaded = loaded_models()
    if len(loaded) >= config.MAX_LOADED_MODELS:
        pending = pending.exclude(
            Q(model__backend=Backend.LLAMA_CPP)
            & ~Q(model__target__in=loaded)
            & Q(updated_at__gt=Now() - WAIT_FOR_LOADED_MODEL)  # the database's clock
        )
    return pending


def _claim(pool: str) -> Conversation | None:
    if queue.anything_queued(pool):
        return None
    for conversation in _writable_here(pool).order_by("updated_at")[:5]:
        claimed = Conversation.objects.filter(
            pk=conversation.pk, title_status=TitleStatus.PENDING
        ).update(title_status=TitleStatus.RUNNING, title_claimed_at=Now())
        if claimed:
            return Conversation.objects.select_related("model").get(pk=conversation.pk)
    return None


def title_request(conversation: Conversation) -> GenerationRequest:
    """The start of the conversation on screen, then the instruction."""
    assert conversation.model is not None
    branch, _ = selectors.current_branch(conversation)
    excerpt = tuple(
        ChatMessage(role=cast(Role, m.role), content=m.content[:EXCERPT_CHARS])
        for m in branch[:2]
        if m.content and m.role in (Message.Role.USER, Message.Role.ASSISTANT)
    )
    return GenerationRequest(
        model=model_spec(conversation.model),
        messages=(*excerpt, ChatMessage(role="user", content=INSTRUCTION)),
        options=OPTIONS,
        background=True,
    )


def title_from_model_text(text: str) -> str:
    """The first line of what the model wrote, without markdown, quotes or a label."""
    line = next((part for part in text.strip().splitlines() if part.strip()), "")
    line = re.sub(r"[*_`#]", "", storable_text(line)).strip()
    line = re.sub(r"^(-\s+|title\s*:\s*)", "", line, flags=re.IGNORECASE)
    line = line.strip().strip("\"'“”‘’").strip().rstrip(".:;,")
    line = " ".join(line.split())
    return line[:TITLE_CHARS].strip()


def run_next_title(pool: str, give_way: threading.Event | None = None) -> Conversation | None:
    """Write the title of one conversation waiting for it in ``pool``, unless an answer
    waits (or ``give_way`` is set: the worker claimed one); None when there was nothing
    to do."""
    conversation = _claim(pool)
    if conversation is None:
        return None
    try:
        title = _generate(conversation, pool, give_way or threading.Event())
    except BackendError as exc:
        logger.warning("title of conversation %s failed: %s", conversation.pk, exc)
        title = ""  # keep the provisional title; do not try again
    if title is None:  # an answer arrived: give way, try again later
        Conversation.objects.filter(pk=conversation.pk, title_status=TitleStatus.RUNNING).update(
            title_status=TitleStatus.PENDING
        )
        return conversation
    fields: dict[str, str] = {"title_status": TitleStatus.AUTO}
    if title:
        fields["title"] = title
    # Conditional: a rename while the model was writing wins.
    saved = Conversation.objects.filter(
        pk=conversation.pk, title_status=TitleStatus.RUNNING
    ).update(**fields)
    if saved and title:
        streams.publish_user_event(
            conversation.owner_id,
            {"type": "conversation.title", "conversation": conversation.pk, "title": title},
        )
    return conversation


def _generate(conversation: Conversation, pool: str, give_way: threading.Event) -> str | None:
    """The cleaned title, or None if an answer started waiting meanwhile."""
    request = title_request(conversation)
    assert conversation.model is not None
    text = ""
    next_check = time.monotonic() + ANSWER_WAITING_POLL_S
    # ``give_way`` also reaches the backend: a long prompt evaluation stops for it too.
    items = get_backend(conversation.model.backend).stream(request, give_way)
    try:
        for item in items:
            if give_way.is_set():
                return None
            if time.monotonic() >= next_check:
                if queue.anything_queued(pool):
                    return None
                next_check = time.monotonic() + ANSWER_WAITING_POLL_S
            text += getattr(item, "text", "")
    finally:
        items.close()
    if give_way.is_set():  # the stream ended early because the worker took an answer
        return None
    return title_from_model_text(text)


def requeue_lost_titles(now: datetime | None = None) -> int:
    """Titles still "running" long after a worker took them: that worker died. They wait
    again (the reaper calls this). A title takes a second or two, so the margin is wide."""
    limit = (now - LOST_AFTER) if now is not None else Now() - LOST_AFTER  # the database's clock
    return Conversation.objects.filter(
        title_status=TitleStatus.RUNNING, title_claimed_at__lt=limit
    ).update(title_status=TitleStatus.PENDING)
