"""The worker's job body, run in-process against the real model and the real channel layer."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from tests.chat.conftest import UNSERVED_POOL
from tests.ollama_server import OllamaTestServer
from tests.workers.first_delta import fresh_replay, wait_for_first_delta
from tests.workers.row_lock import row_held
from webui.chat import redis_client, services, stop_flags, streams
from webui.chat.models import AnswerRecord, LanguageModel, Message
from workers.generation import run_next

pytestmark = pytest.mark.django_db(transaction=True)


def ollama_model(name: str, target: str, host: str) -> LanguageModel:
    return LanguageModel.objects.create(
        name=name, backend="ollama", target=target, settings={"host": host}, pool=UNSERVED_POOL
    )


def collect_group_events(conversation_id: int, run) -> list[dict]:
    """Run ``run()`` while listening on the conversation's group; return what arrived."""
    return collect_events(streams.group_name(conversation_id), run)


def collect_events(group: str | list[str], run) -> list[dict]:
    """Run ``run()`` while listening on channel-layer groups; return what arrived."""
    layer = get_channel_layer()

    async def listen() -> list[dict]:
        channel = await layer.new_channel()
        for name in [group] if isinstance(group, str) else group:
            await layer.group_add(name, channel)
        await asyncio.get_running_loop().run_in_executor(None, run)
        await asyncio.get_running_loop().run_in_executor(None, streams.flush)
        events = []
        while True:
            try:
                events.append(await asyncio.wait_for(layer.receive(channel), 0.5))
            except TimeoutError:
                return events

    return async_to_sync(listen)()


def test_answer_streams_deltas_in_order_and_saves_text_and_figures(alice, gemma):
    _, _, answer = services.send_message(
        user=alice, conversation_id=None, text="Tell me about the sea.", model_id=gemma.pk
    )
    events = collect_group_events(
        answer.conversation_id, lambda: run_next(UNSERVED_POOL, worker="test")
    )
    answer.refresh_from_db()
    assert answer.status == Message.Status.DONE, answer.error
    assert answer.content.strip()
    assert answer.completion_tokens and answer.completion_tokens <= 48
    assert answer.prompt_tokens and answer.prompt_tokens > 5
    assert answer.time_to_first_token_ms is not None and answer.tokens_per_second > 0

    deltas = [e for e in events if e["type"] == "message.delta"]
    assert len(deltas) >= 2
    assert [d["seq"] for d in deltas] == list(range(1, len(deltas) + 1))
    assert "".join(d["text"] for d in deltas) == answer.content
    assert all(d["offset"] == sum(len(x["text"]) for x in deltas[:i]) for i, d in enumerate(deltas))
    # Batched: far fewer messages than tokens would mean one per token.
    assert len(deltas) < answer.completion_tokens
    states = [e["message"]["status"] for e in events if e["type"] == "message.state"]
    while states and states[0] == "queued":  # sent at commit, it may arrive after we listen
        states.pop(0)
    assert states[0] == "running" and states[-1] == "done"


def test_an_answer_kept_by_the_reaper_continues_where_it_stopped(alice, gemma):
    """A llama.cpp answer re-queued after a worker loss keeps its text; the next attempt
    goes on from it: its deltas continue the seq and offset, and the saved text starts with
    what was already there."""
    _, _, answer = services.send_message(
        user=alice, conversation_id=None, text="Tell me a story.", model_id=gemma.pk
    )
    partial = "Once upon a time, in a valley by a river,"
    Message.objects.filter(pk=answer.pk).update(content=partial, seq=4, attempts=1)
    events = collect_group_events(
        answer.conversation_id, lambda: run_next(UNSERVED_POOL, worker="test")
    )
    answer.refresh_from_db()
    assert answer.status == Message.Status.DONE, answer.error
    assert answer.attempts == 2
    assert answer.content.startswith(partial) and len(answer.content) > len(partial)
    deltas = [e for e in events if e["type"] == "message.delta"]
    assert deltas and all(d["attempt"] == 2 for d in deltas)
    assert [d["seq"] for d in deltas] == list(range(5, 5 + len(deltas)))
    assert deltas[0]["offset"] == len(partial)
    assert partial + "".join(d["text"] for d in deltas) == answer.content


def test_stop_flag_halts_generation_and_keeps_partial_text(alice, gemma):
    gemma.parameters = {**gemma.parameters, "max_tokens": 400}
    gemma.save()
    _, _, answer = services.send_message(
        user=alice, conversation_id=None, text="Write a long story.", model_id=gemma.pk
    )

    replay = fresh_replay(answer.pk)  # of the attempt the worker is about to make

    def stop_after_the_first_delta() -> None:
        wait_for_first_delta(replay)
        stop_flags.request_stop(answer.pk, attempt=1)

    stopper = threading.Thread(target=stop_after_the_first_delta)
    stopper.start()
    run_next(UNSERVED_POOL, worker="test")
    stopper.join()
    answer.refresh_from_db()
    assert answer.status == Message.Status.STOPPED
    assert answer.error == "Stopped by the user."
    assert answer.content  # the first chunk was kept
    assert answer.completion_tokens < 100  # halted within a stop poll (0.25 s), not at 400
    assert not stop_flags.stop_requested(answer.pk, 1)
    # Its prompt was read: it counts (estimated) in the usage quotas read, or stopping an
    # answer before its end would make every prompt free.
    assert answer.prompt_tokens >= len("Write a long story.") // 4
    record = AnswerRecord.objects.get(answer=answer)
    assert (record.prompt_tokens, record.completion_tokens) == (
        answer.prompt_tokens,
        answer.completion_tokens,
    )


def test_missing_gguf_fails_fast_with_reason_and_keeps_question(alice, gemma, tmp_path):
    gemma.target = str(tmp_path / "gone.gguf")
    gemma.save()
    _, question, answer = services.send_message(
        user=alice, conversation_id=None, text="hello?", model_id=gemma.pk
    )
    started = time.monotonic()
    run_next(UNSERVED_POOL, worker="test")
    assert time.monotonic() - started < 5
    answer.refresh_from_db()
    assert answer.status == Message.Status.FAILED
    assert "Model file not found" in answer.error and "gone.gguf" in answer.error
    assert Message.objects.get(pk=question.pk).content == "hello?"


def test_ollama_model_streams_through_the_same_path(alice):
    with OllamaTestServer(models={"tiny:latest": "Hello from Ollama."}) as server:
        model = ollama_model("ollama/tiny", "tiny:latest", server.url)
        _, _, answer = services.send_message(
            user=alice, conversation_id=None, text="hi", model_id=model.pk
        )
        run_next(UNSERVED_POOL, worker="test")
    answer.refresh_from_db()
    assert answer.status == Message.Status.DONE, answer.error
    assert answer.content == "Hello from Ollama."
    assert answer.completion_tokens and answer.completion_tokens > 0


def test_nul_written_by_a_model_is_neither_streamed_nor_saved(alice):
    """PostgreSQL's text columns refuse NUL, which a model can write ("\\u0000" in an
    Ollama chunk): the answer ends done, and what streamed is what was saved."""
    with OllamaTestServer(models={"nul:latest": "Hello\x00 from\x00 Ollama."}) as server:
        model = ollama_model("ollama/nul", "nul:latest", server.url)
        _, _, answer = services.send_message(
            user=alice, conversation_id=None, text="hi", model_id=model.pk
        )
        events = collect_group_events(
            answer.conversation_id, lambda: run_next(UNSERVED_POOL, worker="test")
        )
    answer.refresh_from_db()
    assert answer.status == Message.Status.DONE, answer.error
    assert answer.content == "Hello from Ollama."
    streamed = "".join(e["text"] for e in events if e["type"] == "message.delta")
    assert streamed == answer.content


def test_unknown_ollama_model_and_unreachable_server_fail_with_clear_reasons(alice):
    with OllamaTestServer(models={"tiny:latest": "x"}) as server:
        missing = ollama_model("ollama/missing", "missing:7b", server.url)
        _, _, answer = services.send_message(
            user=alice, conversation_id=None, text="hi", model_id=missing.pk
        )
        run_next(UNSERVED_POOL, worker="test")
    answer.refresh_from_db()
    assert answer.status == Message.Status.FAILED and "missing:7b" in answer.error

    from tests.conftest import free_port

    down = ollama_model("ollama/down", "tiny:latest", f"http://127.0.0.1:{free_port()}")
    _, _, answer = services.send_message(
        user=alice, conversation_id=None, text="hi", model_id=down.pk
    )
    started = time.monotonic()
    run_next(UNSERVED_POOL, worker="test")
    assert time.monotonic() - started < 5
    answer.refresh_from_db()
    assert answer.status == Message.Status.FAILED and "unreachable" in answer.error


def test_stop_lands_within_a_second_even_before_the_first_token(alice):
    """Ollama silent for 3 s per token: Stop must not wait for the next token."""
    with OllamaTestServer(models={"slow:latest": "late words"}, token_delay=3) as server:
        model = ollama_model("ollama/slow", "slow:latest", server.url)
        _, _, answer = services.send_message(
            user=alice, conversation_id=None, text="hi", model_id=model.pk
        )
        runner = threading.Thread(target=run_next, args=(UNSERVED_POOL, "test"))
        runner.start()
        deadline = time.monotonic() + 10
        while Message.objects.get(pk=answer.pk).status != Message.Status.RUNNING:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.3)
        stopped_at = time.monotonic()
        services.stop_answer(user=alice, message_id=answer.pk)
        runner.join(timeout=10)
        assert time.monotonic() - stopped_at < 1.0
        # The test server notices at its next write (3 s later); Ollama at once.
        assert server.wait_for_disconnect(timeout=5)  # the upstream request was closed
    answer.refresh_from_db()
    assert answer.status == Message.Status.STOPPED
    assert answer.error == "Stopped by the user." and answer.content == ""


def test_an_ending_whose_commit_acknowledgement_was_lost_counts_as_saved(alice, gemma, monkeypatch):
    """The connection drops after COMMIT reached the database, before its answer came
    back: the worker's retry finds the row already ended by this attempt. The answer is
    done, its clients are told so, and its conversation gets a title."""
    from django.db import OperationalError

    from webui.chat.models import Conversation, TitleStatus
    from workers import generation

    real_end_answer = generation.end_answer
    calls = []

    def committed_then_connection_lost(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            return real_end_answer(*args, **kwargs)
        # What is sent after commit never goes: the client saw the commit fail.
        with monkeypatch.context() as patch:
            patch.setattr(streams, "publish_message", lambda message: None)
            real_end_answer(*args, **kwargs)
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(generation, "end_answer", committed_then_connection_lost)
    _, _, answer = services.send_message(
        user=alice, conversation_id=None, text="Tell me about the sea.", model_id=gemma.pk
    )
    events = collect_group_events(
        answer.conversation_id, lambda: run_next(UNSERVED_POOL, worker="test")
    )
    assert len(calls) == 2  # the first try committed, the retry found it done
    answer.refresh_from_db()
    assert answer.status == Message.Status.DONE and answer.attempts == 1
    states = [e["message"]["status"] for e in events if e["type"] == "message.state"]
    assert states[-1] == "done"
    conversation = Conversation.objects.get(pk=answer.conversation_id)
    assert conversation.title_status == TitleStatus.PENDING
    assert AnswerRecord.objects.filter(answer_id=answer.pk).count() == 1


def test_an_answer_stopped_before_its_first_token_still_counts_its_prompt(alice, gemma):
    """Stopping every answer while its prompt is read must not make prompts free."""
    from workers import claims, generation

    question = "Summarize the history of rivers. " * 20
    services.send_message(user=alice, conversation_id=None, text=question, model_id=gemma.pk)
    answer = claims.claim_next(UNSERVED_POOL, "test")
    stopped = threading.Event()
    stopped.set()  # Stop pressed before anything came back
    answer = generation.generate(answer, stopped)
    answer.refresh_from_db()
    assert answer.status == Message.Status.STOPPED and answer.content == ""
    assert answer.prompt_tokens >= len(question) // 4
    record = AnswerRecord.objects.get(answer=answer)
    assert record.prompt_tokens == answer.prompt_tokens


def test_the_stream_goes_on_while_a_checkpoint_waits_on_a_locked_row(alice):
    """Checkpoints are written beside the stream: while another transaction holds the
    answer's row (or the database does not answer), text keeps reaching the readers and
    Stop still halts the answer. (A scripted Ollama model: its answer cannot end early on
    its own, as a real one might on another CPU.)"""
    reply = " ".join(f"word{i}" for i in range(4000))  # 4000 chunks: 20 s at 5 ms each
    with OllamaTestServer(models={"long:latest": reply}, token_delay=0.005) as server:
        model = ollama_model("ollama/long", "long:latest", server.url)
        model.parameters = {"max_tokens": 4000}
        model.save()
        _, _, answer = services.send_message(
            user=alice, conversation_id=None, text="Write a long story.", model_id=model.pk
        )
        replay = fresh_replay(answer.pk)
        worker = threading.Thread(target=run_next, args=(UNSERVED_POOL, "test"))
        worker.start()
        wait_for_first_delta(replay, timeout=30)
        try:
            with row_held(answer.pk):
                time.sleep(1.5)  # a checkpoint (every second) is waiting for the row by now
                before = redis_client.shared().llen(replay)
                time.sleep(1.0)
                after = redis_client.shared().llen(replay)
                assert after > before, "the stream froze behind the row"
                stop_flags.request_stop(answer.pk, attempt=1)
                time.sleep(1.0)
        finally:
            worker.join(timeout=60)
    answer.refresh_from_db()
    assert answer.status == Message.Status.STOPPED, answer.error
    assert answer.content and len(answer.content) < len(reply)


def test_an_ollama_address_that_now_resolves_to_metadata_is_refused_at_use(alice):
    """A model's own Ollama address was checked when saved; by the time it is used it may
    point somewhere else (here saved as the metadata address directly): the worker checks
    again and connects nowhere."""
    model = ollama_model("ollama/meta", "llama3:latest", "http://169.254.169.254:11434")
    _, _, answer = services.send_message(
        user=alice, conversation_id=None, text="hi", model_id=model.pk
    )
    run_next(UNSERVED_POOL, worker="test")
    answer.refresh_from_db()
    assert answer.status == Message.Status.FAILED
    assert answer.error.startswith("This model's Ollama address is refused: ")
    assert "169.254.169.254" in answer.error and "metadata" in answer.error


def test_an_answer_runs_whatever_flags_an_earlier_database_left_for_its_id(alice):
    """Ids repeat when a database is reset (or SQLite reuses a deleted row's) while Redis
    keeps its keys: a Stop and a reaper's revoke left for this id and attempt must not
    stop an answer nobody touched. (A scripted model streaming for a second: several stop
    polls see the flags, were they kept.)"""
    reply = "one two three four five six seven eight nine ten"
    with OllamaTestServer(models={"slow:latest": reply}, token_delay=0.1) as server:
        model = ollama_model("ollama/slow", "slow:latest", server.url)
        _, _, answer = services.send_message(
            user=alice, conversation_id=None, text="hi", model_id=model.pk
        )
        stop_flags.request_stop(answer.pk, 1)
        stop_flags.revoke(answer.pk, 1)
        run_next(UNSERVED_POOL, worker="test")
    answer.refresh_from_db()
    assert answer.status == Message.Status.DONE, answer.error
    assert (answer.content, answer.attempts) == (reply, 1)
