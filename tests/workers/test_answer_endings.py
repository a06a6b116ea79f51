"""How answers end when workers, reapers and Stop race each other: each ending says the
true reason, touches only its own attempt, and nothing waits for the reaper needlessly."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.db.models import Q
from django.test import override_settings
from django.utils import timezone

from inference import BackendError, TextChunk
from tests.chat.conftest import UNSERVED_POOL
from tests.workers.test_jobs import limits, queued, running
from webui import config
from webui.chat import services, stop_flags, wakeups
from webui.chat.models import Message
from workers import claims, generation, reaper
from workers.heartbeat import Heartbeat

pytestmark = pytest.mark.django_db


def test_a_dropped_attempt_leaves_the_next_attempts_stop_flag_alone(alice, gemma):
    """Attempt 1 is reaped and re-run as attempt 2, whose person presses Stop; attempt 1's
    late ending must not clear attempt 2's flag."""
    queued(alice, gemma)
    old = claims.claim_next(UNSERVED_POOL, worker="old")
    Message.objects.filter(pk=old.pk).update(
        heartbeat_at=timezone.now() - timedelta(seconds=config.HEARTBEAT_STALE_S + 5)
    )
    assert reaper.reap_stale() == [old.pk]
    new = claims.claim_next(UNSERVED_POOL, worker="new")
    assert new.attempts == 2
    stop_flags.request_stop(new.pk, 2)
    try:
        generation._save_outcome(generation.AnswerStream(old), None, Message.Status.DONE, "")
        assert stop_flags.stop_requested(new.pk, 2)
    finally:
        stop_flags.clear(new.pk, 2)
    assert Message.objects.get(pk=new.pk).status == Message.Status.RUNNING


def _claimed_by_a_dead_worker(user, model) -> tuple[Message, Message]:
    """A sent answer (as sent) and its claim by a worker whose heartbeat went stale."""
    _, _, answer = services.send_message(
        user=user, conversation_id=None, text="hi", model_id=model.pk
    )
    claimed = claims.claim_next(UNSERVED_POOL, worker="dying")
    Message.objects.filter(pk=claimed.pk).update(
        heartbeat_at=timezone.now() - timedelta(seconds=config.HEARTBEAT_STALE_S + 5)
    )
    return answer, claimed


def test_stop_is_not_lost_when_a_reaper_requeues_the_answer_meanwhile(alice, gemma, monkeypatch):
    """Stop finds the answer running, but before it can flag the attempt a reaper puts it
    back in the queue: Stop must still end it."""
    _, _, answer = services.send_message(
        user=alice, conversation_id=None, text="hi", model_id=gemma.pk
    )
    claimed = claims.claim_next(UNSERVED_POOL, worker="dying")
    real_end_queued = services.end_queued
    calls = []

    def end_queued_then_reaped(message, status, error):
        calls.append(status)
        ended = real_end_queued(message, status, error)
        if len(calls) == 1:  # the reaper runs right after Stop's first look
            Message.objects.filter(pk=claimed.pk).update(
                heartbeat_at=timezone.now() - timedelta(seconds=config.HEARTBEAT_STALE_S + 5)
            )
            assert reaper.reap_stale() == [claimed.pk]
        return ended

    monkeypatch.setattr(services, "end_queued", end_queued_then_reaped)
    services.stop_answer(user=alice, message_id=answer.pk)
    answer.refresh_from_db()
    assert answer.status == Message.Status.STOPPED
    assert claims.claim_next(UNSERVED_POOL, worker="next") is None  # nothing left to run


def test_stop_is_not_lost_when_the_reaper_requeues_after_checking_for_it(alice, gemma, monkeypatch):
    """The reaper looks for a stop flag (none yet), Stop flags the running attempt, then
    the reaper re-queues it with the same attempt number: Stop must end the queued answer,
    not leave it to run again under a new attempt that no flag names."""
    answer, claimed = _claimed_by_a_dead_worker(alice, gemma)
    real_request_stop = stop_flags.request_stop
    reaped = []

    def request_stop_while_the_reaper_runs(message_id, attempt):
        real_request_stop(message_id, attempt)
        if not reaped:
            reaped.append(attempt)
            # The reaper checked the flag before it was set and re-queues now.
            same_attempt = Q(status=Message.Status.RUNNING, attempts=attempt)
            assert reaper._requeue(Message.objects.get(pk=message_id), same_attempt)

    monkeypatch.setattr(services.stop_flags, "request_stop", request_stop_while_the_reaper_runs)
    try:
        services.stop_answer(user=alice, message_id=answer.pk)
    finally:
        stop_flags.clear(answer.pk, 1)
    answer.refresh_from_db()
    assert reaped == [1]
    assert answer.status == Message.Status.STOPPED
    assert claims.claim_next(UNSERVED_POOL, worker="next") is None  # nothing left to run


def test_stop_is_not_lost_when_it_reads_the_row_before_the_reaper_commits(
    alice, gemma, monkeypatch
):
    """The reaper looks for a flag (none), Stop flags the attempt and reads the row still
    running (the re-queue not committed yet) and returns: the reaper must honour the flag
    once its re-queue is in, not leave the answer to run again."""
    answer, claimed = _claimed_by_a_dead_worker(alice, gemma)
    real_stop_requested = stop_flags.stop_requested
    looks = []

    def stop_pressed_right_after_the_look(message_id, attempt):
        flagged = real_stop_requested(message_id, attempt)
        if not looks:  # Stop lands between the reaper's look and its re-queue
            stop_flags.request_stop(message_id, attempt)
        looks.append(flagged)
        return flagged

    monkeypatch.setattr(reaper.stop_flags, "stop_requested", stop_pressed_right_after_the_look)
    try:
        assert reaper.reap_stale() == [claimed.pk]
    finally:
        stop_flags.clear(claimed.pk, 1)
    answer.refresh_from_db()
    assert looks[0] is False
    assert answer.status == Message.Status.STOPPED and answer.error == "Stopped by the user."
    assert claims.claim_next(UNSERVED_POOL, worker="next") is None  # nothing left to run


@pytest.mark.django_db(transaction=True)
def test_an_attempt_the_reaper_took_stops_even_without_the_database(alice, gemma, monkeypatch):
    """A worker cut off from the database (not from Redis) goes on streaming: once the
    reaper re-queues its answer, its stop watch cancels it within a poll, so readers are
    not shown text the answer no longer has."""
    monkeypatch.setattr(config, "HEARTBEAT_INTERVAL_S", 3600)  # it cannot beat
    answer = running(queued(alice, gemma), heartbeat_age_s=config.HEARTBEAT_STALE_S + 5)
    stop_flags.clear(answer.pk, answer.attempts)  # an earlier test's row of the same id
    with Heartbeat(answer) as heartbeat:
        time.sleep(0.3)
        assert not heartbeat.cancelled.is_set()
        assert reaper.reap_stale() == [answer.pk]
        assert heartbeat.cancelled.wait(timeout=1), "the old attempt went on"
        assert heartbeat.lost and not heartbeat.timed_out
    assert Message.objects.get(pk=answer.pk).status == Message.Status.QUEUED


class FailsWhenCancelled:
    """A backend whose upstream read fails once its connection is cut, as an HTTP client
    does when the stream it reads is closed under it."""

    name = "fails-when-cancelled"

    def stream(self, request, cancel=None):
        assert cancel is not None and cancel.wait(timeout=10)
        raise BackendError("Ollama error: the connection was closed")
        yield  # a generator, like every backend


def test_stop_reaches_the_new_attempt_when_the_answer_was_rerun_meanwhile(
    alice, gemma, monkeypatch
):
    """Stop sees attempt 1 running; before its flag lands, a reaper re-queues the answer
    and another worker claims it as attempt 2: the flag must reach attempt 2."""
    from webui.chat import services as services_module

    _, _, answer = services.send_message(
        user=alice, conversation_id=None, text="hi", model_id=gemma.pk
    )
    first = claims.claim_next(UNSERVED_POOL, worker="dying")
    real_request_stop = stop_flags.request_stop
    flagged = []

    def request_stop_after_a_rerun(message_id, attempt):
        if not flagged:  # the reaper and another worker get in first
            Message.objects.filter(pk=first.pk).update(
                heartbeat_at=timezone.now() - timedelta(seconds=config.HEARTBEAT_STALE_S + 5)
            )
            assert reaper.reap_stale() == [first.pk]
            assert claims.claim_next(UNSERVED_POOL, worker="next").attempts == 2
        flagged.append(attempt)
        real_request_stop(message_id, attempt)

    monkeypatch.setattr(services_module.stop_flags, "request_stop", request_stop_after_a_rerun)
    try:
        services.stop_answer(user=alice, message_id=answer.pk)
        assert flagged == [1, 2]
        assert stop_flags.stop_requested(answer.pk, 2)
    finally:
        stop_flags.clear(answer.pk, 1)
        stop_flags.clear(answer.pk, 2)


def sent_and_run(user, model) -> Message:
    """A question sent, its answer run to its end in this thread, as saved."""
    _, _, answer = services.send_message(
        user=user, conversation_id=None, text="hi", model_id=model.pk
    )
    generation.run_next(UNSERVED_POOL, worker="test")
    answer.refresh_from_db()
    return answer


@pytest.mark.django_db(transaction=True)
def test_a_backend_failing_after_the_time_limit_says_time_limit(alice, gemma, monkeypatch):
    """The time limit cancels a silent backend, whose read then fails: the answer says it
    hit the time limit, not that the person stopped it."""
    monkeypatch.setattr(config, "MAX_GENERATION_S", 0.5)
    monkeypatch.setattr(generation, "get_backend", lambda name: FailsWhenCancelled())
    answer = sent_and_run(alice, gemma)
    assert answer.status == Message.Status.STOPPED
    assert answer.error == "Stopped at the time limit of 0.5 s."


@pytest.mark.django_db(transaction=True)
def test_a_heartbeat_that_finds_its_attempt_gone_cancels_it(alice, gemma, monkeypatch):
    monkeypatch.setattr(config, "HEARTBEAT_INTERVAL_S", 0.05)
    answer = running(queued(alice, gemma), heartbeat_age_s=0)
    Message.objects.filter(pk=answer.pk).update(status=Message.Status.QUEUED)  # reaped
    with Heartbeat(answer) as heartbeat:
        assert heartbeat.cancelled.wait(timeout=3)
        assert heartbeat.lost and not heartbeat.timed_out


@pytest.mark.django_db(transaction=True)
def test_a_hung_answer_stops_beating_after_its_time_limit_so_it_can_be_reaped(
    alice, gemma, monkeypatch
):
    monkeypatch.setattr(config, "HEARTBEAT_INTERVAL_S", 0.05)
    monkeypatch.setattr(config, "HEARTBEAT_STALE_S", 0.3)
    monkeypatch.setattr(config, "MAX_GENERATION_S", 0.2)
    answer = running(queued(alice, gemma), heartbeat_age_s=0)
    with Heartbeat(answer) as heartbeat:
        # The backend call never returns: the thread keeps the answer but stops beating.
        assert heartbeat.cancelled.wait(timeout=3) and heartbeat.timed_out
        deadline = time.monotonic() + 5
        while heartbeat.beating:
            assert time.monotonic() < deadline, "the heartbeat went on past the time limit"
            time.sleep(0.05)
        time.sleep(0.4)
        assert reaper.reap_stale() == [answer.pk]


@pytest.mark.django_db(transaction=True)
def test_a_follow_up_in_another_pool_is_woken_when_the_answer_before_it_ends(
    alice, gemma, cpu_model, monkeypatch
):
    """The person switched models mid-conversation: the follow-up waits in the cpu pool
    for an answer written in the gpu pool, and that pool is woken the moment it ends,
    not when a reaper next looks."""
    with override_settings(CORRAL=limits(active=5)):
        conversation, _, first = services.send_message(
            user=alice, conversation_id=None, text="one", model_id=gemma.pk
        )
        _, _, follow_up = services.send_message(
            user=alice, conversation_id=conversation.pk, text="two", model_id=cpu_model.pk
        )
    woken: list[str] = []
    monkeypatch.setattr(wakeups, "wake", woken.append)
    assert generation.run_next(UNSERVED_POOL, worker="test").pk == first.pk
    assert cpu_model.pool in woken
    assert Message.objects.get(pk=follow_up.pk).status == Message.Status.QUEUED


class BreaksUnexpectedly:
    """A backend hitting a bug whose message quotes a connection string."""

    continues_partial = False
    message = 'connection to server at "db.internal" (10.1.2.3), port 5432 failed: FATAL'

    def stream(self, request, cancel=None):
        yield TextChunk("Partial ")
        raise RuntimeError(self.message)


@pytest.mark.django_db(transaction=True)
def test_an_unexpected_error_keeps_the_text_and_shows_no_internals(
    alice, gemma, monkeypatch, caplog
):
    monkeypatch.setattr(generation, "get_backend", lambda name: BreaksUnexpectedly())
    answer = sent_and_run(alice, gemma)
    assert answer.status == Message.Status.FAILED
    assert answer.content == "Partial "
    assert answer.error == generation.INTERNAL_ERROR
    assert "10.1.2.3" not in answer.error and "5432" not in answer.error
    assert BreaksUnexpectedly.message in caplog.text  # the admins' log has it all


@pytest.mark.django_db(transaction=True)
def test_an_unreachable_ollama_server_is_named_in_the_log_not_the_answer(alice, caplog):
    from tests.inference.test_ollama_backend import closed_port
    from tests.workers.test_generation import ollama_model

    host = f"http://127.0.0.1:{closed_port()}"
    model = ollama_model("ollama/gone", "llama3.2:1b", host)
    answer = sent_and_run(alice, model)
    assert answer.status == Message.Status.FAILED
    assert answer.error == "The Ollama server is unreachable."
    assert host in caplog.text
