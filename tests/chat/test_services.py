from __future__ import annotations

import json

import pytest
import redis
from django.core.exceptions import ValidationError
from django.test import override_settings

from webui import config
from webui.chat import services, stop_flags
from webui.chat.models import Conversation, LanguageModel, Message

pytestmark = pytest.mark.django_db


@pytest.fixture
def broker() -> redis.Redis:
    client = redis.Redis.from_url(config.redis_url())
    # The queues the tests read, empty of wake-ups an earlier run (a Redis kept) left.
    client.delete("gpu", "cpu")
    yield client
    client.delete("gpu", "cpu")


def queued_wakeups(broker: redis.Redis, queue: str) -> list[tuple[str, str]]:
    """(task, args) of the messages waiting in a Celery queue (a Redis list)."""
    headers = [json.loads(raw)["headers"] for raw in broker.lrange(queue, 0, -1)]
    return [(h["task"], h["argsrepr"]) for h in headers]


def test_send_saves_question_and_queued_answer_then_enqueues_after_commit(
    alice, gemma, broker, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        conversation, question, answer = services.send_message(
            user=alice, conversation_id=None, text="Hello there", model_id=gemma.pk
        )
    assert broker.llen(gemma.pool) == 0  # nothing is queued before the commit
    assert question.content == "Hello there" and question.role == "user"
    assert answer.status == Message.Status.QUEUED and answer.model == gemma
    assert conversation.title == "Hello there" and conversation.owner == alice
    for callback in callbacks:
        callback()
    # A wake-up for one worker of the model's pool (gpu here); the job is the database row.
    assert queued_wakeups(broker, "gpu") == [("corral.run_next_answer", "['gpu']")]
    assert broker.llen("cpu") == 0


def test_unknown_pool_is_refused():
    from webui.chat.pools import queue_for_pool

    assert queue_for_pool("cpu") == "cpu"
    with pytest.raises(ValueError, match="unknown pool"):
        queue_for_pool("tpu")


@pytest.mark.parametrize("text", ["", "   \n\t", "\x00"])
def test_empty_message_is_refused_and_nothing_saved(alice, gemma, text):
    with pytest.raises(ValidationError, match="Type a message"):
        services.send_message(user=alice, conversation_id=None, text=text, model_id=gemma.pk)
    assert not Message.objects.exists() and not Conversation.objects.exists()


def test_nul_characters_are_dropped_from_a_message_and_its_edit(alice, gemma):
    """PostgreSQL's text columns refuse NUL: the message is saved without it, not lost."""
    conversation, question, _ = services.send_message(
        user=alice, conversation_id=None, text="rivers\x00 and seas", model_id=gemma.pk
    )
    Message.objects.filter(conversation=conversation, role="assistant").update(status="done")
    edited = services.edit_message(
        user=alice, message_id=question.pk, text="lakes\x00", model_id=gemma.pk
    )
    texts = {m.pk: m.content for m in Message.objects.filter(role="user")}
    assert texts[question.pk] == "rivers and seas"
    assert texts[edited.parent_id] == "lakes"


@override_settings(CORRAL={"MAX_MESSAGE_CHARS": 100})
def test_too_long_message_is_refused_before_anything_is_saved(alice, gemma):
    with pytest.raises(ValidationError, match="101 characters long; the limit is 100"):
        services.send_message(user=alice, conversation_id=None, text="x" * 101, model_id=gemma.pk)
    assert not Message.objects.exists()


def test_disabled_model_is_refused(alice, gemma):
    gemma.enabled = False
    gemma.save()
    with pytest.raises(ValidationError, match="not available"):
        services.send_message(user=alice, conversation_id=None, text="hi", model_id=gemma.pk)


def test_without_any_model_the_question_is_kept_and_the_answer_says_why(alice):
    _, question, answer = services.send_message(
        user=alice, conversation_id=None, text="anyone?", model_id=None
    )
    question.refresh_from_db()
    answer.refresh_from_db()
    assert question.content == "anyone?"
    assert answer.status == Message.Status.FAILED
    assert "No model is available" in answer.error


def test_cannot_send_into_another_users_conversation(alice, bob, gemma):
    conversation, _, _ = services.send_message(
        user=alice, conversation_id=None, text="mine", model_id=gemma.pk
    )
    with pytest.raises(Conversation.DoesNotExist):
        services.send_message(
            user=bob, conversation_id=conversation.pk, text="intrude", model_id=gemma.pk
        )
    assert conversation.messages.count() == 2


def test_stop_of_a_queued_answer_removes_it_from_the_run(alice, gemma):
    _, _, answer = services.send_message(
        user=alice, conversation_id=None, text="hi", model_id=gemma.pk
    )
    services.stop_answer(user=alice, message_id=answer.pk)
    answer.refresh_from_db()
    assert answer.status == Message.Status.STOPPED
    from workers.generation import run_next

    assert run_next(gemma.pool, worker="test") is None  # its wake-up finds nothing to run
    answer.refresh_from_db()
    assert answer.status == Message.Status.STOPPED


def test_stop_of_a_running_answer_raises_the_flag(alice, gemma):
    _, _, answer = services.send_message(
        user=alice, conversation_id=None, text="hi", model_id=gemma.pk
    )
    Message.objects.filter(pk=answer.pk).update(status=Message.Status.RUNNING, attempts=1)
    stop_flags.clear(answer.pk, 1)
    services.stop_answer(user=alice, message_id=answer.pk)
    assert stop_flags.stop_requested(answer.pk, 1)
    assert not stop_flags.stop_requested(answer.pk, 2)  # a later attempt is not stopped
    stop_flags.clear(answer.pk, 1)


def test_stop_of_a_finished_answer_leaves_no_flag(alice, gemma):
    _, _, answer = services.send_message(
        user=alice, conversation_id=None, text="hi", model_id=gemma.pk
    )
    Message.objects.filter(pk=answer.pk).update(status=Message.Status.DONE, attempts=1)
    services.stop_answer(user=alice, message_id=answer.pk)
    assert not stop_flags.stop_requested(answer.pk, 1)
    assert Message.objects.get(pk=answer.pk).status == Message.Status.DONE


def test_stop_of_another_users_answer_is_not_found(alice, bob, gemma):
    _, _, answer = services.send_message(
        user=alice, conversation_id=None, text="hi", model_id=gemma.pk
    )
    with pytest.raises(Message.DoesNotExist):
        services.stop_answer(user=bob, message_id=answer.pk)
    answer.refresh_from_db()
    assert answer.status == Message.Status.QUEUED


def test_prepare_default_model_registers_gemma_once(gemma_path):
    first = services.prepare_default_model()
    second = services.prepare_default_model()
    assert first.pk == second.pk
    assert LanguageModel.objects.count() == 1
    assert first.backend == "llama_cpp" and first.settings["chat_format"] == "gemma"
    assert first.target == str(gemma_path)
