"""The worker's side of the Celery app. Start a worker for one pool:
``celery -A workers.celery_app worker -Q cpu``."""

from __future__ import annotations

import os
import threading

# llama.cpp's CPU threads (OpenMP) spin after each step before they sleep: by default
# 300,000 pauses, over 10 ms on these CPUs, which is longer than the sampling between two
# steps. Spinning, they hold a core the sampling threads and the rest of the stack need
# (measured: a step of 8 answers sampled in 12 ms instead of 18). Set before llama.cpp
# loads; an operator's own setting wins.
os.environ.setdefault("GOMP_SPINCOUNT", "2000")

from celery.signals import (
    celeryd_after_setup,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
    worker_shutting_down,
)

from inference import configure_backend
from webui import config
from webui.celery import app
from workers import tasks  # noqa: F401  (registers the tasks on the app)

# How many GGUF models one worker process keeps loaded (least recently used given up first).
configure_backend("llama_cpp", max_loaded=config.MAX_LOADED_MODELS)

__all__ = ["app"]


@celeryd_after_setup.connect
def consume_own_queue(sender: str, instance: object, **kwargs: object) -> None:
    """Each worker also consumes a queue of its own, so that a wake-up can go to the one
    that has a model loaded already (``webui.chat.warm_routing``)."""
    from webui.chat.warm_routing import direct_queue
    from workers.presence import stop_draining

    instance.app.amqp.queues.select_add(direct_queue(sender))  # type: ignore[attr-defined]
    stop_draining(sender)  # a node restarted under the same name takes work again


@worker_shutting_down.connect
def drain(sender: str, **kwargs: object) -> None:
    """Warm shutdown: the node's serve loops finish their answers and claim no more."""
    from workers.presence import start_draining

    start_draining(sender)


@worker_ready.connect
def start_reaper(**kwargs: object) -> None:
    """Every worker's main process re-queues or fails answers whose worker was lost.

    It runs in the main process, which outlives a killed pool child; several reapers are
    safe (conditional updates)."""
    # Here, not at the top: Celery sets Django up after importing this module.
    from webui.chat.pools import POOLS
    from workers.presence import beat_forever, worker_id
    from workers.reaper import run_reaper_forever

    threading.Thread(
        target=run_reaper_forever, args=(threading.Event(),), name="corral-reaper", daemon=True
    ).start()

    consumed = app.amqp.queues.consume_from or app.amqp.queues
    # The model-jobs queue too: the Models page says when no worker runs its jobs.
    pools = [name for name in consumed if name in POOLS or name == config.MODEL_JOB_QUEUE]
    threading.Thread(
        target=beat_forever,
        args=(pools, worker_id(getattr(kwargs.get("sender"), "hostname", None)), _presence_stop),
        name="corral-presence",
        daemon=True,
    ).start()


_presence_stop = threading.Event()


@worker_shutdown.connect
def stop_presence(**kwargs: object) -> None:
    """A worker shutting down cleanly stops counting as alive at once."""
    _presence_stop.set()


_fleet_stop = threading.Event()


@worker_process_init.connect
def report_to_fleet(sender: str | None = None, **kwargs: object) -> None:
    """Each pool child, which runs the answers, reports to the fleet (a thread: this
    signal's handler must return within seconds). ``sender`` is the worker's node name:
    answers name their worker "<node name>:<pid>", and so does the fleet."""
    import socket

    from webui.chat.pools import POOLS
    from workers.fleet import start_reporting

    consumed = app.amqp.queues.consume_from or app.amqp.queues
    # The model-jobs queue too: the Models page says when no worker runs its jobs.
    pools = [name for name in consumed if name in POOLS or name == config.MODEL_JOB_QUEUE]
    worker = f"{sender or socket.gethostname()}:{os.getpid()}"
    start_reporting(worker, pools, _fleet_stop)


@worker_process_shutdown.connect
def leave_fleet(**kwargs: object) -> None:
    """A child stopping cleanly leaves the fleet now (not three reports later)."""
    from workers.fleet import stop_reporting

    _fleet_stop.set()
    stop_reporting()
