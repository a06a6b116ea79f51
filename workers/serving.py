"""The worker's loop: one process runs several answers of its pool at once.

Each claimed answer runs in its own thread (``generation.generate`` with its own heartbeat,
stop flag and time limit), and the backend decides how the concurrent streams share the
machine: llama.cpp batches them in one context, Ollama holds one HTTP stream each. While a
slot is free the loop keeps claiming, in the pool's fair order, answers that can share the
process with those running (the same loaded model, the same Ollama server). When the
fairest waiting answer cannot, the loop claims nothing more until the batch drains, so it
is not overtaken forever.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Hashable, Iterable

from django.db import close_old_connections, connection

from inference import BackendError, get_backend, loaded_models
from webui import config
from webui.chat import queue, wakeups, warm_routing
from webui.chat.models import Message
from workers import generation, presence, titles
from workers.claims import claim_in_order, give_back, wake_follow_ups
from workers.doorbell import Doorbell
from workers.heartbeat import Heartbeat
from workers.outages import DATABASE_DOWN

logger = logging.getLogger("corral.serving")

# How often a process with a free slot looks for a new answer to join its batch, if no
# doorbell (workers.doorbell) rang before.
CLAIM_POLL_S = 0.1
# How often a full process asks for another worker while answers wait.
HELP_INTERVAL_S = 1.0
# How often the loop tries the database again while it is down.
DOWN_POLL_S = 1.0


def batch_of(answer: Message) -> tuple[Hashable, int] | None:
    """Which batch ``answer`` can join and how big that batch may grow; None when its
    model cannot be used at all (it then runs alone and fails with the reason)."""
    if answer.model is None:
        return None
    try:
        spec = generation.model_spec(answer.model, answer)
        backend = get_backend(spec.backend)
        return backend.batch_key(spec), backend.max_concurrent(spec)
    except BackendError:
        return None


class Slots:
    """The answers this process runs now, all of one batch key, and at most one title."""

    def __init__(self, pool: str, worker: str = "") -> None:
        self.pool = pool
        self.worker = worker
        self.key: Hashable | None = None
        self.limit = 1
        self.threads: dict[int, threading.Thread] = {}
        self.heartbeats: dict[int, Heartbeat] = {}  # of the answers running now
        # Set when a slot frees or an answer is queued (the doorbell): look at the queue.
        self.changed = threading.Event()
        self.title: threading.Thread | None = None
        self.title_found = True
        self.titles_left = generation.TITLES_PER_WAKE  # titles this wake-up may still write
        self.give_way = threading.Event()

    def running(self) -> int:
        for pk, thread in list(self.threads.items()):
            if not thread.is_alive():
                del self.threads[pk]
        if not self.threads:
            self.key, self.limit = None, 1
        return len(self.threads)

    def has_room(self) -> bool:
        return not self.threads or len(self.threads) < self.limit

    def fits(self, answer: Message) -> bool:
        batch = batch_of(answer)
        if not self.threads:
            return not self._warm_elsewhere(answer)
        return batch is not None and batch[0] == self.key and len(self.threads) < batch[1]

    def _warm_elsewhere(self, answer: Message) -> bool:
        """An idle process that lacks the answer's model leaves it to an idle worker that
        has it loaded (warm routing woke that one); Redis away: take it."""
        model = answer.model
        if model is None or model.backend != "llama_cpp" or model.target in loaded_models():
            return False
        try:
            return warm_routing.loaded_elsewhere(
                self.pool, model.target, exclude=warm_routing.node_of(self.worker)
            )
        except Exception:
            return False

    def start(self, answer: Message) -> None:
        batch = batch_of(answer)
        if not self.threads:
            # Unusable models run alone: they fail at once with the reason.
            self.key, self.limit = batch if batch is not None else (object(), 1)
        thread = threading.Thread(
            target=self._run, args=(answer,), name=f"corral-answer-{answer.pk}", daemon=True
        )
        self.threads[answer.pk] = thread
        thread.start()

    def _run(self, answer: Message) -> None:
        try:
            pool = self.pool
            with Heartbeat(answer, first=lambda: queue.publish_queue(pool)) as heartbeat:
                self.heartbeats[answer.pk] = heartbeat
                try:
                    answer = generation.generate(answer, heartbeat.cancelled, heartbeat)
                finally:
                    self.heartbeats.pop(answer.pk, None)
            wake_follow_ups(answer)
            titles.request_title(answer)
        except Exception:
            logger.exception("answer %s: the worker thread failed", answer.pk)
        finally:
            connection.close()  # this thread's own database connection
            self.changed.set()

    def hand_off(self) -> None:
        """This worker is shutting down: its answers go to another worker, now."""
        for heartbeat in list(self.heartbeats.values()):
            heartbeat.hand_off()

    def title_running(self) -> bool:
        return self.title is not None and self.title.is_alive()

    def start_title(self) -> None:
        """Write one waiting title beside the claim loop; an answer arriving stops it."""
        self.give_way.clear()
        self.title = threading.Thread(target=self._run_title, name="corral-title", daemon=True)
        self.title.start()

    def _run_title(self) -> None:
        try:
            self.title_found = titles.run_next_title(self.pool, self.give_way) is not None
        except Exception:
            logger.exception("a title in pool %s failed", self.pool)
            self.title_found = False
        finally:
            connection.close()
            self.changed.set()


def linger_for(pool: str, consumed: Iterable[str]) -> float:
    """How long ``serve`` listens for more after its answers: ``CORRAL_WORKER_LINGER_S``,
    unless the process also consumes another queue (another pool, model jobs), whose
    wake-ups must not wait behind it."""
    others = [q for q in consumed if q != pool and not warm_routing.is_direct_queue(q)]
    return 0.0 if others else config.WORKER_LINGER_S


def serve(pool: str, worker: str, linger_s: float = 0.0) -> int:
    """Claim and run ``pool``'s answers until none is running and none can be claimed,
    writing waiting titles (the low-priority work) when no answer runs; then, if answers
    ran, listen ``linger_s`` more for the next one (the doorbell). Return how many answers
    ran. While the database is down, the answers running go on and claiming waits (up to
    ``CORRAL_DB_OUTAGE_S`` once nothing runs)."""
    slots = Slots(pool, worker)
    with Doorbell(pool, slots.changed, node=warm_routing.node_of(worker)):
        served = _claim_and_run(slots, linger_s)
    # An answer that became claimable as this loop ended, or titles beyond this wake-up's
    # share: wake a worker for them. Not for follow-ups still waiting for the answer before
    # them, or titles held back by those: the end of that answer wakes its pool
    # (claims.wake_follow_ups), and waking now would only bounce between idle workers.
    try:
        if queue.claimable_in(pool).exists() or (not slots.titles_left and titles.pending_in(pool)):
            node = warm_routing.node_of(worker)
            # A draining node must not be the one asked (it consumes nothing more).
            wakeups.wake(pool, exclude=node if presence.draining(node) else "")
    except DATABASE_DOWN:  # the reaper wakes the pool once the database is back
        logger.warning("pool %s: the database is unreachable", pool, exc_info=True)
    return served


def _claim_and_run(slots: Slots, linger_s: float) -> int:
    """``serve``'s loop: the number of answers it started."""
    pool, worker = slots.pool, slots.worker
    node = warm_routing.node_of(worker)
    served = 0
    next_call_for_help = 0.0
    down_since: float | None = None
    linger_until: float | None = None  # set while nothing runs, after answers ran
    while True:
        # Cleared before the queue is read: what rings or ends from now on is seen.
        slots.changed.clear()
        running = slots.running()
        drained_s = presence.draining_for(node)
        draining = drained_s is not None  # shutting down: finish, take nothing new
        # ...unless the grace period is nearly over and another node can go on with them.
        handing_off = drained_s is not None and drained_s >= config.DRAIN_HANDOFF_S
        if running and handing_off and presence.another_node_serves(pool, node):
            slots.hand_off()
        try:
            # Beside running answers, a cheap look first; on a wake-up, the answer's first
            # token waits for this claim.
            queued = queue.anything_queued(pool) if running else True
            started = False
            if queued and slots.has_room() and not draining:
                for answer in claim_in_order(pool, worker, fits=slots.fits):
                    slots.give_way.set()  # a title being written stops for it
                    try:
                        slots.start(answer)
                    except Exception:
                        give_back(answer.pk, worker)
                        raise
                    served += 1
                    started = True
                    # Full; or an answer was sent (it may come first in the fair order)
                    # or one ended since the queue was read: read it again.
                    if not slots.has_room() or slots.changed.is_set():
                        break
            down_since = None
            if started:
                linger_until = None
                continue
        except DATABASE_DOWN:
            if down_since is None:
                logger.warning("pool %s: the database is unreachable", pool, exc_info=True)
                down_since = time.monotonic()
            close_old_connections()
            # Read again: this pass may have started answers before the error.
            if not slots.running() and time.monotonic() - down_since > config.DB_OUTAGE_S:
                return served  # the reaper wakes the pool once the database is back
            slots.changed.wait(DOWN_POLL_S)
            continue
        except Exception:
            # Claiming or starting failed (the claim was given back): the answers running
            # still need this loop; with none, end and let a wake-up come again.
            logger.exception("pool %s: could not claim or start an answer", pool)
            slots.changed.wait(DOWN_POLL_S)  # a lasting fault is not retried in a spin
            if not slots.running():
                return served
            continue
        if queued and running and time.monotonic() >= next_call_for_help:
            # Full, or the fairest answer needs another batch: another worker of the pool
            # may take what this one cannot. At most one wake-up waits; this asks once a
            # second.
            wakeups.wake(pool, exclude=warm_routing.node_of(worker))
            next_call_for_help = time.monotonic() + HELP_INTERVAL_S
        if running or slots.title_running():
            linger_until = None
        elif slots.titles_left and slots.title_found and not draining:
            slots.titles_left -= 1
            slots.start_title()
        else:
            # Nothing to do. After answers, listen a while: the doorbell wakes the loop.
            if linger_until is None or draining:
                linger_until = time.monotonic() + (linger_s if served and not draining else 0)
            left = linger_until - time.monotonic()
            if left <= 0:
                break
            slots.changed.wait(left)
            continue
        slots.changed.wait(CLAIM_POLL_S)
    return served
