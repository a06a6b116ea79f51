"""A person in Debian's Chromium manages conversations: rename, search, pin, delete."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from tests.chat.test_search import make as make_with_messages
from tests.e2e.conftest import sign_in
from webui.chat.models import Conversation, Message, TitleStatus

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def make(owner, title: str, texts: list[str], age_minutes: int) -> Conversation:
    conversation = make_with_messages(owner, title, *texts)
    Conversation.objects.filter(pk=conversation.pk).update(
        updated_at=timezone.now() - timedelta(minutes=age_minutes)
    )
    return conversation


def sidebar_order(page) -> list[int]:
    return [
        int(pk)
        for pk in page.locator(".sidebar li[data-conversation-id]").evaluate_all(
            "items => items.map(li => li.dataset.conversationId)"
        )
    ]


def open_actions(page) -> None:
    menu = page.locator("details.conversation-actions")
    if menu.get_attribute("open") is None:
        menu.locator("summary").click()


def test_rename_search_pin_and_delete(page, alice, web_server):
    from playwright.sync_api import expect

    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    zebra = make(
        alice,
        "Zebra facts",
        ["Tell me about zebras.", "Zebras have stripes; the quagga was a kind of zebra."],
        age_minutes=10,
    )
    shopping = make(alice, "Shopping list", ["milk, eggs, bread"], age_minutes=5)
    newest = make(alice, "Newest", ["hello"], age_minutes=1)
    sign_in(page, web_server.url)
    expect(page.locator(".sidebar li[data-conversation-id]")).to_have_count(3)
    assert sidebar_order(page) == [newest.pk, shopping.pk, zebra.pk]

    # Rename: the sidebar shows the new title, and it is the person's own.
    page.goto(f"{web_server.url}/c/{zebra.pk}/")
    open_actions(page)
    page.get_by_label("Title", exact=True).fill("Striped horses")
    page.get_by_role("button", name="Rename", exact=True).click()
    link = page.locator(f'.sidebar li[data-conversation-id="{zebra.pk}"] a.conversation-link')
    expect(link).to_have_text("Striped horses")
    zebra.refresh_from_db()
    assert (zebra.title, zebra.title_status) == ("Striped horses", TitleStatus.USER)

    # Search: a word that is only in a message finds the conversation.
    page.get_by_label("Search", exact=True).fill("quagga")
    page.get_by_label("Search", exact=True).press("Enter")
    page.wait_for_url("**/search/?q=quagga")
    hits = page.locator(".search-hit")
    expect(hits).to_have_count(1)
    expect(hits.locator("mark").first).to_have_text("quagga")
    hits.get_by_role("link", name="Striped horses").click()
    page.wait_for_url(f"**/c/{zebra.pk}/")

    # Pin: the oldest conversation moves to the top, with a pin marker.
    page.goto(f"{web_server.url}/c/{shopping.pk}/")
    open_actions(page)
    page.get_by_role("button", name="Pin", exact=True).click()
    first = page.locator(".sidebar li[data-conversation-id]").first
    expect(first).to_have_attribute("data-conversation-id", str(shopping.pk))
    expect(first.locator(".pin-marker")).to_be_visible()
    assert sidebar_order(page) == [shopping.pk, newest.pk, zebra.pk]
    open_actions(page)
    expect(page.get_by_role("button", name="Unpin", exact=True)).to_be_visible()

    # Delete: asked first, then gone from the sidebar and the database.
    page.goto(f"{web_server.url}/c/{zebra.pk}/")
    open_actions(page)
    page.get_by_role("link", name="Delete…").click()
    expect(page.get_by_role("heading")).to_have_text("Delete “Striped horses”?")
    page.get_by_role("button", name="Delete", exact=True).click()
    page.wait_for_url(f"{web_server.url}/")
    expect(page.locator(".sidebar li[data-conversation-id]")).to_have_count(2)
    assert sidebar_order(page) == [shopping.pk, newest.pk]
    assert not Conversation.objects.filter(pk=zebra.pk).exists()
    assert not Message.objects.filter(conversation_id=zebra.pk).exists()
    assert errors == []


def test_shared_page_renders_markdown_safely_for_anyone(page, alice, web_server):
    from playwright.sync_api import expect

    from webui.chat.models import SharedLink

    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    hostile = (
        '**bold** <img src=x onerror="window.__owned=1"> <script>window.__owned=2</script>'
        '<span class="meta">fake</span>\n\n```python\nprint("hi")\n```'
    )
    conversation = make(alice, "Shared *title*", ["Question?", hostile], age_minutes=1)
    link = SharedLink.objects.create(
        conversation=conversation, token="s" * 43, leaf=conversation.current_leaf
    )

    page.goto(f"{web_server.url}/s/{link.token}/")  # not signed in

    expect(page.get_by_role("heading", level=1)).to_have_text("Shared *title*")
    answer = page.locator('article[data-role="assistant"] .content')
    expect(answer.locator("strong")).to_have_text("bold")
    assert answer.locator("script").count() == 0
    assert answer.locator("img[onerror]").count() == 0
    assert answer.locator(".meta").count() == 0  # model output cannot take our classes
    assert "print" in answer.locator("pre code").inner_text()
    assert page.locator('article[data-role="user"] .content').inner_text() == "Question?"
    assert page.evaluate("() => window.__owned") is None
    assert errors == []
