"""Ending an answer (the one helper that writes its final status), and putting a running
one back in the queue.

Every path that ends an answer goes through ``end_answer``: the worker saving its outcome,
Stop of a queued answer, the reaper, an answer whose model is gone. Each is a conditional
update (the row must still be in the state the caller saw), so two paths racing to end
one answer cannot both win, and the winner records the usage and tells the clients.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models import F, Q
from django.db.models.functions import Now

from inference import BackendError, get_backend
from webui.chat import answer_records, streams, wakeups
from webui.chat.models import Message

STOPPED_BY_USER = "Stopped by the user."


def end_answer(
    answer: Message, status: str, error: str = "", *, only: Q | None = None, **fields: Any
) -> bool:
    """Give ``answer`` its final ``status`` and ``error`` (and ``fields``: its text, usage,
    timings) if its row still matches ``only``; then record its usage and tell its clients
    after commit. False if another path changed the row first."""
    values = {"finished_at": Now(), **fields}
    with transaction.atomic():
        changed = Message.objects.filter(only or Q(), pk=answer.pk).update(
            status=status, error=error, version=F("version") + 1, **values
        )
        if changed:
            answer.refresh_from_db()
            answer_records.record_outcome(answer)
            streams.publish_message(answer)
    return bool(changed)


def end_queued(answer: Message, status: str, error: str) -> bool:
    """End ``answer`` if it is still queued (no worker will claim it). False if a worker
    took it first."""
    return end_answer(answer, status, error, only=Q(status=Message.Status.QUEUED))


def requeue(answer: Message, *, only: Q, kept: dict[str, Any], wake_exclude: str = "") -> bool:
    """Put running ``answer`` back in the queue for its next attempt, starting from
    ``kept`` (its text and seq), if its row still matches ``only``; a worker of its pool
    is woken (not one on node ``wake_exclude``) and the clients told, after commit. The
    attempt stays spent: its number is the one a late write of the old run could match."""
    assert answer.model is not None
    with transaction.atomic():
        changed = Message.objects.filter(only, pk=answer.pk).update(
            status=Message.Status.QUEUED,
            **kept,
            worker="",
            error="",
            heartbeat_at=None,
            version=F("version") + 1,
        )
        if changed:
            wakeups.wake(answer.model.pool, exclude=wake_exclude)
            answer.refresh_from_db()
            answer_records.record_outcome(answer)
            streams.publish_message(answer)
    return bool(changed)


def continues_partial(answer: Message) -> bool:
    """Whether ``answer``'s backend goes on from a partial answer's text when re-queued
    (llama.cpp); else the next attempt writes it anew (Ollama)."""
    assert answer.model is not None
    try:
        return get_backend(answer.model.backend).continues_partial
    except BackendError:
        return False
