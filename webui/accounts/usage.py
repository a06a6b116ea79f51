"""Usage figures, read from the usage ledger (``AnswerRecord``: one row per answer Corral
generated, with its token counts, start and finish times, model and owner, kept when the
conversation is deleted). Every figure is aggregated by the database; nothing here loops
over answers.

Days are UTC days, like the daily token quota, and an answer counts on the day it was
asked for (its ``created_at``).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import IO, Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Count, DurationField, F, Q, QuerySet, Sum, Value
from django.db.models.functions import Coalesce, TruncDate
from django.utils import timezone

from webui.accounts.quotas import current_usage, effective_limits, start_of_day
from webui.accounts.selectors import display_name
from webui.chat.models import AnswerRecord

# Period key -> (days, label). A period of N days is today and the N - 1 days before it.
PERIODS: dict[str, tuple[int, str]] = {
    "today": (1, "Today"),
    "7": (7, "Last 7 days"),
    "30": (30, "Last 30 days"),
    "90": (90, "Last 90 days"),
    "365": (365, "Last 365 days"),
}
DEFAULT_PERIOD = "30"

# ?sort= keys for the admins' table -> the annotation they order by.
SORTS: dict[str, str] = {
    "person": "username",
    "answers": "answers",
    "prompt": "prompt",
    "completion": "completion",
    "tokens": "tokens",
    "time": "time",
}
DEFAULT_SORT = "-tokens"
FIGURES = ("answers", "prompt", "completion", "tokens", "time")

NO_TIME = Value(timedelta(0), output_field=DurationField())
# Answers whose model was deleted come last, on PostgreSQL and SQLite alike.
MODEL_NAME = F("model__name").asc(nulls_last=True)


@dataclass(frozen=True)
class Period:
    key: str
    label: str
    start: datetime  # 00:00 UTC of the first day
    end: datetime  # now

    @property
    def first_day(self) -> date:
        return self.start.date()


COLUMNS: list[tuple[str, str]] = [
    ("person", "Person"),
    ("answers", "Answers"),
    ("prompt", "Prompt tokens"),
    ("completion", "Completion tokens"),
    ("tokens", "Total tokens"),
    ("time", "Generation time"),
]


def sort_columns(sort: str) -> list[dict[str, str]]:
    """Header cells of the admins' table: the ``?sort=`` each one links to (the current
    column flips its direction; others start from the largest, names from A) and its
    ``aria-sort``."""
    columns = []
    for key, label in COLUMNS:
        first = key if key == "person" else f"-{key}"
        current = sort.removeprefix("-") == key
        descending = sort.startswith("-")
        columns.append(
            {
                "key": key,
                "label": label,
                "next": (key if descending else f"-{key}") if current else first,
                "aria": ("descending" if descending else "ascending") if current else "",
            }
        )
    return columns


def period_from(key: str | None, now: datetime | None = None) -> Period:
    """The period a ``?period=`` value names; an unknown or missing one is the default."""
    if key not in PERIODS:
        key = DEFAULT_PERIOD
    days, label = PERIODS[key]
    now = now or timezone.now()
    return Period(key, label, start_of_day(now) - timedelta(days=days - 1), now)


def sort_from(value: str | None) -> str:
    """A whitelisted ``?sort=`` value (``tokens``, ``-tokens``…), else the default."""
    if value and value.removeprefix("-") in SORTS:
        return value
    return DEFAULT_SORT


def _figures(prefix: str = "", condition: Q | None = None) -> dict[str, Any]:
    """Aggregates over answer records reached through ``prefix`` (e.g. "answer_records__"),
    counting only those matching ``condition``. Absent figures are 0, never NULL, so
    sorting puts people without answers last on PostgreSQL and SQLite alike."""

    def field(name: str) -> F:
        return F(prefix + name)

    prompt = Coalesce(Sum(field("prompt_tokens"), filter=condition), 0)
    completion = Coalesce(Sum(field("completion_tokens"), filter=condition), 0)
    return {
        "answers": Count(field("pk"), filter=condition),
        "prompt": prompt,
        "completion": completion,
        "tokens": prompt + completion,
        "time": Coalesce(
            Sum(
                field("finished_at") - field("started_at"),
                output_field=DurationField(),
                filter=condition,
            ),
            NO_TIME,
        ),
    }


def duration_text(value: timedelta) -> str:
    """Generation time for people: "12.3 s", "4 min 05 s", "2 h 07 min"."""
    seconds = value.total_seconds()
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours:,} h {minutes:02d} min"


def _readable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add the time as text to rows the database aggregated."""
    for row in rows:
        row["time_text"] = duration_text(row["time"])
    return rows


def answers(period: Period, user: AbstractBaseUser | None = None) -> QuerySet:
    """Answers asked for in ``period``, of one person or of everyone."""
    rows = AnswerRecord.objects.filter(created_at__gte=period.start, created_at__lt=period.end)
    if user is not None:
        rows = rows.filter(owner=user)
    return rows


def totals(period: Period, user: AbstractBaseUser | None = None) -> dict[str, Any]:
    return _readable([answers(period, user).aggregate(**_figures())])[0]


def by_model(period: Period, user: AbstractBaseUser | None = None) -> list[dict[str, Any]]:
    rows = (
        answers(period, user)
        .values("model__name")
        .annotate(**_figures())
        .order_by("-tokens", MODEL_NAME)
    )
    return _readable(list(rows))


def by_model_and_day(period: Period, user: AbstractBaseUser | None = None) -> list[dict[str, Any]]:
    """One row per (UTC day, model), newest day first."""
    rows = (
        answers(period, user)
        .annotate(day=TruncDate("created_at", tzinfo=UTC))
        .values("day", "model__name")
        .annotate(**_figures())
        .order_by("-day", MODEL_NAME)
    )
    return _readable(list(rows))


def per_person(period: Period, sort: str = DEFAULT_SORT) -> list[dict[str, Any]]:
    """Everyone (also people without answers in the period), with their figures, sorted
    by the database on a whitelisted key, then by username."""
    sort = sort_from(sort)
    descending = sort.startswith("-")
    key = SORTS[sort.removeprefix("-")]
    prefix = "answer_records__"
    condition = Q(
        **{prefix + "created_at__gte": period.start, prefix + "created_at__lt": period.end}
    )
    people = (
        get_user_model()
        .objects.select_related("profile")
        .annotate(**_figures(prefix, condition))
        .order_by(F(key).desc() if descending else F(key).asc(), "username")
    )
    return _readable(
        [
            {
                "person": person,
                "username": person.get_username(),
                "name": display_name(person),
                **{figure: getattr(person, figure) for figure in FIGURES},
            }
            for person in people
        ]
    )


def personal_report(user: AbstractBaseUser, period: Period) -> dict[str, Any]:
    """Everything the person's own usage page shows: their figures and their limits."""
    return {
        "period": period,
        "periods": PERIODS,
        "totals": totals(period, user),
        "models": by_model(period, user),
        "days": by_model_and_day(period, user),
        "limits": effective_limits(user),
        "now": current_usage(user),
    }


def everyone_report(
    period: Period, sort: str, person: AbstractBaseUser | None = None
) -> dict[str, Any]:
    """The admins' page: everyone per person, and a model/day breakdown of everyone (or
    of one person)."""
    return {
        "period": period,
        "periods": PERIODS,
        "sort": sort_from(sort),
        "columns": sort_columns(sort_from(sort)),
        "people": per_person(period, sort),
        "totals": totals(period),
        "person": person,
        "days": by_model_and_day(period, person),
    }


# CSV ------------------------------------------------------------------------------------

CSV_HEADER = [
    "username",
    "name",
    "answers",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "generation_seconds",
]
# A spreadsheet runs a cell starting with one of these as a formula.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(value: Any) -> Any:
    """Neutralize text a spreadsheet would take for a formula (usernames, names)."""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def write_people_csv(out: IO[str], rows: list[dict[str, Any]]) -> None:
    """One header row, then one row per person, as ``per_person`` gives them."""
    writer = csv.writer(out)
    writer.writerow(CSV_HEADER)
    for row in rows:
        writer.writerow(
            [
                csv_safe(row["username"]),
                csv_safe(row["name"]),
                row["answers"],
                row["prompt"],
                row["completion"],
                row["tokens"],
                round(row["time"].total_seconds(), 1),
            ]
        )


def csv_filename(period: Period) -> str:
    return f"corral-usage-{period.first_day.isoformat()}-to-{period.end.date().isoformat()}.csv"
