"""The admins' quota form: one person's or one group's limits."""

from __future__ import annotations

from django import forms

# PositiveIntegerField's ceiling on PostgreSQL.
MAX_VALUE = 2_147_483_647
HELP = "Blank: no limit at this level. 0 stops sending altogether."


def _limit(label: str) -> forms.IntegerField:
    return forms.IntegerField(
        label=label, required=False, min_value=0, max_value=MAX_VALUE, help_text=HELP
    )


class QuotaForm(forms.Form):
    tokens_per_day = _limit("Tokens per day")
    messages_per_minute = _limit("Messages per minute")
    concurrent_answers = _limit("Answers at a time")
