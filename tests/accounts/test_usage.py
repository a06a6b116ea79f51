"""Usage figures from stored answers: per model and day, per person, only your own at
/usage/, everyone's for admins (sortable, CSV with formula-looking cells neutralized)."""

from __future__ import annotations

import csv
import io
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.urls import reverse
from django.utils import timezone

from webui.accounts import usage
from webui.accounts.models import Profile
from webui.accounts.quotas import start_of_day
from webui.chat import answer_records
from webui.chat.models import AnswerRecord, Conversation, LanguageModel, Message

pytestmark = pytest.mark.django_db


def model_named(name: str) -> LanguageModel:
    return LanguageModel.objects.get_or_create(
        name=name, defaults={"backend": "llama_cpp", "target": "/nowhere.gguf", "pool": "gpu"}
    )[0]


def answer(
    user,
    model: LanguageModel | None,
    created_at,
    prompt: int | None = None,
    completion: int | None = None,
    seconds: float | None = None,
    status: str = Message.Status.DONE,
) -> Message:
    """A stored answer as a worker leaves it, asked for at ``created_at``."""
    conversation = Conversation.objects.create(owner=user, model=model)
    row = Message.objects.create(
        conversation=conversation,
        role=Message.Role.ASSISTANT,
        model=model,
        status=status,
        prompt_tokens=prompt,
        completion_tokens=completion,
    )
    started = created_at + timedelta(seconds=1) if seconds is not None else None
    times = {
        "created_at": created_at,
        "started_at": started,
        "finished_at": started + timedelta(seconds=seconds) if started else None,
    }
    Message.objects.filter(pk=row.pk).update(**times)
    answer_records.record_admitted(Message.objects.get(pk=row.pk), conversation)
    AnswerRecord.objects.filter(answer=row).update(
        **times, prompt_tokens=prompt, completion_tokens=completion
    )
    # The question is no answer: it must never be counted.
    Message.objects.create(conversation=conversation, role=Message.Role.USER, content="q")
    return row


@pytest.fixture
def rows(alice, bob):
    """Alice's and Bob's answers, today and before, around noon UTC of each day."""
    today = start_of_day(timezone.now())
    noon = min(today + timedelta(hours=12), timezone.now() - timedelta(seconds=1))
    a, b = model_named("alpha"), model_named("beta")
    answer(alice, a, noon, 100, 20, 2.5)
    answer(alice, a, noon, 200, 30, 1.5)
    answer(alice, a, noon, None, None, None, Message.Status.STOPPED)  # stopped before start
    answer(alice, b, noon, 7_000, 777, 10)
    answer(alice, a, noon - timedelta(days=1), 50, 5, 3)
    answer(alice, a, noon - timedelta(days=40), 9, 9, 9)  # outside the last 30 days
    answer(alice, None, noon, 1, 2, 1)  # its model was deleted since
    answer(bob, a, noon, 11, 22, 4)
    return {"today": today.date(), "yesterday": (today - timedelta(days=1)).date()}


def figures(row: dict) -> tuple:
    return (row["answers"], row["prompt"], row["completion"], row["tokens"], row["time"])


def test_figures_by_model_and_day_match_the_rows(alice, rows):
    period = usage.period_from("30")

    days = usage.by_model_and_day(period, alice)

    assert [(r["day"], r["model__name"], *figures(r)) for r in days] == [
        (rows["today"], "alpha", 3, 300, 50, 350, timedelta(seconds=4)),
        (rows["today"], "beta", 1, 7_000, 777, 7_777, timedelta(seconds=10)),
        (rows["today"], None, 1, 1, 2, 3, timedelta(seconds=1)),
        (rows["yesterday"], "alpha", 1, 50, 5, 55, timedelta(seconds=3)),
    ]
    assert figures(usage.totals(period, alice)) == (6, 7_351, 834, 8_185, timedelta(seconds=18))
    assert [(r["model__name"], r["tokens"]) for r in usage.by_model(period, alice)] == [
        ("beta", 7_777),
        ("alpha", 405),
        (None, 3),
    ]
    # Longer and shorter periods.
    assert usage.totals(usage.period_from("90"), alice)["answers"] == 7
    assert usage.totals(usage.period_from("today"), alice)["answers"] == 5


def test_periods_are_whole_utc_days_and_unknown_ones_fall_back(rows):
    now = timezone.now()
    week = usage.period_from("7", now)
    assert week.start == start_of_day(now) - timedelta(days=6) and week.end == now
    assert usage.period_from("1000").key == usage.DEFAULT_PERIOD == "30"
    assert usage.period_from(None).label == "Last 30 days"


def test_my_usage_page_shows_my_figures_and_nobody_elses(client, alice, bob, rows):
    client.force_login(alice)
    page = client.get(reverse("usage:mine")).content.decode()
    assert "7,777" in page and "beta" in page and "(deleted model)" in page

    client.force_login(bob)
    page = client.get(reverse("usage:mine"), {"period": "7"}).content.decode()
    assert 'aria-current="page">Last 7 days' in page
    assert "7,777" not in page and "beta" not in page and "(deleted model)" not in page
    assert 'data-figure="tokens">33<' in page  # bob's own 11 + 22


def test_my_usage_page_shows_my_limits(client, alice, settings):
    settings.CORRAL = {**settings.CORRAL, "TOKENS_PER_DAY": 123_456}
    client.force_login(alice)
    page = client.get(reverse("usage:mine")).content.decode()
    assert "123,456" in page and "site default" in page


@pytest.mark.parametrize(
    "url",
    [
        "/manage/usage/",
        "/manage/usage/?format=csv",
        "/manage/people/{alice}/quota/",
        "/manage/groups/{group}/quota/",
    ],
)
def test_admin_pages_are_404_for_everyone_else(client, alice, bob, url):
    group = Group.objects.create(name="g")
    url = url.format(alice=alice.pk, group=group.pk)
    client.force_login(bob)
    assert client.get(url).status_code == 404
    assert client.post(url, {"tokens_per_day": "1"}).status_code == 404
    assert not Group.objects.filter(quota__isnull=False).exists()


@pytest.fixture
def admin_client(client, django_user_model):
    admin = django_user_model.objects.create_user("boss", password="x" * 20, is_staff=True)
    client.force_login(admin)
    return client


def test_admins_see_everyone_per_person_and_one_persons_breakdown(admin_client, alice, bob, rows):
    page = admin_client.get(reverse("usage:everyone")).content.decode()
    for name in ("alice", "bob", "boss"):
        assert f'data-username="{name}"' in page
    assert "8,185" in page  # alice's tokens
    assert reverse("usage:person_quota", args=[alice.pk]) in page

    page = admin_client.get(reverse("usage:everyone"), {"person": bob.pk}).content.decode()
    assert "By day and model: bob" in page
    assert 'data-model="beta"' not in page  # only alice used beta


def people_order(admin_client, sort: str) -> list[str]:
    rows = usage.per_person(usage.period_from("30"), sort)
    names = [row["username"] for row in rows]
    page = admin_client.get(reverse("usage:everyone"), {"sort": sort}).content.decode()
    positions = [page.index(f'data-username="{name}"') for name in names]
    assert positions == sorted(positions), "the page shows the selector's order"
    return names


def test_sorting_by_each_column(admin_client, alice, bob, rows):
    assert people_order(admin_client, "-tokens") == ["alice", "bob", "boss"]
    assert people_order(admin_client, "tokens") == ["boss", "bob", "alice"]
    assert people_order(admin_client, "person") == ["alice", "bob", "boss"]
    assert people_order(admin_client, "-person") == ["boss", "bob", "alice"]
    assert people_order(admin_client, "-answers") == ["alice", "bob", "boss"]
    assert people_order(admin_client, "time") == ["boss", "bob", "alice"]
    # Unknown keys (or an attempt at another field) fall back to the default.
    assert usage.sort_from("password") == usage.sort_from("-password") == "-tokens"
    page = admin_client.get(reverse("usage:everyone"), {"sort": "-tokens"}).content.decode()
    assert 'aria-sort="descending"><a href="?period=30&amp;sort=tokens">Total tokens' in page


def test_csv_has_a_header_one_row_per_person_and_no_formulas(
    admin_client, alice, django_user_model, rows
):
    evil = django_user_model.objects.create_user('=HYPERLINK("http://x")', password="x" * 20)
    Profile.objects.filter(user=evil).update(display_name="+1-2")
    answer(evil, model_named("@SUM(A1)"), timezone.now() - timedelta(minutes=1), 1, 1, 1)

    response = admin_client.get(reverse("usage:everyone"), {"format": "csv", "sort": "person"})

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert response["Content-Disposition"].startswith('attachment; filename="corral-usage-')
    table = list(csv.reader(io.StringIO(response.content.decode())))
    assert table[0] == usage.CSV_HEADER
    assert len(table) == 1 + 4  # alice, bob, boss, evil
    by_name = {row[0]: row for row in table[1:]}
    assert by_name["alice"][2:] == ["6", "7351", "834", "8185", "18.0"]
    assert by_name['\'=HYPERLINK("http://x")'][1] == "'+1-2"
    assert not any(cell.startswith(("=", "+", "-", "@")) for row in table for cell in row)


@pytest.mark.parametrize(
    ("value", "safe"),
    [("=1+1", "'=1+1"), ("+x", "'+x"), ("-x", "'-x"), ("@x", "'@x"), ("a=b", "a=b"), (-3, -3)],
)
def test_csv_safe(value, safe):
    assert usage.csv_safe(value) == safe


def test_the_figures_are_aggregated_by_the_database(
    admin_client, alice, rows, django_assert_max_num_queries
):
    period = usage.period_from("365")
    with django_assert_max_num_queries(1):
        usage.by_model_and_day(period)
    with django_assert_max_num_queries(1):
        usage.per_person(period)
