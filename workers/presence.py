"""Each worker's main process notes itself alive for the pools it consumes, so a pool
with no live worker can say so ("waiting for a gpu worker") instead of counting down."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterable

from webui import config
from webui.chat import redis_client, wakeups
from webui.chat.warm_routing import node_of

logger = logging.getLogger("corral.presence")

# A worker counts as alive for this many beats after its last one.
BEATS_ALIVE = 3


def worker_id(hostname: str | None = None) -> str:
    return f"{hostname or socket.gethostname()}:{os.getpid()}"


def beat_forever(pools: Iterable[str], worker: str, stop: threading.Event) -> None:
    interval = config.REAP_INTERVAL_S
    pools = list(pools)
    while True:
        for pool in pools:
            try:
                wakeups.note_worker_alive(pool, worker, for_s=interval * BEATS_ALIVE)
            except Exception:  # Redis down: the page cannot tell, and says nothing
                logger.warning("could not note worker %s alive", worker, exc_info=True)
        if stop.wait(interval):
            break
    for pool in pools:
        try:
            wakeups.forget_worker(pool, worker)
        except Exception:
            logger.warning("could not forget worker %s", worker, exc_info=True)


# A worker node shutting down (warm: SIGTERM, `docker stop`) drains: its answers finish,
# and it claims nothing new, which another worker would otherwise never get to run before
# the node is killed at the end of its grace period.
DRAIN_TTL_S = 3600


def _drain_key(node: str) -> str:
    return f"corral:draining:{node}"


def start_draining(node: str) -> None:
    try:
        # When it began (this host's clock, read on this host): answers still running
        # CORRAL_DRAIN_HANDOFF_S later are handed to another worker.
        redis_client.shared().set(_drain_key(node), repr(time.time()), nx=True, ex=DRAIN_TTL_S)
    except Exception:
        logger.warning("could not mark node %s as draining", node, exc_info=True)


def stop_draining(node: str) -> None:
    """A node starting (again, under the same name) takes work."""
    try:
        redis_client.shared().delete(_drain_key(node))
    except Exception:
        logger.warning("could not clear the drain mark of node %s", node, exc_info=True)


def draining_for(node: str) -> float | None:
    """How long ``node`` has been shutting down, in seconds; None when it is not (or Redis
    cannot say: keep working)."""
    try:
        since = redis_client.shared().get(_drain_key(node))
        return None if since is None else max(0.0, time.time() - float(since))
    except Exception:
        return None


def draining(node: str) -> bool:
    return draining_for(node) is not None


def another_node_serves(pool: str, node: str) -> bool:
    """Whether a worker of ``pool`` on another node, not shutting down itself, is alive to
    take an answer ``node`` hands off. When the whole pool is going down, the answers
    run on to the end of the grace period instead: finishing is their best chance. False
    when Redis cannot say."""
    try:
        nodes = sorted({node_of(worker) for worker in wakeups.live_worker_ids(pool)} - {node})
        if not nodes:
            return False
        marks = redis_client.shared().mget([_drain_key(other) for other in nodes])
    except Exception:
        logger.warning("cannot tell whether another %s worker is alive", pool, exc_info=True)
        return False
    return any(mark is None for mark in marks)
