"""Handing an answer to another worker: a worker shutting down (SIGTERM, ``docker compose
stop``) finishes its answers, but one still running ``CORRAL_DRAIN_HANDOFF_S`` after is
stopped and put back in the queue at once, with the text it delivered, rather than killed
with the worker at the end of the grace period and found by the reaper seconds later.

It goes back exactly as the reaper would put it (the same continuation from the text, or
a fresh start for backends that cannot continue); the difference is the time it takes.
"""

from __future__ import annotations

import logging
from typing import Any

from django.db.models import Q

from webui.chat import stop_flags, streams
from webui.chat.endings import STOPPED_BY_USER, continues_partial, end_answer, requeue
from webui.chat.models import Message
from webui.chat.warm_routing import node_of
from workers.claims import still_ours
from workers.outages import DATABASE_DOWN, until_database_returns

logger = logging.getLogger("corral.handoff")


def hand_off(answer: Message, text: str, seq: int) -> Message:
    """Put ``answer``, whose run on this worker delivered ``text`` up to delta ``seq``,
    back in the queue; a worker on another node is woken for it. With the database gone
    for good, the answer is left as it is: the reaper continues it as after a crash."""
    attempt = answer.attempts
    kept = _kept(answer, text, seq)
    try:
        requeued = until_database_returns(
            lambda: requeue(
                answer, only=still_ours(answer), kept=kept, wake_exclude=node_of(answer.worker)
            )
        )
        if not requeued:
            return answer  # the reaper, or Stop, took it first
        logger.info("answer %s handed off after attempt %s", answer.pk, attempt)
        if stop_flags.stop_requested(answer.pk, attempt):
            # Stop came as it was handed off and saw it still running; the next attempt
            # never reads this one's flag, so it is honoured here.
            until_database_returns(lambda: _stop_next_attempt(answer, attempt, text, seq))
    except DATABASE_DOWN:
        logger.warning("answer %s: could not hand it off", answer.pk, exc_info=True)
        return answer
    finally:
        streams.flush(timeout=2)  # the process may end soon: the clients' last notices
    stop_flags.clear(answer.pk, attempt)
    return answer


def _stop_next_attempt(answer: Message, attempt: int, text: str, seq: int) -> None:
    """End the answer stopped while it waits in the queue; if another worker claimed it
    first, flag that attempt (its claim keeps a flag set after it)."""
    if end_answer(
        answer,
        Message.Status.STOPPED,
        STOPPED_BY_USER,
        only=Q(status=Message.Status.QUEUED),
        content=text,
        seq=seq,
    ):
        return
    answer.refresh_from_db()
    if answer.status == Message.Status.RUNNING and answer.attempts == attempt + 1:
        stop_flags.request_stop(answer.pk, attempt + 1)


def _kept(answer: Message, text: str, seq: int) -> dict[str, Any]:
    """What the next attempt starts from: all this run delivered, for a backend that
    continues a partial answer; else nothing (it is written anew)."""
    return {"content": text, "seq": seq} if continues_partial(answer) else {"content": "", "seq": 0}
