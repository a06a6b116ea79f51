"""A person sets a conversation's system prompt and temperature; the model receives them."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import sign_in
from tests.ollama_server import OllamaTestServer

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

CONNECTED = "() => document.getElementById('chat').dataset.connected === 'true'"
ANSWERS_DONE = """(n) => {
    const answers = [...document.querySelectorAll('[data-role="assistant"]')];
    return answers.length === n && answers.every((el) => el.dataset.status === 'done');
}"""


def answer_request(server: OllamaTestServer, question: str) -> dict:
    """The request that answered ``question`` (the worker also asks the model for titles)."""
    return next(
        body
        for body in reversed(server.chat_requests)
        if body["messages"][-1] == {"role": "user", "content": question}
    )


def test_system_prompt_and_temperature_reach_the_model(page, alice, worker, web_server):
    from webui.chat.models import LanguageModel

    with OllamaTestServer(models={"scripted:latest": "Aye, noted."}) as server:
        LanguageModel.objects.create(
            name="scripted",
            backend="ollama",
            target="scripted:latest",
            pool="cpu",  # served by the test worker
            settings={"host": server.url},
            parameters={"temperature": 0.2, "max_tokens": 32},
        )
        sign_in(page, web_server.url)
        page.get_by_label("Model").select_option(label="scripted")
        page.get_by_label("Message").fill("First question")
        page.get_by_role("button", name="Send").click()
        page.wait_for_function(ANSWERS_DONE, arg=1, timeout=30_000)
        assert answer_request(server, "First question")["messages"][0]["role"] == "user"

        page.get_by_text("Settings", exact=True).click()
        prompt = page.get_by_label("System prompt")
        temperature = page.get_by_label("Temperature")
        assert prompt.input_value() == ""
        assert temperature.input_value() == ""
        assert temperature.get_attribute("placeholder") == "0.2"  # the model's default
        assert page.get_by_label("Max tokens").get_attribute("placeholder") == "32"
        prompt.fill("Answer like a pirate.")
        temperature.fill("1.3")
        page.get_by_role("button", name="Save settings").click()

        page.get_by_text("Settings saved").wait_for()
        assert page.get_by_label("System prompt").input_value() == "Answer like a pirate."
        assert page.get_by_label("Temperature").input_value() == "1.3"
        page.wait_for_function(CONNECTED)
        page.get_by_label("Message").fill("Second question")
        page.get_by_role("button", name="Send").click()
        page.wait_for_function(ANSWERS_DONE, arg=2, timeout=30_000)

    sent = answer_request(server, "Second question")
    assert sent["messages"][0] == {"role": "system", "content": "Answer like a pirate."}
    assert sent["messages"][-1] == {"role": "user", "content": "Second question"}
    assert sent["options"]["temperature"] == 1.3
    assert sent["options"]["num_predict"] == 32  # the model's default, untouched


def test_a_refused_value_is_explained_and_kept(page, alice, gemma, web_server):
    from webui.chat import services
    from webui.chat.models import Conversation

    gemma.pool = "gpu"  # nothing needs to run
    gemma.save()
    conversation, _, _ = services.send_message(
        user=alice, conversation_id=None, text="hello", model_id=gemma.pk
    )
    sign_in(page, web_server.url)
    page.goto(f"{web_server.url}/c/{conversation.pk}/")
    page.get_by_text("Settings", exact=True).click()
    page.get_by_label("System prompt").fill("Be brief.")
    # The browser's own range check would stop the form; the server's is what counts.
    page.get_by_label("Top K").evaluate("el => el.removeAttribute('max')")
    page.get_by_label("Top K").fill("5000")
    page.get_by_role("button", name="Save settings").click()

    page.get_by_text("Top K must be at most 1000.").wait_for()
    assert page.get_by_label("Top K").input_value() == "5000"
    assert page.get_by_label("System prompt").input_value() == "Be brief."
    conversation = Conversation.objects.get(pk=conversation.pk)
    assert conversation.system_prompt == "" and conversation.parameters == {}
