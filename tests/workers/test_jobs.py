"""Answers as durable jobs: fair claiming, queue places, admission, the reaper, ownership,
time and token limits, and the heartbeat thread. In-process, against the test database."""

from __future__ import annotations

import contextlib
import json
import time
from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.core.exceptions import ValidationError
from django.db import transaction
from django.test import override_settings
from django.utils import timezone

from inference import Finished, TextChunk, Usage
from tests.chat.conftest import UNSERVED_POOL
from tests.workers.row_lock import row_held
from webui import config
from webui.chat import endings, queue, redis_client, services, stop_flags, streams, wakeups
from webui.chat.models import Conversation, LanguageModel, Message
from workers import claims, generation, reaper
from workers.heartbeat import Heartbeat
from workers.stop_watch import STOP_POLL_S

pytestmark = pytest.mark.django_db


def limits(active: int = 2, pool_cap: int = 100) -> dict[str, int]:
    return {
        "MAX_MESSAGE_CHARS": 32_000,
        "MAX_ACTIVE_PER_USER": active,
        "MAX_QUEUED_PER_POOL": pool_cap,
    }


def queued(user, model, created_at=None) -> Message:
    """A queued answer of ``user`` in a conversation of its own, like send_message makes."""
    conversation = Conversation.objects.create(owner=user, model=model)
    answer = Message.objects.create(
        conversation=conversation,
        role=Message.Role.ASSISTANT,
        model=model,
        status=Message.Status.QUEUED,
    )
    if created_at is not None:
        Message.objects.filter(pk=answer.pk).update(created_at=created_at)
        answer.refresh_from_db()
    return answer


def served(user, model, started_at) -> Message:
    """A finished answer of ``user`` that a worker started at ``started_at``."""
    answer = queued(user, model, created_at=started_at - timedelta(seconds=1))
    Message.objects.filter(pk=answer.pk).update(
        status=Message.Status.DONE,
        started_at=started_at,
        finished_at=started_at + timedelta(seconds=5),
        attempts=1,
    )
    return answer


def running(answer: Message, *, heartbeat_age_s: float, attempts: int = 1, **fields) -> Message:
    """Turn ``answer`` into a running row whose last heartbeat is ``heartbeat_age_s`` old."""
    now = timezone.now()
    values = {
        "status": Message.Status.RUNNING,
        "attempts": attempts,
        "worker": "worker-1",
        "started_at": now - timedelta(seconds=heartbeat_age_s + 1),
        "heartbeat_at": now - timedelta(seconds=heartbeat_age_s),
        "content": "The partial answer so far",
        "seq": 3,
        "version": 5,
        **fields,
    }
    Message.objects.filter(pk=answer.pk).update(**values)
    answer.refresh_from_db()
    # What a claim does: ids repeat across runs while Redis keeps an earlier run's keys.
    stop_flags.clear(answer.pk, answer.attempts)
    streams.reset_replay(answer.pk, answer.attempts)
    return answer


@pytest.fixture
def carol(django_user_model):
    return django_user_model.objects.create_user("carol", password="x-unused-password-x")


# Fairness -----------------------------------------------------------------------------


def test_a_newcomer_is_not_stuck_behind_a_user_with_many_queued_answers(alice, bob, gemma):
    base = timezone.now() - timedelta(minutes=10)
    alices = [queued(alice, gemma, base + timedelta(seconds=i)) for i in range(6)]
    bobs = queued(bob, gemma, base + timedelta(seconds=30))  # queued after all of Alice's

    order = [m.pk for m in queue.queue_of(UNSERVED_POOL)]

    assert bobs.pk in order[:2]
    # Round-robin: everyone's first, then Alice's others, oldest first.
    assert order == [alices[0].pk, bobs.pk] + [m.pk for m in alices[1:]]


def test_the_user_served_least_recently_goes_first(alice, bob, carol, gemma):
    now = timezone.now()
    served(alice, gemma, started_at=now - timedelta(seconds=30))  # Alice was just served
    base = now - timedelta(minutes=10)
    alices = [queued(alice, gemma, base + timedelta(seconds=i)) for i in range(6)]
    bobs = queued(bob, gemma, base + timedelta(seconds=30))  # Bob never was

    order = [m.pk for m in queue.queue_of(UNSERVED_POOL)]
    assert order == [bobs.pk] + [m.pk for m in alices]

    # Carol, served an hour ago, goes before Alice (served 30 s ago) but after Bob (never).
    served(carol, gemma, started_at=now - timedelta(hours=1))
    carols = queued(carol, gemma, base + timedelta(seconds=40))
    order = [m.pk for m in queue.queue_of(UNSERVED_POOL)]
    assert order[:3] == [bobs.pk, carols.pk, alices[0].pk]


def test_someone_not_among_the_pools_latest_starts_counts_as_served_longest_ago(
    alice, bob, carol, gemma, monkeypatch
):
    """Who was served last is read from the pool's latest starts only, so a queue reading
    does not grow with the history; someone served before all of them was served longest
    ago, like someone never served."""
    monkeypatch.setattr(queue, "LATEST_STARTS", 2)
    now = timezone.now()
    served(carol, gemma, started_at=now - timedelta(hours=2))  # before the latest two
    served(alice, gemma, started_at=now - timedelta(minutes=2))
    served(alice, gemma, started_at=now - timedelta(minutes=1))
    base = now - timedelta(minutes=10)
    carols = queued(carol, gemma, base)
    bobs = queued(bob, gemma, base + timedelta(seconds=1))  # never served
    alices = queued(alice, gemma, base + timedelta(seconds=2))

    # Carol and Bob alike, so in the order they sent; Alice, served a minute ago, last.
    assert [m.pk for m in queue.queue_of(UNSERVED_POOL)] == [carols.pk, bobs.pk, alices.pk]


def test_claim_next_takes_answers_in_fair_order_and_marks_them_running(alice, bob, gemma):
    now = timezone.now()
    served(alice, gemma, started_at=now - timedelta(seconds=30))
    base = now - timedelta(minutes=10)
    alices = [queued(alice, gemma, base + timedelta(seconds=i)) for i in range(3)]
    bobs = queued(bob, gemma, base + timedelta(seconds=30))
    expected = [m.pk for m in queue.queue_of(UNSERVED_POOL)[:2]]
    assert expected == [bobs.pk, alices[0].pk]

    first = claims.claim_next(UNSERVED_POOL, worker="host-a:1")
    second = claims.claim_next(UNSERVED_POOL, worker="host-b:2")

    assert [first.pk, second.pk] == expected
    for claimed, worker in ((first, "host-a:1"), (second, "host-b:2")):
        row = Message.objects.get(pk=claimed.pk)
        assert row.status == Message.Status.RUNNING
        assert row.attempts == 1
        assert row.version == 1
        assert row.worker == worker
        assert row.heartbeat_at is not None and row.started_at is not None
        assert abs((timezone.now() - row.heartbeat_at).total_seconds()) < 5
    # Alice's other answers are still waiting, oldest first.
    assert [m.pk for m in queue.queue_of(UNSERVED_POOL)] == [alices[1].pk, alices[2].pk]


def test_a_burst_is_claimed_in_one_pass_in_fair_order_up_to_the_first_that_does_not_fit(
    alice, bob, gemma, monkeypatch
):
    """The worker's loop claims what waits from one reading of the queue: the answers it
    is given are the fair order's, and at the first one its batch cannot take, it stops
    (that one must not be overtaken), leaving the rest queued."""
    base = timezone.now() - timedelta(minutes=10)
    alices = [queued(alice, gemma, base + timedelta(seconds=i)) for i in range(3)]
    bobs = [queued(bob, gemma, base + timedelta(seconds=10 + i)) for i in range(2)]
    order = [m.pk for m in queue.queue_of(UNSERVED_POOL)]
    assert order == [alices[0].pk, bobs[0].pk, alices[1].pk, bobs[1].pk, alices[2].pk]
    looked_at = []
    readings = []

    def queue_of(pool: str) -> list[Message]:
        readings.append(pool)
        return reading(pool)

    def fits(answer: Message) -> bool:  # a batch with room for three
        looked_at.append(answer.pk)
        return len(looked_at) <= 3

    reading = queue.queue_of
    monkeypatch.setattr(queue, "queue_of", queue_of)
    claimed = [m.pk for m in claims.claim_in_order(UNSERVED_POOL, worker="w", fits=fits)]

    assert readings == [UNSERVED_POOL]  # the queue was read once for the whole pass
    assert claimed == order[:3]
    assert looked_at == order[:4]  # stopped at the fourth, and never looked past it
    rows = {m.pk: m.status for m in Message.objects.filter(pk__in=order)}
    assert [rows[pk] for pk in order] == [Message.Status.RUNNING] * 3 + [Message.Status.QUEUED] * 2


def test_a_claim_clears_flags_left_for_its_attempt_but_keeps_a_stop_pressed_meanwhile(
    alice, gemma, monkeypatch
):
    """Flags left for an id and attempt (ids repeat after a database reset) are cleared when
    the attempt is claimed; a Stop of the new attempt, set while the claim is made, stays."""
    stale = queued(alice, gemma)
    stop_flags.request_stop(stale.pk, 1)
    stop_flags.revoke(stale.pk, 1)
    claimed = claims.claim_next(UNSERVED_POOL, worker="w")
    assert claimed.pk == stale.pk and claimed.attempts == 1
    assert stop_flags.flags_of([(stale.pk, 1)]) == [(False, False)]

    pressed = queued(alice, gemma)
    stop_flags.request_stop(pressed.pk, 1)  # a leftover...
    real_leftovers_of = stop_flags.leftovers_of

    def stop_pressed_after_the_reading(message_id: int, attempt: int) -> dict[str, bytes | str]:
        found = real_leftovers_of(message_id, attempt)
        stop_flags.request_stop(message_id, attempt)  # ...then a real Stop, a new flag
        return found

    monkeypatch.setattr(stop_flags, "leftovers_of", stop_pressed_after_the_reading)
    try:
        assert claims.claim_next(UNSERVED_POOL, worker="w").pk == pressed.pk
        assert stop_flags.flags_of([(pressed.pk, 1)]) == [(True, False)]
    finally:
        stop_flags.clear(pressed.pk, 1)


def test_a_client_that_sees_a_claimed_answer_running_finds_no_earlier_runs_deltas(
    alice, gemma, monkeypatch
):
    """An earlier run's replay buffer for the same id and attempt (ids repeat after a
    database reset) is gone before the row says running: a snapshot read at that moment
    merges the buffer, and the earlier text made the client's stream misalign (the last
    full CI: a snapshot of 36 characters at seq 3, then the live delta 4 at offset 23)."""
    answer = queued(alice, gemma)
    key = streams.replay_key(answer.pk, 1)
    stale = json.dumps({"seq": 1, "offset": 0, "text": "an earlier run's text"})
    redis_client.shared().rpush(key, stale)
    seen_running: list[list[bytes]] = []
    real_load = claims._load

    def load_and_look(pk: int):
        row = real_load(pk)
        if row is not None and row.status == Message.Status.RUNNING:
            seen_running.append(redis_client.shared().lrange(key, 0, -1))
        return row

    monkeypatch.setattr(claims, "_load", load_and_look)
    try:
        assert claims.claim_next(UNSERVED_POOL, worker="w").pk == answer.pk
        assert seen_running == [[]]
    finally:
        redis_client.shared().delete(key)


def test_claim_next_with_nothing_queued_returns_none_and_skips_other_pools(alice, gemma, cpu_model):
    other = queued(alice, cpu_model)
    assert claims.claim_next(UNSERVED_POOL, worker="w") is None
    assert Message.objects.get(pk=other.pk).status == Message.Status.QUEUED


# Queue positions ----------------------------------------------------------------------


def test_positions_count_from_one_in_fair_order_without_eta_when_there_is_no_history(
    alice, bob, gemma, cpu_model
):
    base = timezone.now() - timedelta(minutes=5)
    a1 = queued(alice, gemma, base)
    a2 = queued(alice, gemma, base + timedelta(seconds=1))
    b1 = queued(bob, gemma, base + timedelta(seconds=2))
    elsewhere = queued(bob, cpu_model, base - timedelta(minutes=1))  # older, other pool

    places = queue.queue_positions(UNSERVED_POOL)

    assert {pk: place["position"] for pk, place in places.items()} == {
        a1.pk: 1,
        b1.pk: 2,
        a2.pk: 3,
    }
    assert elsewhere.pk not in places
    assert all(place["pool"] == UNSERVED_POOL for place in places.values())
    assert all(place["eta_s"] is None for place in places.values())
    assert queue.queue_positions("cpu")[elsewhere.pk]["position"] == 1


def test_eta_comes_from_the_pools_history_and_grows_with_position(
    alice, bob, gemma, cpu_model, gpu_worker_alive
):
    now = timezone.now()
    # Gemma's pool: 100 tokens at 10 tokens/s, so about 10 s per answer.
    for tokens, rate in ((80, 8.0), (120, 12.0)):
        done = served(bob, gemma, started_at=now - timedelta(hours=2))
        Message.objects.filter(pk=done.pk).update(completion_tokens=tokens, tokens_per_second=rate)
    # The other pool is much slower; it must not leak into this pool's estimate.
    slow = served(bob, cpu_model, started_at=now - timedelta(hours=2))
    Message.objects.filter(pk=slow.pk).update(completion_tokens=1000, tokens_per_second=1.0)

    assert queue.expected_answer_seconds(UNSERVED_POOL) == pytest.approx(10.0)
    base = now - timedelta(minutes=5)
    first = queued(alice, gemma, base)
    second = queued(alice, gemma, base + timedelta(seconds=1))
    third = queued(alice, gemma, base + timedelta(seconds=2))
    queued(alice, cpu_model, base - timedelta(minutes=1))

    places = queue.queue_positions(UNSERVED_POOL)

    assert [places[m.pk]["position"] for m in (first, second, third)] == [1, 2, 3]
    etas = [places[m.pk]["eta_s"] for m in (first, second, third)]
    assert etas == [10, 20, 30]
    assert etas[1] == pytest.approx(2 * etas[0], abs=1)


# Admission ----------------------------------------------------------------------------


@override_settings(CORRAL=limits(active=2))
def test_a_user_at_the_active_limit_is_refused_and_nothing_is_saved(alice, bob, gemma):
    for text in ("one", "two"):
        services.send_message(user=alice, conversation_id=None, text=text, model_id=gemma.pk)
    messages, conversations = Message.objects.count(), Conversation.objects.count()

    with pytest.raises(ValidationError) as refused:
        services.send_message(user=alice, conversation_id=None, text="three", model_id=gemma.pk)

    message = refused.value.messages[0]
    assert "the limit is 2" in message
    assert "your message is still in the box" in message
    assert refused.value.code == "concurrent"
    assert Message.objects.count() == messages
    assert Conversation.objects.count() == conversations
    assert not Message.objects.filter(content="three").exists()

    # Bob's own limit is untouched by Alice's answers.
    _, _, bobs = services.send_message(
        user=bob, conversation_id=None, text="bob's turn", model_id=gemma.pk
    )
    assert bobs.status == Message.Status.QUEUED


@override_settings(CORRAL=limits(active=2))
def test_a_running_answer_counts_toward_the_limit_and_a_finished_one_does_not(alice, gemma):
    _, _, first = services.send_message(
        user=alice, conversation_id=None, text="one", model_id=gemma.pk
    )
    _, _, second = services.send_message(
        user=alice, conversation_id=None, text="two", model_id=gemma.pk
    )
    running(first, heartbeat_age_s=0)
    with pytest.raises(ValidationError, match="limit is 2"):
        services.send_message(user=alice, conversation_id=None, text="three", model_id=gemma.pk)
    Message.objects.filter(pk=first.pk).update(status=Message.Status.DONE)
    _, _, third = services.send_message(
        user=alice, conversation_id=None, text="three", model_id=gemma.pk
    )
    assert third.status == Message.Status.QUEUED


@override_settings(CORRAL=limits(active=2))
def test_stopping_one_of_the_users_answers_frees_a_slot(alice, gemma):
    conversation, _, first = services.send_message(
        user=alice, conversation_id=None, text="one", model_id=gemma.pk
    )
    services.send_message(
        user=alice, conversation_id=conversation.pk, text="two", model_id=gemma.pk
    )
    with pytest.raises(ValidationError):
        services.send_message(
            user=alice, conversation_id=conversation.pk, text="three", model_id=gemma.pk
        )

    services.stop_answer(user=alice, message_id=first.pk)

    _, question, answer = services.send_message(
        user=alice, conversation_id=conversation.pk, text="three", model_id=gemma.pk
    )
    assert question.content == "three"
    assert answer.status == Message.Status.QUEUED


@override_settings(CORRAL=limits(active=5, pool_cap=2))
def test_a_full_pool_refuses_with_a_message_naming_the_pool(alice, bob, carol, gemma, cpu_model):
    services.send_message(user=alice, conversation_id=None, text="a", model_id=gemma.pk)
    services.send_message(user=bob, conversation_id=None, text="b", model_id=gemma.pk)
    messages = Message.objects.count()

    with pytest.raises(ValidationError) as refused:
        services.send_message(user=carol, conversation_id=None, text="c", model_id=gemma.pk)

    message = refused.value.messages[0]
    assert f"The {UNSERVED_POOL} queue is full (2 answers waiting)" in message
    assert "your message is still in the box" in message
    assert refused.value.code == "pool_full"
    assert Message.objects.count() == messages

    # Another pool has its own cap.
    _, _, elsewhere = services.send_message(
        user=carol, conversation_id=None, text="c", model_id=cpu_model.pk
    )
    assert elsewhere.status == Message.Status.QUEUED and elsewhere.model == cpu_model


# Reaper -------------------------------------------------------------------------------


def test_a_stale_ollama_answer_is_requeued_with_its_partial_text_cleared(alice):
    model = LanguageModel.objects.create(
        name="ollama/x", backend="ollama", target="x", pool=UNSERVED_POOL
    )
    answer = running(queued(alice, model), heartbeat_age_s=config.HEARTBEAT_STALE_S + 5, attempts=1)
    assert config.MAX_ATTEMPTS > 1

    assert reaper.reap_stale() == [answer.pk]

    row = Message.objects.get(pk=answer.pk)
    assert row.status == Message.Status.QUEUED
    assert row.content == "" and row.seq == 0  # Ollama cannot continue: written anew
    assert row.worker == "" and row.error == "" and row.heartbeat_at is None
    assert row.attempts == 1
    assert row.version == 6


def test_a_stale_llama_answer_keeps_all_it_delivered_for_the_next_attempt(alice, gemma):
    """The checkpoint (seq 3) plus the deltas streamed after it, as far as they join up:
    the next attempt continues from exactly what clients were shown."""

    answer = running(queued(alice, gemma), heartbeat_age_s=config.HEARTBEAT_STALE_S + 5, attempts=1)
    checkpoint = answer.content
    client = redis_client.shared()
    key = streams.replay_key(answer.pk, 1)
    client.delete(key)
    for seq, offset, text in (
        (3, 0, "old"),
        (4, len(checkpoint), " and"),
        (5, len(checkpoint) + 4, " more"),
        (7, 99, " lost"),
    ):
        client.rpush(key, json.dumps({"seq": seq, "offset": offset, "text": text}))
    try:
        assert reaper.reap_stale() == [answer.pk]
    finally:
        client.delete(key)
    row = Message.objects.get(pk=answer.pk)
    assert row.status == Message.Status.QUEUED and row.attempts == 1
    assert row.content == checkpoint + " and more" and row.seq == 5
    assert generation.build_request(row).continue_from == row.content
    assert row.finished_at is None
    assert [m.pk for m in queue.queue_of(UNSERVED_POOL)] == [answer.pk]


@pytest.mark.parametrize("stop_pressed", [False, True], ids=["failed", "stopped"])
def test_a_lost_answer_that_is_not_rerun_keeps_all_it_delivered(alice, gemma, stop_pressed):
    """Its last attempt lost (or Stop pressed while its worker died), the answer ends with
    its checkpoint plus the deltas streamed after it: readers were shown them, and the
    ending's snapshot must not take them back."""
    answer = running(
        queued(alice, gemma),
        heartbeat_age_s=config.HEARTBEAT_STALE_S + 5,
        attempts=config.MAX_ATTEMPTS,
    )
    checkpoint = answer.content
    client = redis_client.shared()
    key = streams.replay_key(answer.pk, answer.attempts)
    client.delete(key)
    client.rpush(key, json.dumps({"seq": 4, "offset": len(checkpoint), "text": " shown"}))
    if stop_pressed:
        stop_flags.request_stop(answer.pk, answer.attempts)
    try:
        assert reaper.reap_stale() == [answer.pk]
    finally:
        client.delete(key)
        stop_flags.clear(answer.pk, answer.attempts)
    row = Message.objects.get(pk=answer.pk)
    expected = Message.Status.STOPPED if stop_pressed else Message.Status.FAILED
    assert row.status == expected
    assert row.content == checkpoint + " shown" and row.seq == 4


def test_an_answer_without_heartbeat_that_started_long_ago_is_reaped(alice, gemma):
    answer = running(queued(alice, gemma), heartbeat_age_s=config.HEARTBEAT_STALE_S + 5)
    Message.objects.filter(pk=answer.pk).update(heartbeat_at=None)
    assert reaper.reap_stale() == [answer.pk]
    assert Message.objects.get(pk=answer.pk).status == Message.Status.QUEUED


def test_a_fresh_heartbeat_is_left_alone(alice, gemma):
    answer = running(queued(alice, gemma), heartbeat_age_s=config.HEARTBEAT_STALE_S / 4)
    before = Message.objects.values().get(pk=answer.pk)

    assert reaper.reap_stale() == []

    assert Message.objects.values().get(pk=answer.pk) == before


def test_at_the_last_attempt_a_stale_answer_fails_as_worker_lost_and_keeps_its_text(alice, gemma):
    answer = running(
        queued(alice, gemma),
        heartbeat_age_s=config.HEARTBEAT_STALE_S + 5,
        attempts=config.MAX_ATTEMPTS,
        content="Half of an answer",
    )
    now = timezone.now()

    assert reaper.reap_stale(now=now) == [answer.pk]

    row = Message.objects.get(pk=answer.pk)
    assert row.status == Message.Status.FAILED
    assert row.error == reaper.WORKER_LOST
    assert row.content == "Half of an answer"
    assert row.finished_at == now
    assert row.version == 6
    assert row.attempts == config.MAX_ATTEMPTS
    assert queue.queue_of(UNSERVED_POOL) == []


def test_reaping_twice_changes_the_row_once(alice, gemma):
    answer = running(queued(alice, gemma), heartbeat_age_s=config.HEARTBEAT_STALE_S + 5)

    assert reaper.reap_stale() == [answer.pk]
    after_first = Message.objects.values().get(pk=answer.pk)
    assert reaper.reap_stale() == []

    assert Message.objects.values().get(pk=answer.pk) == after_first
    assert after_first["version"] == 6


def test_two_reapers_racing_on_the_same_stale_answer_change_it_once(alice, gemma, monkeypatch):
    """Reaper 1 has read the stale row; reaper 2 re-queues it before reaper 1 writes."""
    answer = running(queued(alice, gemma), heartbeat_age_s=config.HEARTBEAT_STALE_S + 5)
    other_reaper: list[int] = []
    real_atomic = transaction.atomic

    def atomic_after_the_other_reaper(*args, **kwargs):
        if not other_reaper:
            other_reaper.append(-1)  # mark first, the nested reaper comes through here too
            other_reaper.extend(reaper.reap_stale())
        return real_atomic(*args, **kwargs)

    monkeypatch.setattr(  # the re-queue's transaction (webui.chat.endings.requeue)
        endings,
        "transaction",
        SimpleNamespace(atomic=atomic_after_the_other_reaper, on_commit=transaction.on_commit),
    )

    assert reaper.reap_stale() == []  # it lost the race
    assert other_reaper == [-1, answer.pk]
    row = Message.objects.get(pk=answer.pk)
    assert row.status == Message.Status.QUEUED
    assert row.version == 6


def test_forgotten_queues_are_woken_unless_something_runs_in_the_pool(alice, bob, gemma, cpu_model):
    old = timezone.now() - timedelta(seconds=config.HEARTBEAT_STALE_S + 5)
    queued(alice, gemma, created_at=old)
    queued(bob, cpu_model, created_at=timezone.now())  # just queued: its wake-up is on its way

    assert reaper.wake_forgotten_queues() == [UNSERVED_POOL]

    # Something running in the pool means a worker is on it and will take the next job.
    running(queued(bob, gemma), heartbeat_age_s=0)
    assert reaper.wake_forgotten_queues() == []

    queued(bob, cpu_model, created_at=old)
    assert reaper.wake_forgotten_queues() == ["cpu"]


# Ownership after reaping --------------------------------------------------------------


def test_a_late_checkpoint_of_a_reaped_attempt_raises_and_overwrites_nothing(alice, gemma):
    queued(alice, gemma)
    answer = claims.claim_next(UNSERVED_POOL, worker="old-worker")
    old = generation.AnswerStream(answer)
    old.text, old.flushed_chars, old.seq = "old attempt text", 16, 1
    old.checkpoint()  # while it still owns the answer, the checkpoint is saved
    assert Message.objects.get(pk=answer.pk).content == "old attempt text"

    stale = timezone.now() - timedelta(seconds=config.HEARTBEAT_STALE_S + 5)
    Message.objects.filter(pk=answer.pk).update(heartbeat_at=stale)
    assert reaper.reap_stale() == [answer.pk]

    assert not Message.objects.filter(claims.still_ours(answer)).exists()
    old.text, old.flushed_chars, old.seq = "old attempt text, more", 22, 2
    with pytest.raises(generation.LostOwnership):
        old.checkpoint()
    row = Message.objects.get(pk=answer.pk)
    # The checkpoint stays for the next attempt to continue; the late text does not.
    assert row.status == Message.Status.QUEUED and row.content == "old attempt text"
    assert row.seq == 1

    # The next attempt writes on; the old one still cannot touch it.
    again = claims.claim_next(UNSERVED_POOL, worker="new-worker")
    assert again.pk == answer.pk and again.attempts == 2
    new = generation.AnswerStream(again)
    new.text, new.flushed_chars, new.seq = "new text", 8, 1
    new.checkpoint()
    with pytest.raises(generation.LostOwnership):
        old.checkpoint()
    final = generation._save_outcome(old, None, Message.Status.DONE, "")
    row = Message.objects.get(pk=answer.pk)
    assert final.status == Message.Status.RUNNING
    assert row.status == Message.Status.RUNNING and row.worker == "new-worker"
    assert row.content == "new text" and row.seq == 1  # replaced, never appended twice


class ReapedMidStream:
    """A backend whose worker 'goes quiet' after the first chunk: a reaper re-queues it."""

    name = "fake"

    def __init__(self, answer_pk: int) -> None:
        self.answer_pk = answer_pk

    def stream(self, request, cancel=None):
        yield TextChunk("old ")
        stale = timezone.now() - timedelta(seconds=config.HEARTBEAT_STALE_S + 5)
        Message.objects.filter(pk=self.answer_pk).update(heartbeat_at=stale)
        assert reaper.reap_stale() == [self.answer_pk]
        yield TextChunk("attempt")
        yield Finished(reason="stop", usage=Usage(prompt_tokens=3, completion_tokens=2))


def _generate_reaped_mid_stream(gemma, alice, monkeypatch) -> tuple[Message, Message]:
    queued(alice, gemma)
    answer = claims.claim_next(UNSERVED_POOL, worker="old-worker")
    monkeypatch.setattr(config, "CHECKPOINT_INTERVAL_S", 0.0)  # every flush checkpoints
    monkeypatch.setattr(generation, "get_backend", lambda name: ReapedMidStream(answer.pk))
    return answer, generation.generate(answer)


def test_an_attempt_reaped_mid_stream_is_dropped_quietly(alice, gemma, monkeypatch):
    monkeypatch.setattr(config, "FLUSH_INTERVAL_S", 0.0)  # the second chunk flushes in the loop
    answer, _ = _generate_reaped_mid_stream(gemma, alice, monkeypatch)
    row = Message.objects.get(pk=answer.pk)
    assert row.status == Message.Status.QUEUED
    assert row.content == "old " and row.seq == 1 and row.completion_tokens is None


def test_an_attempt_reaped_before_its_last_flush_is_dropped_quietly(alice, gemma, monkeypatch):
    monkeypatch.setattr(config, "FLUSH_INTERVAL_S", 3600.0)  # only the first chunk flushes
    answer, _ = _generate_reaped_mid_stream(gemma, alice, monkeypatch)
    row = Message.objects.get(pk=answer.pk)
    assert row.status == Message.Status.QUEUED
    assert row.content == "old " and row.seq == 1  # the checkpoint, kept to continue from


# Limits in generation -----------------------------------------------------------------


def test_the_token_cap_lowers_a_models_larger_max_tokens(alice, gemma, monkeypatch):
    answer = queued(alice, gemma)
    assert gemma.parameters["max_tokens"] == 48
    assert generation.build_request(answer).options.max_tokens == 48
    monkeypatch.setattr(config, "MAX_TOKENS_PER_ANSWER", 5)
    assert generation.build_request(answer).options.max_tokens == 5


@pytest.mark.django_db(transaction=True)
def test_an_answer_over_the_time_limit_stops_and_keeps_its_partial_text(alice, gemma, monkeypatch):
    from inference import get_backend

    gemma.parameters = {**gemma.parameters, "max_tokens": 2000}
    gemma.save()
    # Loaded beforehand, so tokens flow well before the limit.
    get_backend("llama_cpp").load(gemma.target, generation.model_spec(gemma).settings)
    monkeypatch.setattr(config, "MAX_GENERATION_S", 1.0)
    _, _, answer = services.send_message(
        user=alice, conversation_id=None, text="Tell me about the sea.", model_id=gemma.pk
    )

    generation.run_next(UNSERVED_POOL, worker="test")

    answer.refresh_from_db()
    assert answer.status == Message.Status.STOPPED
    assert answer.error == "Stopped at the time limit of 1 s."
    assert answer.content.strip()  # the text so far is kept
    assert 0 < answer.completion_tokens < 2000
    assert answer.finished_at is not None


@pytest.mark.django_db(transaction=True)
def test_an_answer_stops_at_the_token_cap_and_says_so(alice, gemma, monkeypatch):
    monkeypatch.setattr(config, "MAX_TOKENS_PER_ANSWER", 5)
    assert gemma.parameters["max_tokens"] > 5
    _, _, answer = services.send_message(
        user=alice, conversation_id=None, text="Tell me about the sea.", model_id=gemma.pk
    )

    generation.run_next(UNSERVED_POOL, worker="test")

    answer.refresh_from_db()
    assert answer.status == Message.Status.DONE
    assert answer.error == "Stopped at the maximum number of tokens."
    assert 1 <= answer.completion_tokens <= 5
    assert answer.content.strip()


# Heartbeat thread ---------------------------------------------------------------------


def _wait_for(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


@pytest.mark.django_db(transaction=True)
def test_the_heartbeat_thread_keeps_a_running_answer_fresh(alice, gemma, monkeypatch):
    monkeypatch.setattr(config, "HEARTBEAT_INTERVAL_S", 0.05)
    answer = running(queued(alice, gemma), heartbeat_age_s=config.HEARTBEAT_STALE_S + 5)
    old = answer.heartbeat_at

    with Heartbeat(answer) as heartbeat:
        beat = _wait_for(lambda: Message.objects.get(pk=answer.pk).heartbeat_at > old)
        assert beat, "no heartbeat within 5 s"
        assert reaper.reap_stale() == []  # a beating answer is not taken away
        first = Message.objects.get(pk=answer.pk).heartbeat_at
        assert _wait_for(lambda: Message.objects.get(pk=answer.pk).heartbeat_at > first)

    assert not heartbeat.beating
    row = Message.objects.get(pk=answer.pk)
    assert row.status == Message.Status.RUNNING and row.attempts == 1
    assert (timezone.now() - row.heartbeat_at).total_seconds() < config.HEARTBEAT_STALE_S


@pytest.mark.django_db(transaction=True)
def test_the_heartbeat_of_a_reaped_attempt_does_not_revive_it(alice, gemma, monkeypatch):
    monkeypatch.setattr(config, "HEARTBEAT_INTERVAL_S", 0.05)
    answer = running(queued(alice, gemma), heartbeat_age_s=config.HEARTBEAT_STALE_S + 5)
    assert reaper.reap_stale() == [answer.pk]

    with Heartbeat(answer):
        time.sleep(0.4)  # several beats

    row = Message.objects.get(pk=answer.pk)
    assert row.status == Message.Status.QUEUED and row.heartbeat_at is None


@pytest.mark.django_db(transaction=True)
def test_stop_and_the_time_limit_land_while_a_beat_waits_on_a_locked_row(alice, gemma, monkeypatch):
    """A beat waits as long as the database makes it (here another transaction holds the
    answer's row): Stop, and the time limit, must still land within a second."""
    monkeypatch.setattr(config, "HEARTBEAT_INTERVAL_S", 0.05)
    answer = running(queued(alice, gemma), heartbeat_age_s=0)
    try:
        with row_held(answer.pk):
            with Heartbeat(answer) as heartbeat:
                time.sleep(0.3)  # the first beats are waiting for the row now
                stop_flags.request_stop(answer.pk, answer.attempts)
                assert heartbeat.cancelled.wait(timeout=1), "Stop waited for the database"
                assert not heartbeat.timed_out
            stop_flags.clear(answer.pk, answer.attempts)
            monkeypatch.setattr(config, "MAX_GENERATION_S", 0.3)
            with Heartbeat(answer) as heartbeat:
                assert heartbeat.cancelled.wait(timeout=1.3), "the time limit waited"
                assert heartbeat.timed_out
    finally:
        stop_flags.clear(answer.pk, answer.attempts)


@pytest.mark.django_db(transaction=True)
def test_one_watch_hears_each_answer_of_a_batch_alone(alice, gemma):
    """The process's one stop watch reads every running answer's flags at once: a Stop
    lands on its own answer within a second, the reaper's revoke on its own, and neither
    touches the others; an answer that ended hears nothing more."""
    answers = [running(queued(alice, gemma), heartbeat_age_s=0) for _ in range(4)]
    stopped, revoked, untouched, ended = answers
    try:
        with contextlib.ExitStack() as stack:
            beats = [stack.enter_context(Heartbeat(answer)) for answer in answers[:3]]
            with Heartbeat(ended) as ended_beat:
                pass
            stop_flags.request_stop(stopped.pk, stopped.attempts)
            stop_flags.revoke(revoked.pk, revoked.attempts)
            stop_flags.request_stop(ended.pk, ended.attempts)
            assert beats[0].cancelled.wait(timeout=1) and not beats[0].lost
            assert beats[1].cancelled.wait(timeout=1) and beats[1].lost
            time.sleep(2 * STOP_POLL_S)  # rounds enough for a stray flag to land
            assert not beats[2].cancelled.is_set()
            assert not ended_beat.cancelled.is_set()
    finally:
        for answer in answers:
            stop_flags.clear(answer.pk, answer.attempts)


# Follow-ups, stops on lost workers, orphans, silent backends -------------------------


def test_a_follow_up_waits_until_the_answer_before_it_is_written(alice, gemma):
    with override_settings(CORRAL=limits(active=5)):
        conversation, _, first = services.send_message(
            user=alice, conversation_id=None, text="one", model_id=gemma.pk
        )
        _, _, follow_up = services.send_message(
            user=alice, conversation_id=conversation.pk, text="two", model_id=gemma.pk
        )
    assert claims.claim_next(UNSERVED_POOL, "w1").pk == first.pk
    # The follow-up's prompt must contain the first answer: it is not claimable yet.
    assert claims.claim_next(UNSERVED_POOL, "w2") is None
    Message.objects.filter(pk=first.pk).update(status=Message.Status.DONE, content="1")
    assert claims.claim_next(UNSERVED_POOL, "w2").pk == follow_up.pk


def test_reaper_honours_a_stop_pressed_while_the_worker_died(alice, gemma):

    _, _, answer = services.send_message(
        user=alice, conversation_id=None, text="hi", model_id=gemma.pk
    )
    stale = timezone.now() - timedelta(seconds=config.HEARTBEAT_STALE_S + 5)
    Message.objects.filter(pk=answer.pk).update(
        status=Message.Status.RUNNING, attempts=1, heartbeat_at=stale, content="part"
    )
    stop_flags.request_stop(answer.pk, 1)
    try:
        assert reaper.reap_stale() == [answer.pk]
    finally:
        stop_flags.clear(answer.pk, 1)
    answer.refresh_from_db()
    assert answer.status == Message.Status.STOPPED and answer.content == "part"
    assert answer.attempts == 1  # not re-run


def test_queued_answers_of_a_deleted_model_fail_and_free_the_slot(alice, gemma):
    _, _, answer = services.send_message(
        user=alice, conversation_id=None, text="hi", model_id=gemma.pk
    )
    gemma.delete()
    assert reaper.fail_orphans() == [answer.pk]
    answer.refresh_from_db()
    assert answer.status == Message.Status.FAILED
    assert answer.error == "The model of this answer was deleted."


@pytest.mark.django_db(transaction=True)
def test_heartbeat_ends_a_silent_answer_at_the_time_limit(alice, gemma, monkeypatch):
    monkeypatch.setattr(config, "MAX_GENERATION_S", 0.2)
    _, _, answer = services.send_message(
        user=alice, conversation_id=None, text="hi", model_id=gemma.pk
    )
    answer = claims.claim_next(UNSERVED_POOL, "w")
    with Heartbeat(answer) as heartbeat:
        assert heartbeat.cancelled.wait(timeout=3)  # no token needed to notice
        assert heartbeat.timed_out


@pytest.mark.django_db(transaction=True)
def test_queue_places_are_coalesced_per_pool(alice, bob, gemma, monkeypatch):
    """Thirty changes in a burst cost one round of places for the waiting answers now and
    one at the end of the interval, not thirty rounds."""
    from tests.workers.test_generation import collect_events

    monkeypatch.setattr(config, "QUEUE_EVENT_INTERVAL_S", 0.5)
    answers = [queued(alice if i % 2 else bob, gemma) for i in range(5)]

    def burst() -> None:
        for _ in range(30):
            queue.publish_queue(UNSERVED_POOL)
            time.sleep(0.01)
        assert queue._queue_notices.wait_idle(timeout=5)

    groups = [streams.group_name(a.conversation_id) for a in answers]
    events = [e for e in collect_events(groups, burst) if e["type"] == "message.queue"]
    assert 5 <= len(events) <= 10  # one or two rounds of five
    last = {e["message"]: e["position"] for e in events}
    assert sorted(last.values()) == [1, 2, 3, 4, 5]
    assert set(last) == {a.pk for a in answers}


@pytest.mark.django_db(transaction=True)
def test_queue_places_are_coalesced_per_pool_across_processes(alice, bob, gemma, monkeypatch):
    """The web server and every worker each have a notices thread (here two, as two
    processes would): changing one pool's queue in both for 1.2 s still costs about one
    round per interval in all, not one per interval in each."""
    from tests.workers.test_generation import collect_events

    monkeypatch.setattr(config, "QUEUE_EVENT_INTERVAL_S", 0.5)
    answers = [queued(alice if i % 2 else bob, gemma) for i in range(5)]
    processes = [queue._QueueNotices(), queue._QueueNotices()]

    def burst() -> None:
        end = time.monotonic() + 1.2
        while time.monotonic() < end:
            for notices in processes:
                notices.request(UNSERVED_POOL)
            time.sleep(0.01)
        for notices in processes:
            assert notices.wait_idle(timeout=5)

    groups = [streams.group_name(a.conversation_id) for a in answers]
    events = [e for e in collect_events(groups, burst) if e["type"] == "message.queue"]
    # Rounds at least 0.5 s apart from 0.1 s to past the burst: three during it, and at
    # most one more per thread after (a thread's last request waits for its turn), so at
    # most 5 rounds of five places, 6 with a stray; ungated, the two threads send 8.
    assert len(events) % 5 == 0 and 5 <= len(events) <= 30
    last = {e["message"]: e["position"] for e in events}
    assert sorted(last.values()) == [1, 2, 3, 4, 5]


@pytest.mark.django_db(transaction=True)
def test_wake_ups_do_not_pile_up_in_a_pool_without_workers(alice, gemma):
    """However often answers arrive or reapers look, one wake-up at most waits per pool."""

    redis_client.shared().delete(UNSERVED_POOL)
    with override_settings(CORRAL=limits(active=10)):
        for _ in range(5):
            services.send_message(user=alice, conversation_id=None, text="hi", model_id=gemma.pk)
            Message.objects.update(created_at=timezone.now() - timedelta(minutes=5))
            reaper.wake_forgotten_queues()
    assert wakeups.pending_wakeups(UNSERVED_POOL) == 1


def test_a_pool_without_a_live_worker_says_so_instead_of_an_eta(alice, gemma):

    redis_client.shared().delete(f"corral:workers:{UNSERVED_POOL}")
    answer = queued(alice, gemma)
    assert queue.queue_positions(UNSERVED_POOL)[answer.pk]["worker"] is False
    assert [p["worker_alive"] for p in queue.pool_overview() if p["pool"] == UNSERVED_POOL] == [
        False
    ]
    wakeups.note_worker_alive(UNSERVED_POOL, "w1", for_s=30)
    try:
        assert queue.queue_positions(UNSERVED_POOL)[answer.pk]["worker"] is True
    finally:
        wakeups.forget_worker(UNSERVED_POOL, "w1")
    assert queue.queue_positions(UNSERVED_POOL)[answer.pk]["worker"] is False
