"""The message box keeps what was typed until the server saved it; a signed-out tab says
so and stops; a conversation's new title shows without a reload."""

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


def test_box_clears_once_saved_and_a_title_arrives_live(page, alice, worker, web_server):
    from webui.chat.models import LanguageModel

    with OllamaTestServer(models={"scripted:latest": "Rivers of the north"}) as server:
        LanguageModel.objects.create(
            name="scripted",
            backend="ollama",
            target="scripted:latest",
            settings={"host": server.url},
        )
        sign_in(page, web_server.url)
        page.get_by_label("Model").select_option(label="scripted")
        page.get_by_label("Message").fill("Tell me about rivers")
        page.get_by_role("button", name="Send").click()
        page.wait_for_function(ANSWERS_DONE, arg=1, timeout=30_000)

        page.get_by_label("Message").fill("And lakes?")
        page.get_by_role("button", name="Send").click()
        page.wait_for_function(ANSWERS_DONE, arg=2, timeout=30_000)
        assert page.get_by_label("Message").input_value() == ""  # accepted: cleared
        assert page.get_by_role("button", name="Send").is_enabled()
        assert page.locator('[data-role="user"] .content').last.inner_text() == "And lakes?"

        # The worker names the conversation when it is idle; the page hears it.
        page.wait_for_function(
            "() => document.getElementById('title').textContent === 'Rivers of the north'",
            timeout=30_000,
        )
    assert page.title() == "Rivers of the north · Corral"


def test_a_signed_out_tab_keeps_the_typed_message_and_offers_to_sign_in(
    page,
    alice,
    gemma,
    web_server,
):
    from django.contrib.sessions.models import Session

    from webui.chat import services
    from webui.chat.models import Message

    gemma.pool = "gpu"  # nothing needs to run
    gemma.save()
    conversation, _, _ = services.send_message(
        user=alice, conversation_id=None, text="hello", model_id=gemma.pk
    )
    services.stop_answer(user=alice, message_id=conversation.current_leaf_id)
    sign_in(page, web_server.url)
    page.goto(f"{web_server.url}/c/{conversation.pk}/")
    page.wait_for_function(CONNECTED)

    Session.objects.all().delete()  # signed out elsewhere
    page.get_by_label("Message").fill("Do not lose me")
    page.get_by_role("button", name="Send").click()

    page.wait_for_function(
        "() => document.getElementById('chat').dataset.signedOut === 'true'", timeout=10_000
    )
    connection = page.locator("#connection")
    assert "You were signed out." in connection.inner_text()
    assert connection.get_by_role("link", name="Sign in again").get_attribute("href") == "/login/"
    assert page.get_by_label("Message").input_value() == "Do not lose me"
    assert page.get_by_role("button", name="Send").is_disabled()
    assert page.get_by_role("button", name="Stop").is_disabled()
    page.wait_for_timeout(1500)  # longer than the first reconnect delay: no reconnecting
    assert page.evaluate("document.getElementById('chat').dataset.connected") == "false"
    assert not Message.objects.filter(content="Do not lose me").exists()
