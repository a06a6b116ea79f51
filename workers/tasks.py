"""Celery tasks: thin. They take ids or pool names, call one service function, and return."""

from __future__ import annotations

import os
import socket

from webui.celery import MODEL_JOB_TASK, WAKE_TASK, app


@app.task(name=WAKE_TASK, acks_late=True, reject_on_worker_lost=True)
def run_next_answer(pool: str) -> None:
    """A wake-up for one worker of ``pool``: run queued answers, several at once, until
    none waits."""
    from workers.serving import linger_for, serve

    worker = f"{run_next_answer.request.hostname or socket.gethostname()}:{os.getpid()}"
    consumed = app.amqp.queues.consume_from or app.amqp.queues
    serve(pool, worker=worker, linger_s=linger_for(pool, consumed))


@app.task(name=MODEL_JOB_TASK, acks_late=True, reject_on_worker_lost=True)
def run_model_job(job_id: int) -> None:
    """One admin's model job (quantize, convert, an Ollama pull...), claimed by id."""
    from webui.library.jobs import run_job

    host = run_model_job.request.hostname or socket.gethostname()
    run_job(job_id, worker=f"{host}:{os.getpid()}")
