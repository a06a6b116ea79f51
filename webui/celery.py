"""The Celery app, as both sides see it: the web side sends wake-ups by task name with
it, and workers (``workers.celery_app``) register their tasks on it and consume."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webui.settings")

from webui import config  # noqa: E402  (after DJANGO_SETTINGS_MODULE, before Django setup)

# The one task the web side sends: "a worker of this pool, look at the queue".
WAKE_TASK = "corral.run_next_answer"
# And the one for admins' model jobs (quantize, convert, pulls): "run job <id>".
MODEL_JOB_TASK = "corral.run_model_job"


def broker_url(redis_url: str) -> str:
    """Kombu spells a Redis unix socket ``redis+socket://``; redis-py spells it ``unix://``."""
    if redis_url.startswith("unix://"):
        return "redis+socket://" + redis_url.removeprefix("unix://")
    return redis_url


app = Celery("corral")
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
    # One wake-up at a time per process: a worker claims every answer it can run at once
    # itself, and prefetching would hide wake-ups inside one busy worker.
    worker_prefetch_multiplier=1,
    # Longer than the longest job, or Redis redelivers a job that is still running.
    broker_transport_options={"visibility_timeout": 4 * 3600},
    worker_hijack_root_logger=False,
    worker_send_task_events=False,
)
