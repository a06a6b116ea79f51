"""The whole path with real processes: websocket -> uvicorn -> Celery worker -> llama.cpp."""

from __future__ import annotations

import time

import pytest

from tests.e2e.helpers import ChatClient
from tests.ollama_server import OllamaTestServer, ScriptedModel
from webui.chat import services
from webui.chat.models import LanguageModel, Message

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def finished(client: ChatClient) -> bool:
    answers = [m for m in client.messages.values() if m["role"] == "assistant"]
    return bool(answers) and answers[-1]["status"] not in ("queued", "running")


def test_answer_streams_over_websocket_and_matches_the_database(alice, gemma, worker, web_server):
    conversation, _, first = services.send_message(
        user=alice, conversation_id=None, text="Say hello.", model_id=gemma.pk
    )
    client = ChatClient.open(web_server.url, conversation.pk, alice)
    client.wait_until(lambda c: c.messages[first.pk]["status"] == "done")
    client.send({"type": "send", "text": "Tell me about rivers.", "model": gemma.pk})
    client.wait_until(lambda c: len(c.messages) == 4 and finished(c))
    answer = client.answer()
    client.close()

    saved = Message.objects.get(pk=answer["id"])
    assert saved.status == Message.Status.DONE, saved.error
    streamed = [d for d in client.deltas if d["message"] == saved.pk]
    assert len(streamed) >= 2, "the answer arrived in one piece, not streamed"
    assert client.gaps == 0, client.gap_log
    assert "".join(d["text"] for d in streamed) == saved.content == answer["content"]
    assert saved.completion_tokens and saved.tokens_per_second and saved.worker


def test_reconnect_mid_answer_gets_the_full_text_so_far(alice, gemma, worker, web_server):
    gemma.parameters = {**gemma.parameters, "max_tokens": 200}
    gemma.save()
    conversation, _, answer = services.send_message(
        user=alice, conversation_id=None, text="Write a long story about a fox.", model_id=gemma.pk
    )
    first = ChatClient.open(web_server.url, conversation.pk, alice)
    first.wait_until(lambda c: len(c.messages[answer.pk]["content"]) > 20)
    first.close()
    time.sleep(0.5)  # the answer goes on without any client
    second = ChatClient.open(web_server.url, conversation.pk, alice)
    resumed = dict(second.messages[answer.pk])
    second.wait_until(finished)
    second.close()
    saved = Message.objects.get(pk=answer.pk)
    assert saved.status == Message.Status.DONE
    assert saved.content.startswith(resumed["content"]) and resumed["content"]
    assert second.messages[answer.pk]["content"] == saved.content
    assert second.gaps == 0, second.gap_log


def test_stop_halts_a_running_answer_and_keeps_partial_text(alice, gemma, worker, web_server):
    gemma.parameters = {**gemma.parameters, "max_tokens": 1000}
    gemma.save()
    conversation, _, answer = services.send_message(
        user=alice, conversation_id=None, text="Count from one to a thousand.", model_id=gemma.pk
    )
    client = ChatClient.open(web_server.url, conversation.pk, alice)
    client.wait_until(lambda c: len(c.messages[answer.pk]["content"]) > 10)
    client.send({"type": "stop", "message": answer.pk})
    client.wait_until(finished, timeout=10)
    client.close()
    saved = Message.objects.get(pk=answer.pk)
    assert saved.status == Message.Status.STOPPED
    assert saved.content and saved.content == client.messages[answer.pk]["content"]
    assert 0 < saved.completion_tokens < 1000


def test_stop_closes_the_ollama_stream(alice, worker, web_server):
    slow = ScriptedModel(reply=" ".join(f"word{i}" for i in range(200)))
    with OllamaTestServer(models={"slow:latest": slow}, token_delay=0.05) as server:
        model = LanguageModel.objects.create(
            name="ollama/slow",
            backend="ollama",
            target="slow:latest",
            settings={"host": server.url},
        )
        conversation, _, answer = services.send_message(
            user=alice, conversation_id=None, text="go", model_id=model.pk
        )
        client = ChatClient.open(web_server.url, conversation.pk, alice)
        client.wait_until(lambda c: len(c.messages[answer.pk]["content"]) > 10)
        client.send({"type": "stop", "message": answer.pk})
        client.wait_until(finished, timeout=10)
        client.close()
        assert server.wait_for_disconnect(timeout=5)
    saved = Message.objects.get(pk=answer.pk)
    assert saved.status == Message.Status.STOPPED
    assert saved.content.startswith("word0") and "word199" not in saved.content


def test_dropped_socket_resumes_from_its_last_seq_with_no_gap_or_duplicate(
    alice, gemma, worker, web_server
):
    gemma.parameters = {**gemma.parameters, "max_tokens": 200}
    gemma.save()
    conversation, _, answer = services.send_message(
        user=alice, conversation_id=None, text="Write a long story about a owl.", model_id=gemma.pk
    )
    client = ChatClient.open(web_server.url, conversation.pk, alice)
    client.wait_until(lambda c: c.messages[answer.pk]["seq"] >= 3)
    client.close()  # the socket drops (tab asleep, network gone)
    last_seq = client.messages[answer.pk]["seq"]
    had = client.messages[answer.pk]["content"]
    time.sleep(0.5)  # the answer goes on without any client
    before = len(client.deltas)
    client.connect(resume=True)  # sends message.attempt.seq it has
    client.wait_until(finished)
    client.close()
    saved = Message.objects.get(pk=answer.pk)
    assert saved.status == Message.Status.DONE
    after = [d["seq"] for d in client.deltas[before:] if d["message"] == answer.pk]
    # Exactly what it missed: the deltas right after its last seq, each once, in order.
    assert after == list(range(last_seq + 1, last_seq + 1 + len(after)))
    assert client.gaps == 0, client.gap_log
    assert client.messages[answer.pk]["content"] == saved.content
    assert saved.content.startswith(had)
