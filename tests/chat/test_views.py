from __future__ import annotations

import pytest
from django.test import override_settings
from django.urls import reverse

from webui.chat import services
from webui.chat.models import Conversation, Message

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("url", ["/", "/c/1/", "/c/new/"])
def test_pages_need_login(client, url):
    response = client.get(url)
    assert response.status_code == 302 and response.url.startswith("/login/")


def test_healthz_is_public(client):
    assert client.get("/healthz").content == b"ok"


def test_login_form_uses_standard_field_names(client, alice):
    page = client.get("/login/").content.decode()
    assert 'name="username"' in page and 'name="password"' in page
    response = client.post(
        "/login/", {"username": "alice", "password": "correct-horse-battery-staple"}
    )
    assert response.status_code == 302
    assert client.get("/").status_code == 200


def test_page_keeps_the_ui_contract(client, alice, gemma):
    client.force_login(alice)
    page = client.get("/").content.decode()
    assert '<label for="message-input" class="visually-hidden">Message</label>' in page
    assert '<label for="model-select">Model</label>' in page
    assert ">Send</button>" in page and ">Stop</button>" in page
    assert f'<option value="{gemma.pk}"' in page


def test_new_chat_post_creates_conversation_and_redirects(client, alice, gemma):
    client.force_login(alice)
    response = client.post(reverse("chat:start"), {"text": "Hi!", "model": gemma.pk})
    conversation = Conversation.objects.get(owner=alice)
    assert response.status_code == 302
    assert response.url == reverse("chat:conversation", args=[conversation.pk])
    assert list(conversation.messages.values_list("role", "status")) == [
        ("user", "done"),
        ("assistant", "queued"),
    ]


@override_settings(CORRAL={"MAX_MESSAGE_CHARS": 10})
def test_refused_message_is_kept_in_the_box_with_the_reason(client, alice, gemma):
    client.force_login(alice)
    response = client.post(reverse("chat:start"), {"text": "far too long text", "model": gemma.pk})
    page = response.content.decode()
    assert response.status_code == 400
    assert "the limit is 10" in page
    assert ">far too long text</textarea>" in page
    assert not Message.objects.exists()


def test_another_users_conversation_is_404(client, alice, bob, gemma):
    conversation, _, _ = services.send_message(
        user=alice, conversation_id=None, text="private", model_id=gemma.pk
    )
    client.force_login(bob)
    assert client.get(reverse("chat:conversation", args=[conversation.pk])).status_code == 404
    client.force_login(alice)
    assert client.get(reverse("chat:conversation", args=[conversation.pk])).status_code == 200


def test_sidebar_lists_only_own_conversations(client, alice, bob, gemma):
    services.send_message(user=alice, conversation_id=None, text="alice topic", model_id=gemma.pk)
    services.send_message(user=bob, conversation_id=None, text="bob topic", model_id=gemma.pk)
    client.force_login(bob)
    page = client.get("/").content.decode()
    assert "bob topic" in page and "alice topic" not in page


def test_message_text_is_escaped_in_the_page(client, alice, gemma):
    conversation, _, _ = services.send_message(
        user=alice, conversation_id=None, text="<script>alert(1)</script>", model_id=gemma.pk
    )
    client.force_login(alice)
    page = client.get(reverse("chat:conversation", args=[conversation.pk])).content.decode()
    assert "<script>alert(1)</script>" not in page


def test_pages_send_a_strict_content_security_policy(client, alice):
    client.force_login(alice)
    policy = client.get("/")["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy.split("style-src")[0]


def test_import_ollama_button_is_admin_only(client, alice):
    client.force_login(alice)
    response = client.post(reverse("chat:import_ollama"))
    assert response.status_code == 404  # admin pages do not exist for anyone else


def test_admin_imports_ollama_models_with_the_button(client, admin_user, settings):
    from tests.ollama_server import OllamaTestServer
    from webui import config
    from webui.chat.models import LanguageModel

    with OllamaTestServer(models={"llama3.2:1b": "hi", "qwen2.5:0.5b": "hi"}) as server:
        config.OLLAMA_HOST, previous = server.url, config.OLLAMA_HOST
        try:
            client.force_login(admin_user)
            response = client.post(reverse("chat:import_ollama"), follow=True)
        finally:
            config.OLLAMA_HOST = previous
    assert "Imported 2 new Ollama model(s)." in response.content.decode()
    imported = LanguageModel.objects.filter(backend="ollama").order_by("name")
    assert [(m.name, m.target, m.settings["host"]) for m in imported] == [
        ("ollama/llama3.2:1b", "llama3.2:1b", server.url),
        ("ollama/qwen2.5:0.5b", "qwen2.5:0.5b", server.url),
    ]


def test_import_command_reports_an_unreachable_server(capsys):
    from django.core.management import CommandError, call_command

    from tests.conftest import free_port

    with pytest.raises(CommandError, match="unreachable"):
        call_command("import_ollama_models", host=f"http://127.0.0.1:{free_port()}")


def test_import_command_registers_models_once():
    from django.core.management import call_command

    from tests.ollama_server import OllamaTestServer
    from webui.chat.models import LanguageModel

    with OllamaTestServer(models={"tiny:latest": "hi"}) as server:
        call_command("import_ollama_models", host=server.url)
        call_command("import_ollama_models", host=server.url)
    assert LanguageModel.objects.filter(backend="ollama").count() == 1


def test_queue_page_shows_every_pool_to_admins_only(client, alice, bob, admin_user, gemma):
    services.send_message(user=alice, conversation_id=None, text="a", model_id=gemma.pk)
    services.send_message(user=bob, conversation_id=None, text="b", model_id=gemma.pk)
    client.force_login(alice)
    assert client.get(reverse("chat:queue")).status_code == 404
    client.force_login(admin_user)
    page = client.get(reverse("chat:queue")).content.decode()
    assert "cpu pool" in page and "gpu pool" in page
    assert page.count('data-status="queued"') == 2
    assert page.index(">alice<") < page.index(">bob<")  # in the order workers take them
