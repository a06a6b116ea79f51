"""Conversation management: the sidebar, rename, pin, archive, delete."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from webui.chat import conversations, redis_client, stop_flags, streams
from webui.chat.models import Conversation, Message, SharedLink, TitleStatus

pytestmark = pytest.mark.django_db


def make_conversation(owner, title: str, *, age_minutes: int = 0, **fields) -> Conversation:
    conversation = Conversation.objects.create(owner=owner, title=title, **fields)
    question = Message.objects.create(conversation=conversation, role="user", content="Hello")
    answer = Message.objects.create(
        conversation=conversation, role="assistant", content="Hi!", parent=question
    )
    conversation.current_leaf = answer
    conversation.save()
    Conversation.objects.filter(pk=conversation.pk).update(
        updated_at=timezone.now() - timedelta(minutes=age_minutes)
    )
    conversation.refresh_from_db()
    return conversation


def sidebar_ids(page_html: str) -> list[int]:
    import re

    return [int(pk) for pk in re.findall(r'<li data-conversation-id="(\d+)"', page_html)]


# Sidebar ------------------------------------------------------------------------------


def test_sidebar_lists_pinned_first_then_newest_and_hides_archived(client, alice, bob):
    old = make_conversation(alice, "Old", age_minutes=30)
    new = make_conversation(alice, "New", age_minutes=1)
    pinned = make_conversation(alice, "Pinned one", age_minutes=60, pinned=True)
    make_conversation(alice, "Archived", age_minutes=0, archived=True)
    make_conversation(bob, "Bob's secret", age_minutes=0)
    client.force_login(alice)

    page = client.get(reverse("chat:conversation", args=[old.pk])).content.decode()

    assert sidebar_ids(page) == [pinned.pk, new.pk, old.pk]
    assert "Archived" not in page and "Bob&#x27;s secret" not in page
    assert f'<li data-conversation-id="{pinned.pk}" class="pinned"><span class="pin-marker"' in page
    assert f'<a class="conversation-link" href="/c/{old.pk}/" aria-current="page">Old</a>' in page
    assert '<label for="sidebar-search-input" class="visually-hidden">Search</label>' in page
    assert 'name="q"' in page and 'action="/search/"' in page
    assert "New chat" in page and "Sign out" in page  # the account menu stays


def test_sidebar_pages_with_a_cursor_without_gaps_or_repeats(client, alice):
    made = [make_conversation(alice, f"Chat {i}", age_minutes=i) for i in range(7)]
    # Same updated_at for two of them: the id breaks the tie.
    Conversation.objects.filter(pk=made[4].pk).update(updated_at=made[3].updated_at)
    Conversation.objects.filter(pk__in=[made[5].pk, made[6].pk]).update(pinned=True)
    expected = [
        c.pk
        for c in Conversation.objects.filter(owner=alice).order_by("-pinned", "-updated_at", "-id")
    ]

    seen, cursor, pages = [], None, 0
    while True:
        page = conversations.sidebar_page(alice, cursor, limit=2)
        seen += [c.pk for c in page]
        pages += 1
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == expected and pages == 4

    client.force_login(alice)
    html = client.get("/").content.decode()
    assert len(sidebar_ids(html)) == 7 and "Older conversations" not in html


def test_sidebar_page_is_a_fixed_number_of_queries(alice, django_assert_max_num_queries):
    for i in range(60):
        make_conversation(alice, f"Chat {i}", age_minutes=i)
    with django_assert_max_num_queries(1):
        page = conversations.sidebar_page(alice)
        assert len(page) == conversations.SIDEBAR_PAGE_SIZE and page.next_cursor
    with django_assert_max_num_queries(1):
        rest = conversations.sidebar_page(alice, page.next_cursor)
    assert len(rest) == 10 and rest.next_cursor is None


def test_older_link_leads_to_the_next_page(client, alice):
    for i in range(conversations.SIDEBAR_PAGE_SIZE + 3):
        make_conversation(alice, f"Chat {i}", age_minutes=i)
    client.force_login(alice)
    first = client.get("/").content.decode()
    assert len(sidebar_ids(first)) == conversations.SIDEBAR_PAGE_SIZE
    cursor = conversations.sidebar_page(alice).next_cursor
    assert f'href="?older={cursor}">Older conversations</a>' in first
    second = client.get("/", {"older": cursor}).content.decode()
    assert len(sidebar_ids(second)) == 3 and "Newest conversations" in second
    # A tampered cursor is the first page, not an error.
    assert client.get("/", {"older": "x-1-'"}).status_code == 200


# Rename, pin, archive -----------------------------------------------------------------


def test_rename_sets_a_user_title_that_keeps_its_place(client, alice):
    conversation = make_conversation(alice, "Provisional words", age_minutes=5)
    before = conversation.updated_at
    client.force_login(alice)

    response = client.post(
        reverse("conversations:rename", args=[conversation.pk]), {"title": "  Trip\nplans  "}
    )

    assert response.status_code == 302
    assert response.url == reverse("chat:conversation", args=[conversation.pk])
    conversation.refresh_from_db()
    assert conversation.title == "Trip plans"
    assert conversation.title_status == TitleStatus.USER
    assert conversation.updated_at == before
    page = client.get(response.url).content.decode()
    assert '<a class="conversation-link"' in page and ">Trip plans</a>" in page


@pytest.mark.parametrize("title", ["", "   ", "x" * 201])
def test_rename_refuses_an_empty_or_too_long_title(client, alice, title):
    conversation = make_conversation(alice, "Keep me")
    client.force_login(alice)
    response = client.post(
        reverse("conversations:rename", args=[conversation.pk]), {"title": title}
    )
    assert response.status_code == 400
    assert 'role="alert"' in response.content.decode()
    conversation.refresh_from_db()
    assert conversation.title == "Keep me"


def test_title_is_escaped_everywhere(client, alice):
    conversation = make_conversation(alice, "<script>alert(1)</script>")
    client.force_login(alice)
    for url in (
        reverse("chat:conversation", args=[conversation.pk]),
        reverse("conversations:delete", args=[conversation.pk]),
        reverse("conversations:share", args=[conversation.pk]),
    ):
        page = client.get(url).content.decode()
        assert "<script>alert(1)" not in page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_pin_moves_to_the_top_and_unpin_puts_it_back(client, alice):
    old = make_conversation(alice, "Old", age_minutes=30)
    new = make_conversation(alice, "New", age_minutes=1)
    client.force_login(alice)

    client.post(reverse("conversations:pin", args=[old.pk]), {"pinned": "1"})
    assert sidebar_ids(client.get("/").content.decode()) == [old.pk, new.pk]
    page = client.get(reverse("chat:conversation", args=[old.pk])).content.decode()
    assert ">Unpin</button>" in page

    client.post(reverse("conversations:pin", args=[old.pk]), {"pinned": "0"})
    assert sidebar_ids(client.get("/").content.decode()) == [new.pk, old.pk]


def test_archive_hides_from_the_sidebar_and_unarchive_brings_back(client, alice):
    conversation = make_conversation(alice, "Done with this")
    client.force_login(alice)

    client.post(reverse("conversations:archive", args=[conversation.pk]), {"archived": "1"})
    assert sidebar_ids(client.get("/").content.decode()) == []
    page = client.get(reverse("chat:conversation", args=[conversation.pk])).content.decode()
    assert ">Unarchive</button>" in page and "Archived" in page

    client.post(reverse("conversations:archive", args=[conversation.pk]), {"archived": "0"})
    assert sidebar_ids(client.get("/").content.decode()) == [conversation.pk]


@pytest.mark.parametrize(
    "name,data",
    [
        ("conversations:rename", {"title": "Mine now"}),
        ("conversations:pin", {"pinned": "1"}),
        ("conversations:archive", {"archived": "1"}),
        ("conversations:delete", {}),
        ("conversations:share", {}),
    ],
)
def test_another_persons_conversation_is_a_404(client, alice, bob, name, data):
    conversation = make_conversation(alice, "Alice's")
    client.force_login(bob)
    assert client.post(reverse(name, args=[conversation.pk]), data).status_code == 404
    assert client.get(reverse("conversations:delete", args=[conversation.pk])).status_code == 404
    conversation.refresh_from_db()
    assert (conversation.title, conversation.pinned, conversation.archived) == (
        "Alice's",
        False,
        False,
    )
    assert not SharedLink.objects.exists()


@pytest.mark.parametrize("name", ["conversations:rename", "conversations:pin"])
def test_changes_need_post(client, alice, name):
    conversation = make_conversation(alice, "A")
    client.force_login(alice)
    assert client.get(reverse(name, args=[conversation.pk])).status_code == 405


def test_changes_need_the_csrf_token(alice):
    conversation = make_conversation(alice, "A")
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    for name in ("conversations:pin", "conversations:delete", "conversations:rename"):
        assert client.post(reverse(name, args=[conversation.pk]), {"pinned": "1"}).status_code == (
            403
        )
    assert Conversation.objects.filter(pk=conversation.pk, pinned=False).exists()


def test_actions_menu_has_no_inline_script_or_style(client, alice):
    conversation = make_conversation(alice, "A")
    client.force_login(alice)
    page = client.get(reverse("chat:conversation", args=[conversation.pk])).content.decode()
    start = page.index('<details class="conversation-actions">')
    menu = page[start : page.index("</details>", start)]
    assert "style=" not in menu and "onclick" not in menu and "<script" not in menu
    for label in ("Rename", "Pin", "Archive", "Share…", "Delete…", "Markdown", "JSON"):
        assert label in menu


# Delete -------------------------------------------------------------------------------


def test_delete_asks_first_then_deletes_everything(client, alice):
    conversation = make_conversation(alice, "Bye “now”")
    other = make_conversation(alice, "Stays")
    SharedLink.objects.create(conversation=conversation, token="t" * 43)
    client.force_login(alice)
    url = reverse("conversations:delete", args=[conversation.pk])

    confirm = client.get(url).content.decode()
    assert "Delete “Bye “now””?" in confirm
    assert '<button type="submit" class="danger">Delete</button>' in confirm
    assert Conversation.objects.filter(pk=conversation.pk).exists()

    response = client.post(url)
    assert response.status_code == 302 and response.url == reverse("chat:home")
    assert not Conversation.objects.filter(pk=conversation.pk).exists()
    assert not Message.objects.filter(conversation_id=conversation.pk).exists()
    assert not SharedLink.objects.exists()
    assert Message.objects.filter(conversation=other).count() == 2
    assert sidebar_ids(client.get("/").content.decode()) == [other.pk]
    assert client.get(reverse("chat:conversation", args=[conversation.pk])).status_code == 404


def test_delete_stops_answers_and_forgets_their_redis_keys(
    alice, gemma, django_capture_on_commit_callbacks
):
    client = redis_client.shared()
    conversation = make_conversation(alice, "Busy")
    question = conversation.messages.get(role="user")
    done = conversation.messages.get(role="assistant")
    Message.objects.filter(pk=done.pk).update(attempts=2)
    queued = Message.objects.create(
        conversation=conversation, role="assistant", parent=question, model=gemma, status="queued"
    )
    running = Message.objects.create(
        conversation=conversation,
        role="assistant",
        parent=question,
        model=gemma,
        status="running",
        attempts=1,
    )
    for message_id, attempt in [(done.pk, 1), (done.pk, 2), (running.pk, 1)]:
        client.rpush(streams.replay_key(message_id, attempt), "{}")
    stop_flags.request_stop(done.pk, 2)  # a leftover flag of an old attempt

    with django_capture_on_commit_callbacks(execute=True):
        conversations.delete_conversation(alice, conversation.pk, grace_s=0)

    assert not Conversation.objects.filter(pk=conversation.pk).exists()
    assert not Message.objects.filter(pk__in=[done.pk, queued.pk, running.pk]).exists()
    for message_id, attempt in [(done.pk, 1), (done.pk, 2), (running.pk, 1)]:
        assert not client.exists(streams.replay_key(message_id, attempt))
    assert not stop_flags.stop_requested(done.pk, 2)
    # The running answer's worker is told to stop; it drops the attempt once it looks.
    assert stop_flags.stop_requested(running.pk, 1)
    stop_flags.clear(running.pk, 1)
