"""Django's admin makes the Models page's checks on what it saves: a GGUF inside the
models folder, an Ollama address that is not link-local or metadata."""

from __future__ import annotations

import pytest

from webui.chat.models import LanguageModel

pytestmark = pytest.mark.django_db

ADD = "/admin/chat/languagemodel/add/"


@pytest.fixture
def admin_client(client, django_user_model):
    """A superuser (staff alone may not add models in Django's admin)."""
    client.force_login(django_user_model.objects.create_superuser("root", password="x"))
    return client


def form(**fields: str) -> dict[str, str]:
    return {
        "name": "m",
        "backend": "llama_cpp",
        "target": "",
        "pool": "cpu",
        "settings": "{}",
        "parameters": "{}",
        "details": "{}",
        "enabled": "on",
        **fields,
    }


def test_a_gguf_outside_the_models_folder_is_refused(admin_client, models_dir, tmp_path):
    outside = tmp_path / "outside.gguf"
    outside.write_bytes(b"GGUF")
    for target in ("/etc/passwd", str(outside), str(models_dir / ".." / "outside.gguf")):
        response = admin_client.post(ADD, form(target=target))
        assert response.status_code == 200  # the form again, with the error
        assert "inside the models folder" in response.content.decode()
    assert not LanguageModel.objects.exists()


def test_a_gguf_inside_the_models_folder_is_saved(admin_client, models_dir):
    inside = models_dir / "m.gguf"
    inside.write_bytes(b"GGUF")
    response = admin_client.post(ADD, form(target=str(inside)))
    assert response.status_code == 302, response.content.decode()[:2000]
    assert LanguageModel.objects.get(name="m").target == str(inside)


def test_an_ollama_model_naming_a_metadata_address_is_refused(admin_client):
    response = admin_client.post(
        ADD,
        form(backend="ollama", target="llama3", settings='{"host": "http://169.254.169.254"}'),
    )
    assert response.status_code == 200
    assert "refused" in response.content.decode()
    assert not LanguageModel.objects.exists()


def test_django_admin_shows_no_ones_conversations(admin_client, alice):
    """Conversations are their owner's alone: Django's admin neither lists nor edits them
    (it showed every person's messages and let an admin move a conversation to another
    owner, with the old owner's socket still in its group)."""
    from webui.chat.models import Conversation

    conversation = Conversation.objects.create(owner=alice, title="private")
    assert admin_client.get("/admin/chat/conversation/").status_code == 404
    change = f"/admin/chat/conversation/{conversation.pk}/change/"
    assert admin_client.get(change).status_code == 404
    assert "private" not in admin_client.get("/admin/").content.decode()
    assert "/admin/chat/conversation/" not in admin_client.get("/admin/chat/").content.decode()
