"""The reaper: answers whose worker stopped beating are re-queued once (or continued from
their text, for backends that can) or failed; lost wake-ups and titles are sent again.

It runs in every worker's main process, which outlives a killed pool child; several
reapers are safe (every change is a conditional update).
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta
from typing import Any

from django.db import close_old_connections, connection, transaction
from django.db.models import DateTimeField, ExpressionWrapper, Q
from django.db.models.expressions import CombinedExpression
from django.db.models.functions import Now

from webui import config
from webui.chat import queue, stop_flags, streams, wakeups
from webui.chat.endings import (
    STOPPED_BY_USER,
    continues_partial,
    end_answer,
    end_queued,
    requeue,
)
from webui.chat.models import Message
from webui.library import ollama_servers
from webui.library.jobs import fail_lost_jobs, resend_waiting_jobs
from workers.outages import DATABASE_DOWN, OutageGrace
from workers.titles import requeue_lost_titles

logger = logging.getLogger("corral.reaper")

WORKER_LOST = "Worker lost: the worker running this answer stopped responding."


def _before(
    now: datetime | Now, seconds: float
) -> datetime | ExpressionWrapper[CombinedExpression]:
    """``seconds`` before ``now``, in SQL when ``now`` is the database's ``Now()``."""
    if isinstance(now, datetime):
        return now - timedelta(seconds=seconds)
    return ExpressionWrapper(now - timedelta(seconds=seconds), output_field=DateTimeField())


def reap_stale(now: datetime | None = None) -> list[int]:
    """Re-queue (once) or fail running answers whose worker stopped beating."""
    # By the database's clock, which wrote the heartbeats (tests may pass their own).
    now_: datetime | Now = now or Now()
    limit = _before(now_, config.HEARTBEAT_STALE_S)
    is_stale = Q(heartbeat_at__lt=limit) | Q(heartbeat_at__isnull=True, started_at__lt=limit)
    stale = Message.objects.filter(is_stale, status=Message.Status.RUNNING).select_related("model")
    reaped = []
    for answer in stale:
        lost_worker, attempt = answer.worker, answer.attempts
        # Still this attempt and still stale (a late beat saves it). Not an equality on
        # heartbeat_at: SQLite keeps Now() and Python datetimes in two text forms.
        same_attempt = is_stale & Q(status=Message.Status.RUNNING, attempts=answer.attempts)
        if stop_flags.stop_requested(answer.pk, answer.attempts):
            # Stop was pressed while its worker was dying: honour it, do not re-run.
            changed = end_answer(
                answer,
                Message.Status.STOPPED,
                STOPPED_BY_USER,
                only=same_attempt,
                finished_at=now_,
                **_delivered(answer),
            )
        elif answer.attempts < config.MAX_ATTEMPTS and answer.model is not None:
            changed = _requeue(answer, same_attempt)
        else:
            changed = end_answer(
                answer,
                Message.Status.FAILED,
                WORKER_LOST,
                only=same_attempt,
                finished_at=now_,
                **_delivered(answer),
            )
        if changed:
            stop_flags.revoke(answer.pk, attempt)
            if answer.status == Message.Status.QUEUED and stop_flags.stop_requested(
                answer.pk, attempt
            ):
                # Stop was pressed after the look above, and saw the attempt still
                # running (this re-queue not committed yet): it is ours to honour.
                end_queued(answer, Message.Status.STOPPED, STOPPED_BY_USER)
            reaped.append(answer.pk)
            if answer.model is not None:
                _publish_queue_after_commit(answer.model.pool)
            logger.warning(
                "answer %s: worker %s lost (attempt %s) -> %s",
                answer.pk,
                lost_worker,
                answer.attempts,
                answer.status,
            )
    return reaped


def _publish_queue_after_commit(pool: str) -> None:
    transaction.on_commit(lambda: queue.publish_queue(pool), robust=True)


def _requeue(answer: Message, same_attempt: Q) -> bool:
    """Queue ``answer`` for one more attempt; it keeps what a continuing backend needs."""
    return requeue(answer, only=same_attempt, kept=_kept_for_next_attempt(answer))


def _delivered(answer: Message) -> dict[str, Any]:
    """Everything the lost attempt delivered: its checkpoint plus the text streamed after
    it (readers were shown it; the ended answer must not take it back)."""
    more, seq = streams.delivered_after(answer.pk, answer.attempts, answer.seq, len(answer.content))
    return {"content": answer.content + more, "seq": seq}


def _kept_for_next_attempt(answer: Message) -> dict[str, Any]:
    """What a re-run starts from. A backend that continues partial answers goes on from
    everything the lost attempt delivered (its checkpoint plus the streamed text after it);
    others write the answer anew."""
    return _delivered(answer) if continues_partial(answer) else {"content": "", "seq": 0}


def wake_forgotten_queues(now: datetime | None = None) -> list[str]:
    """Wake pools whose queued answers have waited with nothing running: their wake-up
    message was lost (Redis restarted without persistence, broker down at send time)."""
    limit = _before(now or Now(), config.HEARTBEAT_STALE_S)
    pools = set(
        Message.objects.filter(status=Message.Status.QUEUED, created_at__lt=limit)
        .exclude(model=None)
        .values_list("model__pool", flat=True)
    )
    busy = set(
        Message.objects.filter(status=Message.Status.RUNNING).values_list("model__pool", flat=True)
    )
    for pool in sorted(pools - busy):
        wakeups.wake(pool)
    return sorted(pools - busy)


def fail_orphans() -> list[int]:
    """Queued answers whose model was deleted can never run: say so, and free the slot."""
    return [
        answer.pk
        for answer in Message.objects.filter(status=Message.Status.QUEUED, model=None)
        if end_queued(answer, Message.Status.FAILED, "The model of this answer was deleted.")
    ]


_server_checks: threading.Thread | None = None


def _check_servers_once() -> None:
    try:
        ollama_servers.check_due()
    except Exception:
        logger.warning("Ollama server checks failed", exc_info=True)
    finally:
        connection.close()


def _check_ollama_servers() -> None:
    """In a thread of its own: a server that does not answer takes seconds to give up on,
    and the reaper must not wait for it."""
    global _server_checks
    if _server_checks is None or not _server_checks.is_alive():
        _server_checks = threading.Thread(
            target=_check_servers_once, name="corral-ollama-checks", daemon=True
        )
        _server_checks.start()


def run_reaper_forever(stop: threading.Event) -> None:
    """Body of the reaper thread in every worker's main process."""
    grace = OutageGrace()
    while not stop.wait(config.REAP_INTERVAL_S):
        try:
            close_old_connections()
            fail_orphans()
            if grace.over():
                reap_stale()
                fail_lost_jobs()
                resend_waiting_jobs()
            wake_forgotten_queues()
            requeue_lost_titles()
            _check_ollama_servers()
        except DATABASE_DOWN:
            grace.outage_seen()
            logger.warning("reaper pass failed: the database is unreachable", exc_info=True)
        except Exception:
            logger.warning("reaper pass failed", exc_info=True)
    connection.close()
