"""A busy worker hears at once that an answer was queued in its pool.

While a worker runs answers, its Celery wake-ups wait (one task at a time per process),
so it looks at the queue itself between its answers' steps. Polling alone, an answer sent
while a batch runs waited up to the poll interval before it joined the batch (on
average half of it); the doorbell (``wakeups.ring``, a Redis pub/sub message sent after
the answer is committed) sets the loop's event instead. The poll stays as the fallback:
a ring lost while Redis restarts only delays the claim to the next look.
"""

from __future__ import annotations

import logging
import threading

import redis

from webui.chat import redis_client, wakeups

logger = logging.getLogger("corral.doorbell")

# How long one wait for a message lasts before the thread checks whether it should stop.
LISTEN_S = 0.5
# After a Redis error: the wait before subscribing again.
RETRY_S = 1.0


class Doorbell:
    """Sets ``event`` whenever an answer is queued in ``pool`` for any worker or for the
    one on ``node``, while in a ``with``."""

    def __init__(self, pool: str, event: threading.Event, node: str = "") -> None:
        self.pool = pool
        self.event = event
        self.node = node.encode()
        self._stop = threading.Event()
        self._failing = False  # a Redis error was logged and no subscription worked since
        self._thread = threading.Thread(target=self._run, name="corral-doorbell", daemon=True)

    def __enter__(self) -> Doorbell:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        # Not joined: the loop's end must not wait for the thread's current wait (it ends
        # by itself within LISTEN_S, closing its connection).
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._listen()
            except redis.RedisError:
                if self._stop.is_set():
                    return  # ended meanwhile (Redis may be stopping with the process)
                if not self._failing:  # once per outage: the loop's own looks go on
                    logger.warning("pool %s: cannot hear queued answers", self.pool, exc_info=True)
                self._failing = True
                self._stop.wait(RETRY_S)

    def _listen(self) -> None:
        pubsub = redis_client.shared().pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        try:
            pubsub.subscribe(wakeups.doorbell_channel(self.pool))
            self._failing = False
            while not self._stop.is_set():
                message = pubsub.get_message(timeout=LISTEN_S)
                # A ring naming another worker is for that one: an idle worker with the
                # answer's model loaded, which warm routing woke.
                if message is not None and message["data"] in (b"", self.node):
                    self.event.set()
        finally:
            pubsub.close()
