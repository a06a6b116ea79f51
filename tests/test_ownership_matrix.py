"""The ownership matrix, in the style of healthchecks' alice/bob tests: for every URL,
websocket route and message type, Bob gets a 404 (or an error that changes nothing) for
Alice's objects; a non-admin gets a 404 from every admin page and action; an anonymous
visitor is sent to sign in. The sizes are printed at the end of the test run."""

from __future__ import annotations

import json

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth.models import Group
from django.test import Client

from tests.chat.test_consumers import ORIGIN, communicator, session_cookie
from webui.accounts import invites
from webui.chat.models import Conversation, Message, SharedLink
from webui.library.models import ModelJob, ModelUpload, OllamaServer

pytestmark = pytest.mark.django_db

# {c}: Alice's conversation, {q}: her question, {a}: her answer, {l}: her share link,
# {u}: a person, {g}: a group, {i}: an invite, {m}: a model, {j}: a model job,
# {o}: an Ollama server, {p}: an upload.
OWNER_URLS = [
    ("get", "/c/{c}/"),
    ("post", "/c/{c}/rename/"),
    ("post", "/c/{c}/pin/"),
    ("post", "/c/{c}/archive/"),
    ("get", "/c/{c}/delete/"),
    ("post", "/c/{c}/delete/"),
    ("get", "/c/{c}/export.md"),
    ("get", "/c/{c}/export.json"),
    ("post", "/c/{c}/share/"),
    ("post", "/c/{c}/share/{l}/revoke/"),
    ("post", "/c/{c}/settings/"),
]
ADMIN_URLS = [
    ("get", "/manage/people/"),
    ("get", "/manage/people/{u}/delete/"),
    ("post", "/manage/people/{u}/delete/"),
    *[
        ("post", f"/manage/people/{{u}}/do/{action}/")
        for action in ("approve", "deactivate", "reactivate", "promote", "demote", "reset-password")
    ],
    ("get", "/manage/people/{u}/quota/"),
    ("post", "/manage/people/{u}/quota/"),
    ("get", "/manage/invites/"),
    ("post", "/manage/invites/"),
    ("post", "/manage/invites/{i}/revoke/"),
    ("get", "/manage/settings/"),
    ("post", "/manage/settings/"),
    ("get", "/manage/groups/"),
    ("post", "/manage/groups/"),
    ("get", "/manage/groups/{g}/"),
    ("post", "/manage/groups/{g}/"),
    ("get", "/manage/groups/{g}/quota/"),
    ("post", "/manage/groups/{g}/quota/"),
    ("get", "/manage/models/"),
    ("post", "/manage/models/"),
    ("post", "/manage/models/register/"),
    ("get", "/manage/models/{m}/"),
    ("post", "/manage/models/{m}/"),
    ("get", "/fleet/"),
    ("get", "/manage/usage/"),
    ("get", "/manage/usage/?format=csv"),
    ("get", "/manage/usage/?person={u}"),
    ("get", "/manage/lockouts/"),
    ("post", "/manage/lockouts/unlock/"),
    ("get", "/queue/"),
    ("post", "/models/import-ollama/"),
    ("get", "/manage/library/jobs.json"),
    ("post", "/manage/library/jobs/{j}/cancel/"),
    ("post", "/manage/library/install-default/"),
    ("post", "/manage/library/quantize/"),
    ("post", "/manage/library/convert/"),
    ("get", "/manage/library/ollama/"),
    ("post", "/manage/library/ollama/"),
    ("post", "/manage/library/ollama/{o}/check/"),
    ("post", "/manage/library/ollama/{o}/remove/"),
    ("post", "/manage/library/ollama/{o}/pull/"),
    ("post", "/manage/library/ollama/{o}/show/"),
    ("post", "/manage/library/ollama/{o}/copy/"),
    ("post", "/manage/library/ollama/{o}/delete/"),
    ("post", "/manage/library/uploads/"),
    ("get", "/manage/library/uploads/{p}/"),
    ("post", "/manage/library/uploads/{p}/chunk/?offset=0"),
    ("post", "/manage/library/uploads/{p}/finish/"),
    ("post", "/manage/library/uploads/{p}/discard/"),
]
# Message types on Bob's own socket that name one of Alice's messages.
SOCKET_MESSAGES = [
    {"type": "stop", "message": "{a}"},
    {"type": "regenerate", "message": "{a}"},
    {"type": "edit", "message": "{q}", "text": "hijacked"},
    {"type": "version", "message": "{q}"},
]
MATRIX_SIZE = {
    "owner URLs": len(OWNER_URLS),
    "admin URLs": len(ADMIN_URLS),
    "anonymous URLs": len(OWNER_URLS) + len(ADMIN_URLS),
    "socket routes": 1,
    "socket message types": len(SOCKET_MESSAGES),
    "data checks": 3,  # search, usage, import
}


@pytest.fixture
def world(alice, bob, gemma, django_user_model):
    from webui.chat import services

    conversation, question, answer = services.send_message(
        user=alice, conversation_id=None, text="alice's zebrafish secret", model_id=gemma.pk
    )
    Message.objects.filter(pk=answer.pk).update(
        status=Message.Status.DONE, content="noted", prompt_tokens=11, completion_tokens=777
    )
    link = SharedLink.objects.create(conversation=conversation, token="t" * 43)
    admin = django_user_model.objects.create_user("root", password="x", is_staff=True)
    invite, _ = invites.create_invite(created_by=admin)
    group = Group.objects.create(name="Research")
    values = {
        "c": conversation.pk,
        "q": question.pk,
        "a": answer.pk,
        "l": link.pk,
        "u": alice.pk,
        "g": group.pk,
        "i": invite.pk,
        "m": gemma.pk,
        "j": ModelJob.objects.create(kind="pull", title="x", params={}).pk,
        "o": OllamaServer.objects.create(name="s", base_url="http://127.0.0.1:9").pk,
        "p": ModelUpload.objects.create(filename="x.gguf", size=10).pk,
    }
    return values


def _state(values):
    conversation = Conversation.objects.get(pk=values["c"])
    return (
        conversation.title,
        conversation.pinned,
        conversation.archived,
        conversation.parameters,
        conversation.system_prompt,
        conversation.current_leaf_id,
        list(conversation.messages.values_list("pk", "status", "content")),
        SharedLink.objects.get(pk=values["l"]).revoked_at,
        list(ModelJob.objects.values_list("pk", "state", "cancel_requested")),
        # Not its health check's time: every worker's reaper checks the servers on its own.
        list(OllamaServer.objects.values_list("pk", "name", "base_url")),
        list(ModelUpload.objects.values_list("pk", "received", "state")),
    )


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


POST_DATA = {
    "title": "pwned",
    "pinned": "1",
    "archived": "1",
    "system_prompt": "pwned",
    "temperature": "2",
    "signup_mode": "open",
    "name": "pwned",
    "role": "admin",
    "username": "bob",
    "action": "delete",
    "model": "1",
    "tokens_per_day": "1",
}


@pytest.mark.parametrize(("method", "url"), OWNER_URLS)
def test_bob_gets_404_for_alices_objects_and_changes_nothing(method, url, world, bob):
    before = _state(world)
    response = getattr(_client(bob), method)(url.format(**world), POST_DATA)
    assert response.status_code == 404
    assert _state(world) == before


@pytest.mark.parametrize(("method", "url"), ADMIN_URLS)
def test_a_non_admin_gets_404_from_every_admin_page_and_action(method, url, world, bob, alice):
    before = _state(world)
    response = getattr(_client(bob), method)(url.format(**world), POST_DATA)
    assert response.status_code == 404
    assert _state(world) == before
    alice.refresh_from_db()
    assert alice.is_active and not alice.is_staff
    assert Group.objects.filter(pk=world["g"]).exists()


@pytest.mark.parametrize(("method", "url"), OWNER_URLS + ADMIN_URLS)
def test_anonymous_visitors_are_sent_to_sign_in(method, url, world):
    before = _state(world)
    response = getattr(Client(), method)(url.format(**world), POST_DATA)
    assert response.status_code == 302 and response["Location"].startswith("/login/")
    assert _state(world) == before


def test_bob_cannot_open_alices_socket(world, bob):
    comm = communicator(f"/ws/conversations/{world['c']}/", ORIGIN, session_cookie(bob))

    async def scenario():
        await comm.connect(timeout=5)
        output = await comm.receive_output(timeout=5)
        return output

    output = async_to_sync(scenario)()
    assert output == {"type": "websocket.close", "code": 4404}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("message", SOCKET_MESSAGES, ids=lambda m: m["type"])
def test_bob_cannot_touch_alices_messages_from_his_own_socket(message, world, bob, gemma):
    from webui.chat import services

    own, _, _ = services.send_message(
        user=bob, conversation_id=None, text="bob's", model_id=gemma.pk
    )
    before = _state(world)
    frame = {
        k: (v.format(**world) if isinstance(v, str) and "{" in v else v) for k, v in message.items()
    }
    frame = {k: int(v) if k == "message" else v for k, v in frame.items()}
    comm = communicator(f"/ws/conversations/{own.pk}/", ORIGIN, session_cookie(bob))

    async def scenario():
        await comm.connect(timeout=5)
        assert (await comm.receive_json_from(timeout=5))["type"] == "snapshot"
        await comm.send_to(text_data=json.dumps(frame))
        while (reply := await comm.receive_json_from(timeout=5))["type"] != "error":
            pass
        await comm.disconnect()
        return reply

    reply = async_to_sync(scenario)()
    assert reply["message"] in ("No such message.", "No such answer.")
    assert _state(world) == before


def test_search_usage_and_import_never_cross_owners(world, bob):
    from django.core.files.uploadedfile import SimpleUploadedFile

    bob_client = _client(bob)
    found = bob_client.get("/search/?q=zebrafish").content.decode()
    assert f"/c/{world['c']}/" not in found and "secret" not in found
    assert "777" not in bob_client.get("/usage/").content.decode()
    # File-local ids that happen to equal Alice's real ids still make Bob's own rows.
    before = _state(world)
    payload = {
        "title": "imported",
        "current_leaf": world["a"],
        "messages": [
            {"id": world["q"], "role": "user", "content": "hi"},
            {"id": world["a"], "parent_id": world["q"], "role": "assistant", "content": "yo"},
        ],
    }
    upload = SimpleUploadedFile("c.json", json.dumps(payload).encode(), "application/json")
    assert bob_client.post("/import/", {"file": upload}).status_code == 302
    imported = Conversation.objects.get(title="imported")
    assert imported.owner_id == bob.pk and imported.messages.count() == 2
    assert _state(world) == before
