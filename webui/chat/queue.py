"""The queue of each pool: the order workers take answers in, places and ETAs, and the
coalesced events that tell waiting answers their place. Workers claim in this order;
the pages and sockets show it.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis
from django.db import connection
from django.db.models import Avg, QuerySet

from webui import config
from webui.chat import streams, wakeups
from webui.chat.models import LanguageModel, Message
from webui.chat.pools import POOLS
from webui.chat.redis_client import shared as shared_redis
from webui.chat.streams import QueueEvent, QueuePlace

logger = logging.getLogger("corral.queue")

# A round of queue places waits this long after the change that asked for it: a message
# sent is usually claimed within milliseconds, and computing places meanwhile would only
# compete with that claim and the answer's first token for the CPU.
SETTLE_S = 0.1
# How many of a pool's latest starts the fair order looks at to know who was served last.
LATEST_STARTS = 200


def _queued(pool: str) -> QuerySet[Message]:
    """The pool's queued answers, unordered."""
    return Message.objects.filter(
        role=Message.Role.ASSISTANT, status=Message.Status.QUEUED, model__pool=pool
    ).order_by()


@dataclass(frozen=True)
class Waiting:
    """A queued answer as the queue sees it: what its order, claims and routing read.
    (Not a whole ``Message``: a worker reads the queue again for every message sent
    during a burst, and building each row's message, conversation, model and parents
    cost more than the query.)"""

    pk: int
    conversation_id: int
    owner_id: int
    created_at: datetime
    model: LanguageModel | None
    # The status of the answer before this one's question in its conversation, if any.
    earlier_status: str | None


def _queued_in(pool: str) -> list[Waiting]:
    rows = list(
        _queued(pool)
        .order_by("created_at", "pk")
        .values_list(
            "pk",
            "conversation_id",
            "conversation__owner_id",
            "created_at",
            "model_id",
            "parent__parent__status",
        )
    )
    models = LanguageModel.objects.in_bulk({row[4] for row in rows}) if rows else {}
    return [
        Waiting(
            pk=pk,
            conversation_id=conversation_id,
            owner_id=owner_id,
            created_at=created_at,
            model=models.get(model_id),
            earlier_status=earlier_status,
        )
        for pk, conversation_id, owner_id, created_at, model_id, earlier_status in rows
    ]


def claimable_in(pool: str) -> QuerySet[Message]:
    """The pool's queued answers that a worker could claim now, in no order: not those
    waiting for the answer before them (``waits_for_earlier_answer``)."""
    return _queued(pool).exclude(parent__parent__status__in=Message.ACTIVE)


def fair_order(queued: list[Waiting], last_start: dict[int, datetime]) -> list[Waiting]:
    """Round-robin across users: everyone's first waiting job, then everyone's second…;
    within a round, the user who was served longest ago goes first."""
    nth: dict[int, int] = defaultdict(int)
    keyed = []
    for message in queued:  # oldest first
        owner = message.owner_id
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
    return _queued(pool).exists()


def queue_of(pool: str) -> list[Waiting]:
    """The pool's queued answers in the order workers will take them."""
    queued = _queued_in(pool)
    if len(queued) < 2:
        return queued  # nothing to order (the common case at idle: one query, not two)
    owners = {m.owner_id for m in queued}
    # When each of them was last served, from the pool's latest starts only (an index
    # walk): the latest start of everyone they ever had grows with the history (8 people
    # with 2,000 answers each: 10 ms a reading, and a worker reads the queue once per
    # message sent during a burst). Someone not among them was served longest ago.
    latest = (
        Message.objects.filter(model__pool=pool, started_at__isnull=False)
        .order_by("-started_at")
        .values_list("conversation__owner_id", "started_at")[:LATEST_STARTS]
    )
    last_start: dict[int, datetime] = {}
    for owner, started_at in latest:
        if owner in owners and started_at is not None:
            last_start.setdefault(owner, started_at)
    return fair_order(queued, last_start)


def waits_for_earlier_answer(answer: Waiting) -> bool:
    """True while the answer before ``answer``'s question is queued or running: its
    prompt must contain that answer."""
    return answer.earlier_status in Message.ACTIVE


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
    return float(stats["tokens"] / stats["rate"])


def _places(pool: str) -> list[tuple[Waiting, QueuePlace]]:
    order = queue_of(pool)
    if not order:
        return []
    per_answer = expected_answer_seconds(pool)
    # Workers run several answers at once: the queue drains that many at a time.
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


def queue_positions(pool: str) -> dict[int, QueuePlace]:
    """Position (1 = next) and an ETA in seconds for every queued answer of the pool."""
    return {message.pk: place for message, place in _places(pool)}


def publish_queue(pool: str) -> None:
    """Tell every waiting answer of the pool its new place, soon: requests are coalesced
    per pool, so however many changes come, the pool's answers hear at most once per
    ``CORRAL_QUEUE_EVENT_INTERVAL_S`` (call it after commit)."""
    _queue_notices.request(pool)


def _round_held_elsewhere(pool: str) -> float:
    """0 when this process may send ``pool``'s round now, which it then holds for an
    interval; else the seconds until it may. Every process that changes a queue (the web
    server, each worker) has its own notices thread: this keeps them all to one round per
    pool and interval."""
    interval_ms = max(1, int(config.QUEUE_EVENT_INTERVAL_S * 1000))
    key = f"corral:queue-round:{pool}"
    try:
        client = shared_redis()
        if client.set(key, os.getpid(), nx=True, px=interval_ms):
            return 0.0
        return max(int(client.pttl(key)), 1) / 1000
    except redis.RedisError:  # the round itself goes through Redis: it will say more
        return 0.0


class _QueueNotices:
    """One thread per process sends queue places, a round per pool at most once per
    interval (across processes: ``_round_held_elsewhere``): the first change after
    ``SETTLE_S``, later ones together at the end of the interval."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._due: dict[str, float] = {}
        self._last_round: dict[str, float] = {}
        self._sending = False
        self._pid: int | None = None
        # A child forked while this process's thread held the lock would inherit it held.
        os.register_at_fork(after_in_child=self._forked)

    def _forked(self) -> None:
        self._lock = threading.Condition()
        self._due, self._last_round, self._sending, self._pid = {}, {}, False, None

    def request(self, pool: str) -> None:
        with self._lock:
            if self._pid != os.getpid():  # a forked pool child needs its own thread
                self._pid, self._due, self._last_round = os.getpid(), {}, {}
                threading.Thread(target=self._run, name="corral-queue-events", daemon=True).start()
            if pool not in self._due:
                since = self._last_round.get(pool, -math.inf)
                self._due[pool] = max(
                    time.monotonic() + SETTLE_S, since + config.QUEUE_EVENT_INTERVAL_S
                )
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
            # Outside the lock: callers of request() never wait on Redis.
            held_for = _round_held_elsewhere(pool)
            with self._lock:
                if held_for:  # another process sent this pool's round: the next is ours
                    self._due[pool] = max(self._due.get(pool, 0.0), time.monotonic() + held_for)
                    continue
                self._due.pop(pool, None)
                self._last_round[pool] = time.monotonic()
                self._sending = True
            try:
                for message, place in _places(pool):
                    event: QueueEvent = {"type": "message.queue", "message": message.pk, **place}
                    streams.publish_event(message.conversation_id, event)
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
                "queued": _places_with_owner(pool),
                "seconds_per_answer": expected_answer_seconds(pool),
                "worker_alive": wakeups.has_live_worker(pool),
            }
        )
    return overview


def _places_with_owner(pool: str) -> list[tuple[Message, QueuePlace]]:
    places = _places(pool)
    owners = {
        m.pk: m
        for m in Message.objects.filter(pk__in=[m.pk for m, _ in places]).select_related(
            "conversation__owner", "model"
        )
    }
    # An answer deleted between the two readings (with its conversation) is left out.
    return [(owners[m.pk], place) for m, place in places if m.pk in owners]
