"""The fleet: worker processes' reports in Redis, and the admins' Fleet page."""

from __future__ import annotations

import time

import pytest
from django.test import Client

from tests.chat.conftest import UNSERVED_POOL
from webui.chat import fleet, wakeups
from webui.chat.fleet import WorkerReport

pytestmark = pytest.mark.django_db


def a_report(worker: str, **changes) -> WorkerReport:
    entry: WorkerReport = {
        "worker": worker,
        "host": "box",
        "pid": 4242,
        "pools": ["cpu"],
        "models": [],
        "answers": 0,
        "tokens_per_second": 0.0,
        "gpus": [],
        "interval_s": 5.0,
    }
    return {**entry, **changes}  # type: ignore[typeddict-item]


def test_a_worker_that_stops_reporting_is_shown_lost(clean_fleet):
    fleet.report(a_report("live@box:1"))
    fleet.report(a_report("quiet@box:2", interval_s=0.05))
    time.sleep(1.2)  # Redis's clock has whole seconds: well past three beats of 0.05 s
    fleet.report(a_report("live@box:1"))
    state = {e["report"]["worker"]: e["lost"] for e in fleet.fleet()}
    assert state == {"live@box:1": False, "quiet@box:2": True}
    fleet.forget("quiet@box:2")
    assert [e["report"]["worker"] for e in fleet.fleet()] == ["live@box:1"]


def test_the_fleet_page_is_for_admins_and_names_models(alice, admin_client, gemma, clean_fleet):
    fleet.report(
        a_report(
            "cpu-1@box:77",
            models=[gemma.target],
            answers=3,
            tokens_per_second=41.5,
            gpus=[{"name": "NVIDIA H200", "memory_total_mib": 143771, "memory_used_mib": 1200}],
        )
    )
    person = Client()
    person.force_login(alice)
    assert person.get("/fleet/").status_code == 404
    wakeups.forget_worker(UNSERVED_POOL, "test-presence")  # no worker of gemma's pool
    page = admin_client.get("/fleet/").content.decode()
    row = page[page.index('data-worker="cpu-1@box:77"') :].split("</tr>")[0]
    assert 'data-state="live"' in row
    for shown in (gemma.name, ">3<", "41.5", "NVIDIA H200 (1200 / 143771 MiB)"):
        assert shown in row
    # An enabled model's pool has no live worker: admins are told.
    assert f"No {UNSERVED_POOL} worker is running" in page


def test_a_worker_shutting_down_is_shown_draining(admin_client, clean_fleet):
    fleet.report(a_report("going@box:5", draining=True))
    fleet.report(a_report("older@box:6"))  # a report without the field: live
    page = admin_client.get("/fleet/").content.decode()
    going = page[page.index('data-worker="going@box:5"') :].split("</tr>")[0]
    older = page[page.index('data-worker="older@box:6"') :].split("</tr>")[0]
    assert 'data-state="draining"' in going and ">draining<" in going
    assert 'data-state="live"' in older
