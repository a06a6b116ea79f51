"""Team flows in Debian's Chromium: an invited person signs up in approval mode, waits,
is approved and chats; a deactivated person's open tab stops and says so."""

from __future__ import annotations

import pytest

from tests.conftest import PASSWORD
from tests.e2e.conftest import sign_in
from tests.ollama_server import OllamaTestServer
from webui.accounts import people
from webui.accounts.models import SignupMode, SiteSettings
from webui.chat import services
from webui.chat.models import LanguageModel, Message

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

STRONG = "a-long-unusual-passphrase-42"
CONNECTED = "() => document.getElementById('chat').dataset.connected === 'true'"


def test_invite_signup_in_approval_mode_then_approval_then_chat(
    page,
    django_user_model,
    worker,
    web_server,
):
    django_user_model.objects.create_user(
        "root", password=PASSWORD, is_staff=True, is_superuser=True
    )
    SiteSettings.objects.update_or_create(pk=1, defaults={"signup_mode": SignupMode.APPROVAL})
    with OllamaTestServer(models={"helper:latest": "Glad to help."}) as server:
        LanguageModel.objects.create(
            name="helper", backend="ollama", target="helper:latest", settings={"host": server.url}
        )
        # The admin makes an invite link in the app.
        page.goto(f"{web_server.url}/login/")
        page.get_by_label("Username").fill("root")
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        page.goto(f"{web_server.url}/manage/invites/")
        page.get_by_role("button", name="Create invite link").click()
        link = page.get_by_label("Invite link").input_value()

        # The newcomer, in another browser profile, signs up and waits.
        newcomer = page.context.browser.new_context().new_page()
        newcomer.goto(link)
        newcomer.get_by_label("Username").fill("dora")
        newcomer.get_by_label("Password", exact=True).fill(STRONG)
        newcomer.get_by_label("Password again").fill(STRONG)
        newcomer.get_by_role("button", name="Create account").click()
        newcomer.get_by_role("heading", name="Waiting for approval").wait_for()
        newcomer.goto(f"{web_server.url}/")
        assert newcomer.get_by_role("heading", name="Waiting for approval").is_visible()

        # The admin approves on the People page.
        page.goto(f"{web_server.url}/manage/people/")
        row = page.locator('tr[data-username="dora"]')
        assert "waiting for approval" in row.inner_text()
        row.get_by_role("button", name="Approve").click()
        page.locator('tr[data-username="dora"]').get_by_text("active").wait_for()

        # Now the newcomer chats.
        newcomer.get_by_role("link", name="Try again").click()
        newcomer.get_by_label("Message").fill("Hello, I am new here.")
        newcomer.get_by_role("button", name="Send").click()
        newcomer.wait_for_function(
            """() => { const el = [...document.querySelectorAll('[data-role="assistant"]')].pop();
                       return el && el.dataset.status === 'done'; }""",
            timeout=30_000,
        )
        answer = Message.objects.get(role="assistant", conversation__owner__username="dora")
        assert answer.status == Message.Status.DONE
        newcomer.context.close()


def test_a_deactivated_persons_open_tab_stops_and_says_signed_out(
    page,
    alice,
    django_user_model,
    gemma,
    web_server,
):
    admin = django_user_model.objects.create_user("root", password=PASSWORD, is_staff=True)
    gemma.pool = "gpu"  # nothing needs to run
    gemma.save()
    conversation, _, _ = services.send_message(
        user=alice, conversation_id=None, text="hello", model_id=gemma.pk
    )
    sign_in(page, web_server.url)
    page.goto(f"{web_server.url}/c/{conversation.pk}/")
    page.wait_for_function(CONNECTED)

    people.deactivate(admin, alice)

    page.wait_for_function(
        "() => document.getElementById('chat').dataset.signedOut === 'true'", timeout=10_000
    )
    assert "deactivated" in page.locator("#connection").inner_text()
    page.wait_for_timeout(2500)  # longer than the first reconnect delay
    assert page.evaluate("document.getElementById('chat').dataset.connected") == "false"
    assert page.get_by_role("button", name="Send").is_disabled()
    # A reload lands on the sign-in page: the session is gone.
    page.reload()
    assert "/login/" in page.url
