"""The worker's loop, in this process against the test database: several answers of one
batch run at once; answers that cannot share the process wait their turn."""

from __future__ import annotations

import threading
import time

import pytest
from django.test import override_settings

from tests.chat.conftest import UNSERVED_POOL
from tests.ollama_server import OllamaTestServer
from tests.workers.first_delta import fresh_replay, wait_for_first_delta
from tests.workers.test_generation import ollama_model
from tests.workers.test_jobs import limits
from webui import config
from webui.chat import fleet, redis_client, services, stop_flags, streams, wakeups, warm_routing
from webui.chat.models import Message
from workers import claims, serving
from workers.serving import serve

pytestmark = pytest.mark.django_db(transaction=True)


def send(user, model, n: int) -> list[Message]:
    with override_settings(CORRAL=limits(active=10)):
        return [
            services.send_message(
                user=user, conversation_id=None, text=f"question {i}", model_id=model.pk
            )[2]
            for i in range(n)
        ]


def overlapping(answers: list[Message]) -> bool:
    """Every answer started before any of them finished."""
    rows = list(Message.objects.filter(pk__in=[a.pk for a in answers]))
    return max(r.started_at for r in rows) < min(r.finished_at for r in rows)


def test_llama_answers_run_together_in_one_process(alice, gemma):
    gemma.parameters = {**gemma.parameters, "max_tokens": 24}
    gemma.save()
    answers = send(alice, gemma, 3)
    assert serve(UNSERVED_POOL, worker="test") == 3
    assert all(
        m.status == Message.Status.DONE and m.content
        for m in Message.objects.filter(pk__in=[a.pk for a in answers])
    )
    assert overlapping(answers)


def test_ollama_answers_stream_together_from_one_process(alice):
    with OllamaTestServer(models={"slow:latest": "one two three four"}, token_delay=0.2) as server:
        model = ollama_model("ollama/slow", "slow:latest", server.url)
        answers = send(alice, model, 3)
        assert serve(UNSERVED_POOL, worker="test") == 3
    rows = Message.objects.filter(pk__in=[a.pk for a in answers])
    assert all(m.status == Message.Status.DONE and m.content == "one two three four" for m in rows)
    assert overlapping(answers)


def test_one_process_holds_at_most_parallel_streams_of_an_ollama_server(alice):
    """With ``parallel`` 2, three answers for one server run two at a time: the third
    starts when one of the first two ends."""
    with OllamaTestServer(models={"slow:latest": "one two three"}, token_delay=0.2) as server:
        model = ollama_model("ollama/slow", "slow:latest", server.url)
        model.settings = {**model.settings, "parallel": 2}
        model.save()
        answers = send(alice, model, 3)
        assert serve(UNSERVED_POOL, worker="test") == 3
    rows = sorted(Message.objects.filter(pk__in=[a.pk for a in answers]), key=lambda m: m.pk)
    assert all(m.status == Message.Status.DONE for m in rows)
    assert overlapping(rows[:2])
    assert rows[2].started_at >= min(m.finished_at for m in rows[:2])


def test_answers_that_cannot_share_a_process_take_turns(alice, gemma):
    """A llama.cpp answer and an Ollama answer have different batch keys: the second
    starts only when the first has ended, in fair order."""
    gemma.parameters = {**gemma.parameters, "max_tokens": 8}
    gemma.save()
    with OllamaTestServer(models={"tiny:latest": "hello there"}, token_delay=0.1) as server:
        model = ollama_model("ollama/tiny", "tiny:latest", server.url)
        first = send(alice, gemma, 1)[0]
        second = send(alice, model, 1)[0]
        assert serve(UNSERVED_POOL, worker="test") == 2
    first.refresh_from_db()
    second.refresh_from_db()
    assert first.status == second.status == Message.Status.DONE
    assert second.started_at >= first.finished_at


def wait_for(condition, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def listening() -> int:
    """Doorbells of the unserved pool now listening (a serve loop's)."""
    channel = wakeups.doorbell_channel(UNSERVED_POOL)
    return int(redis_client.shared().pubsub_numsub(channel)[0][1])


def assert_joined_while_it_ran(second: Message, first: Message) -> None:
    first.refresh_from_db()
    second.refresh_from_db()
    assert first.status == second.status == Message.Status.DONE
    assert second.started_at < first.finished_at


def test_an_answer_sent_while_a_batch_runs_joins_it_at_once(alice, monkeypatch):
    """The doorbell: with the loop's own look at the queue made rare (a minute), an answer
    sent while another streams still joins the running batch at once, instead of waiting
    for the next look or for the first answer to end."""
    monkeypatch.setattr(serving, "CLAIM_POLL_S", 60)
    monkeypatch.setattr(config, "AUTO_TITLE", False)
    words = " ".join(f"w{i}" for i in range(20))  # 4 s of streaming
    with OllamaTestServer(models={"slow:latest": words}, token_delay=0.2) as server:
        model = ollama_model("ollama/slow", "slow:latest", server.url)
        (first,) = send(alice, model, 1)
        wait_for(lambda: listening() == 0)  # an earlier test's doorbell has stopped
        runner = threading.Thread(target=serve, args=(UNSERVED_POOL, "test"))
        runner.start()
        try:
            wait_for(lambda: Message.objects.get(pk=first.pk).status == Message.Status.RUNNING)
            wait_for(lambda: listening() > 0)  # this loop's doorbell hears from now on
            (second,) = send(alice, model, 1)
        finally:
            runner.join(timeout=120)
    assert_joined_while_it_ran(second, first)


def test_a_worker_the_fleet_shows_idle_takes_a_sent_answer_into_its_running_batch(
    alice, gemma, monkeypatch
):
    """Fleet reports are seconds old, so during a burst warm routing wakes the worker the
    fleet still shows idle with the model loaded, though it already runs a batch. The
    doorbell names that worker: it takes the answer into its batch at once, not at its
    next look at the queue (made rare here: a minute) or when its batch ends."""
    monkeypatch.setattr(serving, "CLAIM_POLL_S", 60)
    monkeypatch.setattr(config, "AUTO_TITLE", False)
    gemma.parameters = {**gemma.parameters, "max_tokens": 256}
    gemma.save()
    worker = "warm-node:1"
    direct = warm_routing.direct_queue(warm_routing.node_of(worker))

    fleet.report(
        {
            "worker": worker,
            "host": "warm-node",
            "pid": 1,
            "pools": [UNSERVED_POOL],
            "models": [gemma.target],
            "answers": 0,
            "tokens_per_second": 0.0,
            "gpus": [],
            "interval_s": 60,
        }
    )
    try:
        (first,) = send(alice, gemma, 1)
        wait_for(lambda: listening() == 0)  # an earlier test's doorbell has stopped
        runner = threading.Thread(target=serve, args=(UNSERVED_POOL, worker))
        runner.start()
        try:
            wait_for(lambda: Message.objects.get(pk=first.pk).status == Message.Status.RUNNING)
            wait_for(lambda: listening() > 0)
            (second,) = send(alice, gemma, 1)
            # The wake-up went to the worker's own queue: the fleet shows it idle.
            assert wakeups.pending_wakeups(direct) == 1
        finally:
            runner.join(timeout=120)
    finally:
        fleet.forget(worker)
        redis_client.shared().delete(direct)
    assert_joined_while_it_ran(second, first)


def test_after_its_answers_a_worker_listens_a_while_and_runs_the_next_one_itself(
    alice, gemma, monkeypatch
):
    """An answer sent within ``CORRAL_WORKER_LINGER_S`` of the last one ending starts in
    the same loop, heard through the doorbell (no Celery wake-up is consumed here); then
    the loop ends by itself."""
    monkeypatch.setattr(config, "AUTO_TITLE", False)
    gemma.parameters = {**gemma.parameters, "max_tokens": 8}
    gemma.save()
    (first,) = send(alice, gemma, 1)
    wait_for(lambda: listening() == 0)  # an earlier test's doorbell has stopped
    served: list[int] = []
    runner = threading.Thread(
        target=lambda: served.append(serve(UNSERVED_POOL, "test", linger_s=3))
    )
    runner.start()
    try:
        wait_for(lambda: Message.objects.get(pk=first.pk).status == Message.Status.DONE)
        assert listening() > 0  # still listening after its answer ended
        (second,) = send(alice, gemma, 1)
    finally:
        runner.join(timeout=120)
    assert not runner.is_alive() and served == [2]
    second.refresh_from_db()
    assert second.status == Message.Status.DONE


def test_a_worker_that_also_consumes_another_queue_does_not_linger(monkeypatch):
    monkeypatch.setattr(config, "WORKER_LINGER_S", 5)
    assert serving.linger_for("cpu", ["cpu", "cpu@host.dq"]) == 5
    assert serving.linger_for("cpu", ["cpu", "gpu", "cpu@host.dq"]) == 0
    assert serving.linger_for("cpu", ["cpu", config.MODEL_JOB_QUEUE]) == 0


def test_stop_in_a_full_batch_lands_within_a_second_and_frees_the_slot(alice, gemma, monkeypatch):
    """Four llama.cpp answers fill a batch of four and a fifth waits. Stop ends one of the
    four within a second, keeping its partial text; the fifth takes its slot at once, while
    the other three carry on to the end."""
    monkeypatch.setattr(config, "CHECKPOINT_INTERVAL_S", 0.2)  # text in the DB sooner
    gemma.settings = {**gemma.settings, "batch_size": 4}
    # Long enough that the other three still run when the fifth joins, on a fast machine.
    gemma.parameters = {**gemma.parameters, "max_tokens": 256}
    gemma.save()
    answers = send(alice, gemma, 5)
    runner = threading.Thread(target=serve, args=(UNSERVED_POOL, "test"))
    runner.start()
    try:
        deadline = time.monotonic() + 60
        running = Message.objects.filter(pk__in=[a.pk for a in answers[:4]], status="running")
        while running.count() < 4:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert Message.objects.get(pk=answers[4].pk).status == Message.Status.QUEUED
        # Generating (the model is loaded): its first checkpoint has text.
        while not Message.objects.filter(pk=answers[1].pk).exclude(content="").exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        stopped_at = time.monotonic()
        services.stop_answer(user=alice, message_id=answers[1].pk)
        while Message.objects.get(pk=answers[1].pk).status == Message.Status.RUNNING:
            assert time.monotonic() - stopped_at < 1.0
            time.sleep(0.02)
    finally:
        runner.join(timeout=120)
    rows = {m.pk: m for m in Message.objects.filter(pk__in=[a.pk for a in answers])}
    stopped = rows[answers[1].pk]
    others = [rows[a.pk] for a in (answers[0], answers[2], answers[3])]
    waiting = rows[answers[4].pk]
    assert stopped.status == Message.Status.STOPPED and stopped.error == "Stopped by the user."
    assert stopped.content  # what it had written is kept
    assert all(m.status == Message.Status.DONE and m.content for m in [*others, waiting])
    # The fifth started when the stopped one left, not when the batch drained.
    assert stopped.finished_at <= waiting.started_at < min(m.finished_at for m in others)


def replayed_deltas(answer: Message) -> list[dict]:
    """The deltas an answer streamed, as its replay buffer in Redis holds them."""
    import asyncio

    from webui.chat import streams

    assert streams.flush()
    return asyncio.run(streams.read_replay(answer.pk, answer.attempts, after_seq=0))


def test_answers_streaming_together_share_the_process_delta_budget(alice, monkeypatch):
    """Alone, an answer sends a delta every CORRAL_FLUSH_INTERVAL_MS; several at once share
    CORRAL_DELTAS_PER_S, so each sends fewer, larger deltas, and none loses text."""
    from webui import config

    monkeypatch.setattr(config, "DELTAS_PER_S", 6)  # 3 at once: one delta per 0.5 s each
    words = " ".join(f"w{i}" for i in range(24))
    with OllamaTestServer(models={"slow:latest": words}, token_delay=0.04) as server:
        model = ollama_model("ollama/slow", "slow:latest", server.url)
        (alone,) = send(alice, model, 1)
        assert serve(UNSERVED_POOL, worker="test") == 1
        together = send(alice, model, 3)
        assert serve(UNSERVED_POOL, worker="test") == 3
    assert overlapping(together)
    counts = {}
    for answer in [alone, *together]:
        answer.refresh_from_db()
        deltas = replayed_deltas(answer)
        assert answer.status == Message.Status.DONE and answer.content == words
        assert "".join(d["text"] for d in deltas) == words  # every word, once, in order
        counts[answer.pk] = len(deltas)
    assert max(counts[a.pk] for a in together) < counts[alone.pk]


def test_an_answer_that_could_not_be_started_goes_back_to_the_queue(alice, gemma, monkeypatch):
    """The claim went in, then starting the answer failed: it is queued again with its
    attempt not spent (not left running with no thread until the reaper fails it), and
    the next pass runs it."""
    gemma.parameters = {**gemma.parameters, "max_tokens": 8}
    gemma.save()
    (answer,) = send(alice, gemma, 1)
    real_start = serving.Slots.start
    starts = []

    def fails_once(self, message):
        starts.append(message.pk)
        if len(starts) == 1:
            raise RuntimeError("could not start a thread")
        return real_start(self, message)

    monkeypatch.setattr(serving.Slots, "start", fails_once)
    assert serve(UNSERVED_POOL, worker="test") == 0  # the failure ended the pass
    row = Message.objects.get(pk=answer.pk)
    assert (row.status, row.attempts, row.worker) == (Message.Status.QUEUED, 0, "")
    assert serve(UNSERVED_POOL, worker="test") == 1
    row.refresh_from_db()
    assert row.status == Message.Status.DONE and row.attempts == 1


def test_a_claim_that_fails_halfway_is_given_back(alice, gemma, monkeypatch):
    """Redis failed right after the claim (clearing the attempt's replay buffer): the
    answer is queued again as it was."""
    import redis

    from workers import claims

    (answer,) = send(alice, gemma, 1)

    def redis_down(message_id, attempt):
        raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379.")

    monkeypatch.setattr(claims.streams, "reset_replay", redis_down)
    assert serve(UNSERVED_POOL, worker="test") == 0
    row = Message.objects.get(pk=answer.pk)
    assert (row.status, row.attempts, row.worker) == (Message.Status.QUEUED, 0, "")


def test_a_worker_shutting_down_finishes_its_answers_and_claims_no_more(alice, gemma):
    """Celery's warm shutdown (SIGTERM) marks the node draining: its serve loop runs what
    it has to the end but takes nothing new, so a queued answer waits for another worker
    instead of being killed with this one at the end of its grace period."""
    from celery.signals import worker_shutting_down

    from workers import celery_app, presence

    gemma.parameters = {**gemma.parameters, "max_tokens": 8}
    gemma.save()
    (first,) = send(alice, gemma, 1)
    try:
        worker_shutting_down.send(sender="node-a", sig="SIGTERM", how="Warm", exitcode=0)
        assert presence.draining("node-a")
        assert serve(UNSERVED_POOL, worker="node-a:1", linger_s=3) == 0
        assert Message.objects.get(pk=first.pk).status == Message.Status.QUEUED
        assert serve(UNSERVED_POOL, worker="node-b:1") == 1  # another node takes it
        # A node started again under the same name takes work again.
        celery_app.consume_own_queue(sender="node-a", instance=celery_app.app.Worker)
        assert not presence.draining("node-a")
    finally:
        presence.stop_draining("node-a")
        celery_app.app.amqp.queues.pop("node-a.dq", None)


COUNTING = "Count from 1 to 500, separated by commas."  # a long answer, whatever its words


def serving_until_it_streams(answer: Message, worker: str) -> threading.Thread:
    """``serve`` in a thread, returned once ``answer`` has streamed its first delta."""
    replay = fresh_replay(answer.pk)
    runner = threading.Thread(target=serve, args=(UNSERVED_POOL, worker))
    runner.start()
    wait_for_first_delta(replay)
    return runner


def test_a_worker_shutting_down_hands_a_running_answer_to_another_with_its_text(
    alice, gemma, monkeypatch
):
    """CORRAL_DRAIN_HANDOFF_S into a worker's shutdown, an answer it still runs is stopped
    and put back in the queue with everything it delivered (not killed with the worker
    and found by the reaper later): another worker continues it from there to the end."""
    from workers import presence

    monkeypatch.setattr(config, "DRAIN_HANDOFF_S", 0.5)
    gemma.parameters = {**gemma.parameters, "max_tokens": 400}
    gemma.save()
    _, _, answer = services.send_message(
        user=alice, conversation_id=None, text=COUNTING, model_id=gemma.pk
    )
    wakeups.note_worker_alive(UNSERVED_POOL, "node-b:1", for_s=60)  # someone to take it
    leaving = serving_until_it_streams(answer, "node-a:1")
    try:
        presence.start_draining("node-a")  # as Celery's warm shutdown does
        handed_at = time.monotonic()
        leaving.join(timeout=30)
        assert not leaving.is_alive()
        assert time.monotonic() - handed_at < 5  # not the reaper's stale wait
    finally:
        presence.stop_draining("node-a")
        wakeups.forget_worker(UNSERVED_POOL, "node-b:1")
    streams.flush()
    handed = Message.objects.get(pk=answer.pk)
    assert (handed.status, handed.attempts, handed.worker) == (Message.Status.QUEUED, 1, "")
    delivered, last_seq = streams.delivered_after(answer.pk, 1, 0, 0)
    assert handed.content and (handed.content, handed.seq) == (delivered, last_seq)

    assert serve(UNSERVED_POOL, worker="node-b:1") == 1
    done = Message.objects.get(pk=answer.pk)
    assert (done.status, done.attempts) == (Message.Status.DONE, 2), done.error
    assert done.content.startswith(handed.content) and "node-b" in done.worker


def test_with_the_whole_pool_shutting_down_answers_run_on_to_their_end(alice, gemma, monkeypatch):
    """No other node to hand to (the only other one is shutting down too): finishing
    within the grace period is the answer's best chance, so it runs on."""
    from workers import presence

    monkeypatch.setattr(config, "DRAIN_HANDOFF_S", 0.0)
    gemma.parameters = {**gemma.parameters, "max_tokens": 120}
    gemma.save()
    _, _, answer = services.send_message(
        user=alice, conversation_id=None, text=COUNTING, model_id=gemma.pk
    )
    wakeups.note_worker_alive(UNSERVED_POOL, "node-b:1", for_s=60)
    presence.start_draining("node-b")
    leaving = serving_until_it_streams(answer, "node-a:1")
    try:
        presence.start_draining("node-a")
        time.sleep(0.3)  # three looks of the serve loop, each past the hand-off time
        assert Message.objects.get(pk=answer.pk).status == Message.Status.RUNNING
        leaving.join(timeout=60)
    finally:
        presence.stop_draining("node-a")
        presence.stop_draining("node-b")
        wakeups.forget_worker(UNSERVED_POOL, "node-b:1")
    done = Message.objects.get(pk=answer.pk)
    assert (done.status, done.attempts) == (Message.Status.DONE, 1), done.error


def test_an_answer_stopped_as_it_is_handed_off_ends_stopped_with_its_text(alice):
    """Stop pressed while the answer was still running on the worker handing it off: the
    flag of that attempt is honoured, not lost with the attempt (the next never reads it).
    An Ollama answer, which starts anew when re-run, keeps what was shown."""
    from workers import handoff

    with OllamaTestServer(models={"slow:latest": "one two three"}, token_delay=0.1) as server:
        model = ollama_model("ollama/slow", "slow:latest", server.url)
        _, _, answer = services.send_message(
            user=alice, conversation_id=None, text="hi", model_id=model.pk
        )
        claimed = claims.claim_next(UNSERVED_POOL, worker="node-a:1")
        stop_flags.request_stop(claimed.pk, 1)  # Stop saw it running, before the hand-off
        handoff.hand_off(claimed, "one two", 2)
    row = Message.objects.get(pk=answer.pk)
    assert (row.status, row.error) == (Message.Status.STOPPED, "Stopped by the user.")
    assert (row.content, row.seq, row.attempts) == ("one two", 2, 1)
    assert not stop_flags.stop_requested(answer.pk, 1)


def test_an_answer_stopped_as_another_worker_claims_it_is_stopped_there(alice, monkeypatch):
    """Stop saw the answer running here; the hand-off put it back, and another worker
    claimed it before the Stop could end it in the queue: the new attempt is flagged, and
    its own stop watch ends it."""
    from webui.chat import endings
    from workers import handoff

    with OllamaTestServer(models={"slow:latest": "one two three"}) as server:
        model = ollama_model("ollama/slow", "slow:latest", server.url)
        _, _, answer = services.send_message(
            user=alice, conversation_id=None, text="hi", model_id=model.pk
        )
        claimed = claims.claim_next(UNSERVED_POOL, worker="node-a:1")
        real_requeue = endings.requeue

        def requeue_then_claimed_elsewhere(answer, **kwargs):
            requeued = real_requeue(answer, **kwargs)
            stop_flags.request_stop(answer.pk, 1)  # pressed as attempt 1 still ran
            assert claims.claim_next(UNSERVED_POOL, worker="node-b:1").attempts == 2
            return requeued

        monkeypatch.setattr(handoff, "requeue", requeue_then_claimed_elsewhere)
        handoff.hand_off(claimed, "one", 1)
    try:
        assert stop_flags.stop_requested(answer.pk, 2)
        row = Message.objects.get(pk=answer.pk)
        assert (row.status, row.attempts) == (Message.Status.RUNNING, 2)
    finally:
        stop_flags.clear(answer.pk, 2)


def test_a_claim_given_back_with_stop_pressed_on_it_ends_stopped(alice, gemma):
    """Stop saw the claim running; starting it then failed and it went back to the queue:
    the Stop ends it there (the next claim of that attempt would take the flag for a
    leftover and run it)."""
    (answer,) = send(alice, gemma, 1)
    claimed = claims.claim_next(UNSERVED_POOL, worker="node-a:1")
    stop_flags.request_stop(claimed.pk, 1)
    assert claims.give_back(claimed.pk, "node-a:1")
    row = Message.objects.get(pk=answer.pk)
    assert (row.status, row.error) == (Message.Status.STOPPED, "Stopped by the user.")
    assert not stop_flags.stop_requested(answer.pk, 1)
