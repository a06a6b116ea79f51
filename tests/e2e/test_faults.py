"""Fault injection with real processes: killed workers, restarted Redis and web server.

Each test asserts the end state a user would see: one answer, the right status, the text
the client assembled equal to the database text, nothing left "generating".
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import _start, _stop, free_port, start_worker
from tests.e2e.conftest import FAST_REAPER, POOL
from tests.e2e.helpers import ChatClient
from webui.chat import redis_client, services, wakeups
from webui.chat.models import Conversation, Message
from webui.run import processes
from workers import reaper

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def finished(client: ChatClient) -> bool:
    return client.answer()["status"] not in ("queued", "running")


def running_pid(answer: Message, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer.refresh_from_db()
        if answer.status == Message.Status.RUNNING and answer.worker:
            return int(answer.worker.rsplit(":", 1)[1])
        time.sleep(0.1)
    raise TimeoutError(f"answer {answer.pk} never started")


def answer_under_way(user, model, text: str, web_server) -> tuple[Message, ChatClient]:
    """Send ``text``; return its answer once a watching client has seen it stream."""
    conversation, _, answer = services.send_message(
        user=user, conversation_id=None, text=text, model_id=model.pk
    )
    client = ChatClient.open(web_server.url, conversation.pk, user, resilient=True)
    client.wait_until(lambda c: len(c.messages[answer.pk]["content"]) > 20)
    return answer, client


def assert_one_clean_answer(client: ChatClient, answer: Message) -> Message:
    saved = Message.objects.get(pk=answer.pk)
    assert saved.conversation.messages.filter(role="assistant").count() == 1
    assert saved.status not in Message.ACTIVE
    assert client.messages[answer.pk]["content"] == saved.content
    assert client.messages[answer.pk]["status"] == saved.status
    return saved


def batch_under_way(user, model, texts: list[str], web_server) -> list[tuple[Message, ChatClient]]:
    """Send every text at once; return the answers once each watching client has seen its
    answer stream, all from one worker process (its batch)."""
    batch = []
    for text in texts:
        conversation, _, answer = services.send_message(
            user=user, conversation_id=None, text=text, model_id=model.pk
        )
        client = ChatClient.open(web_server.url, conversation.pk, user, resilient=True)
        batch.append((answer, client))
    for answer, client in batch:
        client.wait_until(lambda c, pk=answer.pk: len(c.messages[pk]["content"]) > 20)
    workers = {row.worker for row in Message.objects.filter(pk__in=[a.pk for a, _ in batch])}
    assert len(workers) == 1  # one process runs them all
    return batch


def test_killed_pool_child_is_noticed_and_its_batch_rerun_once(
    alice, long_gemma, gpu_workers, web_server, settings
):
    settings.CORRAL = {**settings.CORRAL, "MAX_ACTIVE_PER_USER": 10}
    gpu_workers("child-kill")
    texts = [f"Tell a long story about sea number {i}." for i in range(4)]
    batch = batch_under_way(alice, long_gemma, texts, web_server)
    child = running_pid(batch[0][0])
    os.kill(child, signal.SIGKILL)
    killed_at = time.monotonic()
    for answer, client in batch:
        client.wait_until(lambda c, pk=answer.pk: c.messages[pk]["attempt"] == 2, timeout=30)
    assert time.monotonic() - killed_at < 30
    for answer, client in batch:
        client.wait_until(finished, timeout=90)
        client.close()
        saved = assert_one_clean_answer(client, answer)
        assert saved.status == Message.Status.DONE, saved.error
        assert saved.attempts == 2
        assert saved.content and saved.completion_tokens <= 240


def test_killed_worker_process_group_is_rerun_on_a_live_worker(
    alice, long_gemma, gpu_workers, web_server
):
    first = gpu_workers("doomed")
    answer, client = answer_under_way(
        alice, long_gemma, "Describe a city at night, at length.", web_server
    )
    # The main process and its pool child die at once, as with the OOM killer.
    os.killpg(first.process.pid, signal.SIGKILL)
    first.process.wait()
    gpu_workers("survivor")
    client.wait_until(finished, timeout=90)
    client.close()
    saved = assert_one_clean_answer(client, answer)
    assert saved.status == Message.Status.DONE, saved.error
    assert saved.attempts == 2 and "survivor" in saved.worker


def test_killed_main_process_alone_leaves_one_finished_answer(
    alice, long_gemma, gpu_workers, web_server
):
    first = gpu_workers("headless")
    answer, client = answer_under_way(
        alice, long_gemma, "Explain how rivers form, in detail.", web_server
    )
    gpu_workers("spare")
    os.kill(first.process.pid, signal.SIGKILL)  # the main process only, not its pool child
    client.wait_until(finished, timeout=90)
    client.close()
    saved = assert_one_clean_answer(client, answer)
    # The orphaned pool child may finish the answer itself, or die and be re-run by the
    # spare worker; either way there is one answer, complete or failed as "worker lost".
    if saved.status == Message.Status.FAILED:
        assert saved.error == reaper.WORKER_LOST and saved.content
    else:
        assert saved.status == Message.Status.DONE, saved.error


def test_a_killed_worker_with_a_full_batch_has_every_answer_continued_elsewhere(
    alice, long_gemma, gpu_workers, web_server, settings
):
    """kill -9 of a worker generating eight answers at once: each continues on a live
    worker from all its clients had been shown, with no gap or duplicate, and ends done."""
    settings.CORRAL = {**settings.CORRAL, "MAX_ACTIVE_PER_USER": 10}
    first = gpu_workers("batch-doomed")
    texts = [f"Tell a long story about river number {i}." for i in range(8)]
    sent = batch_under_way(alice, long_gemma, texts, web_server)
    shown = {answer.pk: client.messages[answer.pk]["content"] for answer, client in sent}

    os.killpg(first.process.pid, signal.SIGKILL)
    first.process.wait()
    gpu_workers("batch-survivor")
    for _answer, client in sent:
        client.wait_until(finished, timeout=120)
        client.close()
    for answer, client in sent:
        saved = assert_one_clean_answer(client, answer)
        assert saved.status == Message.Status.DONE, saved.error
        assert saved.attempts == 2 and "batch-survivor" in saved.worker
        assert saved.content.startswith(shown[answer.pk])
        assert len(saved.content) > len(shown[answer.pk])
        assert client.gaps == 0, client.gap_log


def test_a_worker_told_to_stop_hands_its_answer_to_a_live_worker_within_seconds(
    alice, long_gemma, gpu_workers, web_server
):
    """``docker compose stop`` while an answer outlasts the grace period: SIGTERM to the
    worker; CORRAL_DRAIN_HANDOFF_S later it hands the answer back with its text, a live
    worker continues it with no gap or duplicate, and the stopping worker exits by itself,
    with nothing left for the reaper."""
    long_gemma.parameters = {**long_gemma.parameters, "max_tokens": 480}
    long_gemma.save()
    handoff = {"CORRAL_DRAIN_HANDOFF_S": "1"}
    workers = {name: gpu_workers(name, handoff) for name in ("one", "two")}
    answer, client = answer_under_way(
        alice, long_gemma, "Count from 1 to 500, separated by commas.", web_server
    )
    running_on = Message.objects.get(pk=answer.pk).worker
    leaving_name = next(name for name in workers if f"test-{name}-" in running_on)
    (staying_name,) = set(workers) - {leaving_name}
    leaving = workers[leaving_name]
    shown = client.messages[answer.pk]["content"]
    os.kill(leaving.process.pid, signal.SIGTERM)  # Celery's warm shutdown
    told_at = time.monotonic()
    client.wait_until(lambda c: c.messages[answer.pk]["attempt"] == 2, timeout=30)
    # Sooner than a killed worker's answer is even noticed (CORRAL_HEARTBEAT_STALE_S).
    assert time.monotonic() - told_at < float(FAST_REAPER["CORRAL_HEARTBEAT_STALE_S"])
    assert leaving.process.wait(timeout=30) == 0
    client.wait_until(finished, timeout=90)
    client.close()
    saved = assert_one_clean_answer(client, answer)
    assert saved.status == Message.Status.DONE, saved.error
    assert saved.attempts == 2 and f"test-{staying_name}-" in saved.worker
    assert saved.content.startswith(shown)
    assert client.gaps == 0, client.gap_log


def skewed_worker(stack_env, offset_s: float, log: Path, queues: str, label: str):
    """A real worker whose Django clock runs ``offset_s`` off (tests/e2e/clock_skew), with
    the fast reaper."""
    skew = Path(__file__).parent / "clock_skew"
    env = {
        **stack_env,
        **FAST_REAPER,
        "CORRAL_TEST_CLOCK_OFFSET_S": str(offset_s),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(skew), stack_env.get("PYTHONPATH")])),
    }
    return start_worker(env, log, queues=queues, label=label)


def test_a_worker_whose_clock_is_30_s_late_is_not_taken_for_lost(
    alice, long_gemma, stack_env, gpu_workers, web_server, tmp_path
):
    """Heartbeats and the reaper use the database's clock: a worker whose clock is 30 s
    behind writes fresh heartbeats, and a correct worker's reaper leaves its answer alone.
    (The offset is injected into the worker's Django clock by tests/e2e/clock_skew.)"""
    late = skewed_worker(stack_env, -30, tmp_path / "late.log", queues=POOL, label="late-clock")
    try:
        answer, client = answer_under_way(
            alice, long_gemma, "Tell a long story about a lighthouse.", web_server
        )
        assert "late-clock" in Message.objects.get(pk=answer.pk).worker
        gpu_workers("on-time")  # its reaper runs every second with the true time
        client.wait_until(finished, timeout=120)
        client.close()
    finally:
        _stop(late.process)
    saved = assert_one_clean_answer(client, answer)
    assert saved.status == Message.Status.DONE, saved.error
    assert saved.attempts == 1 and "late-clock" in saved.worker
    assert saved.time_to_first_token_ms is not None and 0 <= saved.time_to_first_token_ms < 30_000


def test_a_worker_whose_clock_is_30_s_ahead_reaps_no_healthy_answer(
    alice, long_gemma, stack_env, gpu_workers, web_server, tmp_path
):
    """The harmful way round: a worker whose clock runs 30 s ahead would, judging by its
    own clock, find every other worker's heartbeat stale. Its reaper (every second) runs
    beside an answer that a correct worker generates, and leaves it alone."""
    # It only reaps: the answer is the gpu pool's.
    ahead = skewed_worker(stack_env, 30, tmp_path / "ahead.log", queues="cpu", label="ahead-clock")
    try:
        gpu_workers("on-time")
        answer, client = answer_under_way(
            alice, long_gemma, "Tell a long story about a lighthouse.", web_server
        )
        client.wait_until(finished, timeout=120)
        client.close()
    finally:
        _stop(ahead.process)
    saved = assert_one_clean_answer(client, answer)
    assert saved.status == Message.Status.DONE, saved.error
    assert saved.attempts == 1 and "on-time" in saved.worker


def test_workers_note_themselves_alive_for_their_pool_and_stop_when_gone(gpu_workers):

    redis_client.shared().delete(f"corral:workers:{POOL}")
    assert wakeups.has_live_worker(POOL) is False
    worker = gpu_workers("present")
    deadline = time.monotonic() + 10
    while not wakeups.has_live_worker(POOL):
        assert time.monotonic() < deadline, "the worker never noted itself alive"
        time.sleep(0.2)
    os.killpg(worker.process.pid, signal.SIGKILL)  # no clean shutdown: it must expire
    worker.process.wait()
    deadline = time.monotonic() + 3 * float(FAST_REAPER["CORRAL_REAP_INTERVAL_S"]) + 5
    while wakeups.has_live_worker(POOL):
        assert time.monotonic() < deadline, "a killed worker still counts as alive"
        time.sleep(0.2)


def test_fair_queue_serves_a_second_user_within_two_slots(alice, bob, gemma, gpu_workers, settings):
    settings.CORRAL = {**settings.CORRAL, "MAX_ACTIVE_PER_USER": 10}
    gemma.pool = POOL
    gemma.parameters = {**gemma.parameters, "max_tokens": 6}
    gemma.save()
    for i in range(6):
        services.send_message(user=alice, conversation_id=None, text=f"A{i}", model_id=gemma.pk)
    _, _, bobs = services.send_message(user=bob, conversation_id=None, text="B", model_id=gemma.pk)
    gpu_workers("fair")  # starts after everything is queued: one slot at a time
    deadline = time.monotonic() + 120
    while Message.objects.filter(status__in=Message.ACTIVE).exists():
        assert time.monotonic() < deadline, "the queue did not drain"
        time.sleep(0.2)
    order = list(
        Message.objects.filter(role="assistant").order_by("started_at").values_list("pk", flat=True)
    )
    assert order.index(bobs.pk) <= 1, order  # among the first two slots, not the seventh


def test_redis_restart_mid_batch_keeps_generating_and_clients_catch_up(
    alice, long_gemma, stack_env, tmp_path
):
    sock = tmp_path / "redis.sock"
    argv = processes.redis_server_argv(sock, tmp_path)
    argv[argv.index("--appendonly") + 1] = "no"  # a restart loses everything, as here

    def start_redis() -> subprocess.Popen[bytes]:
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, start_new_session=True)
        processes.wait_for_unix_socket(sock)
        return process

    redis_process = start_redis()
    env = {
        **stack_env,
        **FAST_REAPER,
        "REDIS_URL": f"unix://{sock}",
        "CORRAL_MAX_ACTIVE_PER_USER": "10",
    }
    worker = start_worker(env, tmp_path / "worker.log", queues=POOL)
    port = free_port()
    web = _start(processes.web_argv("127.0.0.1", port), env, tmp_path / "web.log")
    try:
        processes.wait_for_port("127.0.0.1", port, alive={"web": web})
        base = f"http://127.0.0.1:{port}"
        clients = []
        for i in range(4):  # a batch: four answers generating in the one worker
            conversation = Conversation.objects.create(owner=alice, model=long_gemma)
            client = ChatClient.open(base, conversation.pk, alice, resilient=True)
            text = f"Write about mountain number {i}."
            client.send({"type": "send", "text": text, "model": long_gemma.pk})
            clients.append(client)
        for client in clients:
            client.wait_until(lambda c: len(c.messages) == 2 and len(c.answer()["content"]) > 20)
        answers = [Message.objects.get(pk=client.answer()["id"]) for client in clients]
        redis_process.kill()
        redis_process.wait()
        time.sleep(1)
        redis_process = start_redis()
        for answer, client in zip(answers, clients, strict=True):
            client.wait_until(finished, timeout=120)
            client.close()
            saved = assert_one_clean_answer(client, answer)
            assert saved.status == Message.Status.DONE, saved.error
            assert saved.attempts == 1  # kept generating: never re-run
    finally:
        _stop(worker.process)
        _stop(web)
        redis_process.kill()
