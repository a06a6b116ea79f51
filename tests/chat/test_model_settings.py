"""Per-model settings in the app: checked as the backends check them, saved whole or not at
all, and used by answers (a model's system prompt for conversations without their own)."""

from __future__ import annotations

import pytest

from webui.chat import services
from webui.chat.models import LanguageModel
from workers.generation import build_request

pytestmark = pytest.mark.django_db

GOOD = {
    "name": "gemma small",
    "pool": "gpu",
    "n_ctx": "1024",
    "n_gpu_layers": "-1",
    "batch_size": "4",
    "chat_format": "gemma",
    "temperature": "0.3",
    "top_p": "",
    "top_k": "20",
    "max_tokens": "64",
    "repeat_penalty": "",
    "system_prompt": "Answer in one sentence.",
}


def test_an_admin_changes_a_models_settings(admin_client, gemma):
    done = admin_client.post(f"/manage/models/{gemma.pk}/", GOOD, follow=True)
    assert "Saved the settings of gemma small." in done.content.decode()
    gemma.refresh_from_db()
    assert (gemma.name, gemma.pool) == ("gemma small", "gpu")
    assert gemma.settings == {
        "chat_format": "gemma",
        "n_ctx": 1024,
        "n_gpu_layers": -1,
        "batch_size": 4,
    }
    # Empty fields fall back to the defaults: the fixture's seed stays, nothing else.
    assert gemma.parameters == {"temperature": 0.3, "top_k": 20, "max_tokens": 64, "seed": 7}
    page = admin_client.get(f"/manage/models/{gemma.pk}/").content.decode()
    assert 'name="n_ctx" inputmode="numeric" value="1024"' in page
    assert "Answer in one sentence.</textarea>" in page


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("n_ctx", "lots", "n_ctx must be a whole number"),
        ("n_ctx", "16", "n_ctx: Input should be greater than or equal to 64"),
        ("batch_size", "0", "batch_size: Input should be greater than or equal to 1"),
        ("temperature", "9", "temperature: Input should be less than or equal to 2"),
        ("chat_format", "{{ evil }}", "Chat format must be one of"),
        ("pool", "tpu", "Pool must be one of"),
        ("name", "  ", "Give the model a name."),
    ],
)
def test_a_refused_value_says_why_and_saves_nothing(admin_client, gemma, field, value, says):
    before = LanguageModel.objects.values().get(pk=gemma.pk)
    done = admin_client.post(f"/manage/models/{gemma.pk}/", {**GOOD, field: value}, follow=True)
    assert says in done.content.decode()
    assert LanguageModel.objects.values().get(pk=gemma.pk) == before


def test_a_models_system_prompt_is_used_where_the_conversation_sets_none(alice, gemma):
    gemma.system_prompt = "You are a lighthouse keeper."
    gemma.save()
    conversation, _, answer = services.send_message(
        user=alice, conversation_id=None, text="hi", model_id=gemma.pk
    )
    messages = build_request(answer).messages
    assert (messages[0].role, messages[0].content) == ("system", "You are a lighthouse keeper.")
    conversation.system_prompt = "You are a pirate."
    conversation.save()
    answer.refresh_from_db()
    assert build_request(answer).messages[0].content == "You are a pirate."
