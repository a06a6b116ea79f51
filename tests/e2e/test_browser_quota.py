"""A person over their message rate, in Debian's Chromium: the page says which limit and
when it resets, and the typed text stays in the box."""

from __future__ import annotations

import re

import pytest
import redis

from tests.e2e.conftest import sign_in
from webui import config

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

POOL = "gpu"  # no worker consumes it here: answers stay queued, nothing is generated


@pytest.fixture
def idle_model(db):
    from webui.chat.models import LanguageModel

    yield LanguageModel.objects.create(
        name="idle-gpu", backend="llama_cpp", target="/nowhere.gguf", pool=POOL
    )
    redis.Redis.from_url(config.redis_url()).delete(POOL)  # the wake-ups nobody took


def test_the_message_rate_says_which_limit_and_when_and_keeps_the_text(
    page,
    alice,
    idle_model,
    web_server,
):
    from webui.accounts.models import Quota
    from webui.chat.models import Message

    Quota.objects.create(user=alice, messages_per_minute=1)
    sign_in(page, web_server.url)
    page.get_by_label("Message").fill("the first question")
    page.get_by_role("button", name="Send").click()
    page.wait_for_url(re.compile(r".*/c/\d+/$"))
    page.wait_for_function("() => document.getElementById('chat').dataset.connected === 'true'")

    page.get_by_label("Message").fill("a second question, too soon")
    page.get_by_role("button", name="Send").click()

    alert = page.get_by_role("alert")
    alert.wait_for()
    text = alert.inner_text()
    assert "You have reached your limit of 1 message per minute" in text
    wait = re.search(r"you can send again in (\d+) s", text)
    assert wait and 1 <= int(wait.group(1)) <= 60, text
    assert "Your message is still in the box." in text
    assert page.get_by_label("Message").input_value() == "a second question, too soon"
    assert not Message.objects.filter(content="a second question, too soon").exists()
    assert page.locator('[data-role="user"]').count() == 1
