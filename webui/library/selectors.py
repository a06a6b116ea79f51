"""What the Models page shows beside each model's file facts: which live workers have it
loaded (from the fleet's reports) and how fast its recent answers went (usage ledger)."""

from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass

from webui.chat import fleet
from webui.chat.models import AnswerRecord, LanguageModel

logger = logging.getLogger("corral.library")

# Recent tok/s: the median of this many latest answers.
RECENT_ANSWERS = 20


@dataclass
class LibraryRow:
    model: LanguageModel
    loaded_on: list[str]
    recent_tokens_per_second: float | None


def library_rows() -> list[LibraryRow]:
    models = list(LanguageModel.objects.prefetch_related("groups").order_by("name"))
    try:
        entries = [entry for entry in fleet.fleet() if not entry["lost"]]
    except Exception:  # Redis away: the page still lists the models
        logger.warning("the fleet's reports could not be read", exc_info=True)
        entries = []
    rows = []
    for model in models:
        loaded_on = sorted(
            entry["report"]["worker"]
            for entry in entries
            if model.target in entry["report"]["models"]
        )
        rates = list(
            AnswerRecord.objects.filter(model=model, tokens_per_second__isnull=False)
            .order_by("-created_at")
            .values_list("tokens_per_second", flat=True)[:RECENT_ANSWERS]
        )
        recent = round(statistics.median(rates), 1) if rates else None
        rows.append(LibraryRow(model, loaded_on, recent))
    return rows
