"""Regenerate and edit: new versions beside old ones, each through the same queue."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from webui.chat import selectors, services
from webui.chat.models import Message
from workers.generation import build_request

pytestmark = pytest.mark.django_db


def finish(message: Message, text: str) -> None:
    Message.objects.filter(pk=message.pk).update(status=Message.Status.DONE, content=text)


def shown(conversation) -> list[tuple[str, str, int, int]]:
    conversation.refresh_from_db()
    snapshot = selectors.conversation_snapshot(conversation)
    return [
        (m["role"], m["content"], m["versions"]["index"], len(m["versions"]["ids"]))
        for m in snapshot["messages"]
    ]


def test_regenerate_adds_a_sibling_answer_and_shows_it(alice, gemma):
    conversation, question, first = services.send_message(
        user=alice, conversation_id=None, text="Name a colour.", model_id=gemma.pk
    )
    finish(first, "Blue.")
    second = services.regenerate(user=alice, message_id=first.pk, model_id=gemma.pk)
    assert second.parent_id == question.pk and second.status == Message.Status.QUEUED
    assert shown(conversation) == [("user", "Name a colour.", 1, 1), ("assistant", "", 2, 2)]
    # The old answer stays, one click away.
    services.show_version(user=alice, message_id=first.pk)
    assert shown(conversation) == [("user", "Name a colour.", 1, 1), ("assistant", "Blue.", 1, 2)]


def test_edit_branches_and_the_model_sees_only_the_branch(alice, gemma):
    conversation, q1, a1 = services.send_message(
        user=alice, conversation_id=None, text="My name is Ann.", model_id=gemma.pk
    )
    finish(a1, "Hello Ann.")
    _, q2, a2 = services.send_message(
        user=alice, conversation_id=conversation.pk, text="What is my name?", model_id=gemma.pk
    )
    finish(a2, "Ann.")
    new_answer = services.edit_message(
        user=alice, message_id=q1.pk, text="My name is Bo.", model_id=gemma.pk
    )
    assert shown(conversation) == [("user", "My name is Bo.", 2, 2), ("assistant", "", 1, 1)]
    request = build_request(
        Message.objects.select_related("model", "conversation").get(pk=new_answer.pk)
    )
    assert [(m.role, m.content) for m in request.messages] == [("user", "My name is Bo.")]
    # Back to the first version: its whole continuation comes back.
    services.show_version(user=alice, message_id=q1.pk)
    assert [c for _, c, _, _ in shown(conversation)] == [
        "My name is Ann.",
        "Hello Ann.",
        "What is my name?",
        "Ann.",
    ]
    # A follow-up continues the branch on screen, and its prompt is that branch.
    _, _, a3 = services.send_message(
        user=alice, conversation_id=conversation.pk, text="And again?", model_id=gemma.pk
    )
    request = build_request(Message.objects.select_related("model", "conversation").get(pk=a3.pk))
    assert [m.content for m in request.messages] == [
        "My name is Ann.",
        "Hello Ann.",
        "What is my name?",
        "Ann.",
        "And again?",
    ]


def test_regenerate_and_edit_obey_the_active_limit_and_ownership(alice, bob, gemma, settings):
    settings.CORRAL = {**settings.CORRAL, "MAX_ACTIVE_PER_USER": 1}
    conversation, question, answer = services.send_message(
        user=alice, conversation_id=None, text="hi", model_id=gemma.pk
    )
    with pytest.raises(ValidationError, match="still being written"):
        services.regenerate(user=alice, message_id=answer.pk, model_id=gemma.pk)
    finish(answer, "Hello.")
    services.regenerate(user=alice, message_id=answer.pk, model_id=gemma.pk)
    with pytest.raises(ValidationError, match="limit is 1"):
        services.edit_message(user=alice, message_id=question.pk, text="hey", model_id=gemma.pk)
    for action in (
        lambda: services.regenerate(user=bob, message_id=answer.pk, model_id=gemma.pk),
        lambda: services.edit_message(
            user=bob, message_id=question.pk, text="x", model_id=gemma.pk
        ),
        lambda: services.show_version(user=bob, message_id=answer.pk),
    ):
        with pytest.raises(Message.DoesNotExist):
            action()
    assert conversation.messages.count() == 3
