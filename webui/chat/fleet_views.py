"""The Fleet page, for admins."""

from __future__ import annotations

import redis
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from webui import config
from webui.accounts.decorators import admin_required
from webui.chat import fleet, wakeups
from webui.chat.models import LanguageModel
from webui.chat.pools import POOLS


@admin_required
def fleet_page(request: HttpRequest) -> HttpResponse:
    try:
        entries, unreachable = fleet.describe(fleet.fleet()), False
    except redis.RedisError:
        entries, unreachable = [], True
    context = {
        "entries": entries,
        "unreachable": unreachable,
        "interval_s": config.REAP_INTERVAL_S,
        # Pools that serve an enabled model: an empty gpu pool on a CPU-only site is fine.
        "pools_without_worker": [
            pool
            for pool in POOLS
            if LanguageModel.objects.filter(pool=pool, enabled=True).exists()
            and wakeups.has_live_worker(pool) is False
        ],
    }
    return render(request, "chat/fleet.html", context)
