"""Which model the next claimable answer of a pool wants: the wake-up of every message sent
asks, and goes to an idle worker that has that model loaded."""

from __future__ import annotations

import pytest

from webui.chat.models import Conversation, LanguageModel, Message
from webui.chat.warm_routing import next_model_target

# No test worker consumes this pool: the rows stay as written.
POOL = "gpu"


def _model(name: str, backend: str = "llama_cpp") -> LanguageModel:
    return LanguageModel.objects.create(
        name=name, backend=backend, target=f"/models/{name}.gguf", pool=POOL
    )


def _answer(owner, model, status=Message.Status.QUEUED, after: Message | None = None) -> Message:
    """An answer to a new question, in ``after``'s conversation (a follow-up) or a new one."""
    conversation = (
        after.conversation if after else Conversation.objects.create(owner=owner, model=model)
    )
    question = Message.objects.create(
        conversation=conversation, role=Message.Role.USER, content="hi", parent=after
    )
    return Message.objects.create(
        conversation=conversation,
        role=Message.Role.ASSISTANT,
        model=model,
        status=status,
        parent=question,
    )


@pytest.mark.django_db
def test_one_model_waiting_is_the_target(alice, bob):
    small = _model("small")
    for owner in (alice, bob, alice):
        _answer(owner, small)
    assert next_model_target(POOL) == small.target


@pytest.mark.django_db
def test_with_several_models_waiting_the_fairest_answer_decides(alice, bob):
    small, large = _model("small"), _model("large")
    _answer(alice, large)
    _answer(alice, small)
    _answer(bob, small)
    assert next_model_target(POOL) == large.target  # alice's first, the oldest
    Message.objects.filter(model=large).update(status=Message.Status.DONE)
    assert next_model_target(POOL) == small.target


@pytest.mark.django_db
def test_a_follow_up_waiting_for_the_answer_before_it_is_not_the_target(alice, bob):
    small, large = _model("small"), _model("large")
    running = _answer(alice, small, status=Message.Status.RUNNING)
    _answer(alice, large, after=running)  # cannot run before `running` ends
    assert next_model_target(POOL) is None  # nothing claimable
    _answer(bob, small)
    assert next_model_target(POOL) == small.target
    running.status = Message.Status.DONE
    running.save()
    assert next_model_target(POOL) == large.target  # the follow-up is the oldest now


@pytest.mark.django_db
def test_an_ollama_answer_has_no_file_to_route_by(alice):
    _answer(alice, _model("remote", backend="ollama"))
    assert next_model_target(POOL) is None


@pytest.mark.django_db
def test_a_worker_shutting_down_is_never_the_warm_one(clean_fleet):
    """Idle with the model loaded, but draining: it takes nothing new, so a wake-up must
    not go to it, and another worker must not leave the answer to it."""
    from tests.chat.test_fleet import a_report
    from webui.chat import fleet
    from webui.chat.warm_routing import loaded_elsewhere, warm_worker

    target = "/models/warm.gguf"
    fleet.report(a_report("going@box:1", pools=[POOL], models=[target], draining=True))
    fleet.report(a_report("empty@box:2", pools=[POOL]))
    assert warm_worker(POOL, target) == "empty@box"
    assert not loaded_elsewhere(POOL, target, exclude="empty@box")
    fleet.report(a_report("going@box:1", pools=[POOL], models=[target]))  # running again
    assert warm_worker(POOL, target) == "going@box"
    assert loaded_elsewhere(POOL, target, exclude="empty@box")
