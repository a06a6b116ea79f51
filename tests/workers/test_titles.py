"""Automatic titles: written by the conversation's model after its first answer, at low
priority on the same pool, never over a title the person chose."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from inference import get_backend, loaded_models
from tests.chat.conftest import UNSERVED_POOL
from tests.hf_models import tiny_llama_gguf
from tests.ollama_server import OllamaTestServer
from tests.workers.test_generation import collect_events, ollama_model
from webui import config
from webui.chat import services, streams
from webui.chat.models import Conversation, LanguageModel, Message, TitleStatus
from workers import titles
from workers.generation import model_spec, run_next

pytestmark = pytest.mark.django_db(transaction=True)


def _title_events(user_id: int, run) -> list[dict]:
    return collect_events(streams.user_group_name(user_id), run)


def test_the_first_answer_gets_a_title_written_by_the_model(alice, gemma):
    conversation, _, _ = services.send_message(
        user=alice, conversation_id=None, text="How do tides work on Earth?", model_id=gemma.pk
    )
    provisional = Conversation.objects.get(pk=conversation.pk).title
    answer = run_next(UNSERVED_POOL, worker="test")
    assert answer.status == Message.Status.DONE
    assert Conversation.objects.get(pk=conversation.pk).title_status == TitleStatus.PENDING

    events = _title_events(alice.pk, lambda: run_next(UNSERVED_POOL, worker="test"))

    conversation.refresh_from_db()
    assert conversation.title_status == TitleStatus.AUTO
    title_events = [e for e in events if e["type"] == "conversation.title"]
    if conversation.title != provisional:  # the model may write nothing usable
        assert title_events == [
            {
                "type": "conversation.title",
                "conversation": conversation.pk,
                "title": conversation.title,
            }
        ]
        assert 0 < len(conversation.title) <= titles.TITLE_CHARS
        assert "\n" not in conversation.title
    # Only the first answer asks for a title.
    services.send_message(
        user=alice, conversation_id=conversation.pk, text="And on Mars?", model_id=gemma.pk
    )
    run_next(UNSERVED_POOL, worker="test")
    assert Conversation.objects.get(pk=conversation.pk).title_status == TitleStatus.AUTO


def test_a_title_never_takes_the_place_of_a_waiting_answer(alice, bob, gemma):
    conversation, _, answer = services.send_message(
        user=alice, conversation_id=None, text="hello", model_id=gemma.pk
    )
    Conversation.objects.filter(pk=conversation.pk).update(title_status=TitleStatus.PENDING)
    services.send_message(user=bob, conversation_id=None, text="hi", model_id=gemma.pk)
    Message.objects.filter(pk=answer.pk).update(status=Message.Status.DONE)
    # Bob's answer waits in the pool: no title job starts.
    assert titles.run_next_title(UNSERVED_POOL) is None
    assert Conversation.objects.get(pk=conversation.pk).title_status == TitleStatus.PENDING


def test_a_title_gives_way_as_soon_as_an_answer_arrives(alice, bob):
    with OllamaTestServer(
        models={"slow:latest": "one two three four five six seven eight nine ten"},
        token_delay=0.3,
    ) as server:
        model = ollama_model("slow", "slow:latest", server.url)
        conversation, _, answer = services.send_message(
            user=alice, conversation_id=None, text="hello", model_id=model.pk
        )
        Message.objects.filter(pk=answer.pk).update(status=Message.Status.DONE)
        Conversation.objects.filter(pk=conversation.pk).update(title_status=TitleStatus.PENDING)
        done = threading.Event()
        result: list = []

        def title_job() -> None:
            try:
                result.append(titles.run_next_title(UNSERVED_POOL))
            finally:
                from django.db import connection

                connection.close()
                done.set()

        threading.Thread(target=title_job).start()
        time.sleep(0.5)  # the model is writing the title
        assert Conversation.objects.get(pk=conversation.pk).title_status == TitleStatus.RUNNING
        arrived = time.monotonic()
        services.send_message(user=bob, conversation_id=None, text="urgent", model_id=model.pk)
        assert done.wait(5)
        gave_way_after = time.monotonic() - arrived
    assert gave_way_after < 1.5  # within a token or two, not the whole title
    conversation.refresh_from_db()
    assert conversation.title_status == TitleStatus.PENDING  # to be written later
    assert conversation.title == "hello"


def test_a_title_the_person_chose_is_never_overwritten(alice, gemma):
    conversation, _, answer = services.send_message(
        user=alice, conversation_id=None, text="hello", model_id=gemma.pk
    )
    Message.objects.filter(pk=answer.pk).update(status=Message.Status.DONE, content="Hi!")
    Conversation.objects.filter(pk=conversation.pk).update(
        title="My own title", title_status=TitleStatus.USER
    )
    answer.refresh_from_db()
    assert not titles.request_title(answer)
    assert titles.run_next_title(UNSERVED_POOL) is None
    assert Conversation.objects.get(pk=conversation.pk).title == "My own title"


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("Tides on Earth", "Tides on Earth"),
        ('"Tides on Earth."\nMore text', "Tides on Earth"),
        ("## **Title: Moon and tides**", "Moon and tides"),
        ("\n\n  Ocean   tides  explained  ", "Ocean tides explained"),
        ("x" * 200, "x" * titles.TITLE_CHARS),
        ("", ""),
        # A byte-level vocabulary can write NUL, which PostgreSQL's text columns refuse.
        ("Tides\x00 on Earth", "Tides on Earth"),
    ],
)
def test_titles_are_cleaned_to_one_short_line(raw, clean):
    assert titles.title_from_model_text(raw) == clean


def test_a_title_whose_worker_died_waits_again(alice, gemma):
    from datetime import timedelta

    from django.utils import timezone

    conversation, _, _ = services.send_message(
        user=alice, conversation_id=None, text="hello", model_id=gemma.pk
    )
    claimed = timezone.now() - titles.LOST_AFTER - timedelta(seconds=1)
    Conversation.objects.filter(pk=conversation.pk).update(
        title_status=TitleStatus.RUNNING, title_claimed_at=claimed
    )
    fresh, _, _ = services.send_message(
        user=alice, conversation_id=None, text="fresh", model_id=gemma.pk
    )
    Conversation.objects.filter(pk=fresh.pk).update(
        title_status=TitleStatus.RUNNING, title_claimed_at=timezone.now()
    )
    assert titles.requeue_lost_titles() == 1
    assert Conversation.objects.get(pk=conversation.pk).title_status == TitleStatus.PENDING
    assert Conversation.objects.get(pk=fresh.pk).title_status == TitleStatus.RUNNING


def test_a_title_never_makes_a_full_worker_give_up_a_loaded_model(alice, tmp_path, monkeypatch):
    """A worker holding as many models as it may writes titles of the ones it has loaded;
    a title of another model (the oldest waiting here) waits for a worker that has it
    loaded or room for it, instead of loading it over this worker's model."""
    models = [
        LanguageModel.objects.create(
            name=name,
            backend="llama_cpp",
            target=str(tiny_llama_gguf(tmp_path, f"{name}.gguf", seed=seed)),
            pool=UNSERVED_POOL,
            settings={"n_ctx": 512, "batch_size": 2},
        )
        for seed, name in enumerate(("tiny-other", "tiny-loaded"))
    ]
    other, loaded = models
    waiting = {}
    for model in models:  # the other model's conversation is the older one
        conversation = Conversation.objects.create(
            owner=alice, model=model, title="hello", title_status=TitleStatus.PENDING
        )
        Message.objects.create(conversation=conversation, role="user", content="hello")
        waiting[model.pk] = conversation
    spec = model_spec(loaded)
    get_backend("llama_cpp").load(spec.target, spec.settings)
    monkeypatch.setattr(config, "MAX_LOADED_MODELS", len(loaded_models()))

    assert titles.run_next_title(UNSERVED_POOL).pk == waiting[loaded.pk].pk
    assert titles.run_next_title(UNSERVED_POOL) is None  # the other one is not its to write
    assert Conversation.objects.get(pk=waiting[other.pk].pk).title_status == TitleStatus.PENDING
    assert other.target not in loaded_models()

    monkeypatch.setattr(config, "MAX_LOADED_MODELS", len(loaded_models()) + 1)  # room now
    assert titles.run_next_title(UNSERVED_POOL).pk == waiting[other.pk].pk
    assert Conversation.objects.get(pk=waiting[other.pk].pk).title_status == TitleStatus.AUTO


def test_a_title_waits_for_a_warm_worker_ten_minutes_at_most(alice, tmp_path, monkeypatch):
    """Past ``WAIT_FOR_LOADED_MODEL`` a full worker writes a title of a model it has not
    loaded after all: with no worker keeping that model, it would wait for good."""
    model = LanguageModel.objects.create(
        name="not-loaded", backend="llama_cpp", target=str(tmp_path / "x.gguf"), pool=UNSERVED_POOL
    )
    conversation = Conversation.objects.create(
        owner=alice, model=model, title="hello", title_status=TitleStatus.PENDING
    )
    monkeypatch.setattr(config, "MAX_LOADED_MODELS", len(loaded_models()))
    assert not titles._writable_here(UNSERVED_POOL).exists()
    waited = titles.WAIT_FOR_LOADED_MODEL + timedelta(minutes=1)
    Conversation.objects.filter(pk=conversation.pk).update(updated_at=timezone.now() - waited)
    assert list(titles._writable_here(UNSERVED_POOL)) == [conversation]
