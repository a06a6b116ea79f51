"""Read-only share links."""

from __future__ import annotations

import json
import re

import pytest
from django.test import Client
from django.urls import reverse

from webui.accounts.models import Profile
from webui.chat import sharing
from webui.chat.models import Conversation, Message, SharedLink

pytestmark = pytest.mark.django_db


@pytest.fixture
def shared_conversation(alice, gemma):
    Profile.objects.update_or_create(user=alice, defaults={"display_name": "Alice Liddell"})
    conversation = Conversation.objects.create(owner=alice, title="Tea <party>", model=gemma)
    question = Message.objects.create(conversation=conversation, role="user", content="Why?")
    Message.objects.create(
        conversation=conversation, role="assistant", content="Old version", parent=question
    )
    answer = Message.objects.create(
        conversation=conversation,
        role="assistant",
        content="Because **time** stopped.",
        parent=question,
        model=gemma,
    )
    follow_up = Message.objects.create(
        conversation=conversation, role="user", content="And then?", parent=answer
    )
    running = Message.objects.create(
        conversation=conversation,
        role="assistant",
        content="Half an ans",
        parent=follow_up,
        status="running",
        model=gemma,
    )
    conversation.current_leaf = running
    conversation.save()
    Conversation.objects.create(owner=alice, title="Alice's diary")
    return conversation


def test_owner_creates_sees_and_revokes_links(client, alice, shared_conversation):
    client.force_login(alice)
    url = reverse("conversations:share", args=[shared_conversation.pk])

    response = client.post(url)
    assert response.status_code == 302 and response.url == url
    link = SharedLink.objects.get()
    assert len(link.token) >= 43 and link.revoked_at is None
    page = client.get(url).content.decode()
    assert f"http://testserver/s/{link.token}/" in page

    client.post(reverse("conversations:revoke_link", args=[shared_conversation.pk, link.pk]))
    link.refresh_from_db()
    assert link.revoked_at is not None
    assert link.token not in client.get(url).content.decode()
    assert Client().get(f"/s/{link.token}/").status_code == 404


def test_tokens_are_unique_and_unguessable(alice, shared_conversation):
    tokens = {sharing.create_link(alice, shared_conversation.pk).token for _ in range(5)}
    assert len(tokens) == 5


def test_shared_page_is_public_and_shows_only_the_finished_branch(shared_conversation):
    link = SharedLink.objects.create(
        conversation=shared_conversation, token="a" * 43, leaf=shared_conversation.current_leaf
    )
    anonymous = Client()

    response = anonymous.get(f"/s/{link.token}/")

    assert response.status_code == 200
    page = response.content.decode()
    assert "Tea &lt;party&gt;" in page
    assert "Shared by Alice Liddell" in page
    assert "Why?" in page and "Because **time** stopped." in page and "And then?" in page
    assert "Half an ans" not in page  # still being written
    assert "Old version" not in page  # not on screen
    assert "Alice's diary" not in page and "alice" not in page  # no other data, no username
    assert 'class="sidebar"' not in page and "data-conversation-id" not in page
    data = json.loads(
        re.search(r'id="shared-data" type="application/json">(.*?)</script>', page, re.S).group(1)
    )
    assert data == [
        {"role": "user", "content": "Why?", "model": None},
        {"role": "assistant", "content": "Because **time** stopped.", "model": "gemma3-270m"},
        {"role": "user", "content": "And then?", "model": None},
    ]
    # Markdown is rendered in the browser by a static script; no inline script.
    assert '<script src="/static/corral/shared.js" defer></script>' in page
    assert '<script src="/static/vendor/purify.min.js" defer></script>' in page
    scripts = re.findall(r"<script([^>]*)>", page)
    assert all("src=" in attrs or 'type="application/json"' in attrs for attrs in scripts)
    assert "script-src 'self'" in response["Content-Security-Policy"]
    assert response["X-Robots-Tag"] == "noindex, nofollow"
    assert "no-store" in response["Cache-Control"]


def test_what_the_owner_writes_after_sharing_stays_private(alice, shared_conversation):
    """A link shows the branch on screen when it was made: later messages, and a branch
    the owner switches to, are not shown to whoever holds it."""
    Message.objects.filter(pk=shared_conversation.current_leaf_id).update(status="done")
    link = sharing.create_link(alice, shared_conversation.pk)
    later = Message.objects.create(
        conversation=shared_conversation,
        role="user",
        content="My private salary is 123k",
        parent_id=shared_conversation.current_leaf_id,
    )
    shared_conversation.current_leaf = later
    shared_conversation.save()

    shown = sharing.shared_conversation(link.token)

    assert [m["content"] for m in shown.messages] == [
        "Why?",
        "Because **time** stopped.",
        "And then?",
        "Half an ans",
    ]
    assert "123k" not in Client().get(f"/s/{link.token}/").content.decode()
    # A link made now shares the new end of the branch.
    newer = sharing.create_link(alice, shared_conversation.pk)
    assert sharing.shared_conversation(newer.token).messages[-1]["content"].endswith("123k")


def test_a_deactivated_persons_links_go_dark(alice, django_user_model, shared_conversation):
    from webui.accounts import people

    link = SharedLink.objects.create(conversation=shared_conversation, token="d" * 43)
    assert Client().get(f"/s/{link.token}/").status_code == 200
    admin = django_user_model.objects.create_user("root", password="x", is_staff=True)
    people.deactivate(admin, alice)
    assert Client().get(f"/s/{link.token}/").status_code == 404


def test_unknown_and_revoked_tokens_are_404(shared_conversation):
    from django.utils import timezone

    link = SharedLink.objects.create(
        conversation=shared_conversation, token="b" * 43, revoked_at=timezone.now()
    )
    anonymous = Client()
    assert anonymous.get(f"/s/{link.token}/").status_code == 404
    assert anonymous.get("/s/nope/").status_code == 404
    assert anonymous.get("/s/" + "c" * 500 + "/").status_code == 404


def test_another_person_cannot_create_see_or_revoke_links(client, bob, shared_conversation):
    link = SharedLink.objects.create(conversation=shared_conversation, token="d" * 43)
    client.force_login(bob)
    share = reverse("conversations:share", args=[shared_conversation.pk])
    assert client.get(share).status_code == 404
    assert client.post(share).status_code == 404
    revoke = reverse("conversations:revoke_link", args=[shared_conversation.pk, link.pk])
    assert client.post(revoke).status_code == 404
    link.refresh_from_db()
    assert link.revoked_at is None and SharedLink.objects.count() == 1
    with pytest.raises(Conversation.DoesNotExist):
        sharing.create_link(bob, shared_conversation.pk)


def test_revoking_through_another_conversation_id_is_a_404(client, alice, shared_conversation):
    other = Conversation.objects.get(title="Alice's diary")
    link = SharedLink.objects.create(conversation=shared_conversation, token="e" * 43)
    client.force_login(alice)
    revoke = reverse("conversations:revoke_link", args=[other.pk, link.pk])
    assert client.post(revoke).status_code == 404


def test_deleting_the_conversation_ends_its_links(alice, shared_conversation):
    from webui.chat import conversations

    link = SharedLink.objects.create(conversation=shared_conversation, token="f" * 43)
    Message.objects.filter(status="running").update(status="done")
    conversations.delete_conversation(alice, shared_conversation.pk, grace_s=0)
    assert Client().get(f"/s/{link.token}/").status_code == 404
