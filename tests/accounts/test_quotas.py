"""Quotas: the strictest limit wins, each limit refuses with what was hit and when it
resets, a send-then-stop loop is rate-limited, and a refused send saves nothing.
In-process, against the test database; models live in the `gpu` pool, which no test
worker consumes, so nothing is generated."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.urls import reverse
from django.utils import timezone

from tests.chat.conftest import UNSERVED_POOL
from webui.accounts import quotas
from webui.accounts.models import Quota
from webui.chat import services
from webui.chat.models import AnswerRecord, Conversation, LanguageModel, Message

pytestmark = pytest.mark.django_db


@pytest.fixture
def model(db) -> LanguageModel:
    """A model nobody runs here: its answers stay queued."""
    return LanguageModel.objects.create(
        name="idle", backend="llama_cpp", target="/nowhere.gguf", pool=UNSERVED_POOL
    )


@pytest.fixture
def site(settings):
    """Known site defaults, whatever the environment says."""

    def set_defaults(tokens: int = 0, rate: int = 20, active: int = 2) -> None:
        settings.CORRAL = {
            **settings.CORRAL,
            "TOKENS_PER_DAY": tokens,
            "MESSAGES_PER_MINUTE": rate,
            "MAX_ACTIVE_PER_USER": active,
        }

    set_defaults()
    return set_defaults


def send(user, model, text="hello", conversation_id=None) -> Message:
    return services.send_message(
        user=user, conversation_id=conversation_id, text=text, model_id=model.pk
    )[2]


def update_answer(answer_id: int, **fields) -> None:
    """Change a stored answer as time or a worker would, its usage record with it."""
    Message.objects.filter(pk=answer_id).update(**fields)
    recorded = {k: v for k, v in fields.items() if k not in ("status", "content")}
    if recorded:
        AnswerRecord.objects.filter(answer_id=answer_id).update(**recorded)


def finish(answer: Message, **fields) -> None:
    update_answer(answer.pk, status=Message.Status.DONE, **fields)


def group_with(user, name: str, **limits) -> Group:
    group = Group.objects.create(name=name)
    group.user_set.add(user)
    Quota.objects.create(group=group, **limits)
    return group


def refusal(user, model, text="one more") -> ValidationError:
    """The refusal of a send, after checking that it saved nothing."""
    messages, conversations = Message.objects.count(), Conversation.objects.count()
    with pytest.raises(ValidationError) as refused:
        send(user, model, text)
    assert Message.objects.count() == messages
    assert Conversation.objects.count() == conversations
    assert not Message.objects.filter(content=text).exists()
    return refused.value


# Effective limits ---------------------------------------------------------------------


def test_the_strictest_limit_wins_across_person_groups_and_site(alice, bob, site):
    site(tokens=50_000, rate=20, active=2)
    Quota.objects.create(user=alice, tokens_per_day=1_000, concurrent_answers=5)
    group_with(alice, "interns", messages_per_minute=3, tokens_per_day=2_000)
    group_with(alice, "night shift", messages_per_minute=4, concurrent_answers=1)
    other = Group.objects.create(name="not alice's")
    Quota.objects.create(group=other, messages_per_minute=1, tokens_per_day=1)

    limits = quotas.effective_limits(alice)

    assert limits.tokens_per_day == quotas.Limit(1_000, "user")
    assert limits.messages_per_minute == quotas.Limit(3, "group", "interns")
    assert limits.concurrent_answers == quotas.Limit(1, "group", "night shift")
    assert limits.messages_per_minute.source == "group “interns”"

    # A stricter site default beats them all; bob, in no group, gets the defaults only.
    site(tokens=500, rate=20, active=2)
    assert quotas.effective_limits(alice).tokens_per_day == quotas.Limit(500, "default")
    assert quotas.effective_limits(bob) == quotas.Limits(
        tokens_per_day=quotas.Limit(500, "default"),
        messages_per_minute=quotas.Limit(20, "default"),
        concurrent_answers=quotas.Limit(2, "default"),
    )


def test_blank_means_no_limit_at_that_level_and_a_zero_default_means_unlimited(alice, site):
    site(tokens=0, rate=0, active=0)
    Quota.objects.create(user=alice, messages_per_minute=None, tokens_per_day=None)
    limits = quotas.effective_limits(alice)
    assert all(limit.unlimited and limit.source == "" for _, limit in limits.items())


def test_on_a_tie_the_personal_quota_is_named(alice, site):
    site(rate=5)
    Quota.objects.create(user=alice, messages_per_minute=5)
    group_with(alice, "team", messages_per_minute=5)
    assert quotas.effective_limits(alice).messages_per_minute == quotas.Limit(5, "user")


# Each limit, hit ----------------------------------------------------------------------


def test_the_message_rate_says_which_limit_and_when_it_resets(alice, bob, model, site):
    site(active=10)
    Quota.objects.create(user=alice, messages_per_minute=3)
    answers = [send(alice, model, f"q{i}") for i in range(2)]
    finish(answers[0])  # finished answers count too: the rate is about starting them
    answers.append(send(alice, model, "q2"))
    now = timezone.now()
    for answer, age in zip(answers, (18, 10, 5), strict=True):
        update_answer(answer.pk, created_at=now - timedelta(seconds=age))
    finish(answers[1])

    refused = refusal(alice, model)

    assert refused.code == "rate"
    assert refused.messages == [
        "You have reached your limit of 3 messages per minute; you can send again in 42 s. "
        "Your message is still in the box."
    ]
    send(bob, model)  # bob's rate is his own

    # Once the oldest answer is more than a minute old, there is room for one more.
    update_answer(answers[0].pk, created_at=now - timedelta(seconds=61))
    assert send(alice, model, "now it fits").status == Message.Status.QUEUED
    assert refusal(alice, model).code == "rate"


def test_a_send_then_stop_loop_is_limited_by_the_message_rate(alice, model, site):
    site(rate=5, active=1)
    conversation = Conversation.objects.create(owner=alice, model=model)
    for i in range(5):
        answer = send(alice, model, f"spam {i}", conversation.pk)
        services.stop_answer(user=alice, message_id=answer.pk)  # frees the concurrent slot
        assert Message.objects.get(pk=answer.pk).status == Message.Status.STOPPED

    refused = refusal(alice, model)
    assert refused.code == "rate"
    assert "limit of 5 messages per minute" in refused.messages[0]
    assert Message.objects.filter(role=Message.Role.ASSISTANT).count() == 5


def test_tokens_per_day_say_how_many_were_used_and_when_the_day_resets(alice, model, site):
    Quota.objects.create(user=alice, tokens_per_day=10_000)
    now = timezone.now()
    yesterday = send(alice, model, "yesterday")
    finish(yesterday, prompt_tokens=50_000, completion_tokens=50_000)
    update_answer(yesterday.pk, created_at=quotas.start_of_day(now) - timedelta(minutes=1))
    finish(send(alice, model, "no counts"))  # null token counts count as 0
    partial = send(alice, model, "prompt only")
    finish(partial, prompt_tokens=4_000)
    big = send(alice, model, "big")
    finish(big, prompt_tokens=1_000, completion_tokens=4_999)
    assert quotas.current_usage(alice).tokens_today == 9_999
    finish(send(alice, model, "still under"), completion_tokens=1)  # 9,999 < 10,000: admitted

    before = timezone.now()
    refused = refusal(alice, model)
    after = timezone.now()

    assert refused.code == "tokens"
    tomorrow = quotas.start_of_day(before) + timedelta(days=1)
    waits = {quotas.wait_text(tomorrow - before), quotas.wait_text(tomorrow - after)}
    assert refused.messages[0] in {
        "You have used 10,000 of your 10,000 tokens for today; the limit resets at 00:00 UTC "
        f"(in {wait}). Your message is still in the box."
        for wait in waits
    }


def test_concurrent_answers_name_the_limit_and_say_to_wait_or_stop(alice, model, site):
    group_with(alice, "small", concurrent_answers=1)
    first = send(alice, model, "first")

    refused = refusal(alice, model)

    assert refused.code == "concurrent"
    assert "the limit is 1" in refused.messages[0]
    assert "Wait for one to finish or stop one" in refused.messages[0]
    assert "your message is still in the box" in refused.messages[0]
    update_answer(first.pk, status=Message.Status.RUNNING)
    assert refusal(alice, model).code == "concurrent"  # running counts as well
    finish(first)
    assert send(alice, model, "second").status == Message.Status.QUEUED


def test_a_zero_limit_refuses_at_once_and_says_to_ask_an_admin(alice, model, site):
    Quota.objects.create(user=alice, messages_per_minute=0)
    refused = refusal(alice, model)
    assert refused.code == "rate"
    assert refused.messages[0].startswith(
        "Your limit is 0 messages per minute (personal quota), so you cannot send messages"
    )


def test_regenerate_and_edit_count_toward_the_message_rate(alice, model, site):
    Quota.objects.create(user=alice, messages_per_minute=2)
    conversation, question, answer = services.send_message(
        user=alice, conversation_id=None, text="hi", model_id=model.pk
    )
    finish(answer, content="Hello.")
    services.regenerate(user=alice, message_id=answer.pk, model_id=model.pk)
    with pytest.raises(ValidationError) as refused:
        services.edit_message(user=alice, message_id=question.pk, text="hey", model_id=model.pk)
    assert refused.value.code == "rate"
    assert conversation.messages.count() == 3


def test_admins_are_not_exempt(django_user_model, model, site):
    admin = django_user_model.objects.create_superuser("root", password="x" * 20)
    Quota.objects.create(user=admin, concurrent_answers=1)
    send(admin, model)
    assert refusal(admin, model).code == "concurrent"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.2, "1 s"),
        (41.1, "42 s"),
        (59.5, "60 s"),
        (61, "2 min"),
        (3599.5, "1 h"),
        (3600, "1 h"),
        (18_720, "5 h 12 min"),
    ],
)
def test_waits_are_rounded_up_for_people(seconds, text):
    assert quotas.wait_text(timedelta(seconds=seconds)) == text


# Editing quotas -----------------------------------------------------------------------


@pytest.fixture
def admin_client(client, django_user_model):
    admin = django_user_model.objects.create_user("boss", password="x" * 20, is_staff=True)
    client.force_login(admin)
    return client


def test_an_admin_sets_and_clears_a_persons_quota(admin_client, alice, site):
    group = group_with(alice, "interns", messages_per_minute=3)
    url = reverse("usage:person_quota", args=[alice.pk])

    page = admin_client.get(url).content.decode()
    assert "Quota of alice" in page
    assert "group “interns”" in page  # the effective rate and where it comes from
    assert reverse("usage:group_quota", args=[group.pk]) in page

    response = admin_client.post(
        url, {"tokens_per_day": "5000", "messages_per_minute": "", "concurrent_answers": "1"}
    )
    assert response.status_code == 302 and response["Location"] == url
    quota = Quota.objects.get(user=alice)
    assert (quota.tokens_per_day, quota.messages_per_minute, quota.concurrent_answers) == (
        5000,
        None,
        1,
    )
    page = admin_client.get(url).content.decode()
    assert "Quota saved." in page and 'value="5000"' in page
    assert quotas.effective_limits(alice).concurrent_answers == quotas.Limit(1, "user")

    # All blank: no limit at this level, and no row left behind.
    blank = {"tokens_per_day": "", "messages_per_minute": "", "concurrent_answers": ""}
    admin_client.post(url, blank)
    assert not Quota.objects.filter(user=alice).exists()


def test_a_bad_quota_value_is_refused_and_nothing_changes(admin_client, alice):
    url = reverse("usage:person_quota", args=[alice.pk])
    response = admin_client.post(url, {"tokens_per_day": "-1", "messages_per_minute": "many"})
    assert response.status_code == 400
    assert not Quota.objects.exists()


def test_an_admin_sets_a_groups_quota(admin_client, alice):
    group = Group.objects.create(name="interns")
    group.user_set.add(alice)
    url = reverse("usage:group_quota", args=[group.pk])
    assert "Quota of group interns" in admin_client.get(url).content.decode()
    admin_client.post(url, {"messages_per_minute": "2"})
    assert Quota.objects.get(group=group).messages_per_minute == 2
    assert quotas.effective_limits(alice).messages_per_minute == quotas.Limit(2, "group", "interns")
    assert admin_client.get(reverse("usage:group_quota", args=[group.pk + 99])).status_code == 404


def test_set_quota_needs_exactly_one_owner(alice):
    group = Group.objects.create(name="g")
    values = {"tokens_per_day": 1, "messages_per_minute": None, "concurrent_answers": None}
    for owner in ({}, {"user": alice, "group": group}):
        with pytest.raises(ValueError, match="one user or one group"):
            quotas.set_quota(**owner, **values)


def test_the_limits_are_counted_in_two_queries(alice, model, site, django_assert_num_queries):
    send(alice, model)
    with django_assert_num_queries(2):  # answers in progress; the usage ledger
        usage = quotas.current_usage(alice)
    assert (usage.active, usage.last_minute) == (1, 1)
    assert re.match(r"\d{4}-\d\d-\d\d 00:00:00\+00:00", str(quotas.start_of_day(usage.now)))


def test_deleting_conversations_frees_no_quota_and_keeps_usage(alice, model, site):
    from webui.chat import conversations

    Quota.objects.create(user=alice, messages_per_minute=2, tokens_per_day=1_000)
    first, second = send(alice, model, "one"), send(alice, model, "two")
    finish(first, prompt_tokens=400, completion_tokens=600)
    for answer in (first, second):
        conversations.delete_conversation(alice, answer.conversation_id, grace_s=0)
    assert not Message.objects.filter(conversation__owner=alice).exists()
    assert refusal(alice, model).code == "tokens"  # 1,000 tokens used today, still
    assert quotas.current_usage(alice).last_minute == 2
    assert AnswerRecord.objects.filter(owner=alice, answer=None).count() == 2


def test_imported_answers_count_against_nothing(alice, model, site):
    import json

    from webui.chat import exports

    Quota.objects.create(user=alice, messages_per_minute=1)
    messages = [{"id": 1, "role": "user", "content": "q"}]
    messages += [
        {"id": i, "parent_id": i - 1, "role": "assistant" if i % 2 == 0 else "user", "content": "x"}
        for i in range(2, 40)
    ]
    exports.import_conversation(alice, json.dumps({"messages": messages}).encode())
    send(alice, model, "a new question")  # the rate of 1 per minute is not used up
