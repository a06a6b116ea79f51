"""Answers as durable jobs.

The assistant message row *is* the job: status (queued → running → done | failed |
stopped), attempts, the worker holding it, a heartbeat, and the text so far. Celery
messages only wake a worker of a pool up ("run the next job of pool X"); the worker then
claims the fairest queued job from the database. So a lost, duplicated or redelivered
Celery message can never lose an answer or make a second one.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from django.db import close_old_connections, connection, transaction
from django.db.models import Avg, DateTimeField, ExpressionWrapper, F, Max, Q
from django.db.models.functions import Now

from webui import config
from webui.chat import answer_records, wakeups
from webui.chat.models import Message
from workers import publish
from workers.queues import queue_for_pool

logger = logging.getLogger("corral.jobs")

WORKER_LOST = "Worker lost: the worker running this answer stopped responding."


def _queued_in(pool: str) -> list[Message]:
    return list(
        Message.objects.filter(
            role=Message.Role.ASSISTANT, status=Message.Status.QUEUED, model__pool=pool
        )
        .select_related("conversation", "model", "parent__parent")
        .order_by("created_at", "pk")
    )


def fair_order(queued: list[Message], last_start: dict[int, datetime]) -> list[Message]:
    """Round-robin across users: everyone's first waiting job, then everyone's second…;
    within a round, the user who was served longest ago goes first."""
    nth: dict[int, int] = defaultdict(int)
    keyed = []
    for message in queued:  # oldest first
        owner = message.conversation.owner_id
        served = last_start.get(owner)
        keyed.append(
            (
                (
                    nth[owner],
                    served is not None,
                    served or message.created_at,
                    message.created_at,
                    message.pk,
                ),
                message,
            )
        )
        nth[owner] += 1
    return [message for _, message in sorted(keyed, key=lambda pair: pair[0])]


def anything_queued(pool: str) -> bool:
    """One cheap query: whether any answer waits in the pool (before ordering them)."""
    return Message.objects.filter(
        role=Message.Role.ASSISTANT, status=Message.Status.QUEUED, model__pool=pool
    ).exists()


def queue_of(pool: str) -> list[Message]:
    """The pool's queued answers in the order workers will take them."""
    queued = _queued_in(pool)
    if len(queued) < 2:
        return queued  # nothing to order (the common case at idle: one query, not two)
    owners = {m.conversation.owner_id for m in queued}
    rows = (
        Message.objects.filter(
            conversation__owner_id__in=owners, model__pool=pool, started_at__isnull=False
        )
        .values("conversation__owner_id")
        .annotate(last=Max("started_at"))
    )
    return fair_order(queued, {row["conversation__owner_id"]: row["last"] for row in rows})


def expected_answer_seconds(pool: str) -> float | None:
    """From the last answers of the pool: their length over their measured tokens/s."""
    recent = Message.objects.filter(
        model__pool=pool, status=Message.Status.DONE, tokens_per_second__gt=0
    ).order_by("-finished_at")[:20]
    stats = Message.objects.filter(pk__in=list(recent.values_list("pk", flat=True))).aggregate(
        tokens=Avg("completion_tokens"), rate=Avg("tokens_per_second")
    )
    if not stats["tokens"] or not stats["rate"]:
        return None
    return stats["tokens"] / stats["rate"]


def _places(pool: str) -> list[tuple[Message, dict[str, Any]]]:
    order = queue_of(pool)
    if not order:
        return []
    per_answer = expected_answer_seconds(pool)
    slots = max(1, Message.objects.filter(status=Message.Status.RUNNING, model__pool=pool).count())
    # False only when Redis says no worker of the pool is alive: the page says so.
    worker = wakeups.has_live_worker(pool) is not False
    return [
        (
            message,
            {
                "pool": pool,
                "position": index,
                "eta_s": round(index * per_answer / slots) if per_answer and worker else None,
                "worker": worker,
            },
        )
        for index, message in enumerate(order, start=1)
    ]


def queue_positions(pool: str) -> dict[int, dict[str, Any]]:
    """Position (1 = next) and an ETA in seconds for every queued answer of the pool."""
    return {message.pk: place for message, place in _places(pool)}


def publish_queue(pool: str) -> None:
    """Tell every waiting answer of the pool its new place, soon: requests are coalesced
    per pool, so however many changes come, the pool's answers hear at most once per
    ``CORRAL_QUEUE_EVENT_INTERVAL_S`` (call it after commit)."""
    _queue_notices.request(pool)


class _QueueNotices:
    """One thread per process sends queue places, a round per pool at most once per
    interval: the first change at once, later ones together at the end of the interval."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._due: dict[str, float] = {}
        self._last_round: dict[str, float] = {}
        self._sending = False
        self._pid: int | None = None

    def request(self, pool: str) -> None:
        with self._lock:
            if self._pid != os.getpid():  # a forked pool child needs its own thread
                self._pid, self._due, self._last_round = os.getpid(), {}, {}
                threading.Thread(target=self._run, name="corral-queue-events", daemon=True).start()
            if pool not in self._due:
                since = self._last_round.get(pool, -math.inf)
                self._due[pool] = max(time.monotonic(), since + config.QUEUE_EVENT_INTERVAL_S)
                self._lock.notify_all()

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._due:
                    self._lock.wait()
                pool, due = min(self._due.items(), key=lambda item: item[1])
                wait = due - time.monotonic()
                if wait > 0:
                    self._lock.wait(wait)
                    continue
                del self._due[pool]
                self._last_round[pool] = time.monotonic()
                self._sending = True
            try:
                for message, place in _places(pool):
                    publish.publish_event(
                        message.conversation_id,
                        {"type": "message.queue", "message": message.pk, **place},  # type: ignore[typeddict-item]
                    )
            except Exception:
                logger.warning("could not publish the %s queue", pool, exc_info=True)
            finally:
                connection.close()  # this thread's own connection
                with self._lock:
                    self._sending = False

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Until every requested round was sent (tests)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._due and not self._sending:
                    return True
            time.sleep(0.02)
        return False


_queue_notices = _QueueNotices()


def pool_overview() -> list[dict[str, Any]]:
    """For the admins' queue page: per pool, what runs and what waits, in order."""
    from workers.queues import POOLS

    overview = []
    for pool in POOLS:
        running = (
            Message.objects.filter(status=Message.Status.RUNNING, model__pool=pool)
            .select_related("conversation__owner", "model")
            .order_by("started_at")
        )
        overview.append(
            {
                "pool": pool,
                "running": list(running),
                "queued": [(message, place) for message, place in _places_with_owner(pool)],
                "seconds_per_answer": expected_answer_seconds(pool),
                "worker_alive": wakeups.has_live_worker(pool),
            }
        )
    return overview


def _places_with_owner(pool: str) -> list[tuple[Message, dict[str, Any]]]:
    places = _places(pool)
    owners = {
        m.pk: m
        for m in Message.objects.filter(pk__in=[m.pk for m, _ in places]).select_related(
            "conversation__owner", "model"
        )
    }
    return [(owners[m.pk], place) for m, place in places]


def wake(pool: str) -> None:
    """Ask one worker of the pool to look at the queue (after commit; at most one wake-up
    waits per pool)."""
    wakeups.wake(queue_for_pool(pool))


def claim_next(
    pool: str, worker: str, fits: Callable[[Message], bool] | None = None
) -> Message | None:
    """Take the fairest queued answer of the pool, or None when nothing waits.

    A follow-up waits while the answer before it is still being written: its prompt must
    contain that answer. ``fits`` says whether the worker can run an answer beside those it
    runs; when the fairest one does not fit, nothing is taken (it must not be overtaken
    forever by answers that do)."""
    for candidate in queue_of(pool):
        if waits_for_earlier_answer(candidate):
            continue
        if fits is not None and not fits(candidate):
            return None
        claimed = Message.objects.filter(pk=candidate.pk, status=Message.Status.QUEUED).update(
            status=Message.Status.RUNNING,
            # The database's clock, as for every heartbeat and the reaper: a worker host
            # whose clock is off changes nothing.
            started_at=Now(),
            heartbeat_at=Now(),
            worker=worker,
            attempts=F("attempts") + 1,
            version=F("version") + 1,
        )
        if claimed:  # else another worker took it first: try the next one
            answer = Message.objects.select_related("model", "conversation").get(pk=candidate.pk)
            publish.reset_replay(answer.pk, answer.attempts)
            return answer
    return None


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
        wake(other)
    return sorted(pools)


def waits_for_earlier_answer(answer: Message) -> bool:
    """True while the answer before ``answer``'s question is queued or running.
    (``answer`` comes from ``queue_of``, which loaded its parent and grandparent.)"""
    question = answer.parent
    earlier = question.parent if question is not None else None
    return earlier is not None and earlier.status in Message.ACTIVE


def still_ours(answer: Message) -> Q:
    """Rows this attempt may still write: a reaper may have re-queued or failed it."""
    return Q(pk=answer.pk, status=Message.Status.RUNNING, attempts=answer.attempts)


STOP_POLL_S = 0.25


class Heartbeat:
    """A thread beside one running answer. It beats, so long prompt evaluations and slow
    upstream servers do not look like a lost worker, and it polls the stop flag, so Stop
    lands within a second even while no token arrives: it sets ``cancelled``, which the
    generation loop and the backend watch."""

    def __init__(self, answer: Message, first: Callable[[], None] | None = None) -> None:
        """``first`` runs in the thread as it starts: work that must not delay the first
        token (telling the rest of the queue that it moved up)."""
        self.answer = answer
        self._first = first
        self.cancelled = threading.Event()
        # Set with ``cancelled`` when the answer ran past CORRAL_MAX_GENERATION_S, even if
        # the backend went silent and no token arrives to check it.
        self.timed_out = False
        # Set with ``cancelled`` when a beat found the attempt no longer ours.
        self.lost = False
        self._deadline = time.monotonic() + config.MAX_GENERATION_S
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="corral-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        from workers import stop_flags

        last_beat = time.monotonic()
        try:
            if self._first is not None:
                try:
                    self._first()
                except Exception:
                    logger.warning("could not publish the queue", exc_info=True)
            while not self._stop.wait(min(STOP_POLL_S, config.HEARTBEAT_INTERVAL_S)):
                if stop_flags.stop_requested(self.answer.pk, self.answer.attempts):
                    self.cancelled.set()
                if time.monotonic() > self._deadline:
                    self.timed_out = True
                    self.cancelled.set()
                if time.monotonic() - last_beat < config.HEARTBEAT_INTERVAL_S:
                    continue
                if time.monotonic() > self._deadline + config.HEARTBEAT_STALE_S:
                    # Past the time limit and still not ended: the backend call hangs.
                    # Silence lets the reaper end the answer.
                    logger.warning("answer %s hangs past its time limit", self.answer.pk)
                    return
                try:  # one failed beat (a locked or restarting database) must not end them
                    beat = Message.objects.filter(still_ours(self.answer)).update(
                        heartbeat_at=Now()
                    )
                    last_beat = time.monotonic()
                except Exception:
                    logger.warning("heartbeat of answer %s failed", self.answer.pk, exc_info=True)
                    close_old_connections()
                    continue
                if not beat:
                    # Reaped, stopped or deleted: this attempt is not ours to write any more.
                    self.lost = True
                    self.cancelled.set()
                    return
        finally:
            connection.close()  # this thread's own connection


def _before(now: datetime | Now, seconds: float) -> datetime | ExpressionWrapper:
    """``seconds`` before ``now``, in SQL when ``now`` is the database's ``Now()``."""
    if isinstance(now, datetime):
        return now - timedelta(seconds=seconds)
    return ExpressionWrapper(now - timedelta(seconds=seconds), output_field=DateTimeField())


def reap_stale(now: datetime | None = None) -> list[int]:
    """Re-queue (once) or fail running answers whose worker stopped beating.

    Safe to run from several processes at once: each change is a conditional update on
    the attempt that went stale.
    """
    # By the database's clock, which wrote the heartbeats (tests may pass their own).
    now_: datetime | Now = now or Now()
    limit = _before(now_, config.HEARTBEAT_STALE_S)
    is_stale = Q(heartbeat_at__lt=limit) | Q(heartbeat_at__isnull=True, started_at__lt=limit)
    stale = Message.objects.filter(is_stale, status=Message.Status.RUNNING).select_related("model")
    reaped = []
    for answer in stale:
        lost_worker = answer.worker
        with transaction.atomic():
            # Still this attempt and still stale (a late beat saves it). Not an equality
            # on heartbeat_at: SQLite keeps Now() and Python datetimes in two text forms.
            same_attempt = Message.objects.filter(
                is_stale, pk=answer.pk, status=Message.Status.RUNNING, attempts=answer.attempts
            )
            from workers import stop_flags

            if stop_flags.stop_requested(answer.pk, answer.attempts):
                # Stop was pressed while its worker was dying: honour it, do not re-run.
                changed = same_attempt.update(
                    status=Message.Status.STOPPED,
                    error="Stopped by the user.",
                    finished_at=now_,
                    version=F("version") + 1,
                )
            elif answer.attempts < config.MAX_ATTEMPTS and answer.model is not None:
                changed = same_attempt.update(
                    status=Message.Status.QUEUED,
                    **_kept_for_next_attempt(answer),
                    worker="",
                    error="",
                    heartbeat_at=None,
                    version=F("version") + 1,
                )
                if changed:
                    wake(answer.model.pool)
            else:
                changed = same_attempt.update(
                    status=Message.Status.FAILED,
                    error=WORKER_LOST,
                    finished_at=now_,
                    version=F("version") + 1,
                )
            if changed:
                reaped.append(answer.pk)
                answer.refresh_from_db()
                answer_records.record_outcome(answer)
                from webui.chat.services import publish_message

                publish_message(answer)
                if answer.model is not None:
                    transaction.on_commit(
                        lambda pool=answer.model.pool: publish_queue(pool), robust=True
                    )
        if changed:
            logger.warning(
                "answer %s: worker %s lost (attempt %s) -> %s",
                answer.pk,
                lost_worker,
                answer.attempts,
                answer.status,
            )
    return reaped


def _kept_for_next_attempt(answer: Message) -> dict[str, Any]:
    """What a re-run starts from. A backend that continues partial answers goes on from
    everything the lost attempt delivered (its checkpoint plus the streamed text after it);
    others write the answer anew."""
    from inference import BackendError, get_backend

    assert answer.model is not None
    try:
        continues = get_backend(answer.model.backend).continues_partial
    except BackendError:
        continues = False
    if not continues:
        return {"content": "", "seq": 0}
    more, seq = publish.delivered_after(answer.pk, answer.attempts, answer.seq, len(answer.content))
    return {"content": answer.content + more, "seq": seq}


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
        wake(pool)
    return sorted(pools - busy)


def end_queued(answer: Message, status: str, error: str) -> bool:
    """End ``answer`` with ``status`` if it is still queued (no worker will claim it),
    and tell its clients. False if a worker took it first."""
    from webui.chat.services import publish_message

    changed = Message.objects.filter(pk=answer.pk, status=Message.Status.QUEUED).update(
        status=status, error=error, finished_at=Now(), version=F("version") + 1
    )
    if changed:
        answer.refresh_from_db()
        answer_records.record_outcome(answer)
        publish_message(answer)
    return bool(changed)


def fail_orphans() -> list[int]:
    """Queued answers whose model was deleted can never run: say so, and free the slot."""
    return [
        answer.pk
        for answer in Message.objects.filter(status=Message.Status.QUEUED, model=None)
        if end_queued(answer, Message.Status.FAILED, "The model of this answer was deleted.")
    ]


def run_reaper_forever(stop: threading.Event) -> None:
    """Body of the reaper thread in every worker's main process and in `make run`."""
    from webui.chat.titles import requeue_lost_titles  # titles builds on generation, on jobs

    while not stop.wait(config.REAP_INTERVAL_S):
        try:
            close_old_connections()
            reap_stale()
            fail_orphans()
            wake_forgotten_queues()
            requeue_lost_titles()
        except Exception:
            logger.warning("reaper pass failed", exc_info=True)
    connection.close()
