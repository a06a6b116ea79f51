"""Ending an answer: the one helper that writes its final status.

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

from webui.chat import answer_records, streams
from webui.chat.models import Message


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
