"""A conversation's own system prompt and sampling parameters: the service, the settings
form, and what the worker sends to a model."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.core.exceptions import ValidationError
from django.test import override_settings

from inference import ChatMessage, get_backend
from tests.chat.conftest import UNSERVED_POOL
from tests.ollama_server import OllamaTestServer
from webui import config
from webui.chat import conversation_settings
from webui.chat.conversation_settings import effective_settings, update_settings
from webui.chat.models import Conversation, LanguageModel, Message
from workers.generation import build_request

pytestmark = pytest.mark.django_db

BLANK = dict.fromkeys(conversation_settings.EDITABLE, "")


@pytest.fixture
def model(db) -> LanguageModel:
    return LanguageModel.objects.create(
        name="scripted",
        backend="ollama",
        target="scripted:latest",
        pool=UNSERVED_POOL,
        parameters={"temperature": 0.2, "max_tokens": 64, "seed": 7},
    )


@pytest.fixture
def conversation(alice, model) -> Conversation:
    return Conversation.objects.create(owner=alice, model=model, title="Rivers")


def test_saves_the_prompt_and_only_the_values_given(alice, conversation):
    saved = update_settings(
        user=alice,
        conversation_id=conversation.pk,
        system_prompt="  Answer like a pirate.  ",
        parameters={**BLANK, "temperature": "0.9", "top_k": "12", "seed": " "},
    )
    conversation.refresh_from_db()
    assert saved.pk == conversation.pk
    assert conversation.system_prompt == "Answer like a pirate."
    assert conversation.parameters == {"temperature": 0.9, "top_k": 12}


def test_a_blank_field_goes_back_to_the_models_default(alice, conversation):
    conversation.parameters = {"temperature": 1.5, "top_p": 0.5}
    conversation.system_prompt = "Be brief."
    conversation.save()
    update_settings(
        user=alice,
        conversation_id=conversation.pk,
        system_prompt="",
        parameters={**BLANK, "top_p": "0.5"},
    )
    conversation.refresh_from_db()
    assert conversation.parameters == {"top_p": 0.5}
    assert conversation.system_prompt == ""


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("temperature", "3", "Temperature must be at most 2."),
        ("temperature", "warm", "Temperature must be a number."),
        ("top_p", "0", "Top P must be more than 0."),
        ("top_k", "4.5", "Top K must be a whole number."),
        ("repeat_penalty", "-1", "Repeat penalty must be at least 0."),
        ("max_tokens", "0", "Max tokens must be at least 1."),
        ("seed", "-3", "Seed must be a whole number from 0 to 4294967295."),
    ],
)
def test_refuses_bad_values_naming_the_field_and_saves_nothing(
    alice, conversation, field, value, message
):
    with pytest.raises(ValidationError) as caught:
        update_settings(
            user=alice,
            conversation_id=conversation.pk,
            system_prompt="New prompt",
            parameters={**BLANK, field: value},
        )
    assert caught.value.message_dict == {field: [message]}
    conversation.refresh_from_db()
    assert conversation.parameters == {} and conversation.system_prompt == ""


def test_max_tokens_is_capped_by_the_servers_limit(alice, conversation):
    over = config.MAX_TOKENS_PER_ANSWER + 1
    with pytest.raises(ValidationError) as caught:
        update_settings(
            user=alice,
            conversation_id=conversation.pk,
            system_prompt="",
            parameters={"max_tokens": over},
        )
    assert caught.value.messages == [
        f"Max tokens must be at most {config.MAX_TOKENS_PER_ANSWER:,} (this server's limit)."
    ]


def test_unknown_settings_are_refused(alice, conversation):
    with pytest.raises(ValidationError, match="Unknown setting"):
        update_settings(
            user=alice,
            conversation_id=conversation.pk,
            system_prompt="",
            parameters={"stop": ["x"]},
        )


@override_settings(CORRAL={"MAX_MESSAGE_CHARS": 10})
def test_the_system_prompt_has_the_message_length_limit(alice, conversation):
    with pytest.raises(ValidationError) as caught:
        update_settings(
            user=alice, conversation_id=conversation.pk, system_prompt="x" * 11, parameters={}
        )
    assert caught.value.message_dict == {
        "system_prompt": ["The system prompt is 11 characters long; the limit is 10."]
    }


def test_another_persons_or_an_unknown_conversation_does_not_exist(bob, alice, conversation):
    for user, conversation_id in ((bob, conversation.pk), (alice, conversation.pk + 1000)):
        with pytest.raises(Conversation.DoesNotExist):
            update_settings(
                user=user,
                conversation_id=conversation_id,
                system_prompt="mine now",
                parameters={"temperature": "1"},
            )
    conversation.refresh_from_db()
    assert conversation.system_prompt == "" and conversation.parameters == {}


def test_effective_settings_say_what_is_the_models_default(alice, conversation):
    conversation.parameters = {"temperature": 1.1}
    conversation.system_prompt = "Be kind."
    conversation.save()
    shown = effective_settings(conversation)
    assert shown["system_prompt"] == {
        "label": "System prompt",
        "value": "Be kind.",
        "default": "",
        "is_default": False,
    }
    assert shown["temperature"] == {
        "label": "Temperature",
        "value": 1.1,
        "default": 0.2,
        "is_default": False,
    }
    assert shown["max_tokens"]["value"] == 64 and shown["max_tokens"]["is_default"]
    assert shown["top_p"]["value"] == 0.95 and shown["top_p"]["is_default"]  # built-in default
    assert shown["seed"]["value"] == 7


# The form -----------------------------------------------------------------------------


def test_the_form_saves_and_the_panel_shows_values_and_defaults(client, alice, conversation):
    client.force_login(alice)
    response = client.post(
        f"/c/{conversation.pk}/settings/",
        {**BLANK, "system_prompt": "Answer in French.", "temperature": "0.4"},
        follow=True,
    )
    assert response.redirect_chain == [(f"/c/{conversation.pk}/", 302)]
    page = response.content.decode()
    assert "Settings saved" in page
    assert ">Answer in French.</textarea>" in page
    assert 'name="temperature" value="0.4"' in page
    assert 'name="max_tokens" value=""' in page and 'placeholder="64"' in page
    conversation.refresh_from_db()
    assert conversation.parameters == {"temperature": 0.4}


def test_a_refused_form_says_why_and_keeps_what_was_typed(client, alice, conversation):
    client.force_login(alice)
    response = client.post(
        f"/c/{conversation.pk}/settings/",
        {**BLANK, "system_prompt": "Keep me.", "temperature": "9", "top_k": "5"},
        follow=True,
    )
    page = response.content.decode()
    assert "Temperature must be at most 2." in page
    assert '<details class="settings-panel" id="settings-panel" open>' in page
    assert ">Keep me.</textarea>" in page
    assert 'name="temperature" value="9"' in page and 'name="top_k" value="5"' in page
    # Once: a later visit shows what is saved.
    page = client.get(f"/c/{conversation.pk}/").content.decode()
    assert "Temperature must be at most 2." not in page and "Keep me." not in page
    conversation.refresh_from_db()
    assert conversation.parameters == {} and conversation.system_prompt == ""


@pytest.mark.parametrize(
    "form",
    [{"temperature": "1"}, {"system_prompt": "x" * (settings.CORRAL["MAX_MESSAGE_CHARS"] + 1)}],
    ids=["valid", "invalid"],
)
def test_the_form_is_404_for_another_persons_conversation(client, bob, conversation, form):
    """Valid or not, what is sent for someone else's conversation gets a 404 (not an error
    message that tells the id exists)."""
    client.force_login(bob)
    response = client.post(f"/c/{conversation.pk}/settings/", {**BLANK, **form})
    assert response.status_code == 404
    conversation.refresh_from_db()
    assert conversation.parameters == {} and conversation.system_prompt == ""


def test_the_form_takes_only_posts(client, alice, conversation):
    client.force_login(alice)
    assert client.get(f"/c/{conversation.pk}/settings/").status_code == 405


# What the model gets --------------------------------------------------------------------


def queued_answer(conversation: Conversation, question: str) -> Message:
    asked = Message.objects.create(conversation=conversation, role="user", content=question)
    return Message.objects.create(
        conversation=conversation,
        role="assistant",
        parent=asked,
        model=conversation.model,
        status=Message.Status.QUEUED,
    )


def test_build_request_starts_with_the_system_prompt_and_merges_parameters(alice, conversation):
    update_settings(
        user=alice,
        conversation_id=conversation.pk,
        system_prompt="Answer like a pirate.",
        parameters={"temperature": "0.9", "top_k": "5"},
    )
    answer = queued_answer(Conversation.objects.get(pk=conversation.pk), "Where is the river?")
    request = build_request(Message.objects.select_related("model").get(pk=answer.pk))
    assert request.messages == (
        ChatMessage("system", "Answer like a pirate."),
        ChatMessage("user", "Where is the river?"),
    )
    # The conversation's values over the model's (temperature 0.2, max_tokens 64, seed 7).
    assert request.options.temperature == 0.9 and request.options.top_k == 5
    assert request.options.max_tokens == 64 and request.options.seed == 7


def test_without_settings_the_request_is_the_models(alice, conversation):
    answer = queued_answer(conversation, "Hello")
    request = build_request(answer)
    assert request.messages == (ChatMessage("user", "Hello"),)
    assert request.options.temperature == 0.2


def test_ollama_receives_the_system_message_and_the_options(alice, conversation):
    with OllamaTestServer(models={"scripted:latest": "Arr."}) as server:
        conversation.model.settings = {"host": server.url}
        conversation.model.save()
        update_settings(
            user=alice,
            conversation_id=conversation.pk,
            system_prompt="Answer like a pirate.",
            parameters={"temperature": "1.3", "max_tokens": "16"},
        )
        answer = queued_answer(Conversation.objects.get(pk=conversation.pk), "Hi")
        items = list(get_backend("ollama").stream(build_request(answer)))
    assert "".join(getattr(item, "text", "") for item in items) == "Arr."
    sent = server.chat_requests[-1]
    assert sent["messages"][0] == {"role": "system", "content": "Answer like a pirate."}
    assert sent["options"]["temperature"] == 1.3 and sent["options"]["num_predict"] == 16
    assert sent["options"]["seed"] == 7  # the model's default, not overridden
