"""Waking a pool's workers without piling up wake-ups, and knowing whether a pool has any.

A wake-up only says "a worker of this pool, look at the queue": a worker that takes one
claims every answer it can. So one waiting wake-up per pool is enough, and sending more
while one waits only fills Redis (a pool with no live worker used to get one from every
reaper every 5 s). Workers note themselves alive per pool; a pool with none makes its
waiting answers say so.
"""

from __future__ import annotations

import logging
from typing import cast

import redis
from django.db import transaction

from webui.celery import WAKE_TASK, app
from webui.chat import redis_client
from webui.chat.pools import queue_for_pool

logger = logging.getLogger("corral.wakeups")


def _presence_key(pool: str) -> str:
    return f"corral:workers:{pool}"


def pending_wakeups(pool: str) -> int:
    """Wake-ups waiting in the pool's Celery queue (kombu's Redis transport keeps a queue
    as a list under its name)."""
    return int(redis_client.shared().llen(pool))


def doorbell_channel(pool: str) -> str:
    """The pub/sub channel on which busy workers of ``pool`` hear of a queued answer."""
    return f"corral:queued:{pool}"


def ring(pool: str, node: str = "") -> None:
    """Tell the workers of ``pool`` that are running answers (``workers.doorbell``) that
    one was queued: one with room claims it now, not at its next look at the queue.
    ``node``: only that worker (the one its wake-up went to) should take it."""
    redis_client.shared().publish(doorbell_channel(pool), node)


def wake(pool: str, exclude: str = "") -> None:
    """Ask one worker of the pool to look at the queue, after commit, unless a wake-up
    already waits there: the idle worker that has the next answer's model loaded when
    there is one (``webui.chat.warm_routing``); else any, and the pool's busy workers hear
    of it at once (``ring``: one with room in its batch takes it). ``exclude``: a worker's
    node name that must not be asked (a busy worker calling for help, which does not ring:
    it would only hear itself)."""
    pool_queue = queue_for_pool(pool)

    def send() -> None:
        from webui.chat.warm_routing import node_of_queue, wake_target

        try:
            queue = wake_target(pool, pool_queue, exclude)
        except Exception:  # the fleet cannot be read: any worker will do
            logger.warning("could not pick a warm %s worker", pool, exc_info=True)
            queue = pool_queue
        # An idle worker with the model loaded gives the answer the whole machine: only
        # without one is a busy worker's batch the place for it. Fleet reports are seconds
        # old, so the "idle" one may be running a batch already (a burst of sends): the
        # ring names it, and it takes the answer into its batch at once.
        if not exclude:
            try:
                ring(pool, "" if queue == pool_queue else node_of_queue(queue))
            except redis.RedisError:  # its next look at the queue finds the answer
                logger.warning("could not ring the %s doorbell", pool, exc_info=True)
        try:
            if pending_wakeups(queue) > 0:
                return
            app.send_task(WAKE_TASK, args=[pool], queue=queue)
        except Exception:  # broker down: the answer stays queued; the reaper wakes it later
            logger.warning("could not wake a %s worker", pool, exc_info=True)

    transaction.on_commit(send)


def note_worker_alive(pool: str, worker: str, for_s: float) -> None:
    """A worker of ``pool`` is alive for the next ``for_s`` seconds (Redis's clock)."""
    client = redis_client.shared()
    now = float(client.time()[0])
    key = _presence_key(pool)
    with client.pipeline(transaction=False) as pipe:
        pipe.zadd(key, {worker: now + for_s})
        pipe.zremrangebyscore(key, "-inf", now)
        pipe.expire(key, int(for_s) + 1)
        pipe.execute()


def forget_worker(pool: str, worker: str) -> None:
    redis_client.shared().zrem(_presence_key(pool), worker)


def live_workers(pool: str) -> int:
    """How many workers of ``pool`` noted themselves alive lately (raises RedisError)."""
    client = redis_client.shared()
    now = float(client.time()[0])
    return int(client.zcount(_presence_key(pool), now, "+inf"))


def live_worker_ids(pool: str) -> list[str]:
    """The workers of ``pool`` that noted themselves alive lately, as "node:pid" (raises
    RedisError)."""
    client = redis_client.shared()
    now = float(client.time()[0])
    members = cast(list[bytes], client.zrangebyscore(_presence_key(pool), now, "+inf"))
    return [member.decode() for member in members]


def has_live_worker(pool: str) -> bool | None:
    """Whether any worker of ``pool`` noted itself alive lately; None if Redis cannot say."""
    try:
        return live_workers(pool) > 0
    except redis.RedisError:
        logger.warning("cannot tell whether a %s worker is alive", pool, exc_info=True)
        return None
