"""Celery tasks: thin. They take ids, call one service function, and return."""

from __future__ import annotations

import os
import socket

from workers.celery_app import app


@app.task(name="corral.generate_answer", acks_late=True, reject_on_worker_lost=True)
def generate_answer(message_id: int) -> None:
    from webui.chat.generation import run_generation

    worker = f"{generate_answer.request.hostname or socket.gethostname()}:{os.getpid()}"
    run_generation(message_id, worker=worker)
