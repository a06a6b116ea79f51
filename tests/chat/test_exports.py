"""Export as Markdown and JSON; import JSON back, validated, in one transaction."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import override_settings
from django.urls import reverse

from webui.chat import exports
from webui.chat.models import (
    Conversation,
    ConversationImport,
    LanguageModel,
    Message,
    TitleStatus,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def tree(alice, gemma):
    """A conversation with two versions of its answer; the second one is on screen."""
    conversation = Conversation.objects.create(
        owner=alice,
        title='Rivers: "a poem"/ü\nnext',
        system_prompt="Be brief.",
        parameters={"temperature": 0.2},
        model=gemma,
    )
    question = Message.objects.create(
        conversation=conversation, role="user", content="Write about **rivers**."
    )
    old = Message.objects.create(
        conversation=conversation,
        role="assistant",
        content="First version.",
        parent=question,
        model=gemma,
    )
    new = Message.objects.create(
        conversation=conversation,
        role="assistant",
        content="Second version.",
        parent=question,
        model=gemma,
        status="stopped",
        error="Stopped by the user.",
    )
    conversation.current_leaf = new
    conversation.save()
    return conversation, question, old, new


def upload(client, data: bytes | str, name: str = "c.json"):
    if isinstance(data, str):
        data = data.encode()
    return client.post(reverse("conversations:import"), {"file": SimpleUploadedFile(name, data)})


def test_markdown_export_is_the_branch_on_screen(client, alice, tree):
    conversation, *_ = tree
    client.force_login(alice)

    response = client.get(reverse("conversations:export_markdown", args=[conversation.pk]))

    assert response.status_code == 200
    assert response["Content-Type"] == "text/markdown; charset=utf-8"
    disposition = response["Content-Disposition"]
    assert disposition == f'attachment; filename="rivers-a-poemu-next-{conversation.pk}.md"'
    text = response.content.decode()
    assert text.startswith('# Rivers: "a poem"/ü next\n\n')
    assert "## System prompt\n\nBe brief." in text
    assert "## You\n\nWrite about **rivers**." in text
    assert "## gemma3-270m\n\nSecond version." in text
    assert "_(stopped: Stopped by the user.)_" in text
    assert "First version." not in text  # the other version is not on screen


def test_json_export_has_the_whole_tree(client, alice, tree):
    conversation, question, old, new = tree
    client.force_login(alice)

    response = client.get(reverse("conversations:export_json", args=[conversation.pk]))

    assert response["Content-Disposition"].startswith("attachment; filename=")
    assert response["Content-Disposition"].endswith(f'-{conversation.pk}.json"')
    data = json.loads(response.content)
    assert data["title"] == conversation.title
    assert data["system_prompt"] == "Be brief."
    assert data["parameters"] == {"temperature": 0.2}
    assert data["model"] == "gemma3-270m"
    assert data["created_at"].startswith(str(conversation.created_at.year))
    assert data["current_leaf"] == new.pk
    assert [(m["id"], m["parent_id"], m["role"], m["status"]) for m in data["messages"]] == [
        (question.pk, None, "user", "done"),
        (old.pk, question.pk, "assistant", "done"),
        (new.pk, question.pk, "assistant", "stopped"),
    ]
    assert all(m["created_at"] for m in data["messages"])


def test_export_of_another_persons_conversation_is_a_404(client, bob, tree):
    conversation, *_ = tree
    client.force_login(bob)
    for name in ("conversations:export_markdown", "conversations:export_json"):
        assert client.get(reverse(name, args=[conversation.pk])).status_code == 404


def test_filename_of_an_untitled_or_non_latin_conversation(alice):
    conversation = Conversation.objects.create(owner=alice, title="日本語")
    assert exports.export_filename(conversation, "md") == f"conversation-{conversation.pk}.md"


def test_round_trip_keeps_versions_and_belongs_to_the_importer(client, alice, bob, tree):
    conversation, *_ = tree
    exported = exports.export_json(conversation)
    client.force_login(bob)

    response = upload(client, exported)

    imported = Conversation.objects.exclude(pk=conversation.pk).get()
    assert response.status_code == 302
    assert response.url == reverse("chat:conversation", args=[imported.pk])
    assert imported.owner == bob
    assert imported.title == 'Rivers: "a poem"/ü next'  # one line
    assert imported.title_status == TitleStatus.USER
    assert imported.system_prompt == "Be brief." and imported.parameters == {"temperature": 0.2}
    assert imported.model.name == "gemma3-270m"
    messages = list(imported.messages.order_by("pk"))
    assert [(m.role, m.content, m.status) for m in messages] == [
        ("user", "Write about **rivers**.", "done"),
        ("assistant", "First version.", "done"),
        ("assistant", "Second version.", "done"),
    ]
    question, old, new = messages
    assert old.parent == question and new.parent == question  # both versions survive
    assert imported.current_leaf == new
    assert new.model.name == "gemma3-270m"
    page = client.get(response.url).content.decode()
    assert "Second version." in page


def test_unavailable_model_is_not_attached(alice, tree):
    conversation, *_ = tree
    data = exports.export_data(conversation)
    LanguageModel.objects.filter(name="gemma3-270m").update(enabled=False)
    data["messages"][1]["model"] = "no-such-model"
    imported = exports.import_conversation(alice, json.dumps(data).encode())
    assert imported.model is None
    assert not imported.messages.exclude(model=None).exists()


def test_a_minimal_file_gets_a_title_from_its_first_question(alice):
    raw = json.dumps({"messages": [{"id": 7, "role": "user", "content": "Hello   there\nfriend"}]})
    imported = exports.import_conversation(alice, raw.encode())
    assert imported.title == "Hello there friend"
    assert imported.current_leaf.content == "Hello   there\nfriend"


VALID_MESSAGE = {"id": 1, "parent_id": None, "role": "user", "content": "hi", "status": "done"}


@pytest.mark.parametrize(
    "payload,reason",
    [
        (b"{not json", "Invalid JSON"),
        (b"[]", "Input should be an object"),
        ({"messages": []}, "at least 1 item"),
        ({"messages": [VALID_MESSAGE], "owner": "bob"}, "Extra inputs are not permitted"),
        ({"messages": [{**VALID_MESSAGE, "role": "admin"}]}, "messages.0.role"),
        ({"messages": [{**VALID_MESSAGE, "parent_id": 2}]}, "not an earlier message"),
        (
            {"messages": [VALID_MESSAGE, {**VALID_MESSAGE, "parent_id": 1}]},
            "appears twice",
        ),
        ({"messages": [{**VALID_MESSAGE, "content": "x" * 33}]}, "the limit is 32"),
        ({"messages": [{**VALID_MESSAGE, "extra": 1}]}, "messages.0.extra"),
        ({"messages": [VALID_MESSAGE], "parameters": {"temperature": 9}}, "parameters"),
        ({"messages": [VALID_MESSAGE], "parameters": {"evil": 1}}, "parameters"),
        ({"messages": [VALID_MESSAGE], "parameters": {"seed": -5}}, "parameters: Seed"),
        ({"messages": [VALID_MESSAGE], "parameters": {"stop": ["x"] * 999}}, "parameters"),
        ({"messages": [VALID_MESSAGE], "current_leaf": 5}, "current_leaf 5"),
        ({"messages": [VALID_MESSAGE], "title": "t" * 201}, "title"),
        ({"messages": [VALID_MESSAGE], "version": 2}, "version"),
    ],
)
@override_settings(CORRAL={"MAX_MESSAGE_CHARS": 32, "MAX_IMPORT_BYTES": 100_000})
def test_bad_files_are_refused_with_the_reason_and_create_nothing(client, alice, payload, reason):
    client.force_login(alice)
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()

    response = upload(client, raw)

    assert response.status_code == 400
    page = response.content.decode()
    assert "nothing was created" in page
    assert reason in page.replace("&#x27;", "'")
    assert not Conversation.objects.exists() and not Message.objects.exists()


def test_too_many_messages_are_refused(alice):
    messages = [
        {"id": i, "parent_id": i - 1 if i else None, "role": "user", "content": "x"}
        for i in range(exports.MAX_IMPORT_MESSAGES + 1)
    ]
    with pytest.raises(exports.ImportRejected, match="at most 5000 items"):
        exports.import_conversation(alice, json.dumps({"messages": messages}).encode())
    assert not Conversation.objects.exists()


@override_settings(CORRAL={"MAX_MESSAGE_CHARS": 32000, "MAX_IMPORT_BYTES": 200})
def test_a_file_over_the_size_limit_is_refused_before_parsing(client, alice):
    client.force_login(alice)
    big = json.dumps({"messages": [{**VALID_MESSAGE, "content": "y" * 300}]})
    response = upload(client, big)
    assert response.status_code == 400
    assert "larger than the limit of 200 bytes" in response.content.decode()
    with pytest.raises(exports.ImportRejected, match="larger than the limit"):
        exports.parse_import(b"{" + b" " * 300 + b"}")  # not even valid: size comes first
    assert not Conversation.objects.exists()


def test_import_page_is_reachable_and_needs_a_file(client, alice):
    client.force_login(alice)
    assert 'href="/import/"' in client.get("/").content.decode()
    page = client.get(reverse("conversations:import")).content.decode()
    assert 'enctype="multipart/form-data"' in page and 'name="file"' in page
    assert client.post(reverse("conversations:import")).status_code == 400


def test_nul_characters_in_an_import_are_dropped(client, alice):
    """PostgreSQL's text columns refuse NUL: the file is imported without them."""
    client.force_login(alice)
    raw = {
        "title": "Ti\u0000de",
        "system_prompt": "Be\u0000 brief.",
        "messages": [{**VALID_MESSAGE, "content": "Hel\u0000lo"}],
    }
    response = upload(client, json.dumps(raw))
    assert response.status_code == 302
    imported = Conversation.objects.get(owner=alice)
    assert (imported.title, imported.system_prompt) == ("Tide", "Be brief.")
    assert imported.messages.get().content == "Hello"


def test_imported_text_is_escaped(client, alice):
    client.force_login(alice)
    raw = {"title": "<b>x</b>", "messages": [{**VALID_MESSAGE, "content": "<script>1</script>"}]}
    response = upload(client, json.dumps(raw))
    page = client.get(response.url).content.decode()
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page
    assert "<script>1</script>" not in page


@override_settings(CORRAL={"MAX_IMPORTS_PER_HOUR": 2})
def test_imports_per_person_are_limited_per_hour(client, alice, bob):
    """Each import may write thousands of rows: a person gets a few an hour, and the
    refusal says when to try again; someone else is not held up by it."""
    raw = json.dumps({"messages": [VALID_MESSAGE]})
    client.force_login(alice)
    assert upload(client, raw).status_code == 302
    assert upload(client, raw).status_code == 302
    refused = upload(client, raw)
    assert refused.status_code == 429
    assert "You imported 2 conversations in the last hour; try again in 60 min." in (
        refused.content.decode()
    )
    assert Conversation.objects.filter(owner=alice).count() == 2
    # Deleting them makes no room: each import wrote its rows all the same.
    Conversation.objects.filter(owner=alice).delete()
    assert upload(client, raw).status_code == 429
    client.force_login(bob)
    assert upload(client, raw).status_code == 302
    # An hour after the first, one more is allowed.
    first = ConversationImport.objects.filter(owner=alice).order_by("pk").first()
    ConversationImport.objects.filter(pk=first.pk).update(
        created_at=first.created_at - timedelta(hours=1, seconds=1)
    )
    client.force_login(alice)
    assert upload(client, raw).status_code == 302


@override_settings(CORRAL={"MAX_IMPORTS_PER_HOUR": 0})
def test_imports_can_be_turned_off(client, alice):
    client.force_login(alice)
    refused = upload(client, json.dumps({"messages": [VALID_MESSAGE]}))
    assert refused.status_code == 403
    assert "Importing conversations is turned off on this server." in refused.content.decode()
    assert not Conversation.objects.exists()
