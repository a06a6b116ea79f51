"""Answers as durable jobs: taking one from the queue, and knowing it is still ours.

The assistant message row *is* the job: status (queued → running → done | failed |
stopped), attempts, the worker holding it, a heartbeat, and the text so far. Celery
messages only wake a worker of a pool up ("run the next job of pool X"); the worker then
claims the fairest queued job from the database. So a lost, duplicated or redelivered
Celery message can never lose an answer or make a second one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from django.db.models import F, Q
from django.db.models.functions import Now

from webui.chat import queue, stop_flags, streams, wakeups
from webui.chat.endings import STOPPED_BY_USER, end_queued
from webui.chat.models import Message

logger = logging.getLogger("corral.claims")


def claim_next(
    pool: str, worker: str, fits: Callable[[Message], bool] | None = None
) -> Message | None:
    """Take the fairest queued answer of the pool, or None when nothing waits (or the
    fairest does not fit: ``claim_in_order``)."""
    return next(claim_in_order(pool, worker, fits), None)


def claim_in_order(
    pool: str, worker: str, fits: Callable[[Message], bool] | None = None
) -> Iterator[Message]:
    """Take the pool's queued answers one after another in its fair order, read once, as
    the caller asks for the next (a burst of sends is claimed in one pass, not a reading of
    the whole queue per answer).

    A follow-up waits while the answer before it is still being written: its prompt must
    contain that answer. ``fits`` says whether the worker can run an answer beside those it
    runs (the caller starts each one it is given before asking for the next); at the first
    that does not fit, nothing more is taken (it must not be overtaken forever by answers
    that do)."""
    for candidate in queue.queue_of(pool):
        if queue.waits_for_earlier_answer(candidate):
            continue
        answer = _load(candidate.pk)
        if answer is None or answer.status != Message.Status.QUEUED:
            continue  # another worker took it (or it was stopped) since the reading
        if fits is not None and not fits(answer):
            return
        leftovers = stop_flags.leftovers_of(answer.pk, answer.attempts + 1)
        # Before the row says running: a client that reads it then (a snapshot) merges the
        # attempt's replay buffer, which must not hold an earlier run's deltas (ids repeat
        # when a database is reset while Redis keeps its keys). Nobody has written this
        # attempt yet: a worker that claims it first streams only after its prompt.
        streams.reset_replay(answer.pk, answer.attempts + 1)
        claimed = Message.objects.filter(pk=answer.pk, status=Message.Status.QUEUED).update(
            status=Message.Status.RUNNING,
            # The database's clock, as for every heartbeat and the reaper: a worker host
            # whose clock is off changes nothing.
            started_at=Now(),
            heartbeat_at=Now(),
            worker=worker,
            attempts=F("attempts") + 1,
            version=F("version") + 1,
        )
        if not claimed:
            continue  # taken first: next
        try:
            loaded = _load(answer.pk)
            if loaded is None:
                continue  # deleted meanwhile
            if loaded.attempts == answer.attempts + 1:
                stop_flags.clear_leftovers(leftovers)
            else:  # changed hands between the reading and the claim: not what was reset
                streams.reset_replay(loaded.pk, loaded.attempts)
        except Exception:
            give_back(answer.pk, worker)
            raise
        yield loaded


def give_back(pk: int, worker: str) -> bool:
    """Undo a claim whose answer this worker could not start: queued again as it was,
    the attempt not spent (else it waits for the reaper and, at its last attempt, fails
    as "Worker lost" though nothing ran it). A Stop pressed on the claim ends it there
    (the next claim of that attempt takes its flag for a leftover). Best effort: with the
    database down, the reaper deals with it."""
    try:
        claimed = Message.objects.filter(pk=pk, status=Message.Status.RUNNING, worker=worker)
        attempt = claimed.values_list("attempts", flat=True).first()
        if attempt is None or not claimed.filter(attempts=attempt).update(
            status=Message.Status.QUEUED,
            attempts=F("attempts") - 1,
            worker="",
            heartbeat_at=None,
            version=F("version") + 1,
        ):
            return False
        if stop_flags.stop_requested(pk, attempt):
            answer = Message.objects.get(pk=pk)
            end_queued(answer, Message.Status.STOPPED, STOPPED_BY_USER)
            stop_flags.clear(pk, attempt)
        return True
    except Exception:
        logger.warning("answer %s: could not give it back to the queue", pk, exc_info=True)
        return False


def _load(pk: int) -> Message | None:
    return Message.objects.select_related("model", "conversation").filter(pk=pk).first()


def still_ours(answer: Message) -> Q:
    """Rows this attempt may still write: a reaper may have re-queued or failed it."""
    return Q(pk=answer.pk, status=Message.Status.RUNNING, attempts=answer.attempts)


def wake_follow_ups(answer: Message) -> list[str]:
    """Queued follow-ups waited for ``answer`` to end; those of other pools have no
    worker watching for that, so wake one there. (In its own pool, the worker that ran
    ``answer`` claims them.)"""
    pool = answer.model.pool if answer.model is not None else None
    pools = set(
        Message.objects.filter(status=Message.Status.QUEUED, parent__parent_id=answer.pk)
        .exclude(model=None)
        .values_list("model__pool", flat=True)
    ) - {pool}
    for other in sorted(pools):
        wakeups.wake(other)
    return sorted(pools)
