"""The Celery app. Start a worker for one pool: ``celery -A workers.celery_app worker -Q cpu``."""

from __future__ import annotations

import os
import threading

from celery import Celery
from celery.signals import worker_ready, worker_shutdown

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webui.settings")

from webui import config  # noqa: E402  (after DJANGO_SETTINGS_MODULE, before Django setup)


def broker_url(redis_url: str) -> str:
    """Kombu spells a Redis unix socket ``redis+socket://``; redis-py spells it ``unix://``."""
    if redis_url.startswith("unix://"):
        return "redis+socket://" + redis_url.removeprefix("unix://")
    return redis_url


app = Celery("corral", include=["workers.tasks"])
app.conf.update(
    broker_url=broker_url(config.redis_url()),
    broker_connection_retry_on_startup=True,
    task_ignore_result=True,
    task_serializer="json",
    accept_content=["json"],
    # Durability: a job is acknowledged only when it finished, and a worker that dies
    # mid-job hands it back. The database row (status, seq) decides whether a redelivered
    # job still needs running, so a redelivery never produces a second answer.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    # One job at a time per process: a CPU worker gains nothing from more, and prefetching
    # would hide queued jobs inside one busy worker.
    worker_prefetch_multiplier=1,
    # Longer than the longest job, or Redis redelivers a job that is still running.
    broker_transport_options={"visibility_timeout": 4 * 3600},
    worker_hijack_root_logger=False,
    worker_send_task_events=False,
)


@worker_ready.connect
def start_reaper(**kwargs: object) -> None:
    """Every worker's main process re-queues or fails answers whose worker was lost.

    It runs in the main process, which outlives a killed pool child; several reapers are
    safe (conditional updates)."""
    from webui.chat.jobs import run_reaper_forever

    threading.Thread(
        target=run_reaper_forever, args=(threading.Event(),), name="corral-reaper", daemon=True
    ).start()

    from workers.presence import beat_forever, worker_id
    from workers.queues import POOLS

    consumed = app.amqp.queues.consume_from or app.amqp.queues
    pools = [name for name in consumed if name in POOLS]
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
