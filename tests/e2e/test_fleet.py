"""Real Celery workers report to the fleet: the process that runs the answers, with its
pool, its loaded model and its batch; killed, it is shown lost three reports later."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.e2e.conftest import FAST_REAPER, POOL
from tests.e2e.test_faults import answer_under_way, finished
from webui.chat import fleet, services
from webui.chat.models import Message

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def entry_of(worker: str) -> fleet.FleetEntry | None:
    return next((e for e in fleet.fleet() if e["report"]["worker"] == worker), None)


def test_a_worker_reports_its_model_and_batch_and_is_lost_when_killed(
    alice, long_gemma, gpu_workers, web_server
):
    process = gpu_workers("fleet").process
    answer, client = answer_under_way(alice, long_gemma, "Tell a long story.", web_server)
    worker = Message.objects.get(pk=answer.pk).worker  # the pool child running it
    deadline = time.monotonic() + 20
    while True:
        entry = entry_of(worker)
        if entry and entry["report"]["answers"] == 1 and entry["report"]["models"]:
            break
        assert time.monotonic() < deadline, fleet.fleet()
        time.sleep(0.2)
    report = entry["report"]
    assert report["pools"] == [POOL] and report["models"] == [long_gemma.target]
    assert report["pid"] == int(worker.rsplit(":", 1)[1]) and not entry["lost"]
    client.wait_until(finished, timeout=90)
    client.close()

    os.killpg(process.pid, signal.SIGKILL)  # no goodbye: it must be noticed
    process.wait()
    beats = float(FAST_REAPER["CORRAL_REAP_INTERVAL_S"]) * fleet.BEATS_ALIVE
    deadline = time.monotonic() + beats + 5
    while not (entry := entry_of(worker)) or not entry["lost"]:
        assert entry is not None and time.monotonic() < deadline, fleet.fleet()
        time.sleep(0.2)


def test_a_worker_told_to_stop_shows_draining_finishes_its_answer_and_takes_no_more(
    alice, bob, long_gemma, gpu_workers, web_server
):
    """SIGTERM (``docker stop``) to a real worker running an answer: the Fleet page shows
    it draining, the answer ends done, an answer sent meanwhile is left queued for another
    worker, and the worker exits by itself."""
    long_gemma.parameters = {**long_gemma.parameters, "max_tokens": 480}
    long_gemma.save()
    process = gpu_workers("drained").process
    answer, client = answer_under_way(
        alice, long_gemma, "Count from 1 to 500, separated by commas.", web_server
    )
    worker = Message.objects.get(pk=answer.pk).worker  # the pool child running it
    os.kill(process.pid, signal.SIGTERM)  # the main process: Celery's warm shutdown
    deadline = time.monotonic() + 10
    while not (entry := entry_of(worker)) or not entry["report"].get("draining"):
        assert time.monotonic() < deadline, fleet.fleet()
        time.sleep(0.2)
    _, _, later = services.send_message(
        user=bob, conversation_id=None, text="Hello.", model_id=long_gemma.pk
    )
    client.wait_until(finished, timeout=90)
    client.close()
    assert Message.objects.get(pk=answer.pk).status == Message.Status.DONE
    assert process.wait(timeout=30) == 0
    later.refresh_from_db()
    assert (later.status, later.attempts) == (Message.Status.QUEUED, 0)
    services.stop_answer(user=bob, message_id=later.pk)
