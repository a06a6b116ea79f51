"""Each worker's main process notes itself alive for the pools it consumes, so a pool
with no live worker can say so ("waiting for a gpu worker") instead of counting down."""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterable

from webui import config
from webui.chat import wakeups

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
