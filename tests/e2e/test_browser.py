"""A person in Debian's Chromium: sign in, send, watch the answer stream, reload."""

from __future__ import annotations

import json

import pytest

from tests.conftest import PASSWORD
from tests.e2e.conftest import sign_in

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_sign_in_send_stream_and_reload(page, alice, gemma, worker, web_server):
    from webui.chat.models import Message

    gemma.parameters = {**gemma.parameters, "max_tokens": 120}
    gemma.save()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    page.goto(f"{web_server.url}/")
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()

    # What the protocol delivers: every frame of the conversation's socket. Rendered
    # markdown is no measure of growth (a closing ``**`` makes the shown text shorter).
    frames: list[dict] = []
    page.on(
        "websocket",
        lambda ws: ws.on("framereceived", lambda payload: frames.append(json.loads(payload))),
    )

    page.get_by_label("Model").select_option(label="gemma3-270m")
    page.get_by_label("Message").fill("Write a short poem about **rivers**.")
    page.get_by_role("button", name="Send").click()

    question = page.locator('[data-role="user"]').last
    question.wait_for()
    assert "Write a short poem" in question.inner_text()
    answer = page.locator('[data-role="assistant"]').last
    answer.wait_for()

    # Record each distinct text the page shows while the answer is busy.
    states = page.evaluate_handle("() => []")
    page.evaluate(
        """(states) => {
            const seen = () => {
              const el = [...document.querySelectorAll('[data-role="assistant"]')].pop();
              if (!el) return;
              const text = el.querySelector('.content').textContent;
              if (el.getAttribute('aria-busy') === 'true' && text && states.at(-1) !== text)
                states.push(text);
            };
            new MutationObserver(seen).observe(document.getElementById('messages'),
              {subtree: true, childList: true, characterData: true, attributes: true});
        }""",
        states,
    )
    page.wait_for_function(
        """() => { const el = [...document.querySelectorAll('[data-role="assistant"]')].pop();
                   return el && !el.hasAttribute('aria-busy'); }""",
        timeout=60_000,
    )
    intermediate = states.json_value()
    final_text = answer.locator(".content").inner_text()
    assert len(intermediate) >= 2, f"saw {intermediate!r}"  # it streamed on the page
    # The raw text only grows: each delta starts where the one before ended, and is the
    # saved answer's text at that place.
    saved = Message.objects.get(role="assistant")
    deltas = [f for f in frames if f.get("type") == "delta" and f["message"] == saved.pk]
    assert len(deltas) >= 2, f"saw {frames!r}"
    assert all(a["seq"] < b["seq"] for a, b in zip(deltas, deltas[1:], strict=False))
    assert all(
        b["offset"] >= a["offset"] + len(a["text"])
        for a, b in zip(deltas, deltas[1:], strict=False)
    )
    for delta in deltas:
        start = delta["offset"]
        assert delta["text"] and saved.content[start : start + len(delta["text"])] == delta["text"]
    assert final_text.strip()
    assert answer.locator(".meta").inner_text().count("tokens") == 1

    page.reload()
    reloaded = page.locator('[data-role="assistant"]').last
    reloaded.wait_for()
    assert reloaded.locator(".content").inner_text() == final_text
    assert reloaded.get_attribute("aria-busy") is None
    assert "Write a short poem" in page.locator('[data-role="user"]').last.inner_text()
    assert errors == []


def test_model_output_is_never_executed_as_html(page, alice, worker, web_server):
    from tests.ollama_server import OllamaTestServer
    from webui.chat.models import LanguageModel

    hostile = '<img src=x onerror="window.__owned=1"> <script>window.__owned=2</script> **bold**'
    with OllamaTestServer(models={"evil:latest": hostile}) as server:
        LanguageModel.objects.create(
            name="evil", backend="ollama", target="evil:latest", settings={"host": server.url}
        )
        page.goto(f"{web_server.url}/login/")
        page.get_by_label("Username").fill("alice")
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        page.get_by_label("Model").select_option(label="evil")
        page.get_by_label("Message").fill("hi")
        page.get_by_role("button", name="Send").click()
        answer = page.locator('[data-role="assistant"]').last
        answer.wait_for()
        page.wait_for_function(
            """() => { const el = [...document.querySelectorAll('[data-role="assistant"]')].pop();
                       return el && el.dataset.status === 'done'; }""",
            timeout=30_000,
        )
    assert answer.locator("strong").inner_text() == "bold"  # markdown is rendered
    assert answer.locator("script").count() == 0
    assert answer.locator("img[onerror]").count() == 0
    assert page.evaluate("() => window.__owned") is None


def test_empty_and_refused_messages_keep_the_text(page, alice, gemma, worker, web_server):
    page.goto(f"{web_server.url}/login/")
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("button", name="Send").click()
    assert page.get_by_role("alert").inner_text() == "Type a message before sending."
    assert page.locator('[data-role="user"]').count() == 0


def test_page_reconnects_by_itself_when_the_web_server_restarts(
    page, alice, gemma, worker, stack_env, tmp_path
):
    from tests.conftest import _start, _stop, free_port
    from webui.chat.models import Message
    from webui.run import processes

    gemma.parameters = {**gemma.parameters, "max_tokens": 300}
    gemma.save()
    port = free_port()

    def start_web():
        web = _start(processes.web_argv("127.0.0.1", port), stack_env, tmp_path / "web.log")
        processes.wait_for_port("127.0.0.1", port, alive={"web": web})
        return web

    web = start_web()
    try:
        page.goto(f"http://127.0.0.1:{port}/login/")
        page.get_by_label("Username").fill("alice")
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        page.get_by_label("Message").fill("Tell me a long story about a lighthouse.")
        page.get_by_role("button", name="Send").click()
        answer = page.locator('[data-role="assistant"]').last
        page.wait_for_function(
            """() => { const el = [...document.querySelectorAll('[data-role="assistant"]')].pop();
                       return el && el.querySelector('.content').textContent.length > 20; }""",
            timeout=60_000,
        )
        _stop(web)  # mid-answer: the socket drops
        page.wait_for_function(
            "() => document.getElementById('chat').dataset.connected === 'false'", timeout=10_000
        )
        web = start_web()
        page.wait_for_function(
            """() => { const el = [...document.querySelectorAll('[data-role="assistant"]')].pop();
                       return el && !el.hasAttribute('aria-busy'); }""",
            timeout=90_000,
        )
        saved = Message.objects.filter(role="assistant").get()
        assert saved.status == Message.Status.DONE
        assert answer.get_attribute("data-status") == "done"
        # The page shows exactly the saved answer: render the saved text the same way.
        expected = page.evaluate(
            """(text) => { const div = document.createElement('div');
                           div.innerHTML = DOMPurify.sanitize(marked.parse(text));
                           return div.textContent; }""",
            saved.content,
        )
        assert answer.locator(".content").evaluate("el => el.textContent") == expected
        assert page.evaluate("document.getElementById('chat').dataset.connected") == "true"
    finally:
        _stop(web)


LAST_ANSWER_IDLE = """() => {
    const el = [...document.querySelectorAll('[data-role="assistant"]')].pop();
    return el && !el.hasAttribute('aria-busy') && el.dataset.status === 'done';
}"""


def test_regenerate_and_edit_make_versions_the_page_moves_between(
    page, alice, gemma, worker, web_server
):
    gemma.parameters = {**gemma.parameters, "max_tokens": 16, "temperature": 1.0, "seed": None}
    gemma.save()
    sign_in(page, web_server.url)
    page.get_by_label("Message").fill("Say something.")
    page.get_by_role("button", name="Send").click()
    page.wait_for_function(LAST_ANSWER_IDLE, timeout=60_000)
    answer = page.locator('[data-role="assistant"]').last
    first_text = answer.locator(".content").inner_text()

    answer.get_by_role("button", name="Regenerate").click()
    page.wait_for_function(
        """() => { const el = [...document.querySelectorAll('[data-role="assistant"]')].pop();
                   return el && el.querySelector('.version-label')?.textContent === '2/2'
                          && el.dataset.status === 'done'; }""",
        timeout=60_000,
    )
    assert page.locator('[data-role="assistant"]').count() == 1  # versions, not a new turn
    page.get_by_role("button", name="Previous version").click()
    page.wait_for_function(
        """() => document.querySelector('[data-role="assistant"] .version-label')
                   ?.textContent === '1/2'""",
        timeout=10_000,
    )
    assert page.locator('[data-role="assistant"] .content').inner_text() == first_text

    question = page.locator('[data-role="user"]').last
    question.get_by_role("button", name="Edit").click()
    question.get_by_label("Edit message").fill("Say something else.")
    question.get_by_role("button", name="Save edit").click()
    page.wait_for_function(
        """() => { const q = document.querySelector('[data-role="user"]');
                   return q && q.querySelector('.version-label')?.textContent === '2/2'; }""",
        timeout=10_000,
    )
    assert page.locator('[data-role="user"] .content').inner_text() == "Say something else."
    page.wait_for_function(LAST_ANSWER_IDLE, timeout=60_000)
    page.reload()  # versions come from the database
    page.locator('[data-role="user"] .version-label').wait_for()
    assert page.locator('[data-role="user"] .version-label').inner_text() == "2/2"


def test_a_limit_hit_says_which_and_keeps_the_text_in_the_box(page, alice, gemma, web_server):
    from webui.chat import redis_client, services
    from webui.chat.models import Message

    gemma.pool = "gpu"  # no worker consumes it here: answers stay queued
    gemma.save()
    redis_client.shared().delete("corral:workers:gpu")  # and none is noted alive
    conversation, _, _ = services.send_message(
        user=alice, conversation_id=None, text="one", model_id=gemma.pk
    )
    services.send_message(
        user=alice, conversation_id=conversation.pk, text="two", model_id=gemma.pk
    )
    sign_in(page, web_server.url)
    page.goto(f"{web_server.url}/c/{conversation.pk}/")
    page.wait_for_function("() => document.getElementById('chat').dataset.connected === 'true'")
    # Both answers show where they wait, and that no worker of the pool is running.
    status = page.locator('[data-role="assistant"]').first.inner_text()
    assert "Queued: #1 in the gpu queue, waiting for a gpu worker" in status
    page.get_by_label("Message").fill("a third question")
    page.get_by_role("button", name="Send").click()
    alert = page.get_by_role("alert")
    alert.wait_for()
    assert "the limit is 2" in alert.inner_text()
    assert page.get_by_label("Message").input_value() == "a third question"
    assert Message.objects.filter(content="a third question").count() == 0
    assert page.locator('[data-role="user"]').count() == 2


def test_late_text_of_an_attempt_taken_back_to_the_queue_is_not_shown(page, alice, web_server):
    """The reaper put the answer back in the queue (its worker was cut off); text that
    worker still streamed arrives after: the page keeps showing the queued answer, not
    the late text, until the next attempt runs."""
    from playwright.sync_api import expect

    from tests.chat.conftest import UNSERVED_POOL
    from webui.chat import services, streams
    from webui.chat.models import LanguageModel, Message

    model = LanguageModel.objects.create(
        name="unserved", backend="llama_cpp", target="/models/unserved.gguf", pool=UNSERVED_POOL
    )
    conversation, _, answer = services.send_message(
        user=alice, conversation_id=None, text="hi", model_id=model.pk
    )
    kept = "Kept text."
    Message.objects.filter(pk=answer.pk).update(content=kept, seq=2, attempts=1)
    sign_in(page, web_server.url)
    page.goto(f"{web_server.url}/c/{conversation.pk}/")
    shown = page.locator('[data-role="assistant"] .content').last
    expect(shown).to_have_text(kept)

    late = streams.Delta(
        conversation_id=conversation.pk,
        message_id=answer.pk,
        attempt=1,
        seq=3,
        offset=len(kept),
        text=" LATE",
    )
    streams.publish_delta(late)
    # Sent after it on the same path, so the page has taken the late text in by then.
    streams.publish_event(
        conversation.pk,
        {"type": "conversation.title", "conversation": conversation.pk, "title": "Marker"},
    )
    expect(page.locator("#title")).to_have_text("Marker")
    expect(shown).to_have_text(kept)
    row = Message.objects.get(pk=answer.pk)
    assert (row.status, row.content) == (Message.Status.QUEUED, kept)
